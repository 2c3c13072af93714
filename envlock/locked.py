"""What a lock pins, normalized: `LockedEnv`, its packages and their files, in any format.

Every lock reader (`envlock.lockfile` for PEP 751, `envlock.condalock` for conda-lock)
builds these. They live apart from `envlock.lockfile`, whose `read_lock` dispatches to the
conda reader, so that the conda reader need not import it back.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from packaging.markers import Marker, default_environment
from packaging.utils import canonicalize_name

from envlock.errors import LockFileError

MAIN = "main"


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
