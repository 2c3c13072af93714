"""`guard()`: at a service's start-up, check that the running environment is the locked one.

    import envlock
    envlock.guard("locks/pylock.toml", group="main", strict=True)

It reads the installed distributions from the `*.dist-info` folder names on sys.path (no
metadata parsing, so a few hundred distributions cost milliseconds), compares them with
the lock group, or with a fingerprint recorded at training time, and raises
`EnvironmentDrift` (strict) or warns `EnvironmentDriftWarning` listing every difference.
Installer tooling the lock does not name (pip in a `python -m venv` environment) is not
drift, strict or not, as for `envlock verify`: `strict` here chooses raising over warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from envlock.errors import EnvlockError
from envlock.installed import installed_versions
from envlock.names import canonical
from envlock.verify import Mismatch, compare_versions, failures


class EnvironmentDrift(EnvlockError):
    """The running environment is not the one the lock (or fingerprint) describes."""

    exit_code = 1

    def __init__(self, source: str, mismatches: list[Mismatch]) -> None:
        self.mismatches = mismatches
        lines = "; ".join(m.describe() for m in mismatches)
        super().__init__(f"this environment differs from {source}: {lines}")


class EnvironmentDriftWarning(UserWarning):
    """The running environment differs from its lock; the service starts anyway."""


def guard(
    lock: str | Path | None = None,
    *,
    group: str = "main",
    fingerprint: str | Path | None = None,
    strict: bool = False,
    ignore: tuple[str, ...] = (),
    paths: list[str] | None = None,
) -> list[Mismatch]:
    """Compare the running environment with a lock group or a recorded fingerprint.

    Returns the differences. With `strict`, raises `EnvironmentDrift` if there are any;
    otherwise warns with `EnvironmentDriftWarning`. Names in `ignore` are not compared, nor
    installer tooling (pip, setuptools, wheel) that the lock or fingerprint does not name.
    `paths` (default sys.path) lets a process check another environment's site-packages.
    """
    if (lock is None) == (fingerprint is None):
        raise ValueError("guard() needs exactly one of lock= and fingerprint=")
    if fingerprint is not None:
        data = json.loads(Path(fingerprint).read_text(encoding="utf-8"))
        expected = {
            canonical(str(d["name"])): str(d["version"]) for d in data.get("distributions", [])
        }
        source = str(fingerprint)
    else:
        from envlock.lockfile import read_lock

        expected = read_lock(Path(str(lock))).versions(group)
        source = f"{lock} [{group}]"
    skip = {canonical(n) for n in ignore}
    installed = {k: v for k, v in installed_versions(paths).items() if k not in skip}
    mismatches = failures(
        compare_versions({k: v for k, v in expected.items() if k not in skip}, installed)
    )
    if mismatches:
        if strict:
            raise EnvironmentDrift(source, mismatches)
        warnings.warn(
            str(EnvironmentDrift(source, mismatches)), EnvironmentDriftWarning, stacklevel=2
        )
    return mismatches
