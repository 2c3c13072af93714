"""The `venv` backend: a uv virtual environment installed from a lock, cached per lock and group.

Cache layout (`$ENVLOCK_CACHE_DIR`, default `~/.cache/envlock`):

    venvs/<lock digest>-<group>-<recipe>/      a finished environment (never modified later)
    venvs/<lock digest>-<group>-<recipe>/.envlock.json   written last: it is complete
    venvs/<lock digest>-<group>-<recipe>/pylock.envlock-install.toml   what uv installed,
        when it could not be the lock itself (see `install_request`)
    venvs/.building/<key>-<random>/   work in progress, renamed into place when done
    venvs/.locks/<key>.lock           serializes concurrent builds of the same key
    venvs/.locks/bytecode.lock        one build compiles bytecode at a time (see below)

uv installs without compiling; `bytecode.py`, run with the new environment's interpreter,
then compiles every module as `--compile-bytecode` would, except that a module which is
the very file (uv links them from its cache) of one in a finished environment gets that
environment's `.pyc`, linked: the training and inference environments of one lock compile
torch once, not twice.

A second materialization of the same lock and group finds the finished folder and installs
nothing. Two processes building the same key at once serialize on the file lock; a build
that dies leaves only a `.building` folder, never a half-installed environment in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

from envlock.backends.base import Environment, run_tool
from envlock.errors import LockFileError, MaterializeError
from envlock.lockfile import MAIN, LockedEnv
from envlock.progress import Progress, quiet
from envlock.uvtool import find_uv, uv_version

MARKER = ".envlock.json"
# Part of every cache key: bump it when the way environments are built changes, so that
# environments built the old way are never reused. r3: source trees are not installed and
# a named group gets the lock's default-groups too (r2 environments of such locks lacked them).
RECIPE = "r3"
INSTALL_LOCK = "pylock.envlock-install.toml"
BYTECODE_LOCK = "bytecode.lock"
BYTECODE_SCRIPT = Path(__file__).resolve().with_name("bytecode.py")
# The finished environments a build looks in for bytecode to link (the most recent first).
MAX_DONORS = 8


def default_cache_dir() -> Path:
    """Where envlock caches environments: `$ENVLOCK_CACHE_DIR` or `~/.cache/envlock`."""
    explicit = os.environ.get("ENVLOCK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "envlock"


class VenvBackend:
    """Materializes locks as uv venvs under a cache folder."""

    def __init__(self, cache_dir: Path | None = None, *, python: str | None = None) -> None:
        self.cache_dir = (cache_dir or default_cache_dir()) / "venvs"
        self.python = python

    def key(self, lock: LockedEnv, group: str) -> str:
        """Cache key of an environment: the lock's digest and the group it installs."""
        return f"{lock.digest.removeprefix('sha256:')[:24]}-{group}-{RECIPE}"

    def path_for(self, lock: LockedEnv, group: str) -> Path:
        """Where the environment for `lock` and `group` lives once materialized."""
        return self.cache_dir / self.key(lock, group)

    def find(self, lock: LockedEnv, group: str) -> Environment | None:
        """The cached environment for `lock` and `group`, or None if it is not built."""
        root = self.path_for(lock, group)
        python = root / "bin" / "python"
        if (root / MARKER).is_file() and python.exists():
            return Environment("venv", python, self._describe(lock, group), root, created=False)
        return None

    def materialize(
        self, lock: LockedEnv, group: str = MAIN, progress: Progress | None = None
    ) -> Environment:
        """The environment for `lock` and `group`, built by uv if it is not cached yet."""
        lock.check_group(group)
        if lock.flavor != "pylock":
            raise LockFileError(
                lock.path, "the venv backend installs PEP 751 locks (pylock.toml) only"
            )
        cached = self.find(lock, group)
        if cached is not None:
            return cached
        from filelock import FileLock  # only to build: a cached venv needs no lock

        say = progress or quiet
        key = self.key(lock, group)
        locks = self.cache_dir / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{key}.lock")):
            cached = self.find(lock, group)  # another process may have built it meanwhile
            if cached is not None:
                return cached
            root = self.path_for(lock, group)
            if root.exists():  # a folder without its marker: an interrupted, older layout
                shutil.rmtree(root)
            building = self.cache_dir / ".building" / f"{key}-{uuid.uuid4().hex[:8]}"
            building.parent.mkdir(parents=True, exist_ok=True)
            try:
                started = time.monotonic()
                self._build(lock, group, building, say)
                # One build compiles at a time, linking what those finished before it
                # compiled, and holds the lock until its environment is in place: a build
                # waiting for it then finds it (two environments of one lock share torch).
                with FileLock(str(locks / BYTECODE_LOCK)):
                    bytecode = self._compile(building, say)
                    (building / MARKER).write_text(
                        json.dumps(
                            {
                                "lock": str(lock.path),
                                "lock_digest": lock.digest,
                                "group": group,
                                "not_installed": [s.name for s in lock.sources_in(group)],
                                "uv": uv_version(find_uv()),
                                "seconds": round(time.monotonic() - started, 2),
                                "bytecode": bytecode,
                            },
                            indent=2,
                        )
                    )
                    os.rename(building, root)
            finally:
                if building.exists():
                    shutil.rmtree(building, ignore_errors=True)
        say(f"materialized {self._describe(lock, group)} in {time.monotonic() - started:.1f}s")
        return Environment(
            "venv", root / "bin" / "python", self._describe(lock, group), root, created=True
        )

    def _build(self, lock: LockedEnv, group: str, target: Path, say: Progress) -> None:
        uv = find_uv()
        python = self.python or _python_request(lock.requires_python)
        say(f"creating venv for {lock.path.name} [{group}] with uv (python {python})")
        self._uv([uv, "venv", "--relocatable", "--no-project", "--python", python, str(target)])
        # Bytecode is compiled next (`_compile`), so running code never writes into the
        # cached environment.
        cmd = [uv, "pip", "install", "--no-progress"]
        cmd += ["--python", str(target / "bin" / "python")]
        requirements, groups = install_request(lock, group, target)
        cmd += ["-r", str(requirements)]
        for name in groups:
            cmd += ["--group", name]
        say(f"installing {len(lock.packages_in(group))} locked packages")
        for source in lock.sources_in(group):
            say(source.describe())
        self._uv(cmd)

    def _compile(self, target: Path, say: Progress) -> dict[str, int]:
        """Compile the environment in `target` to bytecode (`bytecode.py`, with its own
        interpreter), linking the bytecode of the same files in the environments finished
        before (the most recent first); how many modules were linked and compiled."""
        finished = []
        for folder in self.cache_dir.iterdir():
            try:  # an environment being deleted meanwhile is no donor
                finished.append(((folder / MARKER).stat().st_mtime, str(folder)))
            except OSError:
                continue
        donors = [folder for _, folder in sorted(finished, reverse=True)[:MAX_DONORS]]
        cmd = [str(target / "bin" / "python"), "-I", str(BYTECODE_SCRIPT), *donors]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PYTHON")}
        proc = run_tool(cmd, env=env)
        try:
            counts = json.loads(proc.stdout.strip().splitlines()[-1])
            result = {"linked": int(counts["linked"]), "compiled": int(counts["compiled"])}
        except (ValueError, LookupError, TypeError):
            result = None
        if proc.returncode != 0 or result is None:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise MaterializeError(f"compiling the environment's bytecode failed:\n{tail}")
        say(
            f"bytecode: {result['compiled']} modules compiled, {result['linked']} linked "
            "from environments built before"
        )
        return result

    def _uv(self, cmd: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PYTHON")}
        proc = run_tool(cmd, env=env)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise MaterializeError(f"uv failed ({' '.join(cmd[1:3])}):\n{tail}")

    @staticmethod
    def _describe(lock: LockedEnv, group: str) -> str:
        return f"venv from {lock.path} [{group}]"


def install_request(lock: LockedEnv, group: str, folder: Path) -> tuple[Path, list[str]]:
    """What uv is asked to install for `group`: a pylock file and the `--group`s to pass.

    uv installs a lock's source trees (the project's own directory entry), which envlock
    leaves out (`LockedSource`); and given `--group G` it installs G alone, not the lock's
    default-groups with it, and ignores a default group the lock does not also list in
    `dependency-groups`. So when the lock has either, uv gets a copy written into `folder`:
    no source trees, default groups listed, relative paths made absolute; and the default
    groups are passed with G. Otherwise the lock itself, as envlock always did.
    """
    selected = lock.selected_groups(group)
    if not lock.sources and not lock.default_groups:
        return lock.path, selected
    import tomli_w  # only to build: a cached venv is found without it

    raw = lock.path.read_bytes()
    if "sha256:" + hashlib.sha256(raw).hexdigest() != lock.digest:
        raise LockFileError(lock.path, "changed while being materialized")
    document = tomllib.loads(raw.decode("utf-8"))
    skipped = {s.index for s in lock.sources}
    base = lock.path.resolve().parent
    document["packages"] = [
        _absolute_paths(p, base)
        for i, p in enumerate(document.get("packages", []))
        if i not in skipped
    ]
    if lock.default_groups:
        listed = document.get("dependency-groups") or []
        document["dependency-groups"] = list(dict.fromkeys([*listed, *lock.default_groups]))
    path = folder / INSTALL_LOCK
    path.write_text(
        f"# What envlock asked uv to install for [{group}] from {lock.path} ({lock.digest}).\n"
        + tomli_w.dumps(document),
        encoding="utf-8",
    )
    # With no group named, uv installs the default groups itself.
    return path, (selected if group != MAIN else [])


def _absolute_paths(package: dict[str, Any], base: Path) -> dict[str, Any]:
    """A package table whose relative file paths (relative to its lock) are absolute."""

    def absolute(entry: Any) -> Any:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            return {**entry, "path": str(base / entry["path"])}
        return entry

    copy = dict(package)
    for key in ("sdist", "archive"):
        if key in copy:
            copy[key] = absolute(copy[key])
    if isinstance(copy.get("wheels"), list):
        copy["wheels"] = [absolute(w) for w in copy["wheels"]]
    return copy


def _python_request(requires_python: str | None) -> str:
    """What to ask uv for: the lock's `requires-python`, else this interpreter's version."""
    if requires_python:
        exact = re.fullmatch(r"==\s*(\d+\.\d+)(\.\*)?", requires_python.strip())
        return exact.group(1) if exact else requires_python
    return f"{sys.version_info.major}.{sys.version_info.minor}"
