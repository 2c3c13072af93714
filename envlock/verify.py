"""Check an environment's fingerprint against a lock group: missing, extra, wrong version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from envlock.lockfile import LockedEnv

Problem = Literal["missing", "extra", "version"]


@dataclass(frozen=True)
class Mismatch:
    """One package where the environment is not what the lock says."""

    name: str
    problem: Problem
    locked: str | None
    installed: str | None

    def describe(self) -> str:
        """One line a person can act on."""
        if self.problem == "missing":
            return f"{self.name}: locked {self.locked}, not installed"
        if self.problem == "extra":
            return f"{self.name}: installed {self.installed}, not in the lock"
        return f"{self.name}: locked {self.locked}, installed {self.installed}"


def _same(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def verify_fingerprint(fingerprint: dict[str, Any], lock: LockedEnv, group: str) -> list[Mismatch]:
    """Every difference between the installed distributions and the lock's `group`."""
    locked: dict[str, str] = lock.versions(group)
    installed: dict[str, str] = {
        canonicalize_name(str(d["name"])): str(d["version"])
        for d in fingerprint.get("distributions", [])
        if isinstance(d, dict) and "name" in d and "version" in d
    }
    problems = []
    for name in sorted(set(locked) | set(installed)):
        want, have = locked.get(name), installed.get(name)
        if have is None:
            problems.append(Mismatch(name, "missing", want, None))
        elif want is None:
            problems.append(Mismatch(name, "extra", None, have))
        elif not _same(want, have):
            problems.append(Mismatch(name, "version", want, have))
    return problems
