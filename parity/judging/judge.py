"""Judging a replay, the one way check, bisect, search and localize all do it: each
output compared under its tolerance policy (`parity.judging.compare`), missing outputs
named, version differences judged (`parity.judging.versions`), and the reasons a check
fails, in the order the report lists them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envlock.progress import Progress, quiet
from parity.comparison import Noise, OutputComparison
from parity.config import ParityConfig
from parity.errors import ConfigError
from parity.judging.caught import WarningFinding, judge_warnings
from parity.judging.compare import compare_arrays, measure_noise
from parity.judging.versions import VersionDiff, judge_versions, version_reasons
from parity.runs.replay import EnvRun

if TYPE_CHECKING:
    import numpy as np

    from parity.arrays import OutputArray

    Outputs = Mapping[str, np.ndarray | OutputArray]

LARGE_OUTPUT = 1 << 26  # elements; comparing more than this reports progress


@dataclass(frozen=True)
class OutputsJudgement:
    """Every output of the candidate judged against the reference's."""

    comparisons: list[OutputComparison]
    missing: list[str]  # "output 'x' is missing from infer", one per output one side lacks

    @property
    def reasons(self) -> list[str]:
        """Why the outputs fail (empty: they pass): missing outputs, then failing ones."""
        failing = [f"output {o.name!r}: {o.reason}" for o in self.comparisons if not o.passed]
        return self.missing + failing

    def by_name(self) -> dict[str, OutputComparison]:
        """The comparisons by output name."""
        return {o.name: o for o in self.comparisons}


@dataclass(frozen=True)
class Judgement:
    """A whole replay judged: outputs, version differences, warnings, and why the check
    fails."""

    outputs: OutputsJudgement
    version_diffs: list[VersionDiff] = field(default_factory=list)
    warnings: list[WarningFinding] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Every reason the check fails, outputs first, then versions (one per root cause),
        then warnings (empty: it passes)."""
        return (
            self.outputs.reasons
            + version_reasons(self.version_diffs)
            + [w.reason() for w in self.warnings if w.fails]
        )


def judge(
    config: ParityConfig,
    ref: EnvRun,
    cand: EnvRun,
    say: Progress = quiet,
    outputs: OutputsJudgement | None = None,
) -> Judgement:
    """The candidate's outputs and versions judged against the reference's under the
    config's policies (each environment's self-disagreement, where calibrated, as noise;
    image-like outputs that differ with their worst sample's pictures), and the warnings
    each environment caught; `ConfigError` for a tolerance table naming no output.
    `outputs`: the outputs judged already (a sharded check compares them on the nodes),
    used as they are."""
    if outputs is not None:
        known = bool(ref.fingerprint) and bool(cand.fingerprint)
        versions = judge_versions(config, ref, cand) if known else []
        return Judgement(outputs, versions, judge_warnings(config, ref, cand))
    check_tolerance_tables(config, set(ref.outputs) | set(cand.outputs))
    noise: dict[str, dict[str, Noise]] = {}
    for run in (ref, cand):
        for name, repeat in run.repeat.items():
            if name in run.outputs:
                noise.setdefault(name, {})[run.name] = measure_noise(run.outputs[name], repeat)
    outputs = judge_outputs(
        config,
        ref.outputs,
        cand.outputs,
        (ref.name, cand.name),
        noise=noise,
        say=say,
        pictures=True,
    )
    # An environment whose versions are unknown (an endpoint nothing was recorded of) has
    # no fingerprint: comparing it would list every package as missing, so nothing is
    # compared and the report says the versions are unknown.
    known = bool(ref.fingerprint) and bool(cand.fingerprint)
    versions = judge_versions(config, ref, cand) if known else []
    return Judgement(outputs, versions, judge_warnings(config, ref, cand))


def judge_outputs(
    config: ParityConfig,
    reference: Outputs,
    candidate: Outputs,
    names: tuple[str, str],
    *,
    noise: Mapping[str, dict[str, Noise]] | None = None,
    say: Progress = quiet,
    pictures: bool = False,
) -> OutputsJudgement:
    """Each output of `candidate` compared with `reference`'s under its tolerance, in name
    order; `names` are the two environments' names, for the missing-output reasons. With
    `pictures`, each image-like output that differs carries its worst sample's pictures
    (for the HTML report; investigations that only need verdicts leave them out)."""
    ref_name, cand_name = names
    comparisons = []
    missing = []
    for name in sorted(set(reference) | set(candidate)):
        if name not in candidate:
            missing.append(f"output {name!r} is missing from {cand_name}")
            continue
        if name not in reference:
            missing.append(f"output {name!r} is missing from {ref_name}")
            continue
        policy = config.tolerance_for(name)
        elements = math.prod(reference[name].shape)
        say(f"comparing {name!r}: {elements:,} elements, {policy.describe()}")
        comparisons.append(
            compare_arrays(
                name,
                reference[name],
                candidate[name],
                policy,
                noise=dict((noise or {}).get(name, {})),
                on_block=_quarters(name, say) if elements >= LARGE_OUTPUT else None,
                pictures=pictures,
            )
        )
    return OutputsJudgement(comparisons, missing)


def check_tolerance_tables(config: ParityConfig, outputs: set[str]) -> None:
    """Raise `ConfigError` for a `[tolerance.outputs.NAME]` table naming none of
    `outputs` (all the outputs of both environments): its output (a typo, say) would be
    judged under the default tolerance unseen."""
    for name in sorted(config.output_tolerances):
        if name not in outputs:
            raise ConfigError(
                config.path,
                f"tolerance.outputs.{name}",
                f"no output {name!r} (the model returns: {', '.join(map(repr, sorted(outputs)))})",
            )


def _quarters(name: str, say: Progress) -> Callable[[int, int], None]:
    """A block callback that reports a long comparison at each quarter."""
    told = [0]

    def on_block(done: int, total: int) -> None:
        quarter = 4 * done // total if total else 4
        if quarter > told[0] and quarter < 4:
            told[0] = quarter
            say(f"comparing {name!r}: {25 * quarter}% of {total:,} elements")

    return on_block
