"""What a lock pins, normalized: `LockedEnv`, its packages and their files, in any format.

Every lock reader (`envlock.lockfile` for PEP 751, `envlock.condalock` for conda-lock)
builds these. They live apart from `envlock.lockfile`, whose `read_lock` dispatches to the
conda reader, so that the conda reader need not import it back.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from packaging.markers import Marker, default_environment
from packaging.utils import canonicalize_name

from envlock.errors import LockFileError

MAIN = "main"

# The algorithms a file is checked by, strongest first: PEP 751 allows any that `hashlib`
# guarantees, and a lock may give several; envlock checks the strongest one given.
HASH_PREFERENCE = (
    "sha512",
    "sha3_512",
    "blake2b",
    "sha384",
    "sha3_384",
    "sha256",
    "sha3_256",
    "blake2s",
    "sha224",
    "sha3_224",
    "shake_256",
    "shake_128",
)
# Guaranteed by hashlib, but broken: a file pinned by these alone is not trusted.
WEAK_HASHES = frozenset({"md5", "sha1"})


@dataclass(frozen=True)
class LockedFile:
    """One distribution file a lock names: where it lives and the hashes it must have."""

    filename: str
    url: str | None
    path: str | None
    sha256: str | None
    size: int | None
    # Every hash the lock gives (algorithm -> lowercase hex); `digest` picks the one to check.
    hashes: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def digest(self) -> tuple[str, str] | None:
        """`(algorithm, hex)`: the strongest hash the lock gives, the one envlock checks."""
        known = {**({"sha256": self.sha256.lower()} if self.sha256 else {}), **self.hashes}
        for algorithm in HASH_PREFERENCE:
            if known.get(algorithm):
                return algorithm, known[algorithm]
        return None


def hexdigest_of(path: Path, algorithm: str, hex_length: int = 0) -> str:
    """Hex digest of a file's bytes; `hex_length` sizes the variable-length shake digests."""
    with path.open("rb") as f:
        return finish_digest(hashlib.file_digest(f, algorithm), hex_length)


def finish_digest(h: Any, hex_length: int = 0) -> str:
    """The hex digest of a hash object; shake digests are as long as `hex_length` says."""
    if h.name.startswith("shake_"):
        return str(h.hexdigest(hex_length // 2))
    return str(h.hexdigest())


@dataclass(frozen=True)
class LockedSource:
    """A package the lock takes from a source tree: a local directory (most often the
    locked project itself), a VCS checkout, or an archive without a version.

    Nothing pins what such a tree builds into (PEP 751 forbids a version for it, and a
    directory has no hash), so envlock never installs one: an environment cached by the
    lock's digest could not tell that the tree changed. They are listed apart.
    """

    name: str
    kind: str  # "directory", "vcs" or "archive"
    location: str  # a path (joined to the lock's folder) or a URL
    marker: str | None
    index: int  # its place in the file's [[packages]]
    editable: bool = False

    def applies(self, groups: Iterable[str], environment: Mapping[str, str] | None = None) -> bool:
        """Whether an environment that installs `groups` would get this source tree."""
        return _applies(self.marker, groups, environment)

    def describe(self) -> str:
        """One line for people: what it is, that envlock does not install it, and where."""
        what = "project (source tree" if self.kind == "directory" else f"{self.kind} source ("
        return f"{what}, not installed): {self.name} at {self.location}"


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
    index: int | None = None  # its place in a pylock's [[packages]], for tools that rewrite it

    def applies(self, groups: Iterable[str], environment: Mapping[str, str] | None = None) -> bool:
        """Whether an environment that installs `groups` gets this package."""
        return _applies(self.marker, groups, environment)


@dataclass(frozen=True)
class LockedEnv:
    """A lock file, normalized: the packages it pins and the groups that select them.

    `main` is what every environment installs: with PEP 751 `default-groups` (PDM writes
    them), the packages those groups select; a named group adds to it. `groups` lists
    `main` and the groups a user can name, never the default groups themselves.
    """

    path: Path
    digest: str
    flavor: str
    requires_python: str | None
    groups: tuple[str, ...]
    packages: tuple[LockedPackage, ...]
    created_by: str | None = None
    tool: Mapping[str, Any] = field(default_factory=dict)
    default_groups: tuple[str, ...] = ()
    sources: tuple[LockedSource, ...] = ()

    def selected_groups(self, group: str = MAIN) -> list[str]:
        """The PEP 751 dependency groups an environment of `group` installs: the lock's
        default groups, plus `group` unless it is `main`."""
        self.check_group(group)
        return [*self.default_groups, *([group] if group != MAIN else [])]

    def packages_in(
        self, group: str = MAIN, environment: Mapping[str, str] | None = None
    ) -> list[LockedPackage]:
        """Packages an environment of `group` (always plus `main`) installs on `environment`."""
        selected = self.selected_groups(group)
        return [p for p in self.packages if p.applies(selected, environment)]

    def sources_in(
        self, group: str = MAIN, environment: Mapping[str, str] | None = None
    ) -> list[LockedSource]:
        """Source trees the lock gives `group` on `environment` (envlock installs none)."""
        selected = self.selected_groups(group)
        return [s for s in self.sources if s.applies(selected, environment)]

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
            why = f"no group {group!r} in this lock (it has: {known})"
            if group in self.default_groups:
                why = f"{group!r} is one of the lock's default-groups, which {MAIN!r} installs"
            raise LockFileError(self.path, why)

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


# The marker variables a fingerprint without `markers` (one recorded before they were)
# still gives, from its interpreter and platform sections.
_SYS_PLATFORM = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}


def fingerprint_markers(fingerprint: Mapping[str, object]) -> dict[str, str] | None:
    """The PEP 508 marker variables of the environment a fingerprint describes: those it
    recorded, else what its interpreter and platform sections tell (version, machine,
    system); None when it tells nothing, and the caller evaluates markers for this host."""
    recorded = fingerprint.get("markers")
    if (
        isinstance(recorded, dict)
        and recorded
        and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items())
    ):
        return dict(recorded)
    python, plat = fingerprint.get("python"), fingerprint.get("platform")
    if not isinstance(python, dict) or not isinstance(python.get("version"), str):
        return None
    found = {k: str(v) for k, v in default_environment().items()}
    version = python["version"]
    found["python_full_version"] = version
    found["python_version"] = ".".join(version.split(".")[:2])
    if isinstance(python.get("implementation"), str):
        found["platform_python_implementation"] = python["implementation"]
        found["implementation_name"] = python["implementation"].lower()
        if python["implementation"] == "CPython":  # PyPy's own version is not recorded
            found["implementation_version"] = version
    if isinstance(plat, dict):
        system, machine = plat.get("system"), plat.get("machine")
        if isinstance(system, str) and system:
            found["platform_system"] = system
            found["sys_platform"] = _SYS_PLATFORM.get(system, system.lower())
            found["os_name"] = "nt" if system == "Windows" else "posix"
        if isinstance(machine, str) and machine:
            found["platform_machine"] = machine
        if isinstance(plat.get("release"), str):
            found["platform_release"] = plat["release"]
    return found


def _applies(
    marker: str | None, groups: Iterable[str], environment: Mapping[str, str] | None
) -> bool:
    if marker is None:
        return True
    base: Mapping[str, str] = environment or cast(Mapping[str, str], default_environment())
    env: dict[str, str | frozenset[str]] = dict(base)
    env["dependency_groups"] = frozenset(g for g in groups if g != MAIN)
    env["extras"] = frozenset()
    return _marker(marker).evaluate(env, context="lock_file")


@functools.lru_cache(maxsize=1024)
def _marker(text: str) -> Marker:
    """A parsed marker; locks repeat the same few markers hundreds of times."""
    return Marker(text)
