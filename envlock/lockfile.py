"""Read a lock file into a normalized `LockedEnv`.

Supported today: PEP 751 `pylock.toml` (validated by `packaging.pylock`). Groups follow the
project's convention: `main` is what every environment installs (packages with no
`dependency_groups` condition), and each named dependency group (`train`, ...) adds to it.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from packaging.markers import Marker, default_environment
from packaging.pylock import (
    Pylock,
    PylockUnsupportedVersionError,
    PylockValidationError,
)
from packaging.utils import canonicalize_name

from envlock.errors import LockFileError

MAIN = "main"
TOOL_TABLE = "envlock"


@dataclass(frozen=True)
class LockedFile:
    """One distribution file a lock names: where it lives and the hash it must have."""

    filename: str
    url: str | None
    path: str | None
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class LockedPackage:
    """One package pinned by a lock, with its platform/group condition and its files."""

    name: str
    version: str
    marker: str | None
    wheels: tuple[LockedFile, ...] = ()
    sdist: LockedFile | None = None
    manager: str = "pip"  # "pip" (PyPI) or "conda"
    build: str | None = None  # conda build string
    channel: str | None = None  # conda channel

    def applies(self, groups: Iterable[str], environment: Mapping[str, str] | None = None) -> bool:
        """Whether an environment that installs `groups` gets this package."""
        if self.marker is None:
            return True
        base: Mapping[str, str] = environment or cast(Mapping[str, str], default_environment())
        env: dict[str, str | frozenset[str]] = dict(base)
        env["dependency_groups"] = frozenset(g for g in groups if g != MAIN)
        env["extras"] = frozenset()
        return _marker(self.marker).evaluate(env, context="lock_file")


@dataclass(frozen=True)
class LockedEnv:
    """A lock file, normalized: the packages it pins and the groups that select them."""

    path: Path
    digest: str
    flavor: str
    requires_python: str | None
    groups: tuple[str, ...]
    packages: tuple[LockedPackage, ...]
    created_by: str | None = None
    tool: Mapping[str, Any] = field(default_factory=dict)

    def packages_in(
        self, group: str = MAIN, environment: Mapping[str, str] | None = None
    ) -> list[LockedPackage]:
        """Packages an environment of `group` (always plus `main`) installs on `environment`."""
        self.check_group(group)
        selected = [MAIN] if group == MAIN else [MAIN, group]
        return [p for p in self.packages if p.applies(selected, environment)]

    def versions(
        self, group: str = MAIN, environment: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Package name -> locked version for an environment of `group`."""
        return {p.name: p.version for p in self.packages_in(group, environment)}

    def group_of(self, name: str, environment: Mapping[str, str] | None = None) -> str | None:
        """The smallest group that installs package `name` here: `main`, a group, or None."""
        for group in (MAIN, *[g for g in self.groups if g != MAIN]):
            if any(p.name == canonicalize_name(name) for p in self.packages_in(group, environment)):
                return group
        return None

    def check_group(self, group: str) -> None:
        """Raise `LockFileError` unless the lock defines `group`."""
        if group not in self.groups:
            known = ", ".join(self.groups)
            raise LockFileError(self.path, f"no group {group!r} in this lock (it has: {known})")

    @property
    def spec_sha256(self) -> str | None:
        """Digest of the spec this lock was written from, as `envlock lock` recorded it."""
        value = self.tool.get("spec-sha256")
        return value if isinstance(value, str) else None

    @property
    def spec_path(self) -> Path | None:
        """The spec this lock was written from, if `envlock lock` recorded it."""
        value = self.tool.get("spec")
        return (self.path.parent / value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=1024)
def _marker(text: str) -> Marker:
    """A parsed marker; locks repeat the same few markers hundreds of times."""
    return Marker(text)


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_lock(path: str | Path) -> LockedEnv:
    """Read and validate a lock file; raise `LockFileError` naming the file and the place."""
    path = Path(path)
    if not path.is_file():
        raise LockFileError(path, "lock file not found")
    name = path.name
    if name == "pylock.toml" or (name.startswith("pylock.") and name.endswith(".toml")):
        return _read_pylock(path)
    if name == "conda-lock.yml" or name.endswith((".conda-lock.yml", ".conda-lock.yaml")):
        from envlock.condalock import read_conda_lock

        return read_conda_lock(path)
    raise LockFileError(
        path,
        "unsupported lock file name (expected pylock.toml, pylock.<name>.toml or conda-lock.yml)",
    )


def _read_pylock(path: Path) -> LockedEnv:
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise LockFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise LockFileError(path, f"not valid TOML: {e}") from None
    try:
        lock = Pylock.from_dict(data)
    except PylockUnsupportedVersionError as e:
        raise LockFileError(path, str(e), where="lock-version") from None
    except PylockValidationError as e:
        raise LockFileError(path, str(e), where=e.context) from None

    packages: list[LockedPackage] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, p in enumerate(lock.packages):
        name = canonicalize_name(p.name)
        if p.version is None:
            raise LockFileError(path, "package has no version", where=f"packages[{i}]")
        marker = str(p.marker) if p.marker is not None else None
        key = (name, marker)
        if key in seen:
            raise LockFileError(
                path,
                f"package {name!r} is locked twice under the same marker "
                f"(also packages[{seen[key]}])",
                where=f"packages[{i}]",
            )
        seen[key] = i
        wheels = tuple(_locked_file(path, w, f"packages[{i}].wheels") for w in p.wheels or ())
        sdist = _locked_file(path, p.sdist, f"packages[{i}].sdist") if p.sdist else None
        packages.append(LockedPackage(name, str(p.version), marker, wheels, sdist))

    groups = [MAIN, *(lock.dependency_groups or ())]
    tool = (data.get("tool") or {}).get(TOOL_TABLE) or {}
    if not isinstance(tool, dict):
        raise LockFileError(path, "must be a table", where=f"tool.{TOOL_TABLE}")
    return LockedEnv(
        path=path,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        flavor="pylock",
        requires_python=str(lock.requires_python) if lock.requires_python else None,
        groups=tuple(dict.fromkeys(groups)),
        packages=tuple(packages),
        created_by=lock.created_by,
        tool=tool,
    )


def _locked_file(lock_path: Path, dist: Any, where: str) -> LockedFile:
    hashes: Mapping[str, str] = dist.hashes or {}
    if "sha256" not in hashes:
        raise LockFileError(lock_path, "no sha256 hash for this file", where=where)
    url: str | None = dist.url
    local: str | None = dist.path
    filename = dist.name or Path((url or local or "").split("?")[0]).name
    return LockedFile(filename, url, local, hashes["sha256"], dist.size)
