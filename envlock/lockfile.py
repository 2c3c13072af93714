"""Read a lock file into a normalized `LockedEnv`.

Supported today: PEP 751 `pylock.toml` (validated by `packaging.pylock`), whoever wrote it.
Groups follow the project's convention: `main` is what every environment installs (the
packages the lock's `default-groups` select; with none, those with no `dependency_groups`
condition), and each named dependency group (`train`, ...) adds to it. Source trees (the
project's own `directory` entry, most often) are read apart, as `LockedSource`. A hostile
file (nested hundreds deep) is refused before the TOML parser sees it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.pylock import (
    Package,
    Pylock,
    PylockUnsupportedVersionError,
    PylockValidationError,
)
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from envlock.errors import LockFileError
from envlock.locked import (
    HASH_PREFERENCE,
    MAIN,
    WEAK_HASHES,
    LockedEnv,
    LockedFile,
    LockedPackage,
    LockedSource,
)

# The data classes are re-exported: callers have always taken them from here.
__all__ = [
    "MAIN",
    "TOOL_TABLE",
    "LockedEnv",
    "LockedFile",
    "LockedPackage",
    "LockedSource",
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


# Deeper than any lock a tool writes (a few levels: packages, wheels, hashes), shallow
# enough that neither tomllib's recursion nor its per-key cost (quadratic in a dotted
# key's parts) can be turned against a reader by a small hostile file.
MAX_NESTING = 32
MAX_KEY_PARTS = 16


# Locks read in this process, by path and content: a check reads its lock once to check
# the config and once per environment (often the same lock), and parsing and validating
# a large lock is most of that. The same bytes at the same path give the same (frozen)
# `LockedEnv`; a changed file is read again. A few entries: a bisect reads two locks and
# the combinations between them.
_READ: dict[tuple[str, str], LockedEnv] = {}
_READ_KEPT = 16
_READ_LOCK = threading.Lock()  # environments are opened in threads of their own


def _read_pylock(path: Path) -> LockedEnv:
    raw = path.read_bytes()
    key = (str(path), "sha256:" + hashlib.sha256(raw).hexdigest())
    with _READ_LOCK:
        known = _READ.get(key)
    if known is not None:
        return known
    lock = _parse_pylock(path, raw, key[1])
    with _READ_LOCK:
        while len(_READ) >= _READ_KEPT:
            del _READ[next(iter(_READ))]
        _READ[key] = lock
    return lock


def _parse_pylock(path: Path, raw: bytes, digest: str) -> LockedEnv:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LockFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    _check_nesting(path, text)
    try:
        data = tomllib.loads(text)
        lock = Pylock.from_dict(data)
    except tomllib.TOMLDecodeError as e:
        raise LockFileError(path, f"not valid TOML: {e}") from None
    except PylockUnsupportedVersionError as e:
        raise LockFileError(path, str(e), where="lock-version") from None
    except PylockValidationError as e:
        raise LockFileError(path, str(e), where=e.context) from None
    except (RecursionError, MemoryError) as e:
        # The nesting check should make these unreachable; the boundary holds regardless.
        raise LockFileError(path, f"too deeply nested or too large to read ({e!r})") from None

    packages: list[LockedPackage] = []
    sources: list[LockedSource] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, p in enumerate(lock.packages):
        name = canonicalize_name(p.name)
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
        source = _source(path, p, name, marker, i)
        if source is not None:
            sources.append(source)
            continue
        wheels = tuple(
            _locked_file(path, w, f"packages[{i}].wheels[{j}]")
            for j, w in enumerate(p.wheels or ())
        )
        sdist = _locked_file(path, p.sdist, f"packages[{i}].sdist") if p.sdist else None
        if p.archive is not None:  # an archive with a version: a file like any other
            archive = _locked_file(path, p.archive, f"packages[{i}].archive")
            if archive.filename.endswith(".whl"):
                wheels = (archive,)
            else:
                sdist = archive
        version = _version(path, p, wheels, sdist, i)
        packages.append(LockedPackage(name, version, marker, wheels, sdist, index=i))

    defaults = tuple(lock.default_groups or ())
    # PDM lists its default group among dependency-groups too; `main` is what it means.
    named = [g for g in (lock.dependency_groups or ()) if g not in defaults]
    tool = (data.get("tool") or {}).get(TOOL_TABLE) or {}
    if not isinstance(tool, dict):
        raise LockFileError(path, "must be a table", where=f"tool.{TOOL_TABLE}")
    return LockedEnv(
        path=path,
        digest=digest,
        flavor="pylock",
        requires_python=str(lock.requires_python) if lock.requires_python else None,
        groups=tuple(dict.fromkeys([MAIN, *named])),
        packages=tuple(packages),
        created_by=lock.created_by,
        tool=tool,
        default_groups=defaults,
        sources=tuple(sources),
    )


def _source(
    lock_path: Path, p: Package, name: str, marker: str | None, i: int
) -> LockedSource | None:
    """The package as a source tree (a directory, a VCS checkout, an archive without a
    version), or None if it is locked by its files."""
    if p.directory is not None:
        where = _joined(lock_path, p.directory.path)
        return LockedSource(name, "directory", where, marker, i, bool(p.directory.editable))
    if p.vcs is not None:
        where = p.vcs.url or _joined(lock_path, p.vcs.path or "")
        return LockedSource(name, "vcs", f"{where}@{p.vcs.commit_id}", marker, i)
    if p.archive is not None and p.version is None:
        _locked_file(lock_path, p.archive, f"packages[{i}].archive")  # its hashes still count
        where = p.archive.url or _joined(lock_path, p.archive.path or "")
        return LockedSource(name, "archive", where, marker, i)
    return None


def _joined(lock_path: Path, location: str) -> str:
    """A path from the lock (relative to the lock's folder) as a person can open it."""
    if "://" in location or Path(location).is_absolute():
        return location
    return str(lock_path.parent / location)


def _version(
    lock_path: Path,
    p: Package,
    wheels: tuple[LockedFile, ...],
    sdist: LockedFile | None,
    i: int,
) -> str:
    """The package's version: as written, else (PEP 751 only says SHOULD) its files' one."""
    if p.version is not None:
        return str(p.version)
    # packaging validated the file names already, so they parse.
    found = {str(parse_wheel_filename(w.filename)[1]) for w in wheels}
    if sdist is not None:
        found.add(str(parse_sdist_filename(sdist.filename)[1]))
    if len(found) != 1:
        raise LockFileError(lock_path, "package has no version", where=f"packages[{i}]")
    return found.pop()


def _locked_file(lock_path: Path, dist: Any, where: str) -> LockedFile:
    hashes = {str(k).lower(): str(v).lower() for k, v in (dist.hashes or {}).items()}
    usable = [a for a in hashes if a in HASH_PREFERENCE]
    if not usable:
        raise LockFileError(lock_path, _unusable_hashes(hashes), where=f"{where}.hashes")
    url: str | None = dist.url
    local: str | None = dist.path
    filename = getattr(dist, "name", None) or Path((url or local or "").split("?")[0]).name
    return LockedFile(filename, url, local, hashes.get("sha256"), dist.size, hashes)


def _unusable_hashes(hashes: Mapping[str, str]) -> str:
    weak = sorted(a for a in hashes if a in WEAK_HASHES)
    unknown = sorted(a for a in hashes if a not in WEAK_HASHES and a not in HASH_PREFERENCE)
    reasons = []
    if weak:
        reasons.append(f"{' and '.join(weak)} {'is' if len(weak) == 1 else 'are'} too weak")
    if unknown:
        names = ", ".join(repr(a) for a in unknown)
        what = "an algorithm" if len(unknown) == 1 else "algorithms"
        reasons.append(
            f"{names} {'is' if len(unknown) == 1 else 'are'} not {what} hashlib guarantees"
        )
    return (
        f"no hash envlock can check this file by: {'; '.join(reasons)} "
        "(give sha256, sha384 or sha512)"
    )


def _check_nesting(path: Path, text: str) -> None:
    """Refuse, before parsing, arrays and tables nested deeper than MAX_NESTING and keys
    of more than MAX_KEY_PARTS dotted parts: one pass, skipping strings and comments.

    Dots are counted between delimiters (`=`, `,`, brackets, braces, line ends): a value
    there (a float, a date-time) has one at most, a dotted key one per part after the first.
    """
    depth = dots = 0
    line = 1
    i = 0
    while (found := _SPECIAL.search(text, i)) is not None:
        c = found.group()
        i = found.end()
        if c == "\n":
            line += 1
            dots = 0
        elif c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif c in "\"'":
            i, line = _skip_string(text, found.start(), line)
        elif c in "=,":
            dots = 0
        elif c in "[{":
            depth += 1
            dots = 0
            if depth > MAX_NESTING:
                raise LockFileError(
                    path,
                    f"arrays or tables nested more than {MAX_NESTING} deep",
                    where=f"line {line}",
                )
        elif c in "]}":
            depth = max(depth - 1, 0)
            dots = 0
        else:  # a dot
            dots += 1
            if dots >= MAX_KEY_PARTS:
                raise LockFileError(
                    path, f"a key of more than {MAX_KEY_PARTS} dotted parts", where=f"line {line}"
                )


_SPECIAL = re.compile(r"[\n#\"'=,\[\]{}.]")
# What can end a string, or matter inside one, by how it opened.
_STRING_STOPS = {
    '"': re.compile(r'[\\"\n]'),
    "'": re.compile(r"['\n]"),
    '"""': re.compile(r'\\|"""|\n'),
    "'''": re.compile(r"'''|\n"),
}


def _skip_string(text: str, i: int, line: int) -> tuple[int, int]:
    """The index just past the TOML string starting at `i`, and the line it ends on."""
    quote = text[i]
    delimiter = quote * 3 if text.startswith(quote * 3, i) else quote
    stops = _STRING_STOPS[delimiter]
    i += len(delimiter)
    while (found := stops.search(text, i)) is not None:
        stop = found.group()
        i = found.end()
        if stop == "\\":
            if text.startswith("\n", i):
                line += 1
            i += 1  # the escaped character
        elif stop == "\n":
            if len(delimiter) == 1:
                return i - 1, line  # unterminated: tomllib will say so
            line += 1
        else:
            # A multi-line string may end with one or two quotes before its delimiter.
            while len(delimiter) == 3 and text.startswith(quote, i):
                i += 1
            return i, line
    return len(text), line
