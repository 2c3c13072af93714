"""Read a lock file into a normalized `LockedEnv`.

Supported today: PEP 751 `pylock.toml` (validated by `packaging.pylock`). Groups follow the
project's convention: `main` is what every environment installs (packages with no
`dependency_groups` condition), and each named dependency group (`train`, ...) adds to it.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.pylock import (
    Pylock,
    PylockUnsupportedVersionError,
    PylockValidationError,
)
from packaging.utils import canonicalize_name

from envlock.errors import LockFileError
from envlock.locked import MAIN, LockedEnv, LockedFile, LockedPackage

# The data classes are re-exported: callers have always taken them from here.
__all__ = [
    "MAIN",
    "TOOL_TABLE",
    "LockedEnv",
    "LockedFile",
    "LockedPackage",
    "file_digest",
    "read_lock",
]

TOOL_TABLE = "envlock"


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def read_lock(path: str | Path) -> LockedEnv:
    """Read and validate a lock file; raise `LockFileError` naming the file and the place.

    The name picks the reader when it is one the tools write by default (`pylock.toml`,
    `pylock.<name>.toml`, `conda-lock.yml`, `<name>.conda-lock.yml`); any other name (conda-lock
    writes whatever `--lockfile` says) is read by its content.
    """
    path = Path(path)
    if not path.is_file():
        raise LockFileError(path, "lock file not found")
    name = path.name
    if name == "pylock.toml" or (name.startswith("pylock.") and name.endswith(".toml")):
        return _read_pylock(path)
    import re

    from envlock import condalock

    if name in condalock.FILE_NAMES or name.endswith(condalock.FILE_SUFFIXES):
        return condalock.read_conda_lock(path)
    raw = path.read_bytes()
    # A PEP 751 lock sets `lock-version`, on a line of its own: a file that does is read as one.
    if re.search(rb"^[ \t]*[\"']?lock-version[\"']?[ \t]*=", raw, re.MULTILINE):
        return _read_pylock(path)
    expected = (
        "not a lock file envlock reads: expected a PEP 751 lock (TOML with lock-version) "
        f"or {condalock.EXPECTED}"
    )
    try:
        data = condalock.parse_yaml(path, raw)
    except LockFileError as e:
        place = f"{e.where}: " if e.where else ""
        raise LockFileError(path, f"{expected}; {place}{e.detail}") from None
    if not condalock.looks_like_conda_lock(data):
        raise LockFileError(path, expected)
    return condalock.conda_lock_from(path, raw, data)


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
