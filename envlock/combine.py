"""Environments between two locks: some packages from one lock, the rest from the other.

`parity bisect` asks which of the packages two locked environments differ in change a
model's numbers. Its intermediate environments come from here: `differing_packages`
lists what differs (a version, or a package only one side installs), `combine` writes a
PEP 751 lock that takes a chosen subset of those from the candidate lock and everything
else from the reference lock, and `incompatibilities` says whether what got installed
agrees with its own dependency metadata (`uv pip check`).

A combined lock is written under the cache folder at a path named by its content, so the
same combination gives the same lock, and the venv backend (which caches by lock digest)
builds it once.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from packaging.utils import canonicalize_name

from envlock.backends.base import Environment, run_tool
from envlock.errors import LockFileError
from envlock.lockfile import LockedEnv, read_lock
from envlock.uvtool import find_uv

COMBINED = "combined"  # the cache subfolder combined locks are written to


@dataclass(frozen=True)
class PackageDifference:
    """A package two environments disagree on: its version on each side (None: absent)."""

    name: str
    reference: str | None
    candidate: str | None

    def describe(self) -> str:
        """`numpy 2.4.6 -> 1.26.4`, `tqdm 4.70.1 -> absent`."""
        return f"{self.name} {self.reference or 'absent'} -> {self.candidate or 'absent'}"


def _selected(lock: LockedEnv, group: str) -> dict[str, int]:
    """Package name -> its index in the file's `[[packages]]`, for what `group` installs
    here (source trees, which are not in `lock.packages`, keep the indices apart)."""
    chosen = {id(p) for p in lock.packages_in(group)}
    return {
        p.name: i if p.index is None else p.index
        for i, p in enumerate(lock.packages)
        if id(p) in chosen
    }


def differing_packages(
    reference: LockedEnv, reference_group: str, candidate: LockedEnv, candidate_group: str
) -> list[PackageDifference]:
    """Every package whose locked version differs between the two environments on this
    machine, or that only one of them installs; sorted by name."""
    ref = reference.versions(reference_group)
    cand = candidate.versions(candidate_group)
    return [
        PackageDifference(name, ref.get(name), cand.get(name))
        for name in sorted(set(ref) | set(cand))
        if ref.get(name) != cand.get(name)
    ]


def combine(
    reference: LockedEnv,
    reference_group: str,
    candidate: LockedEnv,
    candidate_group: str,
    take: Iterable[str],
    cache_dir: Path,
) -> LockedEnv:
    """A lock installing what the reference environment does, except that each package in
    `take` is as the candidate environment has it (its version, or absent); read back.

    The result holds one `main` group with every chosen package, markers already applied
    for this machine, and file paths made absolute. Raise `LockFileError` for a lock
    that is not a pylock, or a package in `take` the two sides do not differ in."""
    for lock in (reference, candidate):
        if lock.flavor != "pylock":
            raise LockFileError(
                lock.path, "bisecting builds venvs, which install PEP 751 locks (pylock.toml) only"
            )
    taken = {canonicalize_name(n) for n in take}
    differing = {
        d.name for d in differing_packages(reference, reference_group, candidate, candidate_group)
    }
    if taken - differing:
        unknown = ", ".join(sorted(taken - differing))
        raise LockFileError(
            candidate.path, f"the two environments do not differ in: {unknown}", where="packages"
        )
    ref_raw, cand_raw = _raw_packages(reference), _raw_packages(candidate)
    ref_sel, cand_sel = _selected(reference, reference_group), _selected(candidate, candidate_group)
    packages: list[dict[str, Any]] = []
    for name in sorted(set(ref_sel) | set(cand_sel)):
        if name in taken:
            if name in cand_sel:
                packages.append(_portable(cand_raw[cand_sel[name]], candidate.path))
        elif name in ref_sel:
            packages.append(_portable(ref_raw[ref_sel[name]], reference.path))
    document: dict[str, Any] = {
        "lock-version": "1.0",
        "created-by": "envlock combine",
        **({"requires-python": reference.requires_python} if reference.requires_python else {}),
        "packages": packages,
        "tool": {
            "envlock": {
                "combined": {
                    "reference": str(reference.path.resolve()),
                    "reference-digest": reference.digest,
                    "reference-group": reference_group,
                    "candidate": str(candidate.path.resolve()),
                    "candidate-digest": candidate.digest,
                    "candidate-group": candidate_group,
                    "taken": sorted(taken),
                }
            }
        },
    }
    text = (
        "# Written by envlock for `parity bisect`: the reference lock with some packages taken\n"
        "# from the candidate lock (tool.envlock.combined says which). Do not edit.\n"
        + tomli_w.dumps(document)
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    folder = cache_dir / COMBINED / digest
    path = folder / "pylock.toml"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".pylock.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return read_lock(path)


def _raw_packages(lock: LockedEnv) -> list[dict[str, Any]]:
    """The lock's `[[packages]]` tables as written, in the order `read_lock` read them."""
    raw = tomllib.loads(lock.path.read_text(encoding="utf-8")).get("packages", [])
    if len(raw) != len(lock.packages) + len(lock.sources):  # the file changed since it was read
        raise LockFileError(lock.path, "changed while being read", where="packages")
    return list(raw)


def _portable(package: dict[str, Any], lock_path: Path) -> dict[str, Any]:
    """A package table fit for a lock elsewhere: no marker (already applied for this
    machine, and group markers name groups the combined lock does not have), and every
    relative file path resolved against the lock it came from."""
    base = lock_path.resolve().parent
    copy = {k: v for k, v in package.items() if k != "marker"}

    def absolute(entry: Any) -> Any:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            return {**entry, "path": str((base / entry["path"]).resolve())}
        return entry

    for key in ("sdist", "archive", "directory"):
        if key in copy:
            copy[key] = absolute(copy[key])
    if isinstance(copy.get("wheels"), list):
        copy["wheels"] = [absolute(w) for w in copy["wheels"]]
    return copy


def incompatibilities(environment: Environment) -> list[str]:
    """What `uv pip check` finds wrong in an environment's installed packages (a package
    requiring a version of another that is not installed); empty when it is consistent."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PYTHON")}
    proc = run_tool([find_uv(), "pip", "check", "--python", str(environment.python)], env=env)
    if proc.returncode == 0:
        return []
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()]
    found = [
        ln
        for ln in lines
        if ln and not ln.startswith(("Using Python", "Checked ", "Found ", "warning:"))
    ]
    return found or [f"uv pip check exited with status {proc.returncode}"]


__all__ = [
    "PackageDifference",
    "combine",
    "differing_packages",
    "incompatibilities",
]
