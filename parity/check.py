"""The parity check's two entry points: `run_check` (two live environments) and
`check_against` (one environment against a golden bundle).

Both replay the input set (`parity.runs.replay`), judge the outputs and versions
(`parity.judging.judge`), localize a failure when asked (`parity.investigations.localize`)
and return the one `ParityReport` every renderer formats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.environments import EnvironmentSpec
from envlock.lockfile import MAIN
from envlock.progress import Progress, quiet
from parity.config import ParityConfig
from parity.errors import BundleError, ConfigError, ParityError
from parity.inputs.samples import SampleFolder
from parity.runs.job import INPUTS
from parity.runs.replay import (
    EnvironmentSummary,
    EnvRun,
    WorkFolder,
    describe_inputs,
    replay_environments,
    run_errors,
    say_input_warnings,
    summary,
    write_inputs,
)

if TYPE_CHECKING:
    from parity.bundle import Bundle
    from parity.judging.judge import OutputsJudgement
    from parity.report import ParityReport


def _also(meanwhile: Callable[[], None] | None) -> Callable[[], None]:
    """What to do while the workers run: import what judging and reporting need (a
    check's start-up imports only what starting the workers needs), then the
    caller's `meanwhile`."""

    def prepare() -> None:
        import parity.judging.caught
        import parity.judging.judge
        import parity.report  # noqa: F401

        if meanwhile is not None:
            meanwhile()

    return prepare


def run_check(
    config: ParityConfig,
    *,
    workdir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    calibrate: bool | None = None,
    localize: bool | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> ParityReport:
    """Run the parity check `config` describes and return its report (never raises for
    failures inside environments: they become the report's errors and an `error` verdict).

    With `calibrate` (default: the config's `run.calibrate`) each environment runs the
    inputs twice, and how much it disagrees with itself is reported per output. With
    `localize` (default: the config's `run.localize`) a failing check runs the worst
    sample through the adapter's stages in both environments and the report names the
    first stage, and module, beyond tolerance (`parity.investigations.localize`).
    `meanwhile` is called once while the environments run (the host waits on them then):
    the caller's own preparation, e.g. importing what rendering the report needs."""
    say = progress or quiet
    calibrate = _calibration(config, calibrate)
    started = time.perf_counter()
    runs = [EnvRun(spec) for spec in config.environments]
    localize = config.localize if localize is None else localize
    if config.executor == "ray":
        return _run_sharded(
            config, runs, workdir, cache_dir, say, calibrate, localize, meanwhile, started
        )
    with WorkFolder(workdir, say) as work:
        input_digest, generated = replay_environments(
            config, runs, work.path, cache_dir, say, calibrate, meanwhile=_also(meanwhile)
        )
        ref, cand = _sides(config, runs)
        return _conclude(
            config,
            ref,
            cand,
            run_errors(runs),
            {r.name: functools.partial(summary, r) for r in runs},
            work=work,
            input_digest=input_digest,
            calibrate=calibrate,
            say=say,
            started=started,
            generated=generated,
            localize=localize,
        )


def _run_sharded(
    config: ParityConfig,
    runs: list[EnvRun],
    workdir: Path | None,
    cache_dir: Path | None,
    say: Progress,
    calibrate: bool,
    localize: bool,
    meanwhile: Callable[[], None] | None,
    started: float,
) -> ParityReport:
    """`run_check` with `run.executor = "ray"`: the replay sharded over a Ray cluster
    (`parity.runs.sharded`). With `run.ray.merge = "partial"` (the default) each shard is
    compared on its node and the partial comparisons merged exactly
    (`parity.sharded_check`); with "outputs" the shards' outputs are assembled here in
    sample order and judged as a local check's. Either way reported as a local check's
    (`conclude_shards`), with the `execution` block added. `cache_dir` is this machine's:
    the nodes materialize the environments in their own envlock caches, so it is said,
    not passed on (a path here need not exist, or be writable, on another machine)."""
    from parity.runs.sharded import replay_sharded
    from parity.sharded_check import replay_and_compare

    if cache_dir is not None:
        say(
            f"ray: --cache-dir {cache_dir} is this machine's, not the nodes': each node "
            "materializes the environments in its own envlock cache ($ENVLOCK_CACHE_DIR there)"
        )
    outputs: OutputsJudgement | None = None
    errors: list[str] = []
    with WorkFolder(workdir, say) as work:
        if config.ray.merge == "partial":  # the shards compared on their nodes
            sharded, outputs, errors = replay_and_compare(
                config,
                runs,
                work.path,
                say,
                calibrate=calibrate,
                localize=localize,
                meanwhile=_also(meanwhile),
            )
        else:  # the shards' outputs assembled here
            sharded = replay_sharded(
                config,
                runs,
                work.path,
                say,
                calibrate=calibrate,
                localize=localize,
                meanwhile=_also(meanwhile),
            )
        report = conclude_shards(
            config,
            runs,
            [*sharded.errors, *errors],
            sharded.described,
            work=work,
            input_digest=sharded.input_digest,
            say=say,
            started=started,
            generated=sharded.generated,
            outputs=outputs,
        )
    return dataclasses.replace(report, execution=sharded.execution)


def conclude_shards(
    config: ParityConfig,
    runs: list[EnvRun],
    errors: list[str],
    described: dict[str, tuple[str, bool]],
    *,
    work: WorkFolder,
    input_digest: str,
    say: Progress,
    started: float,
    generated: float,
    outputs: OutputsJudgement | None = None,
) -> ParityReport:
    """The report of a check whose environments ran in shards (on a Ray cluster, or as
    shard files merged), judged as a local check's (`_conclude`, never calibrated): the
    runs filled from the shards, `errors` besides the environments' own, and each
    environment described as its shards said (`described`: its description, and whether
    it was created, by environment name; one not there as a local check describes it).
    `outputs`: the outputs already judged (the shards' partial comparisons merged)."""

    def describe(run: EnvRun) -> EnvironmentSummary:
        found = summary(run)
        if run.name not in described:
            return found
        description, created = described[run.name]
        return dataclasses.replace(found, description=description, created=created)

    ref, cand = _sides(config, runs)
    return _conclude(
        config,
        ref,
        cand,
        [*run_errors(runs), *errors],
        {r.name: functools.partial(describe, r) for r in runs},
        work=work,
        input_digest=input_digest,
        calibrate=False,
        say=say,
        started=started,
        generated=generated,
        outputs=outputs,
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
    meanwhile: Callable[[], None] | None = None,
) -> ParityReport:
    """Check one environment of `config` (default: the one that is not the reference, i.e.
    the inference side) against a golden bundle, which stands in for the reference
    environment; the report, with the bundle as its reference and `against` set.

    The config may lack the reference environment, or have set it aside because its lock
    is gone (`load_config(..., against=True)`); progress says the reference is the
    bundle's recording. Raise `ConfigError` for an environment to check that the config
    lacks and `BundleError` when the bundle answers a different input set; failures
    inside the environment become the report's errors, as in `run_check` (and `meanwhile`
    is called as there)."""
    say = progress or quiet
    calibrate = _calibration(config, calibrate)
    if config.executor != "local":
        raise ConfigError(
            config.path,
            "run.executor",
            f"a check against a bundle runs locally only (executor = 'local'), not "
            f"{config.executor!r}",
        )
    name = _candidate(config, env_name)
    _say_reference(config, bundle, say)
    started = time.perf_counter()
    with WorkFolder(workdir, say) as work:
        input_digest = write_inputs(config, work.path / INPUTS)
        if input_digest != bundle.input_digest:
            raise _different_inputs(config, bundle, input_digest)
        generated = time.perf_counter()
        say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
        say_input_warnings(config, say)
        if bundle.adapter != config.adapter:
            say(
                f"note: the bundle was recorded with adapter {bundle.adapter}, the config "
                f"names {config.adapter}"
            )
        cand = EnvRun(config.environment(name))
        replay_environments(
            config,
            [cand],
            work.path,
            cache_dir,
            say,
            calibrate,
            input_digest,
            meanwhile=_also(meanwhile),
        )
        ref = _bundle_run(bundle, cand)
        if (note := _old_bundle_note(bundle, cand)) is not None:
            say(note)
        report = _conclude(
            config,
            ref,
            cand,
            [cand.error] if cand.error else [],
            {
                ref.name: lambda: dataclasses.replace(bundle.environment, name=ref.name),
                name: functools.partial(summary, cand),
            },
            work=work,
            input_digest=input_digest,
            calibrate=calibrate,
            say=say,
            started=started,
            generated=generated,
            localize=config.localize if localize is None else localize,
        )
    from parity.report import BundleReference

    return dataclasses.replace(
        report,
        against=BundleReference(
            path=str(bundle.path),
            manifest_digest=bundle.manifest_digest,
            environment=bundle.environment.name,
            created=bundle.created,
        ),
    )


def _candidate(config: ParityConfig, env_name: str | None) -> str:
    """The environment `check_against` checks: `env_name`, else the config's environment
    that is not the reference; raise `ConfigError` when there is none to check."""
    names = [e.name for e in config.environments]
    if env_name is not None and env_name in config.set_aside:
        raise ConfigError(
            config.path, None, f"cannot check {env_name!r}: {config.set_aside[env_name]}"
        )
    if env_name is None:
        others = [n for n in names if n != config.reference]
        if not others:
            raise ConfigError(
                config.path,
                "run.reference",
                f"names {config.reference!r}, the only environment to check: the bundle "
                f"is the reference, so name the environment to check with --env or leave "
                f"run.reference out",
            )
        if len(others) > 1:
            raise ConfigError(
                config.path,
                "run.reference",
                f"names {config.reference!r}, which the config does not have, so either "
                f"of {', '.join(others)} could be the one to check: name it with --env",
            )
        env_name = others[0]
    if env_name not in names:
        have = ", ".join(names) or "none"
        raise ConfigError(config.path, None, f"no environment {env_name!r} (have: {have})")
    return env_name


def _say_reference(config: ParityConfig, bundle: Bundle, say: Progress) -> None:
    """Say that the reference is the bundle's recording, and why the config's own
    reference environment, if any, is not needed."""
    recorded = bundle.environment.name
    words = f"reference: {recorded} as recorded in {bundle.path} ({bundle.created})"
    declared = [e.name for e in config.environments]
    if config.reference in config.set_aside:
        words += f"; {config.set_aside[config.reference]} (not needed: the bundle stands in)"
    elif config.reference and config.reference not in declared:
        words += f"; the config has no environment {config.reference!r} (not needed)"
    elif not config.reference:
        words += "; the config names no reference environment (not needed)"
    say(words)


def _sides(config: ParityConfig, runs: list[EnvRun]) -> tuple[EnvRun, EnvRun]:
    """The reference run and the candidate run of a check's two."""
    ref = next(r for r in runs if r.name == config.reference)
    cand = next(r for r in runs if r.name != config.reference)
    return ref, cand


def _conclude(
    config: ParityConfig,
    ref: EnvRun,
    cand: EnvRun,
    errors: list[str],
    environments: dict[str, Callable[[], EnvironmentSummary]],
    *,
    work: WorkFolder,
    input_digest: str,
    calibrate: bool,
    say: Progress,
    started: float,
    generated: float,
    localize: bool = False,
    outputs: OutputsJudgement | None = None,
) -> ParityReport:
    """Judge the replayed outputs, localize a failure if asked, and make the report (the
    work folder is kept when an environment failed).

    Whatever fails here, after the environments ran, is one more of the report's errors
    (`_AfterTheRun`), never an exception: reading an output that turns out truncated or
    corrupt, localizing, describing the inputs, summarizing an environment. The verdict is
    then `error`, so a CI gate still gets every report it asked for, and never a pass. A
    `ConfigError` (a tolerance table naming no output) stays a usage error."""
    from parity.judging.caught import dropped, judge_warnings
    from parity.judging.judge import Judgement, OutputsJudgement, judge
    from parity.report import ParityReport, Verdict

    errors = list(errors)
    after = _AfterTheRun(errors, (ref, cand), work, say)
    finished = time.perf_counter()
    judgement = Judgement(OutputsJudgement([], []))
    if not errors:
        with after("judging the outputs"):
            judgement = judge(config, ref, cand, say, outputs)
    reasons = [] if errors else judgement.reasons
    if errors:  # nothing was compared; the warnings caught before the failure are evidence
        with after("judging the warnings"):
            judgement = dataclasses.replace(judgement, warnings=judge_warnings(config, ref, cand))
    compared = time.perf_counter()
    localization = None
    if localize and reasons and not errors:
        from parity.investigations.localize import localize_failure

        with after("localizing the failure"):
            localization = localize_failure(
                config, ref, cand, judgement.outputs.comparisons, work.path, say
            )
    localized = time.perf_counter()
    inputs: dict[str, Any] = {"digest": input_digest}  # when describing it fails
    with after("describing the inputs"):
        inputs = describe_inputs(config, input_digest, say)
    summaries = {}
    for name, summarize in environments.items():
        with after(f"summarizing environment {name!r}"):
            summaries[name] = summarize()
        if name not in summaries:  # what is known without its fingerprint
            run = ref if name == ref.name else cand
            summaries[name] = summary(dataclasses.replace(run, fingerprint={}))
    verdict: Verdict = "error" if errors else ("fail" if reasons else "pass")
    work.keep = work.keep or bool(errors)
    return ParityReport(
        verdict=verdict,
        config=str(config.path),
        reference=ref.name,
        candidate=cand.name,
        inputs=inputs,
        environments=summaries,
        outputs=judgement.outputs.comparisons,
        version_diffs=judgement.version_diffs,
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
        warnings=judgement.warnings,
        warnings_dropped=dropped(ref, cand),
    )


class _AfterTheRun:
    """Turns a failure after the environments ran into one of the report's `errors`.

    `with after("judging the outputs"): ...` records what failed and why: an unreadable
    output names its environment (the one whose file it is); a `ParityError`, `OSError`,
    a corrupt archive or a malformed `.npy` member is said in one line. Any other
    exception is parity's own bug: its type and message are the error, and its traceback
    is written to `parity-traceback.txt` in the work folder (which is kept), since a
    report for the CI gate is worth more than a traceback on the terminal."""

    def __init__(
        self, errors: list[str], runs: tuple[EnvRun, ...], work: WorkFolder, say: Progress
    ) -> None:
        self.errors = errors
        self.runs = runs
        self.work = work
        self.say = say

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        try:
            yield
        except ConfigError:
            raise
        except Exception as e:  # see the class docstring
            error = self._error(what, e)
            self.errors.append(error)
            self.say(f"error: {error.splitlines()[0]}")

    def _error(self, what: str, e: Exception) -> str:
        message = str(e).strip() or type(e).__name__
        whose = self._whose(message)
        if isinstance(e, ParityError | OSError | zipfile.BadZipFile):
            if whose is not None:
                return f"environment {whose!r}: its outputs are unreadable: {message}"
            return f"{what} failed: {message}"
        self.work.keep = True
        trace = self.work.path / "parity-traceback.txt"
        with contextlib.suppress(OSError):
            trace.write_text("".join(traceback.format_exception(e)), encoding="utf-8")
        where = f" (environment {whose!r})" if whose is not None else ""
        return (
            f"{what}{where} failed with an unexpected {type(e).__name__}: {message} (a bug "
            f"in parity, please report it; the traceback is in {trace})"
        )

    def _whose(self, message: str) -> str | None:
        """The environment whose output file `message` names, if one does."""
        for run in self.runs:
            for output in (*run.outputs.values(), *run.repeat.values()):
                path = getattr(output, "path", None)
                if path is not None and str(path) in message:
                    return run.name
        return None


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


def _bundle_run(bundle: Bundle, cand: EnvRun) -> EnvRun:
    """The bundle as the reference side of a check against `cand`.

    The bundle carries no lock, only the view of it that it recorded (`Bundle.lock`: the
    versions pinned for its group, the group of each package), which explains group-only
    packages as expected, as in a check of two live environments. A bundle recorded before
    parity kept that view has only its lock's digest: when that is the candidate's own
    lock, the candidate's lock (read with the bundle's group) stands in for it; otherwise
    the locks explain nothing (see `_old_bundle_note`)."""
    recorded = bundle.environment
    label = recorded.name if recorded.name != cand.spec.name else f"{recorded.name} (bundle)"
    same_lock = cand.lock is not None and recorded.lock_digest == cand.lock.digest
    spec = EnvironmentSpec(
        name=label, backend=recorded.backend, group=recorded.group or MAIN, lock=None
    )
    return EnvRun(
        spec,
        lock=cand.lock if same_lock and bundle.lock is None else None,
        outputs=dict(bundle.outputs),
        fingerprint=bundle.fingerprint,
        recorded_lock=bundle.lock,
    )


def _old_bundle_note(bundle: Bundle, cand: EnvRun) -> str | None:
    """What a bundle recorded before parity kept its lock's view gives up, when it does:
    its lock is known by digest only, and the candidate's lock is another."""
    recorded = bundle.environment
    if bundle.lock is not None or recorded.lock_digest is None:
        return None
    if cand.lock is not None and cand.lock.digest == recorded.lock_digest:
        return None
    return (
        f"note: {bundle.path} does not record what its lock pins (recorded by an older "
        "parity), and the checked environment's lock is another: a package only in one "
        "lock group is reported, not expected; record the bundle again to judge it as a "
        "check of two live environments does"
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
