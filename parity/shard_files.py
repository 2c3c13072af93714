"""A check's replay cut into shards that run anywhere, each writing a folder of files, and
their merge (`parity shard run` / `parity shard merge`: a Kubernetes Indexed Job, a batch
scheduler's array job, or plain processes).

`run_shard` replays shard K of N, planned exactly as the Ray executor plans them
(`parity.runs.sharded.plan_shards`: contiguous, on batch boundaries), in both environments
on this machine, through the local check's own path (`replay_environments`), and writes
`DIR/shard-K-of-N/` atomically (written aside, then renamed; a shard run again replaces
its folder, as a pod Kubernetes retried does):

- `shard.json`: the shard's index, count and sample range, the config's digest, the digest
  of the whole input set, the node (host name), seconds, and per environment its checked
  fingerprint, warnings, timings, description and error;
- `<environment>.npz`: that environment's outputs for the shard's samples, written by
  parity from arrays it read with its readers (no pickle, plain numeric dtypes).

`merge_shard_files` checks that every shard 0..N-1 is there exactly once, for this config
and this input set (`ShardFilesError`, exit 3, naming the missing, extra or mismatched
shards), assembles each environment's outputs in sample order (`merge_shards`) and judges
them through the local check's own path (`parity.check.conclude_shards`): every figure of the
report is the one a local check gives. The report's `execution` block says where the
shards ran (executor `files`, or `kubernetes` when every shard ran in a pod).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.environments import read_spec_lock
from envlock.progress import Progress, quiet
from parity.check import conclude_shards
from parity.config import ParityConfig
from parity.errors import ConfigError, ParityError
from parity.inputs.seeded import InputSpec
from parity.runs.job import INPUTS, INPUTS_FILE
from parity.runs.replay import (
    EnvRun,
    WorkFolder,
    replay_environments,
    write_inputs,
)
from parity.runs.sharded import (
    Shard,
    fill_from_shards,
    first_failure,
    merge_shards,
    plan_shards,
)

if TYPE_CHECKING:
    from parity.report import ParityReport

FORMAT = 1
RECORD = "shard.json"
_FOLDER = re.compile(r"shard-(\d+)-of-(\d+)")


class ShardFilesError(ParityError):
    """The shard folders do not make one whole check: a shard missing, one too many, or one
    written for another config or input set (exit 3)."""

    exit_code = 3


def folder_name(index: int, of: int) -> str:
    """`shard-K-of-N`: where shard K of N writes its files."""
    return f"shard-{index}-of-{of}"


def config_digest(config: ParityConfig) -> str:
    """`sha256:<hex>` of the config file's bytes: the shards and the merge read the same."""
    return "sha256:" + hashlib.sha256(Path(config.path).read_bytes()).hexdigest()


def _check_supported(config: ParityConfig) -> None:
    """`ConfigError` for what a sharded check does not do."""
    for spec in config.environments:
        if spec.backend == "endpoint":
            raise ConfigError(
                config.path,
                f"environments.{spec.name}.backend",
                "an endpoint is replayed from one machine: `parity shard` shards "
                "environments each node builds (use `parity check`)",
            )
    if config.calibrate:
        raise ConfigError(config.path, "run.calibrate", "calibration runs in `parity check` only")


def _plan(config: ParityConfig, of: int) -> list[Shard]:
    """The N shards of `config`'s input set; `ConfigError` when it has fewer batches."""
    plan = plan_shards(config.inputs.count, config.inputs.batch_size, of)
    if len(plan) != of:
        raise ConfigError(
            config.path,
            "inputs.batch_size",
            f"the inputs make {len(plan)} batches of {config.inputs.batch_size}: they cut "
            f"into at most {len(plan)} shards, not {of}",
        )
    return plan


@dataclass(frozen=True)
class ShardRun:
    """What `run_shard` wrote: its folder, and whether an environment failed."""

    folder: Path
    failed: list[str]


def run_shard(
    config: ParityConfig,
    index: int,
    of: int,
    out: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> ShardRun:
    """Replay shard `index` of `of` in both environments here and write `out/shard-K-of-N`
    (see the module's docstring). An environment's failure is recorded there, not raised;
    `ConfigError` for an index out of range or a config a shard cannot run."""
    say = progress or quiet
    if not 0 <= index < of:
        raise ConfigError(config.path, None, f"shard index {index} is not in 0..{of - 1}")
    _check_supported(config)
    shard = _plan(config, of)[index]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"parity-shard{index}-"))
    staged = Path(tempfile.mkdtemp(prefix=f".{folder_name(index, of)}.", dir=out))
    staged.chmod(0o755)  # mkdtemp's 0700 would hide it from a merge run as another user
    try:
        import numpy as np

        whole = work / "whole"
        whole.mkdir()
        input_digest = write_inputs(config, whole)
        say(f"inputs: {config.inputs.label}, {input_digest[:19]}…; {shard.samples}")
        (work / INPUTS).mkdir()
        with np.load(whole / INPUTS_FILE, allow_pickle=False) as inputs:
            part = {k: inputs[k][shard.start : shard.stop] for k in inputs.files}
        np.savez(work / INPUTS / INPUTS_FILE, **part)
        del part
        shard_config = dataclasses.replace(
            config,
            inputs=InputSpec(
                seed=0,
                count=shard.stop - shard.start,
                arrays=(),
                batch_size=config.inputs.batch_size,
            ),
        )
        runs = [EnvRun(spec) for spec in config.environments]
        replay_environments(shard_config, runs, work, cache_dir, say, False, input_digest)
        environments = {run.name: _written(run, staged) for run in runs}
        record = {
            "format": FORMAT,
            "index": index,
            "of": of,
            "samples": [shard.start, shard.stop],
            "config": str(config.path),
            "config_digest": config_digest(config),
            "input_digest": input_digest,
            "node": socket.gethostname(),
            "kubernetes": bool(os.environ.get("KUBERNETES_SERVICE_HOST")),
            "seconds": round(time.perf_counter() - started, 3),
            "environments": environments,
        }
        (staged / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        target = out / folder_name(index, of)
        _replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    failed = [name for name, env in environments.items() if env.get("error")]
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"work folder kept: {work}")
    return ShardRun(target, failed)


def _replace(staged: Path, target: Path) -> None:
    """Put the folder `staged` at `target`, replacing what a former run left there; a
    reader sees the old folder or the new one whole (or, for an instant, none), never a
    mix."""
    token = os.urandom(6).hex()  # pods on two nodes may have the same pid
    olds = []
    for attempt in range(10):  # another run of the same shard may be replacing it too
        old = target.with_name(f".{target.name}.old-{token}-{attempt}")
        with contextlib.suppress(FileNotFoundError):
            target.rename(old)
            olds.append(old)
        try:
            staged.rename(target)
            break
        except OSError:  # the other run put its folder there first: replace that one
            continue
    else:
        staged.rename(target)  # raises, saying why
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _written(run: EnvRun, folder: Path) -> dict[str, Any]:
    """One environment's part of `shard.json`, its outputs written to `<name>.npz`."""
    import numpy as np

    env: dict[str, Any] = {
        "fingerprint": run.fingerprint,
        "seconds": dict(run.seconds),
        "warnings": (
            {
                "entries": [dataclasses.asdict(w) for w in run.warnings.entries],
                "dropped": run.warnings.dropped,
            }
            if run.warnings is not None
            else None
        ),
        "description": run.environment.description if run.environment else run.spec.backend,
        "created": bool(run.environment and run.environment.created),
        "error": run.error,
        "cancelled": run.cancelled,  # stopped: the other side failed first
        "outputs": None,
    }
    if run.error is None:
        try:
            arrays = {name: member.load() for name, member in run.outputs.items()}
        except ParityError as e:
            env["error"] = f"environment {run.name!r}: its outputs are unreadable: {e}"
            return env
        name = f"{run.name}.npz"
        np.savez(folder / name, **arrays)  # type: ignore[arg-type]
        env["outputs"] = name
    return env


# --- the merge -----------------------------------------------------------------------------


def read_shards(config: ParityConfig, folder: Path, input_digest: str) -> list[dict[str, Any]]:
    """The records of the shard folders in `folder`, in shard order, each with its folder
    (`_folder`); `ShardFilesError` naming every shard missing, extra or written for
    another config or input set."""
    if not folder.is_dir():
        raise ShardFilesError(f"{folder}: no such folder of shards")
    found: dict[tuple[int, int], Path] = {}
    for entry in sorted(folder.iterdir()):
        m = _FOLDER.fullmatch(entry.name)
        if m and entry.is_dir():
            found[(int(m.group(1)), int(m.group(2)))] = entry
    if not found:
        raise ShardFilesError(f"{folder}: no shard folders (shard-K-of-N) in it")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ShardFilesError(
            f"{folder}: shards of different cuts ({', '.join(f'of {n}' for n in counts)}): "
            f"{', '.join(sorted(p.name for p in found.values()))}"
        )
    of = counts[0]
    problems = []
    extra = sorted(p.name for (k, _), p in found.items() if k >= of)
    if extra:
        problems.append(f"extra: {', '.join(extra)}")
    missing = [folder_name(k, of) for k in range(of) if (k, of) not in found]
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    plan = _plan(config, of)
    digest = config_digest(config)
    records = []
    mismatched = []
    for shard in plan:
        path = found.get((shard.id, of))
        if path is None:
            continue
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError(f"not a format {FORMAT} shard record")
        except (OSError, ValueError) as e:
            mismatched.append(f"{path.name} (unreadable {RECORD}: {e})")
            continue
        why = []
        if record.get("index") != shard.id or record.get("of") != of:
            why.append(f"records shard {record.get('index')} of {record.get('of')}")
        if record.get("config_digest") != digest:
            why.append("another config")
        if record.get("input_digest") != input_digest:
            why.append(f"another input set ({str(record.get('input_digest'))[:19]}…)")
        if record.get("samples") != [shard.start, shard.stop]:
            why.append(f"samples {record.get('samples')}, not [{shard.start}, {shard.stop}]")
        names = sorted(record.get("environments") or {})
        if names != sorted(e.name for e in config.environments):
            why.append(f"environments {', '.join(names) or 'none'}")
        if why:
            mismatched.append(f"{path.name} ({'; '.join(why)})")
        record["_folder"] = path
        records.append(record)
    if mismatched:
        problems.append(f"not of this check: {', '.join(mismatched)}")
    if problems:
        raise ShardFilesError(f"{folder}: the shards do not make one check: {'; '.join(problems)}")
    return records


def merge_shard_files(
    config: ParityConfig,
    folder: Path,
    *,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> ParityReport:
    """The report of the check whose shards `parity shard run` wrote into `folder`: each
    environment's outputs assembled in sample order and judged as a local check's, with
    the `execution` block added. `ShardFilesError` when the shards are not one check's."""
    say = progress or quiet
    _check_supported(config)
    started = time.perf_counter()
    runs = [EnvRun(spec) for spec in config.environments]
    with WorkFolder(workdir, say) as work:
        input_digest = write_inputs(config, work.path / INPUTS)
        generated = time.perf_counter()
        say(f"inputs: {config.inputs.label}, {input_digest[:19]}…")
        records = read_shards(config, folder, input_digest)
        plan = _plan(config, len(records))
        for run in records:
            say(
                f"shard {run['index'] + 1}/{run['of']}: samples {run['samples'][0]}-"
                f"{run['samples'][1] - 1} on {run['node']}, {run['seconds']:.1f} s"
            )
        described, notes = _fill(config, runs, plan, records, work.path, say)
        report = conclude_shards(
            config,
            runs,
            [],
            described,
            work=work,
            input_digest=input_digest,
            say=say,
            started=started,
            generated=generated,
        )
    return dataclasses.replace(report, execution=_execution(folder, plan, records, notes))


def _fill(
    config: ParityConfig,
    runs: list[EnvRun],
    plan: list[Shard],
    records: list[dict[str, Any]],
    work: Path,
    say: Progress,
) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """Fill each run from the shards' records as a local replay would have; how each
    environment is described, and the notes on fingerprints differing between nodes."""
    described: dict[str, tuple[str, bool]] = {}
    notes: list[str] = []
    for run in runs:
        with contextlib.suppress(Exception):  # judging the versions needs the lock
            run.lock = read_spec_lock(run.spec)
        envs = [(s, r, _env(r, run.name)) for s, r in zip(plan, records, strict=True)]
        described[run.name] = fill_from_shards(run, envs, notes, say)
        if first_failure(run, envs, lambda record: f"its files: {record['_folder']}"):
            continue
        try:
            merge_shards(run, [(s, e) for s, _, e in envs], work / run.name)
        except ParityError as e:
            run.error = f"environment {run.name!r}: the shards' outputs do not fit: {e}"
    return described, notes


def _env(record: dict[str, Any], name: str) -> dict[str, Any]:
    """Environment `name`'s part of a shard record, with `outputs_file` for `merge_shards`
    (copied: `merge_shards` removes what it assembled from the work folder only)."""
    env = dict(record["environments"][name])
    if env.get("outputs") and not env.get("error"):
        path = Path(record["_folder"]) / str(env["outputs"])
        if path.name != str(env["outputs"]) or not path.is_file():
            env["error"] = f"environment {name!r}: its outputs {path} are missing"
        else:
            env["outputs_file"] = str(path)
    elif not env.get("error"):
        env["error"] = f"environment {name!r}: the shard recorded no outputs"
    return env


def _execution(
    folder: Path, plan: list[Shard], records: list[dict[str, Any]], notes: list[str]
) -> dict[str, Any]:
    """The report's `execution` block for a merge of shard files."""
    nodes: dict[str, int] = {}
    for r in records:
        nodes[str(r["node"])] = nodes.get(str(r["node"]), 0) + 1
    return {
        "executor": "kubernetes" if all(r.get("kubernetes") for r in records) else "files",
        "address": str(folder),
        "shards": [
            {
                "id": s.id,
                "samples": [s.start, s.stop],
                "node": str(r["node"]),
                "node_id": None,
                "seconds": r.get("seconds"),
                "attempts": None,
            }
            for s, r in zip(plan, records, strict=True)
        ],
        "nodes": dict(sorted(nodes.items())),
        "retried": 0,
        "notes": notes,
    }
