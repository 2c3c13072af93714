"""The part of an environment's fingerprint that describes what it holds, taken once per
state of the environment and reused while the environment is unchanged.

A fingerprint (`envlock.probe`) has sections about what the environment holds (`STATIC`:
the interpreter, the machine, every installed distribution's metadata) and sections about
one process (`RUNTIME`: its numerics variables, the libraries it imported and their
settings). Reading every distribution's metadata is most of a probe's time, and it is the
same for every process started in an unchanged environment. So, for an environment whose
interpreter runs on this machine (a venv, a local interpreter), `static_fingerprint`:

- runs the probe (`probe.py --static`) with the environment's interpreter in a process of
  its own, never in a process that ran a model: what it reports cannot have been changed by
  a model's code in that process;
- stores what it reported in the cache (`<cache>/fingerprints/<key>.json`), with the
  probe's `stamp` of the files the sections were read from, taken before they were read;
- reuses that entry while the stamp of those files, taken again by the host, is the same,
  and probes again when it is not (a distribution installed, uninstalled or its metadata
  edited; another interpreter; another probe; the machine rebooted).

A container's image is not on this machine's file system: `static_fingerprint` gives None
for it, and its worker probes in full, inside the container (`Environment.probes_on_host`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envlock.probe
from envlock.backends.base import Environment, run_tool
from envlock.envvars import child_environment
from envlock.errors import EnvlockError

FOLDER = "fingerprints"
MAX_ENTRY_BYTES = 64 << 20  # what the probe may write (its fingerprint's JSON)


class FingerprintError(EnvlockError):
    """The probe could not fingerprint an environment's interpreter."""

    exit_code = 3


@dataclass(frozen=True)
class StaticFingerprint:
    """The `STATIC` sections of an environment's fingerprint, and whether they were reused
    from the cache (`reused`) or taken now; `entry` is the cache file."""

    sections: dict[str, Any]
    paths: list[str]  # sys.path as the probe saw it: the folders the sections come from
    reused: bool
    entry: Path


def probe_digest() -> str:
    """The probe's own source, digested: an entry written by another probe is not reused."""
    return hashlib.sha256(Path(envlock.probe.__file__).read_bytes()).hexdigest()


def entry_path(python: str, cache_dir: Path | None = None) -> Path:
    """The cache file for the interpreter `python` (a path, or a name looked up on PATH)."""
    from envlock.backends.venv import default_cache_dir

    found = python if os.sep in python else (shutil.which(python) or python)
    key = hashlib.sha256(os.path.abspath(found).encode("utf-8", "surrogateescape")).hexdigest()
    return (cache_dir or default_cache_dir()) / FOLDER / f"{key[:32]}.json"


def static_fingerprint(
    environment: Environment, cache_dir: Path | None = None
) -> StaticFingerprint | None:
    """The `STATIC` sections of `environment`'s fingerprint: reused from the cache when the
    environment is unchanged since they were taken, else taken now (and cached); None for
    an environment the host cannot probe (a container). Raise `FingerprintError` when the
    probe fails."""
    if not environment.probes_on_host:
        return None
    python = str(environment.python)
    path = entry_path(python, cache_dir)
    digest = probe_digest()
    cached = _read(path)
    if (
        cached is not None
        and cached.get("probe") == digest
        and envlock.probe.stamp(cached["paths"], cached["executable"], cached["prefix"])
        == cached["stamp"]
    ):
        return StaticFingerprint(cached["fingerprint"], cached["paths"], reused=True, entry=path)
    entry = {**_probe(python), "probe": digest}
    _write(path, entry)
    return StaticFingerprint(entry["fingerprint"], entry["paths"], reused=False, entry=path)


def _probe(python: str) -> dict[str, Any]:
    """What `probe.py --static` reports in `python`, run as a worker is (`-s`, the
    variables a process in an environment gets), checked to be what it writes."""
    cmd = [python, "-s", str(Path(envlock.probe.__file__)), "--static"]
    env = child_environment({"PYTHONDONTWRITEBYTECODE": "1"})
    try:
        proc = run_tool(cmd, env=env)
    except OSError as e:
        raise FingerprintError(f"cannot run the fingerprint probe with {python}: {e}") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise FingerprintError(f"the fingerprint probe failed in {python}:\n{tail}")
    entry = _parsed(proc.stdout)
    if entry is None:
        raise FingerprintError(f"the fingerprint probe in {python} wrote no usable JSON")
    return entry


def _parsed(text: str) -> dict[str, Any] | None:
    """The probe's entry in `text`, or None when it is not one (wrong types, too large)."""
    if len(text) > MAX_ENTRY_BYTES:
        return None
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("fingerprint"), dict)
        and isinstance(entry.get("paths"), list)
        and all(isinstance(p, str) for p in entry["paths"])
        and all(isinstance(entry.get(k), str) for k in ("executable", "prefix", "stamp"))
    ):
        return None
    # Only the static sections: a runtime section here would stand for every process.
    entry["fingerprint"] = {
        k: v for k, v in entry["fingerprint"].items() if k in envlock.probe.STATIC
    }
    return entry


def _read(path: Path) -> dict[str, Any] | None:
    """The cache entry at `path`, or None when there is none or it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    entry = _parsed(text)
    if entry is None or not isinstance(entry.get("probe"), str):
        return None
    return entry


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Write `entry` to `path` atomically (another check may read or write it meanwhile);
    a cache that cannot be written only means probing again next time."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
