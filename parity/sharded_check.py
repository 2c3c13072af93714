"""A sharded check whose shards are compared on their nodes (`[run.ray] merge = "partial"`).

`parity.runs.sharded` replays the shards on the Ray cluster; this module gives it what a
shard does on its node after both workers ran (`summarize_shard`: each output of the
shard compared with `parity.judging.partial.compare_shard`, under the config's tolerance
for it, at the shard's offset in the whole output) and what a quantile pass asks a shard
whose outputs were kept there (`answer_request`: `shard_refine`). On the driver,
`compare_shards` merges each output's partial comparisons (`merge_partials`) and finishes
them (`finish`), each quantile pass one small task per shard on the node that holds its
outputs (`KeptShards.ask`): the comparisons a local check makes of the whole outputs,
without the outputs ever leaving the nodes (see `parity.judging.partial` for what is
equal and what equal up to summation order). The worst sample's pictures are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.progress import Progress
from parity.config import ParityConfig
from parity.errors import ClusterError, ConfigError, ParityError
from parity.judging.judge import OutputsJudgement, check_tolerance_tables
from parity.judging.partial import (
    PartialComparison,
    compare_shard,
    finish,
    merge_answers,
    merge_partials,
    pack,
    shard_refine,
    unpack,
)
from parity.judging.quantiles import KEEP_LIMIT
from parity.runs.replay import EnvRun
from parity.runs.sharded import ShardedReplay, ShardOutputs, keep_limit, replay_sharded

if TYPE_CHECKING:
    from parity.judging.partial import Part


def replay_and_compare(
    config: ParityConfig,
    runs: list[EnvRun],
    work: Path,
    say: Progress,
    *,
    calibrate: bool,
    localize: bool,
    meanwhile: Callable[[], None] | None,
) -> tuple[ShardedReplay, OutputsJudgement | None, list[str]]:
    """The sharded replay with each shard compared on its node: the replay, the outputs
    judged (None when the shards' comparisons are incomplete: an environment failed or a
    shard was lost, said in the replay's errors), and errors of the comparison itself."""
    limit = keep_limit(config)
    config = dataclasses.replace(config, ray=dataclasses.replace(config.ray, keep_limit=limit))
    judged: list[OutputsJudgement] = []
    errors: list[str] = []

    def then(replay: ShardedReplay) -> None:
        if not replay.summaries:
            return
        try:
            judged.append(compare_shards(config, replay, say))
        except ConfigError:
            raise
        except ParityError as e:  # a shard that could not answer a quantile pass
            errors.append(str(e))
        except ValueError as e:  # the shards' comparisons do not fit together
            errors.append(f"merging the shards' comparisons: {e}")

    replay = replay_sharded(
        config,
        runs,
        work,
        say,
        calibrate=calibrate,
        localize=localize,
        meanwhile=meanwhile,
        summarize=summarize_shard,
        then=then,
    )
    if not judged and not errors and not replay.errors and not any(r.error for r in runs):
        errors.append("the shards' comparisons did not come back: nothing was compared")
    return replay, (judged[0] if judged else None), errors


def _pair(config: ParityConfig) -> tuple[str, str]:
    ref = config.reference
    cand = next(spec.name for spec in config.environments if spec.name != ref)
    return ref, cand


# --- on a node ---------------------------------------------------------------------------


def summarize_shard(config: ParityConfig, outputs: ShardOutputs, start: int) -> dict[str, Any]:
    """A shard's summary, on its node: each output both environments returned compared
    (`PartialComparison.to_bytes`, under `partials`), the output names of each environment.
    With no keep limit set (`[run.ray] keep_limit`, `$PARITY_SHARD_KEEP_LIMIT`), an output
    whose two arrays take fewer bytes than its partial comparison comes back as the arrays
    instead (`pack`ed, under `outputs`), which the driver compares as the node would have:
    a shard never sends back more than its outputs (a partial keeps every positive
    difference, two float64 values each, under 8 Mi of them)."""
    ref_name, cand_name = _pair(config)
    ref, cand = outputs[ref_name], outputs[cand_name]
    partials: dict[str, bytes] = {}
    raw: dict[str, bytes] = {}
    for name in sorted(set(ref) & set(cand)):
        partial = compare_part(config, name, ref[name], cand[name], start).to_bytes()
        arrays = _nbytes(ref[name]) + _nbytes(cand[name])
        if config.ray.keep_limit is None and arrays < len(partial):
            with contextlib.suppress(ValueError):  # a dtype `pack` does not write
                packed = pack({"reference": ref[name].load(), "candidate": cand[name].load()})
                if len(packed) < len(partial):
                    raw[name] = packed
                    continue
        partials[name] = partial
    summary: dict[str, Any] = {
        "partials": partials,
        "names": {e: sorted(o) for e, o in outputs.items()},
    }
    if raw:
        summary["outputs"] = raw
    return summary


def _nbytes(array: Part) -> int:
    return math.prod(array.shape) * array.dtype.itemsize


def compare_part(
    config: ParityConfig, name: str, ref: Part, cand: Part, start: int
) -> PartialComparison:
    """Output `name` of the shard starting at sample `start` compared under the config's
    tolerance for it, at its offset in the whole output: on the node, or on the driver
    for an output that came back as arrays (the same comparison)."""
    shape = tuple(int(n) for n in ref.shape)
    if not shape:
        raise ParityError(f"output {name!r} has no sample axis: it cannot be sharded")
    limit = config.ray.keep_limit if config.ray.keep_limit is not None else KEEP_LIMIT
    return compare_shard(
        name,
        ref,
        cand,
        config.tolerance_for(name),
        offset=start * math.prod(shape[1:]),
        full_shape=(config.inputs.count, *shape[1:]),
        keep_limit=limit,
    )


def answer_request(outputs: ShardOutputs, request: bytes) -> bytes:
    """One quantile pass over a shard's kept outputs, on its node (`shard_refine`)."""
    asked = unpack(request)
    ref = outputs[asked["reference"]][asked["output"]]
    cand = outputs[asked["candidate"]][asked["output"]]
    return pack(shard_refine(ref, cand, asked["request"]))


# --- on the driver -----------------------------------------------------------------------


def compare_shards(config: ParityConfig, replay: ShardedReplay, say: Progress) -> OutputsJudgement:
    """Each output judged from its shards' partial comparisons, merged and finished (the
    quantile passes run on the shards' nodes), in name order; outputs one environment
    lacks are missing, as in a local check."""
    ref_name, cand_name = _pair(config)
    summaries = replay.summaries
    first = summaries[0][1]["names"]
    for shard, summary in summaries[1:]:
        if summary["names"] != first:
            raise ParityError(
                f"the shards return different outputs: shard {shard.id + 1} "
                f"{summary['names']}, shard 1 {first}"
            )
    reference, candidate = set(first.get(ref_name, [])), set(first.get(cand_name, []))
    check_tolerance_tables(config, reference | candidate)
    comparisons = []
    missing = []
    for name in sorted(reference | candidate):
        if name not in candidate:
            missing.append(f"output {name!r} is missing from {cand_name}")
            continue
        if name not in reference:
            missing.append(f"output {name!r} is missing from {ref_name}")
            continue
        partials = []
        here: dict[int, tuple[Any, Any]] = {}  # by shard id: the arrays that came back
        for shard, summary in summaries:
            if name in summary.get("outputs", {}):
                arrays = unpack(summary["outputs"][name])
                if not isinstance(arrays, dict) or not {"reference", "candidate"} <= set(arrays):
                    raise ValueError(f"shard {shard.id + 1} sent output {name!r} malformed")
                here[shard.id] = (arrays["reference"], arrays["candidate"])
                partials.append(compare_part(config, name, *here[shard.id], shard.start))
            else:
                partials.append(PartialComparison.from_bytes(summary["partials"][name]))
        merged = merge_partials(partials)
        elements = math.prod(merged.full_shape)
        say(
            f"comparing {name!r}: {elements:,} elements, {merged.policy.describe()} "
            f"(merged from {len(summaries)} shards"
            + (f", {len(here)} sent as outputs, smaller than their comparisons" if here else "")
            + ")"
        )
        comparisons.append(finish(merged, _refine(replay, name, ref_name, cand_name, here)))
    if not all(c.passed for c in comparisons):
        say("ray: the worst sample's pictures are left out of a sharded check (merge = partial)")
    return OutputsJudgement(comparisons, missing)


def _refine(
    replay: ShardedReplay,
    name: str,
    ref_name: str,
    cand_name: str,
    here: dict[int, tuple[Any, Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`finish`'s quantile pass: one request to every shard whose outputs stayed on its
    node, there; the shards whose arrays came back (`here`) answer here; merged."""

    def refine(request: dict[str, Any]) -> dict[str, Any]:
        answers = [shard_refine(r, c, request) for r, c in here.values()]
        away = [shard.id for shard, _ in replay.summaries if shard.id not in here]
        if away:
            if replay.kept is None:
                raise ClusterError(
                    f"output {name!r}: no shard kept its outputs for a quantile pass"
                )
            asked = pack(
                {"output": name, "reference": ref_name, "candidate": cand_name, "request": request}
            )
            answers += [unpack(a) for a in replay.kept.ask(asked, answer_request, away)]
        return merge_answers(answers)

    return refine
