"""The worker job protocol, written once: what the host mounts and writes before a worker
starts, and how it reads a worker's failure afterwards.

The worker (`parity.runs.worker`, standard library and NumPy only) is run by path inside
an environment with one argument, the path of `job.json`. The host mounts the worker, the
probe, the inputs folder, one writable output folder and the model's paths, and writes the
job there: the schema, the adapter, where each mount appears inside, and the mode's own
fields (`predict` by default; `stages` for localization, `serve` for search). The worker
answers with files in its output folder; `error.json` says why the model failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envlock.probe
from envlock.backends import Environment, Mount
from parity.config import ParityConfig
from parity.errors import HostileOutputError, WorkerError
from parity.outputs import ERROR, check_json, load_json

# The worker's file; the host never imports it (a thousand lines to compile on every run
# without bytecode): the constants both sides use are repeated here, and a test holds
# them equal to the worker's.
WORKER = Path(__file__).with_name("worker.py")
JOB_SCHEMA = 1
WARNINGS_FILE = "warnings.json"
WARNING_ENTRIES = 200  # distinct warnings a worker keeps; more are counted in `dropped`
WARNING_MESSAGE = 2000  # characters of a warning's message a worker keeps

INPUTS = "inputs"  # the folder the inputs file appears in (mounted read-only)
INPUTS_FILE = "inputs.npz"
ABORT = "abort"  # written instead of the inputs when the host fails to make them
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """A worker job ready to start: the mounts, where they appear inside, the job file's
    path inside, and the environment variables the worker runs with."""

    mounts: dict[str, Mount]
    inside: dict[str, str]
    env: dict[str, str]
    log: Path

    @property
    def script(self) -> str:
        """The worker's path inside the environment."""
        return self.inside["worker"]

    @property
    def args(self) -> list[str]:
        """The worker's arguments: its job file, inside."""
        return [f"{self.inside['out']}/job.json"]


def compiled_scripts(python: Mapping[str, Any] | None, cache_dir: Path) -> dict[str, Path] | None:
    """The worker and the probe compiled to bytecode in `cache_dir` (once per version of
    each), for an environment whose interpreter is the `python` a fingerprint describes,
    when it reads this interpreter's bytecode (the same implementation and minor version,
    not a pre-release); else None, and the worker runs from its source. Keyed by each
    script's path and content.

    A script run by path is compiled on every run (Python caches bytecode only for imported
    modules, and a worker runs with PYTHONDONTWRITEBYTECODE=1): a `.pyc` run by path is
    not, and the worker and the probe are 1,500 lines."""
    version = str((python or {}).get("version", ""))
    implementation = (python or {}).get("implementation")
    ours = f"{sys.version_info.major}.{sys.version_info.minor}."
    if (
        implementation != platform.python_implementation()
        or not version.startswith(ours)
        or not version.removeprefix(ours).isdigit()
        or sys.version_info.releaselevel != "final"
    ):
        return None
    compiled = {}
    for name, source in (("worker", WORKER), ("probe", Path(envlock.probe.__file__))):
        try:
            text = source.read_bytes()
            # The path is part of the key: tracebacks name the file the code was compiled
            # from, and another checkout's identical worker would send them there.
            digest = hashlib.sha256(str(source).encode() + b"\0" + text).hexdigest()[:24]
            target = cache_dir / "bytecode" / sys.implementation.cache_tag / f"{name}-{digest}.pyc"
            if not target.is_file():
                code = compile(text, str(source), "exec", dont_inherit=True)
                data = _pyc(code)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
        except OSError:
            return None  # a cache that cannot be written: the sources, as before
        compiled[name] = target
    return compiled


def _pyc(code: Any) -> bytes:
    """A `.pyc` of `code` that no source is checked against (the file's name holds the
    source's digest instead)."""
    import importlib.util
    import marshal

    flags = 0b01  # hash-based, unchecked (PEP 552): the hash field is not compared
    return (
        importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + bytes(8) + marshal.dumps(code)
    )


def prepare_job(
    environment: Environment,
    config: ParityConfig,
    env_vars: dict[str, str],
    outdir: Path,
    inputs: Path,
    fields: Callable[[Mapping[str, str]], dict[str, Any]],
    scripts: Mapping[str, Path] | None = None,
) -> Job:
    """Write the job file for a worker in `environment` into `outdir` (made if missing),
    reading from the folder `inputs`; `fields(inside)` gives the mode's own fields from
    where each mount appears inside. `scripts` are the worker and the probe compiled for
    the environment (`compiled_scripts`), when it has them."""
    outdir.mkdir(parents=True, exist_ok=True)
    scripts = scripts or {}
    mounts = {
        "worker": Mount(scripts.get("worker", WORKER)),
        "probe": Mount(scripts.get("probe", Path(envlock.probe.__file__))),
        "inputs": Mount(inputs),
        "out": Mount(outdir, writable=True),
        **{f"path{i}": Mount(p) for i, p in enumerate(config.model_paths)},
    }
    inside = environment.layout(mounts)
    job = {
        "schema": JOB_SCHEMA,
        "adapter": config.worker_adapter,
        "paths": [inside[f"path{i}"] for i in range(len(config.model_paths))],
        "inputs_wait": config.timeout,
        "outdir": inside["out"],
        "probe": inside["probe"],
        # The worker kills its process group once this process is gone (killed by -9
        # too): nothing the model started outlives parity. Not from inside a container,
        # which cannot see it (Docker kills a container's processes itself).
        "host_pid": os.getpid() if environment.shares_host_pids else None,
        **fields(inside),
    }
    (outdir / "job.json").write_text(json.dumps(job, indent=2))
    # The worker must not change the environment it runs in, not even with bytecode caches.
    # Of parity's own variables it gets only what envlock lets through (system, numerics)
    # and those `run.pass_env` names, passed here so that containers get them too.
    passed = {k: os.environ[k] for k in config.pass_env if k in os.environ}
    env = {"PYTHONDONTWRITEBYTECODE": "1", **passed, **config.env, **env_vars}
    if config.threads:
        for var in THREAD_VARS:
            env.setdefault(var, str(config.threads))
    return Job(mounts=mounts, inside=inside, env=env, log=outdir / "worker.log")


def model_failure(name: str, error_file: Path, what: str) -> WorkerError | None:
    """The model's failure as the worker recorded it in `error_file`, if it did; `what`
    says where (e.g. "in the worker (predict)")."""
    if not error_file.exists():
        return None
    try:
        err = check_json(error_file, load_json(error_file), ERROR)
    except HostileOutputError as e:
        # The model failed all the same; the report says why its account is unusable.
        return WorkerError(name, f"the model failed, and the worker's account is unusable: {e}")
    where = what.format(stage=err["stage"])
    trace = str(err.get("traceback") or "").strip()  # none when the message says it all
    return WorkerError(
        name,
        f"the model failed {where}: {err.get('type')}: {err.get('message')}"
        + (f"\n{trace}" if trace else ""),
    )


def exited(
    name: str, status: int | None, log: Path, *, missing: str | None = None, python: str = ""
) -> WorkerError:
    """A worker that exited without saying why: its status and the end of its log. With
    `missing`, the file it exited without writing, and where it ran (`python`): a status 0
    that wrote nothing is a wrong interpreter or a model that ended the process itself."""
    tail = log_tail(log) if log.exists() else "(no output)"
    if missing is None:
        return WorkerError(name, f"worker exited with status {status}; last output:\n{tail}")
    where = f" (in {python})" if python else ""
    return WorkerError(
        name,
        f"the worker{where} exited with status {status} without writing its outputs "
        f"({missing}); last output:\n{tail}",
    )


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a worker's log (decoded leniently)."""
    with path.open("rb") as log:  # its end only: a log can be large
        log.seek(max(log.seek(0, os.SEEK_END) - 20000, 0))
        text = log.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"
