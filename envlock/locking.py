"""Write a shared lock from a spec with uv, and tell whether a lock is stale.

The spec is a uv project file (`pyproject.toml`, usually `package = false`) whose
`[project].dependencies` are the `main` group and whose `[dependency-groups]` add
environment-specific extras (`train`, ...). uv solves all groups jointly, so every
package shared by two environments has one version; envlock then writes one PEP 751
`pylock.toml` in which group-only packages carry a `'<group>' in dependency_groups`
marker, and records the spec's digest so staleness can be told without solving again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from envlock.backends.base import run_tool
from envlock.errors import LockFileError, MaterializeError, StaleLockError
from envlock.lockfile import MAIN, TOOL_TABLE, read_lock
from envlock.progress import Progress, quiet
from envlock.uvtool import find_uv, uv_version


@dataclass(frozen=True)
class LockResult:
    """What `lock` wrote: the lock file, its packages per group, and the spec digest."""

    path: Path
    spec_sha256: str
    groups: dict[str, list[str]]
    text: str


def spec_digest(spec: Path) -> str:
    """`sha256:<hex>` of the spec file's bytes (what `--check` compares)."""
    return "sha256:" + hashlib.sha256(spec.read_bytes()).hexdigest()


def read_spec(spec: Path) -> dict[str, Any]:
    """Parse a lock spec, raising `LockFileError` with the place that is wrong."""
    if not spec.is_file():
        raise LockFileError(spec, "spec file not found")
    try:
        data = tomllib.loads(spec.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise LockFileError(spec, f"not valid TOML: {e}") from None
    project = data.get("project")
    if not isinstance(project, dict):
        raise LockFileError(spec, "missing table", where="project")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise LockFileError(spec, "must be a list of requirement strings", "project.dependencies")
    groups = data.get("dependency-groups", {})
    if not isinstance(groups, dict):
        raise LockFileError(spec, "must be a table", where="dependency-groups")
    if MAIN in groups:
        raise LockFileError(
            spec,
            f"{MAIN!r} is the implicit group ([project].dependencies); do not declare it",
            where=f"dependency-groups.{MAIN}",
        )
    return data


def check_lock(spec: Path, lock_path: Path) -> None:
    """Raise `StaleLockError` unless `lock_path` was written from `spec` as it is now."""
    lock = read_lock(lock_path)
    recorded = lock.spec_sha256
    if recorded is None:
        raise StaleLockError(
            f"{lock_path} records no spec digest ([tool.{TOOL_TABLE}] spec-sha256): "
            f"it was not written by `envlock lock`"
        )
    current = spec_digest(spec)
    if recorded != current:
        raise StaleLockError(
            f"{lock_path} is stale: {spec} changed since it was locked "
            f"(locked from {recorded[:19]}…, spec is now {current[:19]}…); run `envlock lock`"
        )


def lock(
    spec: Path,
    out: Path | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> LockResult:
    """Solve `spec` with uv and write the shared `pylock.toml` (atomically) next to it."""
    say = progress or quiet
    spec = spec.resolve()
    out = (out or spec.with_name("pylock.toml")).resolve()
    data = read_spec(spec)
    groups = sorted(data.get("dependency-groups", {}))
    uv = find_uv()
    with tempfile.TemporaryDirectory(prefix="envlock-lock-") as tmp:
        work = Path(tmp)
        shutil.copy2(spec, work / "pyproject.toml")
        say(f"solving {spec.name} with uv (groups: {', '.join([MAIN, *groups])})")
        _run_uv([uv, "lock", "--no-progress"], work, spec)
        exports: dict[str, dict[str, Any]] = {}
        for group in [MAIN, *groups]:
            target = work / f"pylock.{group}.toml"
            args = ["export", "--format", "pylock.toml", "--no-default-groups", "-o", str(target)]
            args += ["--no-emit-project", "--frozen", "--no-progress"]
            if group != MAIN:
                args += ["--group", group]
            _run_uv([uv, *args], work, spec)
            exports[group] = tomllib.loads(target.read_text(encoding="utf-8"))
    doc, members = _merge(exports, spec)
    relative_spec = os.path.relpath(spec, out.parent)
    doc["tool"] = {
        TOOL_TABLE: {
            "spec": relative_spec,
            "spec-sha256": spec_digest(spec),
            "uv": uv_version(uv),
        }
    }
    header = (
        f"# Written by `envlock lock` from {relative_spec} (uv solves all groups jointly).\n"
        "# Do not edit by hand: change the spec and run `envlock lock` again.\n"
    )
    text = header + tomli_w.dumps(doc)
    if not dry_run:
        _write_atomic(out, text)
        read_lock(out)  # what we wrote must read back
    return LockResult(out, spec_digest(spec), members, text)


def _merge(
    exports: dict[str, dict[str, Any]], spec: Path
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """One multi-group lock from per-group single-use exports of one joint solve."""
    main = exports[MAIN]
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    in_groups: dict[tuple[str, str], set[str]] = {}
    for group, export in exports.items():
        for pkg in export.get("packages", []):
            key = (pkg["name"], pkg.get("marker", ""))
            prior = by_key.setdefault(key, pkg)
            if prior.get("version") != pkg.get("version"):
                raise LockFileError(
                    spec,
                    f"uv gave {pkg['name']} {prior.get('version')} and {pkg.get('version')} "
                    f"for different groups; a shared lock needs one version",
                )
            in_groups.setdefault(key, set()).add(group)
    packages = []
    members: dict[str, list[str]] = {g: [] for g in exports}
    for key in sorted(by_key):
        pkg = dict(by_key[key])
        owners = in_groups[key]
        for g in owners:
            members[g].append(pkg["name"])
        if MAIN not in owners:
            condition = " or ".join(f"'{g}' in dependency_groups" for g in sorted(owners))
            marker = pkg.get("marker")
            pkg["marker"] = f"({marker}) and ({condition})" if marker else condition
        packages.append(_ordered_package(pkg))
    doc: dict[str, Any] = {
        "lock-version": main.get("lock-version", "1.0"),
        "created-by": "envlock",
    }
    if "requires-python" in main:
        doc["requires-python"] = main["requires-python"]
    doc["dependency-groups"] = sorted(g for g in exports if g != MAIN)
    doc["default-groups"] = []
    doc["packages"] = packages
    return doc, members


def _ordered_package(pkg: dict[str, Any]) -> dict[str, Any]:
    first = ["name", "version", "marker", "requires-python", "index"]
    ordered = {k: pkg[k] for k in first if k in pkg}
    ordered.update({k: v for k, v in pkg.items() if k not in ordered})
    return ordered


def _run_uv(cmd: list[str], cwd: Path, spec: Path) -> None:
    proc = run_tool(cmd, cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise MaterializeError(f"uv could not lock {spec}:\n{tail}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
