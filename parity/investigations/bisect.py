"""`parity bisect`: which of the packages two environments differ in change the outputs.

When the reference and candidate environments of a check diverge and their locks differ
in k packages, `bisect_environments` builds intermediate venvs (envlock.combine): each
takes a subset of the differing packages from the candidate lock and everything else
from the reference lock, replays the input set there and compares with the reference
outputs under the config's tolerances. A *trial* says whether the divergence is
reproduced (`fail`), not (`pass`), or the combination could not be built or run
(`unresolved`: packages that no set of differing packages makes installable, `uv pip
check` finding a broken requirement after all, or a model that cannot run). Before
building, a resolution on metadata (envlock.installable) adds to the asked packages what
they cannot move without, so a trial never builds an inconsistent environment; the report
says what was dragged and why. `ddmin` finds a 1-minimal failing
subset (Zeller and Hildebrandt, 2002): removing any one package from it no longer
reproduces the divergence. An unresolved trial never counts as failing, so it can never
make a package a culprit. Every trial is asked once, and every intermediate environment
is cached by its combined lock; for a single culprit among k packages that is about
2 log2(k) intermediate environments, plus the two the check itself uses.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from envlock.backends import VenvBackend
from envlock.backends.venv import default_cache_dir
from envlock.combine import PackageDifference, combine, differing_packages, incompatibilities
from envlock.environments import EnvironmentSpec
from envlock.errors import EnvlockError
from envlock.installable import (
    Closure,
    PinnedMetadata,
    installable_closure,
    marker_environment,
    site_packages,
)
from envlock.lockfile import MAIN
from envlock.names import shown_path
from envlock.progress import Progress, quiet
from parity.config import ParityConfig
from parity.errors import ConfigError
from parity.jsontext import json_safe, json_text
from parity.judging.judge import check_tolerance_tables, judge_outputs
from parity.runs.replay import EnvRun, WorkFolder, replay_environments

Outcome = Literal["fail", "pass", "unresolved"]


@dataclass(frozen=True)
class Trial:
    """One combination tried: the packages taken from the candidate side, and the outcome."""

    packages: tuple[str, ...]
    outcome: Outcome


@dataclass
class Bisection:
    """The culprits ddmin found, and every trial in the order it ran."""

    culprits: tuple[str, ...]
    trials: list[Trial] = field(default_factory=list)


class NotReproduced(ValueError):
    """Taking every differing package from the candidate side does not reproduce the
    divergence, so there is nothing to bisect."""


def ddmin(packages: Sequence[str], trial: Callable[[tuple[str, ...]], Outcome]) -> Bisection:
    """A 1-minimal subset of `packages` for which `trial` fails, with every trial made.

    `trial(subset)` must fail for all of `packages` (else `NotReproduced`); the empty
    subset is the reference environment itself and is assumed to pass."""
    order = {p: i for i, p in enumerate(packages)}
    seen: dict[frozenset[str], Outcome] = {frozenset(): "pass"}
    result = Bisection(culprits=())

    def run(subset: Sequence[str]) -> Outcome:
        key = frozenset(subset)
        if key not in seen:
            ordered = tuple(sorted(key, key=order.__getitem__))
            seen[key] = trial(ordered)
            result.trials.append(Trial(ordered, seen[key]))
        return seen[key]

    current = list(packages)
    if run(current) != "fail":
        raise NotReproduced(
            f"taking all {len(current)} differing packages from the candidate side does "
            "not reproduce the divergence"
        )
    n = 2
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = next((c for c in chunks if run(c) == "fail"), None)
        if reduced is not None:
            current, n = reduced, 2
            continue
        if n > 2:  # with two chunks each complement is the other chunk, already tried
            complement = next(
                (rest for c in chunks if run(rest := [p for p in current if p not in c]) == "fail"),
                None,
            )
            if complement is not None:
                current, n = complement, max(n - 1, 2)
                continue
        if n >= len(current):
            break
        n = min(len(current), 2 * n)
    result.culprits = tuple(sorted(current, key=order.__getitem__))
    return result


def _split(items: list[str], n: int) -> list[list[str]]:
    """`items` in `n` contiguous chunks of nearly equal size."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return [c for c in chunks if c]


# --- building and running the trials -------------------------------------------------

# The JSON Schema of `BisectReport.to_dict()`; it ships with the package.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema" / "bisect.schema.json"
BisectVerdict = Literal["culprits", "pass", "not_reproduced", "error"]
CANDIDATE_ITSELF = "the candidate environment itself"
NOT_BUILT = "not built (not installable)"


@dataclass(frozen=True)
class TrialRecord:
    """One combination as the report shows it: what was taken from the candidate, the
    outcome and why, where it ran, and each output's largest difference."""

    packages: tuple[str, ...]
    outcome: Outcome
    reason: str
    environment: str
    lock: str | None
    built: bool  # this run built the environment (False: it came from the cache)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # What was installed: `packages` plus what they drag (a requirement joining them).
    installed: tuple[str, ...] = ()
    dragged: dict[str, str] = field(default_factory=dict)  # dragged package -> why


@dataclass(frozen=True)
class Drag:
    """A culprit package that cannot move without others: which, and the requirements why."""

    package: str
    drags: list[str]
    because: list[str]

    def describe(self) -> str:
        """`numpy cannot move without scipy: scipy 1.11.4 requires numpy<1.28.0,>=1.21.6`."""
        return (
            f"{self.package} cannot move without {' and '.join(self.drags)}: "
            f"{', '.join(self.because)}"
        )


@dataclass(frozen=True)
class BisectReport:
    """What `parity bisect` found: the culprits, and every combination tried."""

    verdict: BisectVerdict
    message: str
    config: str
    reference: str
    candidate: str
    differing: list[PackageDifference]
    culprits: list[str]
    trials: list[TrialRecord]
    environments: int  # environments used: the reference, the candidate, the intermediates
    built: int  # how many of those this run built (the rest came from the cache)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resolutions: int = 0  # installability checks on metadata (each cheaper than a build)
    drags: list[Drag] = field(default_factory=list)  # why the culprits move together

    @property
    def not_installable(self) -> int:
        """Combinations found not installable as asked, by a resolution (never built)."""
        return sum(bool(t.dragged) or t.environment == NOT_BUILT for t in self.trials)

    @property
    def exit_code(self) -> int:
        """0 the outputs agree (nothing to bisect), 1 they diverge (culprits named, or the
        packages alone do not reproduce it), 3 an environment failed."""
        return {"pass": 0, "culprits": 1, "not_reproduced": 1, "error": 3}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: `culprits` (package names), `trials` (each combination tried)."""
        versions = {d.name: d for d in self.differing}
        data = {
            "schema_version": "1",
            "command": "bisect",
            "verdict": self.verdict,
            "message": self.message,
            "config": self.config,
            "reference": self.reference,
            "candidate": self.candidate,
            "culprits": self.culprits,
            "culprit_versions": [asdict(versions[c]) for c in self.culprits],
            "differing": [asdict(d) for d in self.differing],
            "trials": [asdict(t) for t in self.trials],
            "environments": {"used": self.environments, "built": self.built},
            "resolutions": self.resolutions,
            "not_installable": self.not_installable,
            "cannot_move_alone": [asdict(d) for d in self.drags],
            "errors": self.errors,
            "seconds": self.seconds,
        }
        return dict(json_safe(data))

    def to_json(self) -> str:
        """The report as JSON text."""
        return json_text(self.to_dict())


def bisect_environments(
    config: ParityConfig,
    *,
    workdir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> BisectReport:
    """Find the packages that make the config's two environments diverge.

    Raise `ConfigError` when an environment is not a venv built from a pylock; failures
    inside the reference or candidate environment give an `error` report."""
    say = progress or quiet
    started = time.perf_counter()
    specs = {e.name: e for e in config.environments}
    ref_spec = specs[config.reference]
    cand_spec = next(e for e in config.environments if e.name != config.reference)
    for spec in (ref_spec, cand_spec):
        if spec.backend != "venv" or spec.lock is None or spec.lock.name.endswith(".yml"):
            raise ConfigError(
                config.path,
                f"environments.{spec.name}",
                f"bisecting builds venvs between the two locks, so both environments must be "
                f"venvs built from a pylock.toml; {spec.name!r} uses backend {spec.backend!r}"
                + ("" if spec.lock else " without a lock"),
            )
    with WorkFolder(workdir, say) as work:
        return _bisect(config, ref_spec, cand_spec, work, cache_dir, say, started)


def _bisect(
    config: ParityConfig,
    ref_spec: EnvironmentSpec,
    cand_spec: EnvironmentSpec,
    work: WorkFolder,
    cache_dir: Path | None,
    say: Progress,
    started: float,
) -> BisectReport:
    cache_root = cache_dir or default_cache_dir()
    backend = VenvBackend(cache_dir)
    ref, cand = EnvRun(ref_spec), EnvRun(cand_spec)

    def finish(verdict: BisectVerdict, message: str, **found: Any) -> BisectReport:
        errors = [r.error for r in (ref, cand) if r.error]
        work.keep = work.keep or bool(errors)
        trials: list[TrialRecord] = found.get("trials", [])
        intermediate = [t for t in trials if t.environment != CANDIDATE_ITSELF and t.lock]
        used = (2 + len({t.lock for t in intermediate})) if ref.environment else 0
        built = sum(bool(r.environment and r.environment.created) for r in (ref, cand))
        return BisectReport(
            verdict=verdict,
            message=message,
            config=str(config.path),
            reference=ref_spec.name,
            candidate=cand_spec.name,
            differing=found.get("differing", []),
            culprits=found.get("culprits", []),
            trials=trials,
            environments=used,
            built=built + sum(t.built for t in intermediate),
            errors=errors,
            seconds=round(time.perf_counter() - started, 3),
            resolutions=found.get("resolutions", 0),
            drags=found.get("drags", []),
        )

    say(f"checking {ref_spec.name} against {cand_spec.name} first")
    input_digest, _ = replay_environments(config, [ref, cand], work.path, cache_dir, say, False)
    if ref.error or cand.error:
        return finish("error", "an environment failed before any combination was tried")
    check_tolerance_tables(config, set(ref.outputs) | set(cand.outputs))
    failing, candidate_diffs = _judge_outputs(config, ref, cand)
    if not failing:
        return finish("pass", "the outputs agree within tolerance: nothing to bisect")
    assert ref.lock is not None and cand.lock is not None
    differing = differing_packages(ref.lock, ref_spec.group, cand.lock, cand_spec.group)
    if not differing:
        return finish(
            "not_reproduced",
            f"the outputs diverge ({failing[0]}), but both locks install the same package "
            "versions: the cause is not a package (compare the environment variables, "
            "interpreter and hardware in `parity check`'s report)",
        )
    say(f"{len(differing)} differing package(s): {', '.join(d.describe() for d in differing)}")
    # Intermediate environments run with the reference's settings. When the candidate's
    # are the same, taking every differing package gives the candidate environment itself.
    candidate_is_full_set = ref_spec.env == cand_spec.env and (
        ref.lock.requires_python == cand.lock.requires_python
    )
    records: dict[tuple[str, ...], TrialRecord] = {}
    names = [d.name for d in differing]
    order = {n: i for i, n in enumerate(names)}
    # Installability is decided on metadata before anything is built: the reference and
    # candidate venvs hold every version a combination can pin (envlock.installable).
    metadata = PinnedMetadata(
        [
            *site_packages(ref.environment.root if ref.environment else None),
            *site_packages(cand.environment.root if cand.environment else None),
        ],
        [ref.lock, cand.lock],
        cache_root,
    )
    markers = marker_environment(ref.environment.python if ref.environment else None)
    ref_versions = ref.lock.versions(ref_spec.group)
    cand_versions = cand.lock.versions(cand_spec.group)
    closures: dict[tuple[str, ...], Closure] = {}
    by_installed: dict[tuple[str, ...], int] = {}  # installed set -> the trial that ran it
    resolutions = 0

    def trial(subset: tuple[str, ...]) -> Outcome:
        nonlocal resolutions
        if subset in records:
            return records[subset].outcome
        number = len(records) + 1
        say(f"trial {number}: taking {', '.join(subset)} from {cand_spec.name}")
        t0 = time.perf_counter()
        closure = installable_closure(ref_versions, cand_versions, subset, metadata, markers)
        closures[subset] = closure
        resolutions += closure.resolutions
        installed = tuple(sorted(closure.packages, key=order.__getitem__))
        dragged = {
            name: why.describe()
            for moved in closure.drags().values()
            for name, why in moved.items()
        }
        for mover, moved in closure.drags().items():
            # `numpy 2.2.6 cannot move alone: scipy 1.11.4 requires numpy<1.28.0,>=1.21.6`
            say(
                f"trial {number}: {mover} {cand_versions.get(mover) or '(absent)'} cannot "
                f"move alone: {'; '.join(w.short() for w in moved.values())}; taking "
                f"{', '.join(moved)} too (found by resolution)"
            )
        if not closure.installable:
            record = TrialRecord(
                subset,
                "unresolved",
                "cannot be installed together (found by resolution, not built): "
                + "; ".join(c.describe() for c in closure.broken),
                NOT_BUILT,
                None,
                False,
                installed=installed,
                dragged=dragged,
            )
        elif installed in by_installed:
            earlier = records[next(k for k, r in records.items() if r.installed == installed)]
            record = dataclasses.replace(
                earlier,
                packages=subset,
                environment=(
                    earlier.environment
                    if earlier.environment == CANDIDATE_ITSELF
                    else f"as trial {by_installed[installed]}"
                ),
                built=False,
                seconds=0.0,
                installed=installed,
                dragged=dragged,
            )
        elif candidate_is_full_set and len(installed) == len(names):
            record = TrialRecord(
                subset,
                "fail",
                failing[0],
                CANDIDATE_ITSELF,
                None,
                False,
                candidate_diffs,
                installed=installed,
                dragged=dragged,
            )
        else:
            record = _run_trial(
                config,
                installed,
                ref,
                cand,
                number,
                work.path,
                backend,
                cache_root,
                input_digest,
                work.given,
                say,
            )
            record = dataclasses.replace(
                record,
                packages=subset,
                seconds=round(time.perf_counter() - t0, 3),
                installed=installed,
                dragged=dragged,
            )
        if closure.installable and installed not in by_installed:
            by_installed[installed] = number
        records[subset] = record
        say(f"trial {number}: {record.outcome}: {record.reason}")
        return record.outcome

    def report_trials() -> list[TrialRecord]:
        return list(records.values())

    try:
        found = ddmin(names, trial)
    except NotReproduced:
        return finish(
            "not_reproduced",
            f"taking all {len(names)} differing packages from {cand_spec.name} does not "
            f"reproduce the divergence ({failing[0]}): it also depends on something besides "
            "the packages (environment variables, interpreter)",
            differing=differing,
            trials=report_trials(),
            resolutions=resolutions,
        )
    # The culprits drag packages they cannot move without: do those alone reproduce it?
    # If so, the search goes on among them; if not, the culprits are the cause.
    dragged_alone: tuple[str, ...] = ()
    for _ in range(len(names)):
        closure = closures[found.culprits]
        extra = tuple(p for p in closure.packages if p not in found.culprits)
        if not extra:
            break
        dragged_alone = tuple(sorted(extra, key=order.__getitem__))
        if trial(dragged_alone) != "fail":
            break
        found, dragged_alone = ddmin(list(dragged_alone), trial), ()
    versions = {d.name: d for d in differing}
    closure = closures[found.culprits]
    culprits = [n for n in names if n in closure.packages]
    drags = [
        Drag(mover, sorted(moved), [why.short() for _, why in sorted(moved.items())])
        for mover, moved in sorted(closure.drags().items())
    ]
    message = _culprit_message(found.culprits, culprits, drags, dragged_alone, records, versions)
    return finish(
        "culprits",
        message,
        differing=differing,
        culprits=culprits,
        trials=report_trials(),
        resolutions=resolutions,
        drags=drags,
    )


def _culprit_message(
    asked: tuple[str, ...],
    culprits: list[str],
    drags: list[Drag],
    dragged_alone: tuple[str, ...],
    records: dict[tuple[str, ...], TrialRecord],
    versions: dict[str, PackageDifference],
) -> str:
    """What the bisection found, in words that claim no more than the trials showed."""
    shown = [versions[c].describe() for c in culprits]
    notes = [d.describe() for d in drags]
    if dragged_alone and dragged_alone in records:
        taken = records[dragged_alone]
        notes.append(
            f"{' + '.join(dragged_alone)} without {' + '.join(asked)}: {taken.outcome}"
            + ("" if taken.outcome == "pass" else f" ({taken.reason})")
        )
    without = {c: records.get(tuple(p for p in asked if p != c)) for c in asked if len(asked) > 1}
    for c, record in without.items():
        if record is None or record.outcome != "pass":
            why = "never tried" if record is None else f"{record.outcome}: {record.reason}"
            notes.append(f"without {c}: {why}")
    if not notes and len(culprits) == 1:
        return f"{shown[0]} alone reproduces the divergence"
    if not notes:
        return (
            f"{', '.join(shown)} reproduce the divergence together; no one of them without "
            "the others does"
        )
    return (
        f"the smallest installable change that reproduces it: {' + '.join(culprits)} "
        f"({'; '.join(notes)}); versions: {', '.join(shown)}"
    )


def _judge_outputs(
    config: ParityConfig, ref: EnvRun, run: EnvRun
) -> tuple[list[str], dict[str, float]]:
    """Why `run`'s outputs fail against `ref`'s (empty: they pass), and each output's
    largest absolute difference."""
    judged = judge_outputs(config, ref.outputs, run.outputs, (ref.name, run.name))
    return judged.reasons, {o.name: o.max_abs_diff for o in judged.comparisons}


def _run_trial(
    config: ParityConfig,
    subset: tuple[str, ...],
    ref: EnvRun,
    cand: EnvRun,
    number: int,
    work: Path,
    backend: VenvBackend,
    cache_root: Path,
    input_digest: str,
    keep: bool,
    say: Progress,
) -> TrialRecord:
    """Build the combination taking `subset` from the candidate, replay the inputs in it,
    and judge its outputs against the reference's."""
    assert ref.lock is not None and cand.lock is not None
    lock = combine(ref.lock, ref.spec.group, cand.lock, cand.spec.group, subset, cache_root)
    shown = shown_path(lock.path)

    def unresolved(reason: str, built: bool = False) -> TrialRecord:
        return TrialRecord(subset, "unresolved", reason, "venv", shown, built)

    try:
        environment = backend.materialize(
            lock, MAIN, progress=lambda m: say(f"trial {number}: {m}")
        )
    except EnvlockError as e:
        return unresolved(f"cannot be installed together: {_first_lines(str(e))}")
    broken = incompatibilities(environment)
    if broken:
        return unresolved(f"installed, but inconsistent: {'; '.join(broken)}", environment.created)
    name = f"trial-{number}"
    spec = dataclasses.replace(ref.spec, name=name, lock=lock.path, group=MAIN)
    run = EnvRun(spec)
    replay_environments(config, [run], work, cache_root, say, False, input_digest)
    try:
        if run.error:
            return unresolved(
                f"the model cannot run in this combination: {_first_lines(run.error)}",
                environment.created,
            )
        reasons, diffs = _judge_outputs(config, ref, run)
        return TrialRecord(
            subset,
            "fail" if reasons else "pass",
            reasons[0] if reasons else "the outputs agree with the reference within tolerance",
            "venv",
            shown,
            environment.created,
            diffs,
        )
    finally:
        if not keep:
            shutil.rmtree(work / name, ignore_errors=True)


def _first_lines(text: str, count: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-count:]) if lines else text
