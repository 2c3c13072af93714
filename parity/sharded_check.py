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

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    (`PartialComparison.to_bytes`), the output names of each environment."""
    ref_name, cand_name = _pair(config)
    ref, cand = outputs[ref_name], outputs[cand_name]
    limit = config.ray.keep_limit if config.ray.keep_limit is not None else KEEP_LIMIT
    partials: dict[str, bytes] = {}
    for name in sorted(set(ref) & set(cand)):
        shape = tuple(int(n) for n in ref[name].shape)
        if not shape:
            raise ParityError(f"output {name!r} has no sample axis: it cannot be sharded")
        full = (config.inputs.count, *shape[1:])
        partial = compare_shard(
            name,
            ref[name],
            cand[name],
            config.tolerance_for(name),
            offset=start * math.prod(shape[1:]),
            full_shape=full,
            keep_limit=limit,
        )
        partials[name] = partial.to_bytes()
    return {"partials": partials, "names": {env: sorted(o) for env, o in outputs.items()}}


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
        merged = merge_partials(
            [PartialComparison.from_bytes(s["partials"][name]) for _, s in summaries]
        )
        elements = math.prod(merged.full_shape)
        say(
            f"comparing {name!r}: {elements:,} elements, {merged.policy.describe()} "
            f"(merged from {len(summaries)} shards)"
        )
        comparisons.append(finish(merged, _refine(replay, name, ref_name, cand_name)))
    if not all(c.passed for c in comparisons):
        say("ray: the worst sample's pictures are left out of a sharded check (merge = partial)")
    return OutputsJudgement(comparisons, missing)


def _refine(
    replay: ShardedReplay, name: str, ref_name: str, cand_name: str
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`finish`'s quantile pass: one request to every shard, on its node; merged."""

    def refine(request: dict[str, Any]) -> dict[str, Any]:
        if replay.kept is None:
            raise ClusterError(f"output {name!r}: no shard kept its outputs for a quantile pass")
        asked = pack(
            {"output": name, "reference": ref_name, "candidate": cand_name, "request": request}
        )
        answers = replay.kept.ask(asked, answer_request)
        return merge_answers([unpack(a) for a in answers])

    return refine
