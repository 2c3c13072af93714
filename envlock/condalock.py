"""Read a conda-lock lockfile (`conda-lock.yml`) into a `LockedEnv`, through conda-lock's models.

conda-lock records, per platform, every conda and pip package with its categories. Here a
platform becomes a marker (`linux-64` -> `sys_platform == 'linux' and platform_machine ==
'x86_64'`) and a category other than `main` becomes a group (`'train' in
dependency_groups`), so conda locks select packages exactly as PEP 751 locks do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from envlock.errors import LockFileError
from envlock.locked import MAIN, LockedEnv, LockedFile, LockedPackage
from envlock.names import canonical

PLATFORM_MARKERS = {
    "linux-64": "sys_platform == 'linux' and platform_machine == 'x86_64'",
    "linux-aarch64": "sys_platform == 'linux' and platform_machine == 'aarch64'",
    "linux-ppc64le": "sys_platform == 'linux' and platform_machine == 'ppc64le'",
    "osx-64": "sys_platform == 'darwin' and platform_machine == 'x86_64'",
    "osx-arm64": "sys_platform == 'darwin' and platform_machine == 'arm64'",
    "win-64": "sys_platform == 'win32' and platform_machine == 'AMD64'",
}


def read_conda_lock(path: Path) -> LockedEnv:
    """Parse and validate `path` with conda-lock; raise `LockFileError` naming the place."""
    try:
        from conda_lock.lockfile import parse_conda_lock_file
    except ImportError:
        raise LockFileError(
            path, "reading conda-lock files needs conda-lock: pip install 'envlock-parity[conda]'"
        ) from None
    raw = path.read_bytes()
    _check_duplicates(path, raw)
    try:
        lockfile = parse_conda_lock_file(path)
    except Exception as e:  # conda-lock raises yaml, pydantic and its own errors
        raise LockFileError(path, *_explain(e)) from None
    platforms = list(lockfile.metadata.platforms)
    packages: list[LockedPackage] = []
    seen: dict[tuple[str, str, str], int] = {}
    categories: set[str] = set()
    for i, dep in enumerate(lockfile.package):
        where = f"package[{i}] ({dep.name} for {dep.platform})"
        name = canonical(dep.name) if dep.manager == "pip" else dep.name
        key = (name, dep.manager, dep.platform)
        if key in seen:
            raise LockFileError(
                path,
                f"{dep.manager} package {dep.name!r} is locked twice for {dep.platform} "
                f"(also package[{seen[key]}])",
                where=where,
            )
        seen[key] = i
        platform_marker = PLATFORM_MARKERS.get(dep.platform)
        if platform_marker is None:
            raise LockFileError(path, f"unknown platform {dep.platform!r}", where=where)
        if dep.platform not in platforms:
            raise LockFileError(
                path, f"platform {dep.platform!r} is not in metadata.platforms", where=where
            )
        cats = set(dep.categories or {MAIN})
        categories |= cats
        marker = platform_marker
        if MAIN not in cats:
            condition = " or ".join(f"'{c}' in dependency_groups" for c in sorted(cats))
            marker = f"({platform_marker}) and ({condition})"
        hashes = dep.hash
        sha256 = hashes.sha256 if hashes else None
        if not sha256 and not (hashes and hashes.md5):
            raise LockFileError(path, "no hash for this package", where=where)
        filename = dep.url.rsplit("/", 1)[-1].split("#", 1)[0] if dep.url else dep.name
        file = LockedFile(filename, dep.url, None, sha256, None)
        packages.append(
            LockedPackage(
                name=name,
                version=dep.version,
                marker=marker,
                wheels=(file,) if dep.manager == "pip" else (),
                sdist=file if dep.manager == "conda" else None,
                manager=dep.manager,
                build=getattr(dep, "build", None),
                channel=_channel(dep.url),
            )
        )
    groups = [MAIN, *sorted(categories - {MAIN})]
    return LockedEnv(
        path=path,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        flavor="conda-lock",
        requires_python=_python_version(packages),
        groups=tuple(groups),
        packages=tuple(packages),
        created_by="conda-lock",
        tool={"platforms": platforms, "content_hash": dict(lockfile.metadata.content_hash)},
    )


def _check_duplicates(path: Path, raw: bytes) -> None:
    """Refuse a package locked twice for one platform (conda-lock's parser only asserts)."""
    import yaml

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return  # conda-lock's parser reports it, with the place
    packages = data.get("package") if isinstance(data, dict) else None
    if not isinstance(packages, list):
        return
    seen: dict[tuple[object, object, object], int] = {}
    for i, dep in enumerate(packages):
        if not isinstance(dep, dict):
            continue
        key = (dep.get("name"), dep.get("manager"), dep.get("platform"))
        if key in seen:
            raise LockFileError(
                path,
                f"{key[1]} package {key[0]!r} is locked twice for {key[2]} "
                f"(also package[{seen[key]}])",
                where=f"package[{i}]",
            )
        seen[key] = i


def _channel(url: str | None) -> str | None:
    """`https://conda.anaconda.org/conda-forge/linux-64/x.conda` -> `conda-forge`."""
    if not url or "/" not in url:
        return None
    parts = url.split("/")
    return parts[-3] if len(parts) >= 3 else None


def _python_version(packages: list[LockedPackage]) -> str | None:
    for p in packages:
        if p.manager == "conda" and p.name == "python":
            major_minor = ".".join(p.version.split(".")[:2])
            return f"=={major_minor}.*"
    return None


def _explain(error: Exception) -> tuple[str, str | None]:
    """(what is wrong, where) for an error conda-lock raised while parsing."""
    kind = type(error).__name__
    errors = getattr(error, "errors", None)
    if callable(errors) and kind == "ValidationError":
        first: dict[str, Any] = errors()[0]
        loc = ".".join(str(part) for part in first.get("loc", ()))
        count = len(errors())
        more = f" (and {count - 1} more)" if count > 1 else ""
        return f"{first.get('msg')}{more}", loc or None
    if kind in ("UnknownLockfileVersion", "MissingLockfileVersion"):
        return f"{kind}: {error}", "version"
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        return f"not valid YAML: {getattr(error, 'problem', error)}", (
            f"line {mark.line + 1}, column {mark.column + 1}"
        )
    return f"{kind}: {error}", None
