"""A check's replay cut into shards that run on a Ray cluster (`[run] executor = "ray"`).

The driver (this process) fixes each environment first (`pinned`: a docker image by the
id its name has here, with the registry digests a node lacking it pulls it by), makes the
inputs exactly as a local check does (`replay.write_inputs`), cuts the sample axis into
contiguous shards on batch boundaries (`plan_shards`: every batch the model sees is one
the local check makes too), and starts one Ray task per shard (`_replay_shard`). A task,
on its node, writes its shard's inputs, materializes both environments from their locks
in the node's own envlock cache (an image: the one pinned, or an environment error naming
it) and runs both workers there through the same path as a local check
(`replay_environments`), reads their outputs with parity's readers (`load_outputs`: no
pickle, plain numeric dtypes) and returns plain data: the fingerprints (JSON data,
checked), the warnings, timings, each environment's error if it failed, and what the
driver judges from:

- `[run.ray] merge = "partial"` (the default): a caller's `summarize` (the check layer's
  comparison of the shard, `parity.sharded_check`) gives the shard's partial comparisons
  as bytes; the outputs stay on the node, in the shard's work folder (`kept`, under the
  node's TMPDIR, named by the check's id and the shard's), for the quantile passes:
  `KeptShards.ask` runs one small task per shard pinned to the node holding its folder
  (a shard whose node or folder is gone is replayed anywhere and answers from its fresh
  outputs, once each output's content digest is the first run's, `ClusterError`
  otherwise), and `KeptShards.clean` removes the folders afterwards (best effort);
- `merge = "outputs"`: the outputs as `.npz` bytes written by parity.

The driver keeps the first result of each shard (a shard Ray retried after its node died
never counts twice). With merge = "outputs" it writes each shard's outputs to its work
folder as they arrive and assembles each environment's outputs in sample order
(`merge_shards`), streaming shard by shard; judging and reporting are then the local
check's own (`parity.check.conclude_shards`). With merge = "partial" the summaries are the
caller's to merge (`ShardedReplay.summaries`). This module never imports
`parity.judging`: the check layer hands it the node-side functions.

`ray` is imported only here, inside functions (the `ray` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from envlock.environments import pin_environment, read_spec_lock
from envlock.errors import EnvlockError
from envlock.progress import Progress
from parity.arrays import OutputArray, content_digest
from parity.config import ParityConfig
from parity.errors import ClusterError, ConfigError, ParityError, WorkerError
from parity.inputs.seeded import InputSpec
from parity.outputs import load_outputs
from parity.runs.caught import CaughtWarning, CaughtWarnings
from parity.runs.job import INPUTS, INPUTS_FILE
from parity.runs.replay import EnvRun, replay_environments, say_input_warnings, write_inputs

RAY_EXTRA = "executor = 'ray' needs the `ray` extra (pip install 'envlock-parity[ray]')"
# How long reaching the cluster may take (a TCP connection to its address, then ray.init,
# which on its own retries an unreachable address for minutes).
CONNECT_SECONDS = 5.0
INIT_SECONDS = 60.0
# Resources every Ray node has; a node's label is its first custom resource instead.
_STANDARD = ("CPU", "GPU", "memory", "object_store_memory")
# `[run.ray] keep_limit` when the config leaves it out
KEEP_LIMIT_ENV = "PARITY_SHARD_KEEP_LIMIT"

# Each environment's outputs of one shard, by environment name (read lazily, never unpickled).
ShardOutputs = dict[str, dict[str, OutputArray]]
# On a node: (config, the shard's outputs, its first sample) -> plain data (bytes inside).
Summarize = Callable[[ParityConfig, ShardOutputs, int], dict[str, Any]]
# On a node: (the kept outputs of a shard, a request as bytes) -> the answer as bytes.
Answer = Callable[[ShardOutputs, bytes], bytes]


@dataclass(frozen=True)
class Shard:
    """Samples [start, stop) of the input set."""

    id: int
    start: int
    stop: int

    @property
    def samples(self) -> str:
        return f"samples {self.start}-{self.stop - 1}"


def plan_shards(count: int, batch_size: int, shards: int) -> list[Shard]:
    """`shards` contiguous shards of `count` samples (fewer when there are fewer batches),
    cut on batch boundaries: shard k holds batches [k*B//N, (k+1)*B//N) of the B batches,
    so each batch is the one a local check gives the model, the last one short as there."""
    batches = math.ceil(count / batch_size)
    n = max(1, min(shards, batches))
    edges = [min(count, (k * batches // n) * batch_size) for k in range(n + 1)]
    return [Shard(k, edges[k], edges[k + 1]) for k in range(n)]


@dataclass
class ShardedReplay:
    """What the sharded replay adds to the runs it filled: the input set's digest, when the
    inputs were ready, errors that are no environment's (a shard lost for good), the
    `execution` block of the report, and how each environment is described."""

    input_digest: str
    generated: float
    errors: list[str]
    execution: dict[str, Any]
    described: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # merge = "partial": each shard's summary (by shard id, plan order) and where its
    # outputs are kept; empty / None when a shard was lost or an environment failed
    summaries: list[tuple[Shard, dict[str, Any]]] = field(default_factory=list)
    kept: KeptShards | None = None


def shown_address(address: str) -> str:
    """`address` without credentials (`user:secret@host:port` -> `***@host:port`)."""
    scheme, sep, rest = address.rpartition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _import_ray(config: ParityConfig) -> Any:
    """The `ray` module; `ConfigError` (exit 2) when the extra is not installed."""
    # A driver started by `uv run` would make Ray start every worker of the job with that
    # `uv run` (Ray's uv hook), re-syncing the project on every node: workers use the
    # node's Python. Only when the user has not chosen.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(config.path, "run.executor", RAY_EXTRA) from None


def _address(config: ParityConfig) -> str:
    address = config.ray.address or os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        raise ConfigError(
            config.path,
            "run.ray.address",
            "executor = 'ray' needs the cluster's address: set run.ray.address or $RAY_ADDRESS",
        )
    return address


def _check_supported(config: ParityConfig, calibrate: bool, localize: bool) -> None:
    """`ConfigError` for what a sharded check does not do (yet)."""
    for spec in config.environments:
        if spec.backend == "endpoint":
            raise ConfigError(
                config.path,
                f"environments.{spec.name}.backend",
                "an endpoint is replayed from this machine: executor = 'ray' shards "
                "environments the nodes build (use executor = 'local')",
            )
    if calibrate:
        raise ConfigError(
            config.path, "run.calibrate", "calibration runs locally only (executor = 'local')"
        )
    if localize:
        raise ConfigError(
            config.path, "run.localize", "localizing runs locally only (executor = 'local')"
        )


def _connect(ray: Any, address: str, say: Progress) -> None:
    """Connect to the cluster at `address`, in bounded time; `ClusterError` naming it."""
    shown = shown_address(address)
    host, _, port = address.rpartition("://")[2].rpartition("@")[2].rpartition(":")
    if host and port.isdigit():  # ray.init alone would retry an unreachable one for minutes
        try:
            socket.create_connection((host.strip("[]"), int(port)), CONNECT_SECONDS).close()
        except OSError as e:
            raise ClusterError(f"cannot reach the Ray cluster at {shown}: {e}") from None
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except BaseException as e:  # said below, in this thread
            failure.append(e)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(INIT_SECONDS)
    if thread.is_alive():
        raise ClusterError(f"the Ray cluster at {shown} did not answer within {INIT_SECONDS:g} s")
    if failure:
        first = failure[0]
        message = (str(first).strip().splitlines() or [type(first).__name__])[0]
        raise ClusterError(f"cannot connect to the Ray cluster at {shown}: {message}")
    say(f"ray: connected to {shown}")


def replay_sharded(
    config: ParityConfig,
    runs: list[EnvRun],
    work: Path,
    say: Progress,
    *,
    calibrate: bool = False,
    localize: bool = False,
    meanwhile: Callable[[], None] | None = None,
    summarize: Summarize | None = None,
    then: Callable[[ShardedReplay], None] | None = None,
) -> ShardedReplay:
    """Replay the input set in both environments, shard by shard on the Ray cluster, and
    fill `runs` as `replay_environments` does (the fingerprint, warnings, timings, or the
    environment's error; with merge = "outputs" the outputs in sample order in `work`).
    With `summarize` (merge = "partial") each shard is summarized on its node and its
    outputs kept there; `then(replay)` runs while still connected (the quantile passes,
    `ShardedReplay.kept`), after which the kept folders are removed."""
    _check_supported(config, calibrate, localize)
    config = pinned(config, say)
    ray = _import_ray(config)
    address = _address(config)
    _connect(ray, address, say)
    replay = None
    try:
        replay = _replay(ray, config, runs, work, say, address, meanwhile, summarize)
        if then is not None:
            then(replay)
        return replay
    finally:
        if replay is not None and replay.kept is not None:
            replay.kept.clean()
        with contextlib.suppress(Exception):
            ray.shutdown()


def pinned(config: ParityConfig, say: Progress) -> ParityConfig:
    """`config` with each environment fixed here (`pin_environment`) so that every node
    opens exactly it: a docker image by the id its name has on this machine, pulled by
    registry digest where a node lacks it, never by a tag that may name other bytes
    there. `WorkerError` naming the environment when it cannot be fixed (exit 3; a lock
    that cannot be read keeps its own code)."""
    specs = []
    for spec in config.environments:
        try:
            specs.append(pin_environment(spec, progress=_prefixed(spec.name, say)))
        except EnvlockError as e:
            if e.exit_code != 3:
                raise
            raise WorkerError(spec.name, str(e)) from None
    return dataclasses.replace(config, environments=tuple(specs))


def _prefixed(name: str, say: Progress) -> Progress:
    def tell(line: str) -> None:
        say(f"{name}: {line}")

    return tell


def keep_limit(config: ParityConfig) -> int | None:
    """How many differences a shard's sketch keeps: `[run.ray] keep_limit`, else
    `$PARITY_SHARD_KEEP_LIMIT`, else None (the comparison's default). `ConfigError` for
    a variable that is no integer of 0 or more."""
    if config.ray.keep_limit is not None:
        return config.ray.keep_limit
    raw = os.environ.get(KEEP_LIMIT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ConfigError(
            config.path, "run.ray.keep_limit", f"${KEEP_LIMIT_ENV} must be 0 or more, got {raw!r}"
        )
    return int(raw)


def _replay(
    ray: Any,
    config: ParityConfig,
    runs: list[EnvRun],
    work: Path,
    say: Progress,
    address: str,
    meanwhile: Callable[[], None] | None,
    summarize: Summarize | None,
) -> ShardedReplay:
    import numpy as np

    settings = config.ray
    cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
    count, batch = config.inputs.count, config.inputs.batch_size
    plan = plan_shards(count, batch, settings.shards or 2 * cpus)
    if settings.shards and len(plan) < settings.shards:
        say(f"ray: {len(plan)} shards, not {settings.shards}: the inputs make {len(plan)} batches")
    input_digest = write_inputs(config, work / INPUTS)
    generated = time.perf_counter()
    say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
    say_input_warnings(config, say)
    for run in runs:  # read here: judging the versions needs each lock
        with contextlib.suppress(Exception):
            run.lock = read_spec_lock(run.spec)
    task = ray.remote(_replay_shard)
    options: dict[str, Any] = {
        "num_cpus": 1,
        "max_retries": settings.max_retries,
        "retry_exceptions": False,
    }
    if settings.resources:
        options["resources"] = dict(settings.resources)
    preferred = _preferred_nodes(ray, settings.prefer, say)
    pending: dict[Any, Shard] = {}
    check_id = uuid4().hex[:12]
    with np.load(work / INPUTS / INPUTS_FILE, allow_pickle=False) as inputs:
        arrays = {name: inputs[name] for name in inputs.files}

    def shard_inputs(shard: Shard) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v[shard.start : shard.stop] for k, v in arrays.items()})
        return buffer.getvalue()

    def again(shard: Shard) -> dict[str, Any]:
        """Replay `shard` once more, anywhere (its kept outputs are gone)."""
        ref = task.options(**options).remote(
            config, shard.id, shard.start, shard.stop, shard_inputs(shard), input_digest,
            check_id, summarize,
        )  # fmt: skip
        return dict(ray.get(ref, timeout=config.ray.shard_timeout or 2 * config.timeout))

    for shard in plan:
        chosen = dict(options)
        if preferred:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            chosen["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                preferred[shard.id % len(preferred)], soft=True
            )
        ref = task.options(**chosen).remote(
            config, shard.id, shard.start, shard.stop, shard_inputs(shard), input_digest,
            check_id, summarize,
        )  # fmt: skip
        pending[ref] = shard
    say(
        f"ray: {len(plan)} shards of {count} samples (batches of {batch}) on "
        f"{shown_address(address)}, {cpus} CPUs"
    )
    if meanwhile is not None:
        meanwhile()
    results, lost = _collect(ray, config, pending, len(plan), work, say)
    replay = _merge(
        config, runs, plan, results, lost, work, say, address, input_digest, generated,
        summarize is not None,
    )  # fmt: skip
    kept = [(s, results[s.id]) for s in plan if s.id in results and results[s.id].get("kept")]
    if summarize is not None and kept:
        replay.kept = KeptShards(ray, config, kept, again, replay.execution, say)
    return replay


def _preferred_nodes(ray: Any, resource: str | None, say: Progress) -> list[str]:
    """The ids of the alive nodes that have the custom resource `resource`."""
    if resource is None:
        return []
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and resource in n["Resources"]]
    if not nodes:
        say(f"ray: no node has the resource {resource!r} (run.ray.prefer): shards go anywhere")
    return nodes


def _collect(
    ray: Any,
    config: ParityConfig,
    pending: dict[Any, Shard],
    total: int,
    work: Path,
    say: Progress,
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Wait for every shard: the first result of each (its outputs written into `work`)
    and, by shard id, why a shard was lost (Ray gave up on it, or none finished in time)."""
    import ray.exceptions as rex

    timeout = config.ray.shard_timeout or 2 * config.timeout
    results: dict[int, dict[str, Any]] = {}
    lost: dict[int, str] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not done:
                waiting = sorted(s.id for s in pending.values())
                for shard_id in waiting:
                    lost[shard_id] = (
                        f"no shard finished within {timeout:g} s (run.ray.shard_timeout)"
                    )
                say(f"ray: no shard finished within {timeout:g} s; giving up on {_ids(waiting)}")
                break
            for ref in done:
                shard = pending.pop(ref)
                try:
                    result = ray.get(ref, timeout=timeout)
                except (rex.RayError, rex.GetTimeoutError) as e:
                    lost[shard.id] = _one_line(e)
                    say(f"shard {shard.id + 1}/{total} lost ({shard.samples}): {lost[shard.id]}")
                    continue
                if result.get("shard") != shard.id or shard.id in results:
                    if result.get("kept"):  # a duplicate's outputs are of no use
                        _remove_soon(ray, result["node_id"], result["kept"])
                    continue  # the first result of a shard counts, once
                results[shard.id] = _received(result, work)
                say(_done_line(shard, total, results[shard.id]))
    finally:
        for ref in pending:  # given up on: nothing of them keeps running
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return results, lost


def _ids(ids: list[int]) -> str:
    return "shard" + ("s " if len(ids) > 1 else " ") + ", ".join(str(i + 1) for i in ids)


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _done_line(shard: Shard, total: int, result: dict[str, Any]) -> str:
    line = (
        f"shard {shard.id + 1}/{total} done on {result['node']}: {shard.samples}, "
        f"{result['seconds']:.1f} s"
    )
    if (result.get("attempts") or 1) > 1:
        line += f" (attempt {result['attempts']})"
    failed = [name for name, env in result["environments"].items() if env.get("error")]
    if failed:
        line += f"; {' and '.join(failed)} failed"
    return line


def _received(result: dict[str, Any], work: Path) -> dict[str, Any]:
    """A shard's result with each environment's outputs written to `work` (and dropped
    from memory): `work/shards/<environment>/<shard>.npz`; `bytes` says how many bytes of
    outputs or summaries it brought."""
    result["bytes"] = _payload(result.get("summary")) + sum(
        _payload(env.get("outputs")) for env in result["environments"].values()
    )
    for name, env in result["environments"].items():
        data = env.pop("outputs", None)
        if isinstance(data, bytes):
            folder = work / "shards" / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{result['shard']}.npz"
            path.write_bytes(data)
            env["outputs_file"] = str(path)
    return result


def _merge(
    config: ParityConfig,
    runs: list[EnvRun],
    plan: list[Shard],
    results: dict[int, dict[str, Any]],
    lost: dict[int, str],
    work: Path,
    say: Progress,
    address: str,
    input_digest: str,
    generated: float,
    partial: bool = False,
) -> ShardedReplay:
    """Fill each run from the shards' results; the report's `execution` block. With
    `partial`, the outputs stayed on the nodes: `summaries` holds what judges them."""
    errors = [
        f"shard {i + 1} ({plan[i].samples}) was lost: {why}" for i, why in sorted(lost.items())
    ]
    notes: list[str] = []
    described: dict[str, tuple[str, bool]] = {}
    for run in runs:
        ordered = [(s, results[s.id]) for s in plan if s.id in results]
        envs = [(s, r, r["environments"][run.name]) for s, r in ordered]
        if envs:
            described[run.name] = fill_from_shards(run, envs, notes, say)
        failed = first_failure(run, envs, lambda r: f"its work folder there: {r['work']}")
        if not failed and not lost and len(envs) == len(plan) and not partial:
            try:
                merge_shards(run, [(s, e) for s, _, e in envs], work / run.name)
            except ParityError as e:
                run.error = f"environment {run.name!r}: the shards' outputs do not fit: {e}"
    nodes: dict[str, int] = {}
    for r in results.values():
        nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    execution = {
        "executor": "ray",
        "address": shown_address(address),
        "shards": [
            {
                "id": s.id,
                "samples": [s.start, s.stop],
                "node": results[s.id]["node"] if s.id in results else None,
                "node_id": results[s.id]["node_id"] if s.id in results else None,
                "seconds": results[s.id]["seconds"] if s.id in results else None,
                "attempts": results[s.id].get("attempts") if s.id in results else None,
                **({"lost": lost[s.id]} if s.id in lost else {}),
            }
            for s in plan
        ],
        "nodes": dict(sorted(nodes.items())),
        "retried": sum(1 for r in results.values() if (r.get("attempts") or 1) > 1),
        "merge": "partial" if partial else "outputs",
        "bytes_from_shards": sum(int(r.get("bytes", 0)) for r in results.values()),
        "notes": notes,
    }
    replay = ShardedReplay(input_digest, generated, errors, execution, described)
    if partial and not lost and len(results) == len(plan):
        unsummarized = [s for s in plan if results[s.id].get("summary") is None]
        if not unsummarized:
            replay.summaries = [(s, results[s.id]["summary"]) for s in plan]
        elif not any(run.error for run in runs):
            s = unsummarized[0]
            why = results[s.id].get("summary_error") or "no summary came back"
            errors.append(
                f"shard {s.id + 1} ({s.samples}) on node {results[s.id]['node']} could not "
                f"be compared: {why}"
            )
    return replay


def _payload(value: Any) -> int:
    """The bytes inside plain data (a summary, an outputs archive)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_payload(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_payload(v) for v in value)
    return 0


class KeptShards:
    """The shards whose outputs are kept on their nodes (merge = "partial"): `ask` makes
    one pass over all of them, `clean` removes their folders."""

    def __init__(
        self,
        ray: Any,
        config: ParityConfig,
        kept: list[tuple[Shard, dict[str, Any]]],
        again: Callable[[Shard], dict[str, Any]],
        execution: dict[str, Any],
        say: Progress,
    ) -> None:
        self.ray = ray
        self.config = config
        self.where = {s.id: (r["node_id"], r["node"], r["kept"]) for s, r in kept}
        # each environment's output digests of the shard's first run, and its node
        self.first = {s.id: (r["node"], r["digests"]) for s, r in kept}
        self.shards = [s for s, _ in kept]
        self.again = again
        self.execution = execution
        self.say = say
        self.passes = 0
        self.timeout = config.ray.shard_timeout or 2 * config.timeout
        self.removed: list[tuple[str, str]] = []

    def ask(
        self, request: bytes, answer: Answer, only: Collection[int] | None = None
    ) -> list[bytes]:
        """`answer(kept outputs, request)` on every shard (those with the ids `only`, if
        given), each on the node holding its outputs, in plan order; a shard whose node or
        folder is gone is replayed anywhere and answers from its fresh outputs.
        `ClusterError` when a shard cannot answer, or its fresh outputs are not its first
        run's (their content digests differ: the passes would answer about other data)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        shards = [s for s in self.shards if only is None or s.id in only]
        if only is not None and len(shards) < len(set(only)):
            missing = sorted(set(only) - {s.id for s in shards})
            raise ClusterError(f"{_ids(missing)} kept no outputs for a quantile pass")
        self.passes += 1
        self.say(f"quantile pass {self.passes}: {len(shards)} shards")
        task = self.ray.remote(_answer_kept)

        def submit(shard: Shard) -> Any:
            node_id, _, folder = self.where[shard.id]
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            return task.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(
                folder, request, answer
            )

        refs = {shard.id: submit(shard) for shard in shards}
        answers: list[bytes] = []
        for shard in shards:
            got = self._get(refs[shard.id])
            if got is None:
                node_id, node, _ = self.where[shard.id]
                if node_id in self._alive():
                    why = f"shard {shard.id + 1}'s outputs are gone from {node}"
                else:  # killed, or it left the cluster, after the shard's replay came back
                    why = f"node {node}, which kept shard {shard.id + 1}'s outputs, is gone"
                self.say(f"quantile pass {self.passes}: {why}: replaying {shard.samples} again")
                got = self._answer_fresh(shard, request, answer)
            answers.append(got)
            self.execution["bytes_from_shards"] += len(got)
        return answers

    def _alive(self) -> set[str]:
        """The ids of the nodes alive now (all the kept shards' nodes if Ray cannot say)."""
        try:
            return {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")}
        except Exception:
            return {node_id for node_id, _, _ in self.where.values()}

    def _get(self, ref: Any) -> bytes | None:
        """The answer, or None when its node or folder is gone (or it did not come)."""
        try:
            got = self.ray.get(ref, timeout=self.timeout)
        except Exception:  # the node died, the task could not be placed, or timed out
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            return None
        return got if isinstance(got, bytes) else None

    def _answer_fresh(self, shard: Shard, request: bytes, answer: Answer) -> bytes:
        try:
            result = self.again(shard)
        except Exception as e:
            raise ClusterError(
                f"shard {shard.id + 1} ({shard.samples}) could not be replayed again for "
                f"a quantile pass: {_one_line(e)}"
            ) from None
        if not result.get("kept"):
            raise ClusterError(
                f"shard {shard.id + 1} ({shard.samples}) replayed again on "
                f"{result.get('node')} kept no outputs"
            )
        old = self.where[shard.id]
        self.removed.append((old[0], old[2]))
        first_node, first = self.first[shard.id]
        differing = _differing(first, result["digests"])
        if differing:  # answers from this run would not be about the data merged so far
            self.removed.append((result["node_id"], result["kept"]))
            raise ClusterError(
                f"shard {shard.id + 1} ({shard.samples}) replayed again on node "
                f"{result['node']} gave other outputs than its first run on node {first_node} "
                f"({differing}): the quantiles cannot be merged exactly from two different "
                "runs; the model is not deterministic between runs or between these nodes"
            )
        self.where[shard.id] = (result["node_id"], result["node"], result["kept"])
        for entry in self.execution.get("shards", []):
            if entry.get("id") == shard.id:  # the node its quantile answers now come from
                entry["replayed"] = result["node"]
        self.say(f"shard {shard.id + 1} replayed again on {result['node']}")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(result["node_id"], soft=False)
        ref = (
            self.ray.remote(_answer_kept)
            .options(num_cpus=0, max_retries=0, scheduling_strategy=strategy)
            .remote(result["kept"], request, answer)
        )
        got = self._get(ref)
        if got is None:
            raise ClusterError(
                f"shard {shard.id + 1} ({shard.samples}) replayed again on "
                f"{result['node']} did not answer the quantile pass"
            )
        return got

    def clean(self) -> None:
        """Remove every kept folder, on its node (best effort: a folder left behind never
        breaks a later check, whose folders are named by its own id)."""
        folders = [(node_id, folder) for node_id, _, folder in self.where.values()]
        alive = self._alive()  # a folder on a node that is gone went with it
        refs = [_remove_soon(self.ray, n, f) for n, f in [*folders, *self.removed] if n in alive]
        with contextlib.suppress(Exception):
            self.ray.wait([r for r in refs if r is not None], num_returns=len(refs), timeout=10)


def _differing(first: dict[str, dict[str, str]], fresh: dict[str, dict[str, str]]) -> str:
    """The outputs whose digests differ between a shard's two runs, by environment
    (`environment 'infer': output 'y'`; "" when none do)."""
    said = []
    for env in [*first, *(name for name in fresh if name not in first)]:
        a, b = first.get(env, {}), fresh.get(env, {})
        names = [n for n in [*a, *(n for n in b if n not in a)] if a.get(n) != b.get(n)]
        if names:
            what = "output" + ("s " if len(names) > 1 else " ")
            said.append(f"environment {env!r}: {what}{', '.join(repr(n) for n in names)}")
    return "; ".join(said)


def _remove_soon(ray: Any, node_id: str, folder: str) -> Any:
    """Start removing `folder` on node `node_id` (None when that cannot start)."""
    with contextlib.suppress(Exception):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return (
            ray.remote(_remove_kept)
            .options(num_cpus=0, max_retries=0, scheduling_strategy=strategy)
            .remote(folder)
        )
    return None


def merge_shards(run: EnvRun, shards: list[tuple[Shard, dict[str, Any]]], outdir: Path) -> None:
    """Assemble one environment's outputs from its shards, in sample order, into
    `outdir/outputs.npz` (streamed: one block of one shard in memory at a time), and read
    them back as a local check reads a worker's (`run.outputs`). `ParityError` when the
    shards' outputs differ in names, dtypes or trailing shapes, or an output's first axis
    is not its shard's samples."""
    import numpy as np

    members = [(s, load_outputs(Path(e["outputs_file"]))) for s, e in shards]
    names = list(members[0][1])
    for s, outputs in members:
        if sorted(outputs) != sorted(names):
            raise ParityError(
                f"shard {s.id + 1} has outputs {sorted(outputs)}, shard 1 has {sorted(names)}"
            )
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / "outputs.npz"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in names:
            head = members[0][1][name]
            shape = (sum(s.stop - s.start for s, _ in members), *head.shape[1:])
            for s, outputs in members:
                member = outputs[name]
                if (
                    not member.shape
                    or member.shape[0] != s.stop - s.start
                    or member.shape[1:] != head.shape[1:]
                    or member.dtype != head.dtype
                ):
                    raise ParityError(
                        f"output {name!r} of shard {s.id + 1} is {member.dtype} "
                        f"{list(member.shape)}, for {s.stop - s.start} samples of "
                        f"{head.dtype} {list(head.shape[1:])}"
                    )
            header = {
                "descr": np.lib.format.dtype_to_descr(head.dtype),
                "fortran_order": False,
                "shape": shape,
            }
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for _, outputs in members:
                    for block in outputs[name].blocks(1 << 20):
                        f.write(np.ascontiguousarray(block).tobytes())
    run.outputs = dict(load_outputs(target))
    shutil.rmtree(target.parent.parent / "shards" / run.name, ignore_errors=True)


def first_failure(
    run: EnvRun,
    envs: list[tuple[Shard, dict[str, Any], dict[str, Any]]],
    where: Callable[[dict[str, Any]], str],
) -> bool:
    """Whether one of `run`'s shards failed (its part of each shard's result, in shard
    order); if so, `run.error` is the first failure's, a failure before a side it stopped
    (`run.cancelled` then False), with the node, the shard, how many more failed and
    `where(result)` (where the shard's files are)."""
    failed = sorted(
        [(s, r, e) for s, r, e in envs if e.get("error")],
        key=lambda f: bool(f[2].get("cancelled")),
    )
    if not failed:
        return False
    shard, result, env = failed[0]
    run.cancelled = bool(env.get("cancelled"))
    more = f" (and {len(failed) - 1} more shards)" if len(failed) > 1 else ""
    run.error = (
        f"{env['error']}\n(on node {result['node']}, shard {shard.id + 1}: "
        f"{shard.samples}{more}; {where(result)})"
    )
    return True


def fill_from_shards(
    run: EnvRun,
    envs: list[tuple[Shard, dict[str, Any], dict[str, Any]]],
    notes: list[str],
    say: Progress,
) -> tuple[str, bool]:
    """Fill `run` from its environment's part of each shard's result (in shard order) as
    a local replay would have: the first shard's fingerprint, the warnings and timings of
    all; a note on fingerprints differing between nodes goes to `notes` and progress.
    How the environment is described: its description, and whether it was created."""
    first = envs[0][2]
    run.fingerprint = first.get("fingerprint") or {}
    run.warnings = _merged_warnings([e.get("warnings") for _, _, e in envs])
    run.seconds = _merged_seconds([e.get("seconds") or {} for _, _, e in envs])
    note = _fingerprint_note(run.name, envs)
    if note:
        notes.append(note)
        say(f"warning: {note}")
    return str(first.get("description")), bool(first.get("created"))


def _merged_warnings(shipped: list[Any]) -> CaughtWarnings | None:
    """One environment's warnings over its shards: each distinct warning once, its counts
    added, where it came first from the first shard that caught it."""
    known = [w for w in shipped if isinstance(w, dict)]
    if not known:
        return None
    merged: dict[tuple[str, str], CaughtWarning] = {}
    dropped = 0
    for w in known:
        dropped += int(w.get("dropped", 0))
        for e in w.get("entries", []):
            entry = CaughtWarning(
                category=e["category"],
                message=e["message"],
                count=e["count"],
                first=e["first"],
                level=e.get("level"),
                bases=tuple(e.get("bases", ())),
            )
            key = (entry.category, entry.message)
            if key in merged:
                merged[key] = dataclasses.replace(
                    merged[key], count=merged[key].count + entry.count
                )
            else:
                merged[key] = entry
    return CaughtWarnings(tuple(merged.values()), dropped)


def _merged_seconds(shipped: list[dict[str, float]]) -> dict[str, float]:
    """An environment's timings over its shards, which ran side by side: the longest."""
    merged: dict[str, float] = {}
    for seconds in shipped:
        for key, value in seconds.items():
            merged[key] = max(merged.get(key, 0.0), float(value))
    return merged


def _fingerprint_note(name: str, envs: list[tuple[Shard, dict[str, Any], dict[str, Any]]]) -> str:
    """How the fingerprints of environment `name` differ between its shards' nodes ("" when
    they do not): the report keeps the first shard's, and says so."""
    from envlock.diff import Side, diff, from_fingerprint

    first_shard, first_result, first = envs[0]
    base = first.get("fingerprint") or {}
    if not base:
        return ""
    differing = []
    for shard, result, env in envs[1:]:
        fp = env.get("fingerprint") or {}
        if not fp:
            continue
        found = diff(
            Side("a", from_fingerprint(base), "fingerprint"),
            Side("b", from_fingerprint(fp), "fingerprint"),
        )
        if found:
            what = ", ".join(d.component for d in found[:5])
            what += f" and {len(found) - 5} more" if len(found) > 5 else ""
            differing.append(f"shard {shard.id + 1} on {result['node']} ({what})")
    if not differing:
        return ""
    return (
        f"environment {name!r} differs between nodes: against shard {first_shard.id + 1} on "
        f"{first_result['node']} (the fingerprint reported), " + "; ".join(differing)
    )


# --- on a node ---------------------------------------------------------------------------


def _replay_shard(
    config: ParityConfig,
    shard_id: int,
    start: int,
    stop: int,
    inputs: bytes,
    input_digest: str,
    check_id: str = "",
    summarize: Summarize | None = None,
) -> dict[str, Any]:
    """One shard, as a Ray task on a node: both environments materialized there (the node's
    envlock cache) and replayed on samples [start, stop); plain data back (see the module's
    docstring). An environment's failure is part of the result, never raised: Ray retries
    only a shard whose node or worker died. With `summarize`, the shard's summary comes
    back instead of its outputs, which stay in its work folder (`kept`)."""
    import ray

    started = time.perf_counter()
    node_id = ray.get_runtime_context().get_node_id()
    work = Path(tempfile.mkdtemp(prefix=f"parity-{check_id or 'check'}-shard{shard_id}-"))
    (work / INPUTS).mkdir()
    (work / INPUTS / INPUTS_FILE).write_bytes(inputs)
    shard_config = dataclasses.replace(
        config,
        inputs=InputSpec(
            seed=0, count=stop - start, arrays=(), batch_size=config.inputs.batch_size
        ),
    )
    runs = [EnvRun(spec) for spec in config.environments]
    lines: list[str] = []
    replay_environments(shard_config, runs, work, None, lines.append, False, input_digest)
    environments = {run.name: _shipped(run, outputs=summarize is None) for run in runs}
    failed = any(env.get("error") for env in environments.values())
    extra: dict[str, Any] = {}
    if summarize is not None and not failed:
        try:
            extra["summary"] = summarize(config, {run.name: run.outputs for run in runs}, start)
            # what a replay again of this shard must give (`KeptShards._answer_fresh`)
            extra["digests"] = {run.name: output_digests(run.outputs) for run in runs}
            (work / KEPT_MARK).write_text(json.dumps({"shard": shard_id, "check": check_id}))
            extra["kept"] = str(work)
        except Exception as e:  # said by the driver as this shard's error
            extra["summary_error"] = _one_line(e)
    elif not failed:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **extra,
        "shard": shard_id,
        "node_id": node_id,
        "node": _node_label(ray, node_id),
        "attempts": _attempt() + 1,
        "seconds": round(time.perf_counter() - started, 3),
        "work": str(work),
        "environments": environments,
    }


def _shipped(run: EnvRun, outputs: bool = True) -> dict[str, Any]:
    """What the driver gets of one environment's replay: plain data, and with `outputs`
    the outputs as `.npz` bytes that parity wrote from arrays it read without unpickling."""
    import numpy as np

    env: dict[str, Any] = {
        "fingerprint": run.fingerprint,
        "seconds": dict(run.seconds),
        "warnings": dataclasses.asdict(run.warnings) if run.warnings is not None else None,
        "description": run.environment.description if run.environment else run.spec.backend,
        "created": bool(run.environment and run.environment.created),
        "error": run.error,
        "cancelled": run.cancelled,  # stopped: the other side failed first
    }
    if run.error is None and outputs:
        try:
            arrays = {name: member.load() for name, member in run.outputs.items()}
        except ParityError as e:
            env["error"] = f"environment {run.name!r}: its outputs are unreadable: {e}"
            return env
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **arrays
        env["outputs"] = buffer.getvalue()
    return env


KEPT_MARK = "kept.json"  # in a shard's work folder kept for the quantile passes


def output_digests(outputs: dict[str, OutputArray]) -> dict[str, str]:
    """Each output's content digest (`parity.arrays.content_digest`: name, dtype, shape
    and elements, streamed from the kept file), by name."""
    return {name: content_digest(name, array) for name, array in outputs.items()}


def _answer_kept(folder: str, request: bytes, answer: Answer) -> bytes | None:
    """On the node holding `folder`: `answer` over the shard's kept outputs; None when the
    folder is gone."""
    work = Path(folder)
    if not (work / KEPT_MARK).is_file():
        return None
    outputs: ShardOutputs = {}
    for path in sorted(work.glob("*/outputs.npz")):
        outputs[path.parent.name] = dict(load_outputs(path))
    return answer(outputs, request)


def _remove_kept(folder: str) -> None:
    """On its node: remove a shard's kept work folder (only one parity kept)."""
    work = Path(folder)
    if (work / KEPT_MARK).is_file():
        shutil.rmtree(work, ignore_errors=True)


def _node_label(ray: Any, node_id: str) -> str:
    """How a report names a node: its first custom resource (e.g. `node2`), else its host
    name, else its address."""
    with contextlib.suppress(Exception):
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                custom = sorted(
                    k
                    for k in node.get("Resources", {})
                    if k not in _STANDARD and not k.startswith(("node:", "accelerator_type:"))
                )
                if custom:
                    return str(custom[0])
                return str(node.get("NodeManagerHostname") or node.get("NodeManagerAddress"))
    return socket.gethostname()


def _attempt() -> int:
    """Which attempt of its task this is (0 the first), where Ray says it; else 0."""
    with contextlib.suppress(Exception):
        worker = importlib.import_module("ray._private.worker").global_worker
        return int(worker.core_worker.get_current_task_attempt_number())
    return 0
