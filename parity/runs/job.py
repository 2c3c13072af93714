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

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envlock.probe
from envlock.backends import Environment, Mount
from parity.config import ParityConfig
from parity.errors import HostileOutputError, WorkerError
from parity.outputs import ERROR, check_json, load_json
from parity.runs import worker as worker_module

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


def prepare_job(
    environment: Environment,
    config: ParityConfig,
    env_vars: dict[str, str],
    outdir: Path,
    inputs: Path,
    fields: Callable[[Mapping[str, str]], dict[str, Any]],
) -> Job:
    """Write the job file for a worker in `environment` into `outdir` (made if missing),
    reading from the folder `inputs`; `fields(inside)` gives the mode's own fields from
    where each mount appears inside."""
    outdir.mkdir(parents=True, exist_ok=True)
    mounts = {
        "worker": Mount(Path(worker_module.__file__)),
        "probe": Mount(Path(envlock.probe.__file__)),
        "inputs": Mount(inputs),
        "out": Mount(outdir, writable=True),
        **{f"path{i}": Mount(p) for i, p in enumerate(config.model_paths)},
    }
    inside = environment.layout(mounts)
    job = {
        "schema": worker_module.JOB_SCHEMA,
        "adapter": config.adapter,
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
