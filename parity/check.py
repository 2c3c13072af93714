"""`run_check`: materialize both environments, replay the inputs in each, compare, report."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import envlock.probe
from envlock import LockedEnv, read_lock
from envlock.backends import Environment, LocalEnvironment, Mount, RunTimeout, VenvBackend
from envlock.diff import Side, from_fingerprint
from envlock.diff import diff as diff_environments
from envlock.errors import EnvlockError
from envlock.lockfile import MAIN
from parity.arrays import OutputArray
from parity.config import EnvironmentSpec, ParityConfig
from parity.errors import BundleError, ConfigError, ParityError, WorkerError
from parity.inputs.samples import SampleFolder, dvc_tracking, load_samples
from parity.inputs.seeded import digest, generate
from parity.judging.compare import Noise, OutputComparison
from parity.outputs import load_json, load_outputs
from parity.report import BundleReference, EnvironmentSummary, ParityReport, Verdict, VersionDiff
from parity.runs import worker as worker_module

if TYPE_CHECKING:
    from parity.bundle import Bundle

Progress = Callable[[str], None]
INPUTS = "inputs"  # the folder the inputs file appears in (mounted read-only)
INPUTS_FILE = "inputs.npz"
ABORT = "abort"  # written instead of the inputs when the host fails to make them
LARGE_OUTPUT = 1 << 26  # elements; comparing more than this reports progress
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


def run_check(
    config: ParityConfig,
    *,
    workdir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    calibrate: bool | None = None,
    localize: bool | None = None,
) -> ParityReport:
    """Run the parity check `config` describes and return its report (never raises for
    failures inside environments: they become the report's errors and an `error` verdict).

    With `calibrate` (default: the config's `run.calibrate`) each environment runs the
    inputs twice, and how much it disagrees with itself is reported per output. With
    `localize` (default: the config's `run.localize`) a failing check runs the worst
    sample through the adapter's stages in both environments and the report names the
    first stage, and module, beyond tolerance (`parity.investigations.localize`)."""
    say = progress or (lambda _msg: None)
    calibrate = _calibration(config, calibrate)
    started = time.perf_counter()
    keep = workdir is not None
    work = work_folder(workdir)
    backend = VenvBackend(cache_dir)
    runs = [EnvRun(spec) for spec in config.environments]
    input_digest, generated = replay_environments(config, runs, work, backend, say, calibrate)

    ref = next(r for r in runs if r.spec.name == config.reference)
    cand = next(r for r in runs if r.spec.name != config.reference)
    errors: list[str] = [r.error for r in runs if r.error]
    return _conclude(
        config,
        ref,
        cand,
        errors,
        {r.spec.name: summary(r) for r in runs},
        work=work,
        keep=keep,
        input_digest=input_digest,
        calibrate=calibrate,
        say=say,
        started=started,
        generated=generated,
        localize=config.localize if localize is None else localize,
    )


def check_against(
    config: ParityConfig,
    bundle: Bundle,
    *,
    env_name: str | None = None,
    workdir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    calibrate: bool | None = None,
    localize: bool | None = None,
) -> ParityReport:
    """Check one environment of `config` (default: the one that is not the reference, i.e.
    the inference side) against a golden bundle, which stands in for the reference
    environment; the report, with the bundle as its reference and `against` set.

    Raise `ConfigError` for an environment the config lacks and `BundleError` when the
    bundle answers a different input set; failures inside the environment become the
    report's errors, as in `run_check`."""
    say = progress or (lambda _msg: None)
    calibrate = _calibration(config, calibrate)
    names = [e.name for e in config.environments]
    name = env_name or next(n for n in names if n != config.reference)
    if name not in names:
        raise ConfigError(config.path, None, f"no environment {name!r} (have: {', '.join(names)})")
    started = time.perf_counter()
    keep = workdir is not None
    work = work_folder(workdir)
    try:
        input_digest = _write_inputs(config, work / INPUTS)
        if input_digest != bundle.input_digest:
            raise _different_inputs(config, bundle, input_digest)
    except BaseException:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        raise
    generated = time.perf_counter()
    say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
    if bundle.adapter != config.adapter:
        say(
            f"note: the bundle was recorded with adapter {bundle.adapter}, the config names "
            f"{config.adapter}"
        )
    cand = EnvRun(config.environment(name))
    replay_environments(config, [cand], work, VenvBackend(cache_dir), say, calibrate, input_digest)
    ref = _bundle_run(bundle, cand)
    errors = [cand.error] if cand.error else []
    report = _conclude(
        config,
        ref,
        cand,
        errors,
        {
            ref.spec.name: dataclasses.replace(bundle.environment, name=ref.spec.name),
            name: summary(cand),
        },
        work=work,
        keep=keep,
        input_digest=input_digest,
        calibrate=calibrate,
        say=say,
        started=started,
        generated=generated,
        localize=config.localize if localize is None else localize,
    )
    return dataclasses.replace(
        report,
        against=BundleReference(
            path=str(bundle.path),
            manifest_digest=bundle.manifest_digest,
            environment=bundle.environment.name,
            created=bundle.created,
        ),
    )


def _conclude(
    config: ParityConfig,
    ref: EnvRun,
    cand: EnvRun,
    errors: list[str],
    environments: dict[str, EnvironmentSummary],
    *,
    work: Path,
    keep: bool,
    input_digest: str,
    calibrate: bool,
    say: Progress,
    started: float,
    generated: float,
    localize: bool = False,
) -> ParityReport:
    """Judge the replayed outputs, localize a failure if asked, clean up the work folder,
    and make the report."""
    finished = time.perf_counter()
    outputs, diffs, reasons = _judge(config, ref, cand, say) if not errors else ([], [], [])
    verdict: Verdict = "error" if errors else ("fail" if reasons else "pass")
    compared = time.perf_counter()
    localization = None
    if localize and verdict == "fail":
        from parity.investigations.localize import localize_failure

        localization = localize_failure(config, ref, cand, outputs, work, say)
    localized = time.perf_counter()
    if errors or keep:
        say(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return ParityReport(
        verdict=verdict,
        config=str(config.path),
        reference=ref.spec.name,
        candidate=cand.spec.name,
        inputs=describe_inputs(config, input_digest, say),
        environments=environments,
        outputs=outputs,
        version_diffs=diffs,
        reasons=reasons,
        errors=errors,
        calibrated=calibrate,
        seconds={
            "inputs": round(generated - started, 3),
            "environments": round(finished - started, 3),
            "compare": round(compared - finished, 3),
            **({"localize": round(localized - compared, 3)} if localization else {}),
            "total": round(time.perf_counter() - started, 3),
        },
        localization=localization,
    )


def _different_inputs(config: ParityConfig, bundle: Bundle, input_digest: str) -> BundleError:
    recorded = bundle.inputs
    if "folder" in recorded:
        theirs = f"{recorded.get('count')} samples from {recorded.get('folder')}"
    else:
        theirs = f"seed {recorded.get('seed')}, {recorded.get('count')} samples"
    if isinstance(config.inputs, SampleFolder):
        ours = config.inputs.label
    else:
        ours = f"seed {config.inputs.seed}, {config.inputs.count} samples"
    return BundleError(
        f"{bundle.path} was recorded on a different input set: the bundle's "
        f"{bundle.input_digest} ({theirs}), the config's {input_digest} ({ours})"
    )


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


def _bundle_run(bundle: Bundle, cand: EnvRun) -> EnvRun:
    """The bundle as the reference side of a check against `cand`.

    The bundle carries no lock, only the digest of the one it was built from: when that
    is the candidate's own lock, the candidate's lock (read with the bundle's group)
    explains group-only packages as expected, as in a check of two live environments."""
    recorded = bundle.environment
    label = recorded.name if recorded.name != cand.spec.name else f"{recorded.name} (bundle)"
    same_lock = cand.lock is not None and recorded.lock_digest == cand.lock.digest
    spec = EnvironmentSpec(
        name=label, backend=recorded.backend, group=recorded.group or MAIN, lock=None
    )
    return EnvRun(
        spec,
        lock=cand.lock if same_lock else None,
        outputs=dict(bundle.outputs),
        fingerprint=bundle.fingerprint,
    )


def _calibration(config: ParityConfig, calibrate: bool | None) -> bool:
    """Whether the check calibrates (`calibrate`, else the config's `run.calibrate`); raise
    `ConfigError` when a policy scales measured noise that an uncalibrated check lacks."""
    calibrate = config.calibrate if calibrate is None else calibrate
    if not calibrate:
        for name, policy in [("", config.tolerance), *config.output_tolerances.items()]:
            if policy.noise_factor is not None:
                key = f"tolerance.outputs.{name}" if name else "tolerance"
                raise ConfigError(
                    config.path,
                    f"{key}.noise_factor",
                    "scales the measured noise, so it needs a calibrated check: pass "
                    "--calibrate or set run.calibrate = true",
                )
    return calibrate


def work_folder(workdir: Path | None) -> Path:
    """The folder a check works in (`workdir`, else a new temporary one), with its inputs
    folder made."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="parity-"))
    (work / INPUTS).mkdir(parents=True, exist_ok=True)
    return work


def replay_environments(
    config: ParityConfig,
    runs: list[EnvRun],
    work: Path,
    backend: VenvBackend,
    say: Progress,
    calibrate: bool,
    input_digest: str | None = None,
) -> tuple[str, float]:
    """Materialize each run's environment and replay the input set in it, all at once; the
    input set's digest and when it was ready (`time.perf_counter()`).

    Failures inside an environment become that run's `error`. With `input_digest`, the
    inputs file is already in `work/inputs` and is not made again."""
    # Workers start first and import the model while the inputs are made here; each waits
    # for the inputs file, which appears whole (written aside, then renamed).
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [
            pool.submit(_run_environment, r, config, backend, work, say, calibrate) for r in runs
        ]
        if input_digest is None:
            try:
                input_digest = _write_inputs(config, work / INPUTS)
            except BaseException:
                (work / INPUTS / ABORT).touch()
                raise
            say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
        generated = time.perf_counter()
        for future in futures:
            future.result()
    return input_digest, generated


def _judge(
    config: ParityConfig, ref: EnvRun, cand: EnvRun, say: Progress
) -> tuple[list[OutputComparison], list[VersionDiff], list[str]]:
    """Compare the candidate's outputs and versions with the reference's under the config's
    policies: the output comparisons, the version differences, and why the check fails."""
    reasons: list[str] = []
    outputs, missing = _compare_outputs(config, ref, cand, say)
    reasons += missing
    reasons += [f"output {o.name!r}: {o.reason}" for o in outputs if not o.passed]
    diffs = [
        dataclasses.replace(d, fails=not d.expected and d.severity in config.fail_on_version_diffs)
        for d in version_diffs(ref, cand)
    ]
    for d in diffs:
        if d.fails:
            shown = ", ".join(f"{v or 'absent'} ({k})" for k, v in d.versions.items())
            reasons.append(f"{d.name} differs: {shown} [{d.severity}]")
    return outputs, diffs, reasons


def _write_inputs(config: ParityConfig, folder: Path) -> str:
    """Generate (or load from its folder) the input set into `folder`, atomically; return
    its digest."""
    import numpy as np

    spec = config.inputs
    inputs = load_samples(spec) if isinstance(spec, SampleFolder) else generate(spec)
    tmp = folder / f".{INPUTS_FILE}.tmp.npz"
    np.savez(tmp, **inputs)  # type: ignore[arg-type]  # numpy stubs mistype **arrays
    tmp.replace(folder / INPUTS_FILE)
    return digest(inputs)


def _run_environment(
    run: EnvRun,
    config: ParityConfig,
    backend: VenvBackend,
    work: Path,
    say: Progress,
    calibrate: bool,
) -> None:
    name = run.spec.name

    def tell(msg: str) -> None:
        say(f"[{name}] {msg}")

    try:
        t0 = time.perf_counter()
        run.environment = _materialize(run, backend, tell)
        t1 = time.perf_counter()
        run.seconds["materialize"] = round(t1 - t0, 3)
        tell(f"running {config.inputs.count} inputs in {run.environment.description}")
        run.outputs = _replay(run, config, work / name)
        run.seconds["run"] = round(time.perf_counter() - t1, 3)
        tell(f"done in {run.seconds['run']:.1f}s")
        if calibrate:
            t2 = time.perf_counter()
            tell("calibrating: running the same inputs a second time")
            run.repeat = _replay(run, config, work / f"{name}.repeat")
            run.seconds["repeat"] = round(time.perf_counter() - t2, 3)
    except (EnvlockError, ParityError, OSError) as e:
        run.error = str(e)
        tell(f"error: {str(e).splitlines()[0]}")


def _materialize(run: EnvRun, backend: VenvBackend, say: Progress) -> Environment:
    spec = run.spec
    if spec.backend == "local":
        return LocalEnvironment(spec.python)
    run.lock = read_lock(spec.lock) if spec.lock else None
    if spec.backend == "docker":
        return _docker_environment(spec, run.lock, say)
    assert run.lock is not None
    return backend.materialize(run.lock, spec.group, progress=say)


def _docker_environment(
    spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress
) -> Environment:
    import docker

    from envlock.backends.docker import DockerEnvironment, docker_client
    from envlock.images import default_repository, image_tag, role_for

    if spec.image:
        tag = spec.image
    else:
        assert lock is not None
        tag = image_tag(default_repository(lock), role_for(spec.group), lock)
    client = docker_client()
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        hint = f" --lock {_shown(lock.path)}" if lock else ""
        raise EnvlockError(f"image {tag} not found: build it with `envlock build{hint}`") from None
    say(f"image {tag} ({image.short_id})")
    return DockerEnvironment(
        kind="docker",
        python=Path("python"),
        description=f"image {tag}",
        image=tag,
        gpus=spec.gpus,
        memory=spec.memory,
        pids=spec.pids,
    )


def _replay(run: EnvRun, config: ParityConfig, outdir: Path) -> dict[str, OutputArray]:
    """Run the worker once in `run`'s environment; its outputs (read lazily from outdir)."""
    run_worker(run, config, outdir)
    outputs = load_outputs(outdir / "outputs.npz")
    if run.fingerprint:  # a calibration run: the first run's fingerprint and times stand
        return dict(outputs)
    run.fingerprint = load_json(outdir / "fingerprint.json")
    result = load_json(outdir / "result.json")
    seconds = result.get("seconds", {})
    if isinstance(seconds, dict):
        for k in ("load", "predict"):
            if isinstance(seconds.get(k), int | float):
                run.seconds[f"worker_{k}"] = float(seconds[k])
    return dict(outputs)


def run_worker(run: EnvRun, config: ParityConfig, outdir: Path, **job_fields: Any) -> None:
    """Run the worker once in `run`'s environment on the inputs file in
    `outdir.parent / INPUTS`, writing into `outdir`; `job_fields` add to (or replace) the
    job's fields, e.g. `mode`. Raise `WorkerError` when the worker fails or times out."""
    assert run.environment is not None
    name = run.spec.name
    outdir.mkdir(parents=True, exist_ok=True)
    mounts = {
        "worker": Mount(Path(worker_module.__file__)),
        "probe": Mount(Path(envlock.probe.__file__)),
        "inputs": Mount(outdir.parent / INPUTS),
        "out": Mount(outdir, writable=True),
        **{f"path{i}": Mount(p) for i, p in enumerate(config.model_paths)},
    }
    inside = run.environment.layout(mounts)
    job = {
        "schema": worker_module.JOB_SCHEMA,
        "adapter": config.adapter,
        "paths": [inside[f"path{i}"] for i in range(len(config.model_paths))],
        "inputs": f"{inside['inputs']}/{INPUTS_FILE}",
        "inputs_abort": f"{inside['inputs']}/{ABORT}",
        "inputs_wait": config.timeout,
        "count": config.inputs.count,
        "batch_size": config.inputs.batch_size,
        "outdir": inside["out"],
        "probe": inside["probe"],
        **job_fields,
    }
    (outdir / "job.json").write_text(json.dumps(job, indent=2))
    # The worker must not change the environment it runs in, not even with bytecode caches.
    env = {"PYTHONDONTWRITEBYTECODE": "1", **config.env, **run.spec.env}
    if config.threads:
        for var in THREAD_VARS:
            env.setdefault(var, str(config.threads))
    log_path = outdir / "worker.log"
    try:
        status = run.environment.run_python(
            inside["worker"],
            [f"{inside['out']}/job.json"],
            mounts=mounts,
            env=env,
            log=log_path,
            timeout=config.timeout,
        )
    except RunTimeout as e:
        raise WorkerError(name, f"worker {e} (log: {log_path})") from None
    error_file = outdir / "error.json"
    if error_file.exists():
        err = load_json(error_file)
        tb = str(err.get("traceback", "")).strip()
        raise WorkerError(
            name,
            f"the model failed in the worker ({err.get('stage')}): "
            f"{err.get('type')}: {err.get('message')}\n{tb}",
        )
    if status != 0:
        tail = _tail(log_path)
        raise WorkerError(name, f"worker exited with status {status}; last output:\n{tail}")


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _compare_outputs(
    config: ParityConfig, ref: EnvRun, cand: EnvRun, say: Progress
) -> tuple[list[OutputComparison], list[str]]:
    from parity.judging.compare import compare_arrays, measure_noise

    results = []
    problems = []
    for name in sorted(set(ref.outputs) | set(cand.outputs)):
        if name not in cand.outputs:
            problems.append(f"output {name!r} is missing from {cand.spec.name}")
            continue
        if name not in ref.outputs:
            problems.append(f"output {name!r} is missing from {ref.spec.name}")
            continue
        noise: dict[str, Noise] = {}
        for run in (ref, cand):
            if name in run.repeat:
                noise[run.spec.name] = measure_noise(run.outputs[name], run.repeat[name])
        elements = math.prod(ref.outputs[name].shape)
        say(f"comparing {name!r}: {elements:,} elements, {config.tolerance_for(name).describe()}")
        results.append(
            compare_arrays(
                name,
                ref.outputs[name],
                cand.outputs[name],
                config.tolerance_for(name),
                noise=noise,
                on_block=_quarters(name, say) if elements >= LARGE_OUTPUT else None,
            )
        )
    return results, problems


def _quarters(name: str, say: Progress) -> Callable[[int, int], None]:
    """A block callback that reports a long comparison at each quarter."""
    told = [0]

    def on_block(done: int, total: int) -> None:
        quarter = 4 * done // total if total else 4
        if quarter > told[0] and quarter < 4:
            told[0] = quarter
            say(f"comparing {name!r}: {25 * quarter}% of {total:,} elements")

    return on_block


def _versions(fp: dict[str, Any]) -> dict[str, str]:
    versions = {}
    for d in fp.get("distributions", []):
        if isinstance(d, dict) and isinstance(d.get("name"), str):
            versions[d["name"]] = str(d.get("version"))
    python = fp.get("python", {})
    if isinstance(python, dict) and python.get("version"):
        versions["python"] = str(python["version"])
    return versions


def version_diffs(ref: EnvRun, cand: EnvRun) -> list[VersionDiff]:
    """Every way the two environments differ (packages first), classified by envlock's diff."""
    differences = diff_environments(
        Side(ref.spec.name, from_fingerprint(ref.fingerprint), "fingerprint"),
        Side(cand.spec.name, from_fingerprint(cand.fingerprint), "fingerprint"),
    )
    diffs = []
    for d in differences:
        section, _, key = d.component.partition(" ")
        name = (
            key
            if section == "package"
            else ("python" if d.component == "python version" else d.component)
        )
        expected, note = (False, None)
        if section == "package":
            expected, note = _explain(name, (ref, d.a), (cand, d.b))
        why = d.explanation.split("; ", 1)[-1]
        diffs.append(
            VersionDiff(
                name=name,
                versions={ref.spec.name: d.a, cand.spec.name: d.b},
                severity=d.severity,
                expected=expected,
                note=f"{note}; {why}" if note and not expected else (note or why),
            )
        )
    # Packages first, then the interpreter and the rest: the order people read causes in.
    return sorted(diffs, key=lambda v: (" " in v.name, v.name))


def _explain(
    name: str, left: tuple[EnvRun, str | None], right: tuple[EnvRun, str | None]
) -> tuple[bool, str | None]:
    """Whether the locks explain the difference (a group-only package), and a one-line why."""
    (ra, va), (rb, vb) = left, right
    if ra.lock is None or rb.lock is None:
        return False, None
    la = ra.lock.versions(ra.spec.group)
    lb = rb.lock.versions(rb.spec.group)
    for run, installed, locked in ((ra, va, la), (rb, vb, lb)):
        if installed is not None and name in locked and _norm(locked[name]) != _norm(installed):
            return False, f"{run.spec.name} has {installed} but its lock pins {locked[name]}"
    if (va is None) != (vb is None):
        present, absent = (ra, rb) if vb is None else (rb, ra)
        assert present.lock is not None and absent.lock is not None
        group = present.lock.group_of(name)
        in_absent = name in absent.lock.versions(absent.spec.group)
        if group not in (None, MAIN) and not in_absent:
            return True, f"only in the {group!r} group, which {absent.spec.name} does not install"
        return False, f"installed in {present.spec.name} only"
    if name in la and name in lb and la[name] != lb[name]:
        return False, (
            f"the locks pin different versions ({_shown(ra.lock.path)} vs {_shown(rb.lock.path)})"
        )
    return False, None


def _shown(path: Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _norm(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def summary(run: EnvRun) -> EnvironmentSummary:
    """What the report says about one environment: where it came from, what it holds."""
    fp = run.fingerprint
    python = fp.get("python", {}) if isinstance(fp.get("python"), dict) else {}
    plat = fp.get("platform", {}) if isinstance(fp.get("platform"), dict) else {}
    env_vars = fp.get("env", {}) if isinstance(fp.get("env"), dict) else {}
    versions = _versions(fp)
    versions.pop("python", None)
    return EnvironmentSummary(
        name=run.spec.name,
        backend=run.spec.backend,
        description=run.environment.description if run.environment else run.spec.backend,
        lock=_shown(run.spec.lock) if run.spec.lock else None,
        lock_digest=run.lock.digest if run.lock else None,
        group=run.spec.group if run.spec.backend != "local" else None,
        python=python.get("version"),
        platform=f"{plat.get('system')}-{plat.get('machine')}" if plat else None,
        packages=versions,
        env={str(k): str(v) for k, v in env_vars.items()},
        libraries={k: fp[k] for k in ("numpy", "torch") if isinstance(fp.get(k), dict)},
        cpu=fp["cpu"] if isinstance(fp.get("cpu"), dict) else {},
        created=bool(run.environment and run.environment.created),
        seconds=run.seconds,
    )
