"""A wheelhouse built from a lock: every file checked by hash, local mirrors before the network.

Each file is checked by the strongest hash the lock gives it (`LockedFile.digest`: sha512
before sha384 before sha256, ...). Layout (content-addressed by the lock's digest, so two
locks never mix):

    <wheelhouse>/<lock digest>/<group>/<wheel files>
    <wheelhouse>/<lock digest>/<group>/requirements.txt   name==version --hash=<algorithm>:...

`main` holds what every environment installs; every other group holds only what it adds.
Images install from these folders with no network and hashes required.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags, platform_tags
from packaging.utils import parse_wheel_filename

from envlock.errors import EnvlockError, LockFileError
from envlock.locked import finish_digest, hexdigest_of
from envlock.lockfile import MAIN, LockedEnv, LockedFile, LockedPackage
from envlock.progress import Progress, quiet


class HashMismatchError(EnvlockError):
    """A file's hash is not the one the lock pins."""

    exit_code = 3

    def __init__(
        self, path: Path | str, expected: str, actual: str, algorithm: str = "sha256"
    ) -> None:
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        self.algorithm = algorithm
        super().__init__(
            f"{path}: {algorithm} mismatch: the lock pins {algorithm}:{expected}, the file has "
            f"{algorithm}:{actual}"
        )


class FetchError(EnvlockError):
    """A locked file could be found neither in a mirror nor on the network."""

    exit_code = 3


@dataclass(frozen=True)
class Wheelhouse:
    """The fetched files of one lock: a folder per group and each group's requirements."""

    root: Path
    lock_digest: str
    groups: dict[str, list[Path]]

    def folder(self, group: str) -> Path:
        """The folder holding `group`'s wheels and requirements.txt."""
        return self.root / group


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def target_tags(requires_python: str | None) -> list[Tag]:
    """Wheel tags of the target: this platform, the Python minor version the lock pins."""
    match = re.search(r"(\d+)\.(\d+)", requires_python or "")
    version = (int(match.group(1)), int(match.group(2))) if match else None
    platforms = list(platform_tags())
    if version is None:
        from packaging.tags import sys_tags

        return list(sys_tags())
    return [
        *cpython_tags(python_version=version, platforms=platforms),
        *compatible_tags(python_version=version, platforms=platforms),
    ]


def choose_wheel(package: LockedPackage, tags: Sequence[Tag]) -> LockedFile:
    """The locked wheel of `package` that best fits `tags`."""
    rank = {tag: i for i, tag in enumerate(tags)}
    best: tuple[int, LockedFile] | None = None
    for wheel in package.wheels:
        try:
            _, _, _, wheel_tags = parse_wheel_filename(wheel.filename)
        except ValueError:
            continue
        score = min((rank[t] for t in wheel_tags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, wheel)
    if best is None:
        raise FetchError(
            f"{package.name} {package.version}: the lock has no wheel for this platform "
            f"({tags[0] if tags else 'unknown'}); images install wheels only"
        )
    return best[1]


def default_mirrors() -> list[Path]:
    """Local folders tried before the network: `$ENVLOCK_MIRRORS` and `$PIP_FIND_LINKS`."""
    folders: list[Path] = []
    for var in ("ENVLOCK_MIRRORS", "PIP_FIND_LINKS"):
        for item in re.split(r"[\s" + re.escape(os.pathsep) + r"]+", os.environ.get(var, "")):
            if item.startswith("file://"):
                item = urllib.parse.urlparse(item).path
            if item and "://" not in item and Path(item).is_dir():
                folders.append(Path(item))
    return folders


def fetch(
    lock: LockedEnv,
    dest: Path,
    *,
    groups: Iterable[str] | None = None,
    mirrors: Sequence[Path] | None = None,
    allow_network: bool = True,
    progress: Progress | None = None,
) -> Wheelhouse:
    """Fetch every wheel the lock's groups install into `dest`, checking each one's hash."""
    say = progress or quiet
    tags = target_tags(lock.requires_python)
    wanted = list(groups) if groups is not None else list(lock.groups)
    mirror_list = list(mirrors) if mirrors is not None else default_mirrors()
    root = dest / lock.digest.removeprefix("sha256:")[:24]
    main = {p.name: p for p in lock.packages_in(MAIN)}
    result: dict[str, list[Path]] = {}
    for group in [MAIN, *[g for g in wanted if g != MAIN]]:
        lock.check_group(group)
        packages = [p for p in lock.packages_in(group) if group == MAIN or p.name not in main]
        folder = root / group
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        files = []
        for i, pkg in enumerate(packages, 1):
            wheel = choose_wheel(pkg, tags)
            algorithm, expected = _digest(wheel)
            target = folder / wheel.filename
            source = _place(wheel, target, mirror_list, allow_network, say)
            say(f"[{group}] {i}/{len(packages)} {wheel.filename} ({source})")
            files.append(target)
            lines.append(f"{pkg.name}=={pkg.version} --hash={algorithm}:{expected}")
        (folder / "requirements.txt").write_text("\n".join(sorted(lines)) + "\n")
        result[group] = files
    return Wheelhouse(root, lock.digest, result)


def verify_wheelhouse(house: Wheelhouse, lock: LockedEnv) -> None:
    """Raise `HashMismatchError` naming the first file whose hash is not the locked one."""
    pinned = {w.filename: w for p in lock.packages for w in p.wheels}
    for files in house.groups.values():
        for path in files:
            wheel = pinned.get(path.name)
            if wheel is None:
                raise LockFileError(lock.path, f"{path.name} is in the wheelhouse but not locked")
            _check(path, wheel)


def verify_wheel_files(folder: Path, lock: LockedEnv) -> int:
    """Check every wheel under `folder` that the lock names against its locked hash (raise
    `HashMismatchError` at the first that differs); how many were checked. Wheels the lock
    does not name are left alone: `envlock verify --wheelhouse` only reads locked ones."""
    pinned = {w.filename: w for p in lock.packages for w in p.wheels}
    checked = 0
    for path in sorted(folder.rglob("*.whl")):
        wheel = pinned.get(path.name)
        if wheel is not None:
            _check(path, wheel)
            checked += 1
    return checked


def _digest(wheel: LockedFile) -> tuple[str, str]:
    digest = wheel.digest
    if digest is None:  # read_lock refuses such pylock files; a conda pip entry may have md5 only
        raise FetchError(f"{wheel.filename}: the lock gives no hash envlock can check it by")
    return digest


def _check(path: Path, wheel: LockedFile) -> None:
    algorithm, expected = _digest(wheel)
    actual = hexdigest_of(path, algorithm, len(expected))
    if actual != expected:
        raise HashMismatchError(path, expected, actual, algorithm)


def _place(
    wheel: LockedFile, target: Path, mirrors: Sequence[Path], network: bool, say: Progress
) -> str:
    """Put the wheel at `target`, verified; say where it came from."""
    algorithm, expected = _digest(wheel)
    if target.is_file():
        actual = hexdigest_of(target, algorithm, len(expected))
        if actual == expected:
            return "already fetched"
        say(
            f"{target}: {algorithm}:{actual} is not the locked {algorithm}:{expected}; "
            "fetching again"
        )
        target.unlink()
    candidates: list[tuple[str, Path]] = [(f"mirror {m}", m / wheel.filename) for m in mirrors]
    if wheel.path:
        candidates.append(("lock path", Path(wheel.path)))
    if wheel.url and wheel.url.startswith("file://"):
        local = urllib.parse.unquote(urllib.parse.urlparse(wheel.url).path)
        candidates.append(("lock file URL", Path(local)))
    rejected: HashMismatchError | None = None
    for label, path in candidates:
        if not path.is_file():
            continue
        actual = hexdigest_of(path, algorithm, len(expected))
        if actual == expected:
            _copy(path, target)
            return label
        rejected = rejected or HashMismatchError(path, expected, actual, algorithm)
        say(f"refusing {path}: {rejected}")
    remote = wheel.url if wheel.url and not wheel.url.startswith("file://") else None
    if remote is None or not network:
        if rejected is not None:
            raise rejected
        why = "network disabled" if remote else "no download URL in the lock"
        raise FetchError(
            f"{wheel.filename}: not found with the locked {algorithm} in any mirror "
            f"({', '.join(str(m) for m in mirrors) or 'none configured'}) and {why}"
        )
    _download(remote, target, algorithm, expected)
    return "downloaded"


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.part")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _download(url: str, target: Path, algorithm: str, expected: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.new(algorithm)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        actual = finish_digest(h, len(expected))
        if actual != expected:
            raise HashMismatchError(_redact(url), expected, actual, algorithm)
        os.replace(tmp, target)
    except OSError as e:
        raise FetchError(f"could not download {_redact(url)}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _redact(url: str) -> str:
    """A URL without credentials, safe to print."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urllib.parse.urlunsplit(parts)
