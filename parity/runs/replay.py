"""Replaying the input set in environments: every command that runs the model goes
through here (check, bundle, bisect, localize, search).

- `WorkFolder`: where a command works (a context manager), kept when asked (`--workdir`)
  or when something failed inside an environment (its logs are the evidence), deleted
  otherwise.
- `EnvRun`: what happened in one environment.
- `materialize` / `materialize_all`: the environment a spec describes, through envlock.
- `replay_environments`: materialize each environment and run the worker there, all at
  once, while the host makes the inputs.
- `run_worker`: one worker run in `predict` (or another) mode (the job protocol is
  `parity.runs.job`).
- `summary`: what a report says about one environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from envlock import LockedEnv
from envlock.backends import Cancelled, Environment, Running, RunTimeout, default_cache_dir
from envlock.backends.endpoint import EndpointEnvironment
from envlock.environments import EnvironmentSpec, backend_for, open_environment, read_spec_lock
from envlock.errors import EnvlockError
from envlock.fingerprints import FingerprintError, StaticFingerprint, static_fingerprint
from envlock.locked import fingerprint_markers
from envlock.lockfile import MAIN
from envlock.names import shown_path
from envlock.probe import RUNTIME
from envlock.progress import Progress
from parity.arrays import OutputArray
from parity.config import ParityConfig
from parity.errors import ConfigError, HostileOutputError, ParityError, WorkerError
from parity.errors import stopped as stopped_error
from parity.inputs.samples import SampleFolder, dvc_tracking, load_samples
from parity.inputs.seeded import digest, generate
from parity.outputs import FINGERPRINT, check_json, load_fingerprint, load_outputs, worker_seconds
from parity.runs.caught import WARNINGS_FILE, CaughtWarnings, read_caught
from parity.runs.job import (
    ABORT,
    INPUTS,
    INPUTS_FILE,
    compiled_scripts,
    exited,
    model_failure,
    prepare_job,
)


@dataclass(frozen=True)
class EnvironmentSummary:
    """Where one environment came from and what it holds."""

    name: str
    backend: str
    description: str
    lock: str | None
    lock_digest: str | None
    group: str | None
    python: str | None
    platform: str | None
    packages: dict[str, str]
    env: dict[str, str]
    libraries: dict[str, Any]
    cpu: dict[str, Any]
    created: bool
    seconds: dict[str, float]
    # False when the environment failed before its fingerprint was taken: `packages` is then
    # empty because nothing is known, and reports must say "unknown", never 0.
    fingerprinted: bool = True
    # Where `packages` come from: "observed" (probed where the model ran), "recorded" (a
    # fingerprint file recorded where an endpoint's server was built), "lock" (the pins of
    # the lock and group an endpoint was built from: from the lock, not observed), or None
    # (nothing is known).
    versions_from: str | None = None


@dataclass(frozen=True)
class LockView:
    """What judging a version difference needs of one environment's lock: the versions it
    pins for the environment's group, and the smallest group that installs each package it
    pins (`main` or a named group). A golden bundle records it, so that a check against the
    bundle explains a group-only package as a check of two live environments does, even
    when the lock it was built from is gone or has changed."""

    path: str  # the lock as people read it (`shown_path`)
    group: str
    pins: dict[str, str]
    groups: dict[str, str]

    @classmethod
    def of(cls, lock: LockedEnv, group: str, markers: dict[str, str] | None = None) -> LockView:
        """The view of `lock` from an environment that installs `group`, its markers
        evaluated for that environment (`markers`, from its fingerprint; else this host)."""
        groups: dict[str, str] = {}
        for g in (MAIN, *[g for g in lock.groups if g != MAIN]):
            for p in lock.packages_in(g, markers):
                groups.setdefault(p.name, g)
        return cls(shown_path(lock.path), group, lock.versions(group, markers), groups)

    def group_of(self, name: str) -> str | None:
        """The smallest group that installs package `name`, or None (not in the lock)."""
        return self.groups.get(canonicalize_name(name))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "group": self.group, "pins": self.pins, "groups": self.groups}


@dataclass
class EnvRun:
    """What happened in one environment: where it lives, what it returned, how long it took."""

    spec: EnvironmentSpec
    lock: LockedEnv | None = None
    environment: Environment | None = None
    outputs: dict[str, OutputArray] = field(default_factory=dict)
    repeat: dict[str, OutputArray] = field(default_factory=dict)  # a second run (calibration)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # what the worker caught (warnings.json); None when it wrote none (or, for a bundle,
    # nothing was recorded): unknown, not "no warnings"
    warnings: CaughtWarnings | None = None
    # a bundle's recorded view of its lock, for a run that has no `lock` to read
    recorded_lock: LockView | None = None
    # the worker and the probe compiled for the environment's interpreter, if it has them
    scripts: dict[str, Path] | None = None
    # a serving endpoint's server packages (its `serving` setting, and the server its
    # metadata names): what they bring runs the server, not the model
    serving: tuple[str, ...] = ()
    # stopped because the other environment failed first (`error` says which)
    cancelled: bool = False

    def lock_view(self) -> LockView | None:
        """What this environment's lock pins, from the lock itself or as recorded."""
        if self.lock is not None:
            markers = fingerprint_markers(self.fingerprint) if self.fingerprint else None
            return LockView.of(self.lock, self.spec.group, markers)
        return self.recorded_lock

    @property
    def name(self) -> str:
        """The environment's name in the config."""
        return self.spec.name


# How long making the inputs waits for the workers to start (seconds): they start in a
# few milliseconds from a cached environment; one being built is not waited for.
START_WAIT = 1.0

# How progress says a work folder was left on disk (the one progress line -q still prints).
KEPT = "work folder kept: "


class WorkFolder:
    """The folder a command works in: `workdir` when given (then always kept), else a new
    temporary folder, deleted on leaving unless `keep` was set (something failed inside an
    environment and its logs are the evidence) or an exception of a `keep_on` type (and
    not of a `drop_on` type) left it. Made with its inputs folder inside."""

    def __init__(
        self,
        workdir: Path | None,
        say: Progress,
        keep_on: tuple[type[BaseException], ...] = (),
        drop_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.given = workdir is not None
        self.path = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="parity-"))
        (self.path / INPUTS).mkdir(parents=True, exist_ok=True)
        self.keep = False
        self._say = say
        self._keep_on = keep_on
        self._drop_on = drop_on

    def __enter__(self) -> WorkFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        failed = (
            kind is not None
            and issubclass(kind, self._keep_on)
            and not issubclass(kind, self._drop_on)
        )
        if self.given or self.keep or failed:
            self._say(f"{KEPT}{self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def materialize(run: EnvRun, cache_dir: Path | None, say: Progress) -> Environment:
    """Make `run`'s environment exist (its lock read into `run.lock` first) and return it."""
    run.lock = read_spec_lock(run.spec)
    run.environment = open_environment(run.spec, run.lock, cache_dir=cache_dir, progress=say)
    if run.environment.kind == "local":  # an interpreter named in the config: it must exist
        _check_interpreter(run.name, str(run.environment.python))
    return run.environment


def _check_interpreter(name: str, python: str) -> None:
    """Raise `WorkerError` naming environment `name` when its interpreter `python` (a path,
    or a name looked up on PATH) does not exist or cannot be run."""
    found = shutil.which(python) if os.sep not in python else python
    if found is None or not Path(found).exists():
        raise WorkerError(name, f"python {python} does not exist")
    if not Path(found).is_file() or not os.access(found, os.X_OK):
        raise WorkerError(name, f"python {python} is not an executable file")


def materialize_all(runs: list[EnvRun], cache_dir: Path | None, say: Progress) -> None:
    """Make every run's environment exist (at once); raise the first failure."""

    def make(run: EnvRun) -> None:
        try:
            materialize(run, cache_dir, _told(run, say))
        except OSError as e:
            raise WorkerError(run.name, str(e)) from None

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [pool.submit(make, r) for r in runs]
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


class Siblings:
    """The environments of one check, replaying at once: the first to fail stops the
    others, whose answers could no longer be compared (a failed endpoint does not leave
    the training side replaying for hours); they then say which failed."""

    def __init__(self) -> None:
        self.scripts = Running()  # the workers running now, killed by `fail`
        self.failed: str | None = None
        self._lock = threading.Lock()

    def fail(self, name: str) -> None:
        """Environment `name` failed: stop the others (now and whatever they start)."""
        with self._lock:
            if self.failed is None:
                self.failed = name
        self.scripts.stop_all()

    def cancelled(self) -> bool:
        """Whether one of them failed (the others stop)."""
        return self.failed is not None

    def stopped(self, name: str) -> str:
        """What environment `name`, stopped, says."""
        return str(stopped_error(name, str(self.failed)))


def run_errors(runs: list[EnvRun]) -> list[str]:
    """The runs' errors as the report gives them: the failures first, then the sides they
    stopped."""
    return [r.error for r in sorted(runs, key=lambda r: r.cancelled) if r.error]


def replay_environments(
    config: ParityConfig,
    runs: list[EnvRun],
    work: Path,
    cache_dir: Path | None,
    say: Progress,
    calibrate: bool,
    input_digest: str | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[str, float]:
    """Materialize each run's environment and replay the input set in it, all at once; the
    input set's digest and when it was ready (`time.perf_counter()`).

    Failures inside an environment become that run's `error`; the first one stops the
    others (`Siblings`). With `input_digest`, the inputs file is already in `work/inputs`
    and is not made again. `meanwhile` is called
    once the inputs are written, while the workers run (what the caller prepares then)."""
    # Workers start first and import the model while the inputs are made here; each waits
    # for the inputs file, which appears whole (written aside, then renamed). Making the
    # inputs waits (a little) until the workers have started: a start-up that competes with
    # NumPy's import for the interpreter would come later, the workers' own start too.
    starting = [threading.Event() for _ in runs]
    siblings = Siblings()
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [
            pool.submit(_run_environment, r, config, cache_dir, work, say, calibrate, e, siblings)
            for r, e in zip(runs, starting, strict=True)
        ]
        deadline = time.monotonic() + START_WAIT
        for event in starting:
            event.wait(max(deadline - time.monotonic(), 0))
        if input_digest is None:
            try:
                input_digest = write_inputs(config, work / INPUTS)
            except BaseException:
                (work / INPUTS / ABORT).touch()
                raise
            say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
            say_input_warnings(config, say)
        generated = time.perf_counter()
        if meanwhile is not None:
            meanwhile()
        for future in futures:
            future.result()
    return input_digest, generated


def say_input_warnings(config: ParityConfig, say: Progress) -> None:
    """Say what looks wrong in a seeded input spec (an image shape that looks
    channels-last without a layout)."""
    if not isinstance(config.inputs, SampleFolder):
        for warning in config.inputs.warnings():
            say(warning)


def write_inputs(config: ParityConfig, folder: Path) -> str:
    """Generate (or load from its folder) the input set into `folder`, atomically; return
    its digest."""
    import numpy as np

    spec = config.inputs
    inputs = load_samples(spec) if isinstance(spec, SampleFolder) else generate(spec)
    tmp = folder / f".{INPUTS_FILE}.tmp.npz"
    np.savez(tmp, **inputs)  # type: ignore[arg-type]  # numpy stubs mistype **arrays
    tmp.replace(folder / INPUTS_FILE)
    return digest(inputs)


def describe_inputs(config: ParityConfig, input_digest: str, say: Progress) -> dict[str, Any]:
    """The input set as a report records it: its spec (or folder) and content digest, and
    for a DVC-tracked folder its DVC hash, with a warning when the folder has changed
    since `dvc add`."""
    described = {**config.inputs.describe(), "digest": input_digest}
    if isinstance(config.inputs, SampleFolder):
        tracking = dvc_tracking(config.inputs)
        if tracking is not None:
            described["dvc"] = tracking.describe()
            if tracking.modified:
                say(
                    f"warning: {config.inputs.shown} has changed since `dvc add` recorded "
                    f"{tracking.md5} in {tracking.dvc_file.name}; run `dvc add "
                    f"{config.inputs.shown}` to record it, or `dvc checkout` to restore it"
                )
    return described


def _told(run: EnvRun, say: Progress) -> Progress:
    """`say`, each message prefixed with the run's environment name."""
    return lambda msg: say(f"[{run.name}] {msg}")


def _run_environment(
    run: EnvRun,
    config: ParityConfig,
    cache_dir: Path | None,
    work: Path,
    say: Progress,
    calibrate: bool,
    starting: threading.Event | None = None,
    siblings: Siblings | None = None,
) -> None:
    """Materialize `run`'s environment and replay the inputs in it; `starting` is set once
    its worker has started (or the run ended before). A failure stops the `siblings`;
    theirs stops this one (its environment is still materialized: that is kept)."""
    tell = _told(run, say)
    try:
        t0 = time.perf_counter()
        environment = materialize(run, cache_dir, tell)
        t1 = time.perf_counter()
        run.seconds["materialize"] = round(t1 - t0, 3)
        static = _static_fingerprint(run, cache_dir, tell)
        if static is not None:
            run.scripts = compiled_scripts(
                static.sections.get("python"), cache_dir or default_cache_dir()
            )
        if siblings is not None and siblings.cancelled():
            raise Cancelled("not started")
        tell(f"running {config.inputs.count} inputs in {environment.description}")
        run.outputs = _replay(
            run, config, work / run.name, tell, static, cache_dir, starting, siblings
        )
        run.seconds["run"] = round(time.perf_counter() - t1, 3)
        tell(f"done in {run.seconds['run']:.1f}s")
        if calibrate:
            t2 = time.perf_counter()
            tell("calibrating: running the same inputs a second time")
            run.repeat = _replay(run, config, work / f"{run.name}.repeat", tell, siblings=siblings)
            run.seconds["repeat"] = round(time.perf_counter() - t2, 3)
    except Cancelled:
        assert siblings is not None and siblings.failed is not None
        run.error, run.cancelled = siblings.stopped(run.name), True
        tell(f"stopped: environment {siblings.failed!r} failed first")
    except ConfigError:
        if siblings is not None:
            siblings.fail(run.name)
        raise  # the config does not fit the environment (an endpoint's model): exit 2
    except (EnvlockError, ParityError, OSError) as e:
        run.error = str(e)
        tell(f"error: {str(e).splitlines()[0]}")
        if siblings is not None:
            siblings.fail(run.name)
    finally:
        if starting is not None:
            starting.set()


def _static_fingerprint(
    run: EnvRun, cache_dir: Path | None, tell: Progress
) -> StaticFingerprint | None:
    """What `run`'s environment holds, as the host fingerprints it (`envlock.fingerprints`:
    reused while the environment is unchanged), or None where the worker must probe it in
    full (a container, or an interpreter the probe failed in: the worker's run says why,
    as without the host's probe)."""
    assert run.environment is not None
    try:
        static = static_fingerprint(run.environment, cache_dir)
    except FingerprintError:
        return None
    if static is not None:
        tell(
            "fingerprint reused: environment unchanged since it was taken"
            if static.reused
            else "fingerprint taken"
        )
    return static


def _replay(
    run: EnvRun,
    config: ParityConfig,
    outdir: Path,
    say: Progress,
    static: StaticFingerprint | None = None,
    cache_dir: Path | None = None,
    starting: threading.Event | None = None,
    siblings: Siblings | None = None,
) -> dict[str, OutputArray]:
    """Run the worker once in `run`'s environment; its outputs (read lazily from outdir).
    A failure of one of `siblings` stops it (`Cancelled`).
    The first run's warnings become `run.warnings`, also when the worker failed. With
    `static` (what the environment holds, taken by the host), the worker takes only the
    rest of the fingerprint where its sys.path is the one `static` was read from (else all
    of it, as without), and the host takes `static` again after the run: a model that
    changed its environment shows in the fingerprint as when the worker probed it all.
    An environment that runs no scripts (a serving endpoint) is asked instead
    (`parity.runs.endpoint`): it catches no warnings, and its versions are what was
    recorded of it (a fingerprint file), else unknown."""
    if run.environment is not None and not run.environment.runs_scripts:
        if starting is not None:
            starting.set()  # nothing to start: making the inputs need not wait for it
        return _replay_endpoint(run, config, outdir, say, siblings)
    cancel = None if siblings is None else siblings.scripts
    if run.fingerprint:  # a calibration run: the first run's fingerprint, times, warnings stand
        run_worker(run, config, outdir, cancel=cancel)
        return dict(load_outputs(outdir / "outputs.npz"))
    fields = {} if static is None else {"static_paths": static.paths}
    try:
        run_worker(run, config, outdir, starting=starting, cancel=cancel, **fields)
    except ParityError:
        # unreadable: the worker's own failure is what the report says
        if (outdir / WARNINGS_FILE).exists():
            with contextlib.suppress(ParityError):
                run.warnings = read_caught(outdir / WARNINGS_FILE)
        raise
    run.warnings = read_caught(outdir / WARNINGS_FILE)
    outputs = load_outputs(outdir / "outputs.npz")
    try:
        run.fingerprint = load_fingerprint(outdir / "fingerprint.json")
        if static is not None and run.environment and "distributions" not in run.fingerprint:
            # The worker took the sections about itself; what the environment holds is the
            # host's, taken again in case the model changed the environment.
            try:
                after = static_fingerprint(run.environment, cache_dir) or static
            except FingerprintError as e:
                raise WorkerError(run.name, str(e)) from None
            run.fingerprint = check_json(
                outdir / "fingerprint.json",
                {
                    **after.sections,
                    **{k: run.fingerprint[k] for k in RUNTIME if k in run.fingerprint},
                },
                FINGERPRINT,
            )
            (outdir / "fingerprint.json").write_text(
                json.dumps(run.fingerprint, indent=2, sort_keys=True), encoding="utf-8"
            )
        seconds = worker_seconds(outdir / "result.json")
    except HostileOutputError as e:
        raise WorkerError(run.name, str(e)) from None
    for k in ("load", "predict"):
        if k in seconds:
            run.seconds[f"worker_{k}"] = seconds[k]
    return dict(outputs)


def _replay_endpoint(
    run: EnvRun,
    config: ParityConfig,
    outdir: Path,
    say: Progress,
    siblings: Siblings | None = None,
) -> dict[str, OutputArray]:
    """Replay the inputs through `run`'s endpoint; its outputs, read as a worker's are.
    A failure of one of `siblings` stops it between two batches (`Cancelled`)."""
    from parity.runs.endpoint import replay_endpoint

    assert isinstance(run.environment, EndpointEnvironment)
    server = replay_endpoint(
        run.name,
        run.environment,
        config,
        outdir,
        say,
        None if siblings is None else siblings.cancelled,
    )
    run.serving = tuple(dict.fromkeys([*run.spec.serving, *([server] if server else [])]))
    outputs = load_outputs(outdir / "outputs.npz")
    if not run.seconds.get("worker_predict"):  # the first replay (not a calibration's)
        try:
            if (outdir / "fingerprint.json").exists():
                run.fingerprint = recorded(load_fingerprint(outdir / "fingerprint.json"))
            elif run.lock is not None:  # nothing recorded: what its lock pins, said as such
                run.fingerprint = lock_fingerprint(run.lock, run.spec.group)
            seconds = worker_seconds(outdir / "result.json")
        except HostileOutputError as e:
            raise WorkerError(run.name, f"{e} (the fingerprint recorded for it)") from None
        for k in ("load", "predict"):
            if k in seconds:
                run.seconds[f"worker_{k}"] = seconds[k]
    return dict(outputs)


# What a fingerprint says of the process that took it, not of what is installed: a
# fingerprint recorded where a server was built knows nothing of the server's own process.
RUNTIME_SECTIONS = ("env", "threadpools")
# Set on such a fingerprint (kept in a bundle recorded from it): judged without them.
RECORDED_APART = "recorded_apart"


# Set on the fingerprint of an endpoint known only by the lock it was built from: its lock
# and group, whose pins stand for its versions (`lock_fingerprint`).
FROM_LOCK = "from_lock"


def lock_fingerprint(lock: LockedEnv, group: str) -> dict[str, Any]:
    """What is known of an endpoint built from `lock`'s `group` when nothing was recorded of
    it: the versions the lock pins for the group (markers evaluated for this host), marked
    `from_lock` (not observed: judged as a lock is, packages and the interpreter it allows
    only) and recorded apart from the serving process."""
    return {
        "distributions": [
            {"name": name, "version": version}
            for name, version in sorted(lock.versions(group).items())
        ],
        FROM_LOCK: {
            "path": shown_path(lock.path),
            "group": group,
            "requires_python": lock.requires_python,
        },
        RECORDED_APART: True,
    }


VERSIONS_FROM = ("observed", "recorded", "lock", None)


def versions_from(fingerprint: dict[str, Any]) -> str | None:
    """Where a fingerprint's versions come from (`EnvironmentSummary.versions_from`)."""
    if not fingerprint:
        return None
    if isinstance(fingerprint.get(FROM_LOCK), dict):
        return "lock"
    return "recorded" if fingerprint.get(RECORDED_APART) is True else "observed"


def recorded(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint recorded apart from the process that serves (an endpoint's): what is
    installed, without what only the recording process had (its variables, thread pools,
    torch's thread count), which is unknown for the server, not different."""
    kept = {k: v for k, v in fingerprint.items() if k not in RUNTIME_SECTIONS}
    if isinstance(kept.get("torch"), dict):
        kept["torch"] = {k: v for k, v in kept["torch"].items() if k != "threads"}
    kept[RECORDED_APART] = True
    return kept


def run_worker(
    run: EnvRun,
    config: ParityConfig,
    outdir: Path,
    starting: threading.Event | None = None,
    cancel: Running | None = None,
    **job_fields: Any,
) -> None:
    """Run the worker once in `run`'s environment on the inputs file in
    `outdir.parent / INPUTS`, writing into `outdir`; `job_fields` add to (or replace) the
    job's fields, e.g. `mode`; `starting` is set once the worker has started. Raise
    `WorkerError` when the worker fails or times out, `Cancelled` when `cancel` stopped it."""
    assert run.environment is not None
    job = prepare_job(
        run.environment,
        config,
        run.spec.env,
        outdir,
        outdir.parent / INPUTS,
        lambda inside: {
            "inputs": f"{inside['inputs']}/{INPUTS_FILE}",
            "inputs_abort": f"{inside['inputs']}/{ABORT}",
            "count": config.inputs.count,
            "batch_size": config.inputs.batch_size,
            **job_fields,
        },
        run.scripts,
    )
    try:
        status = run.environment.run_python(
            job.script,
            job.args,
            mounts=job.mounts,
            env=job.env,
            log=job.log,
            timeout=config.timeout,
            started=None if starting is None else starting.set,
            cancel=cancel,
        )
    except RunTimeout as e:
        raise WorkerError(run.name, f"worker {e} (log: {job.log})") from None
    failure = model_failure(run.name, outdir / "error.json", "in the worker ({stage})")
    if failure is not None:
        raise failure
    if status != 0:
        raise exited(run.name, status, job.log)
    # Status 0 and nothing written: not a Python that ran the worker (`/bin/true`), or a
    # model that ended the process itself (`os._exit(0)`).
    written = "stages.npz" if job_fields.get("mode") == "stages" else "outputs.npz"
    if not (outdir / written).exists():
        raise exited(run.name, status, job.log, missing=written, python=run.environment.description)


def summary(run: EnvRun) -> EnvironmentSummary:
    """What the report says about one environment: where it came from, what it holds."""
    fp = run.fingerprint
    python = fp.get("python", {}) if isinstance(fp.get("python"), dict) else {}
    plat = fp.get("platform", {}) if isinstance(fp.get("platform"), dict) else {}
    env_vars = fp.get("env", {}) if isinstance(fp.get("env"), dict) else {}
    versions = _versions(fp)
    versions.pop("python", None)
    return EnvironmentSummary(
        name=run.name,
        backend=run.spec.backend,
        description=run.environment.description if run.environment else run.spec.backend,
        lock=shown_path(run.spec.lock) if run.spec.lock else None,
        lock_digest=run.lock.digest if run.lock else None,
        group=(
            run.spec.group
            if backend_for(run.spec.backend).installs_groups
            or (run.spec.lock is not None and run.environment and not run.environment.runs_scripts)
            else None
        ),
        python=python.get("version"),
        platform=f"{plat.get('system')}-{plat.get('machine')}" if plat else None,
        packages=versions,
        env={str(k): str(v) for k, v in env_vars.items()},
        libraries={k: fp[k] for k in ("numpy", "torch") if isinstance(fp.get(k), dict)},
        cpu=fp["cpu"] if isinstance(fp.get("cpu"), dict) else {},
        created=bool(run.environment and run.environment.created),
        seconds=run.seconds,
        fingerprinted=bool(fp),
        versions_from=versions_from(fp),
    )


def _versions(fp: dict[str, Any]) -> dict[str, str]:
    """Each distribution's version in a fingerprint, and the interpreter's as `python`."""
    versions = {}
    for d in fp.get("distributions", []):
        if isinstance(d, dict) and isinstance(d.get("name"), str):
            versions[d["name"]] = str(d.get("version"))
    python = fp.get("python", {})
    if isinstance(python, dict) and python.get("version"):
        versions["python"] = str(python["version"])
    return versions
