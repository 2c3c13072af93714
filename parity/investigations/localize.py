"""Localize a failing check: the first stage, and module, whose output is beyond tolerance.

An adapter module may expose its stages (`[model] stages = "pkg.adapter:stages"`): an
ordered list of `(name, fn)` or `(name, fn, model)` whose composition is predict, the
model a torch module or a scikit-learn Pipeline. After a check fails, the worst sample of
the failing output runs through them once in each environment (the worker's `stages`
mode). The worker records each stage's result and, while a stage with a model runs, each
submodule's output through forward hooks (kind "module") or each Pipeline step's output
(kind "step", nested steps named `outer/inner`), in execution order. Here every captured
value is compared with the reference's under the default tolerance (the last stage's
outputs under their own), and the first stage and the first module or step beyond it are
named. A few image-like values beyond tolerance (`PICTURES`: the first stage's and the
first module's or step's, then the other stages') keep pictures of both environments' values
on the sample, for the HTML report. Nothing here raises: a failure becomes the
localization's `error`, and the check's own result stands.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.errors import EnvlockError
from envlock.progress import Progress
from parity.comparison import OutputComparison, Pictures
from parity.errors import HostileOutputError, ParityError
from parity.judging.compare import compare_arrays
from parity.judging.pictures import image_layout, sample_pictures
from parity.outputs import load_json, load_outputs
from parity.runs.job import INPUTS, INPUTS_FILE
from parity.runs.replay import EnvRun, run_worker

if TYPE_CHECKING:
    from parity.arrays import OutputArray
    from parity.config import ParityConfig

FOLDER = "localize"  # inside the check's work folder
INNER = ("module", "step")  # the kinds of value captured inside a stage's model
PICTURES = 4  # image-like values beyond tolerance drawn, at most


@dataclass(frozen=True)
class StageEntry:
    """One value captured on the sample, compared between the environments: a stage's
    result (`kind` "stage"), a hooked module's output (`kind` "module") or a Pipeline
    step's output (`kind` "step")."""

    name: str  # "preprocess", "postprocess[sr]" (an output), "conv1", "block.0.conv#2", "union/pca"
    kind: str  # "stage", "module" or "step"
    stage: str
    passed: bool
    cause: str | None  # shape, dtype, nan_inf, tolerance, policy, or missing (one side only)
    reason: str | None
    policy: str  # the tolerance it was judged by
    max_abs_diff: float | None = None
    reference_shape: tuple[int, ...] | None = None
    candidate_shape: tuple[int, ...] | None = None
    reference_dtype: str | None = None
    candidate_dtype: str | None = None
    module: str | None = None  # the module's (or step's) qualified name in the stage's model
    module_class: str | None = None  # its class: "Conv2d", "FunctionTransformer"
    output: str | None = None  # the output this value is, for the last stage's outputs
    # both environments' values on the sample, drawn (for the HTML report, not the JSON)
    pictures: Pictures | None = None


@dataclass(frozen=True)
class Localization:
    """Where, on the worst sample, the two environments first part: stage, then module."""

    sample: int | None  # index of the sample in the input set
    output: str | None  # the failing output whose worst element chose the sample
    stages: tuple[str, ...]  # the adapter's stage names, in order
    entries: tuple[StageEntry, ...]  # in execution order
    first_stage: str | None  # the first stage whose result is beyond tolerance
    first_module: str | None  # the first module beyond tolerance, in execution order
    first_module_class: str | None
    first_module_stage: str | None
    summary: str
    error: str | None = None  # why localization could not run; the check's result stands
    dropped: int = 0  # values the worker captured past its limit and did not record
    first_step: str | None = None  # the first Pipeline step beyond tolerance ("outer/inner")
    first_step_class: str | None = None
    first_step_stage: str | None = None


@dataclass(frozen=True)
class _Captured:
    key: str
    stage: str
    kind: str
    name: str
    module: str | None
    module_class: str | None
    output: str | None


@dataclass(frozen=True)
class _Side:
    """What the worker captured in one environment."""

    stages: list[str]
    entries: list[_Captured]
    arrays: dict[str, OutputArray]
    dropped: int


def localize_failure(
    config: ParityConfig,
    ref: EnvRun,
    cand: EnvRun,
    outputs: list[OutputComparison],
    work: Path,
    say: Progress,
) -> Localization:
    """Localize the check's failure on the worst sample of its first failing output, in
    `work/localize`; never raises (a failure is the result's `error`)."""
    if config.stages is None:
        return _not_localized(
            say,
            "the adapter exposes no stages: set [model] stages = 'module:function' in the "
            "config, a function giving (name, fn) or (name, fn, module) tuples",
        )
    chosen = _worst_sample(outputs)
    if chosen is None:
        message = "nothing to localize: every output is within tolerance"
        say(f"localize: {message}")
        return Localization(None, None, (), (), None, None, None, None, message)
    output, sample = chosen
    for run in (ref, cand):
        if run.environment is None:
            return _not_localized(
                say,
                f"{run.spec.name!r} is not a live environment (a golden bundle?): "
                "localizing runs the stages in both environments",
                sample,
                output,
            )
        if not run.environment.runs_scripts:
            return _not_localized(
                say,
                f"{run.spec.name!r} runs no scripts ({run.environment.description}): "
                "localizing runs the stages in both environments",
                sample,
                output,
            )
    try:
        return _localize(config, ref, cand, output, sample, work / FOLDER, say)
    except (EnvlockError, ParityError, OSError) as e:
        return _not_localized(say, str(e), sample, output)
    except Exception as e:  # the check's result must survive whatever went wrong here
        return _not_localized(say, f"{type(e).__name__}: {e}", sample, output)


def _not_localized(
    say: Progress, message: str, sample: int | None = None, output: str | None = None
) -> Localization:
    summary = f"not localized: {message.splitlines()[0]}"  # the error keeps the traceback
    say(f"localize: {summary}")
    return Localization(sample, output, (), (), None, None, None, None, summary, message)


def _worst_sample(outputs: list[OutputComparison]) -> tuple[str, int] | None:
    """The first failing output and the sample of its first row whose decision differs
    (decision), else of its worst element (sample 0 when it has neither, e.g. its shapes
    differ)."""
    for o in outputs:
        if not o.passed:
            if o.disagreements:
                return o.name, o.disagreements[0].index[0]
            return o.name, o.worst_index[0] if o.worst_index else 0
    return None


def _localize(
    config: ParityConfig,
    ref: EnvRun,
    cand: EnvRun,
    output: str,
    sample: int,
    folder: Path,
    say: Progress,
) -> Localization:
    _write_sample(folder.parent / INPUTS / INPUTS_FILE, sample, folder / INPUTS)
    say(
        f"localize: running sample {sample} (the worst of output {output!r}) through the "
        f"stages in {ref.spec.name} and {cand.spec.name}"
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_capture, r, config, folder / r.spec.name) for r in (ref, cand)]
        ref_side, cand_side = [f.result() for f in futures]
    stages = tuple(dict.fromkeys([*ref_side.stages, *cand_side.stages]))
    pairs = _pair(stages, ref_side.entries, cand_side.entries)
    entries = [
        _compare(config, r, c, ref_side.arrays, cand_side.arrays, ref.spec.name, cand.spec.name)
        for r, c in pairs
    ]
    _draw(entries, pairs, ref_side.arrays, cand_side.arrays, sample)
    stage_fail = next(
        (e for s in stages for e in entries if e.stage == s and e.kind == "stage" and not e.passed),
        None,
    )
    module_fail = next((e for e in entries if e.kind == "module" and not e.passed), None)
    step_fail = next((e for e in entries if e.kind == "step" and not e.passed), None)
    inner_fail = next((e for e in entries if e.kind in INNER and not e.passed), None)
    summary = _summary(entries, stage_fail, inner_fail, sample, ref.spec.name, cand.spec.name)
    say(f"localize: {summary}")
    return Localization(
        sample=sample,
        output=output,
        stages=stages,
        entries=tuple(entries),
        first_stage=stage_fail.stage if stage_fail else None,
        first_module=module_fail.module if module_fail else None,
        first_module_class=module_fail.module_class if module_fail else None,
        first_module_stage=module_fail.stage if module_fail else None,
        summary=summary,
        dropped=max(ref_side.dropped, cand_side.dropped),
        first_step=step_fail.module if step_fail else None,
        first_step_class=step_fail.module_class if step_fail else None,
        first_step_stage=step_fail.stage if step_fail else None,
    )


def _write_sample(inputs_file: Path, sample: int, folder: Path) -> None:
    """The one sample of the input set, as a batch of 1, into `folder` (atomically)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    with np.load(inputs_file, allow_pickle=False) as data:
        arrays = {name: data[name][sample : sample + 1] for name in data.files}
    tmp = folder / f".{INPUTS_FILE}.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(folder / INPUTS_FILE)


def _capture(run: EnvRun, config: ParityConfig, outdir: Path) -> _Side:
    """Run the stages in one environment and read what its worker captured."""
    run_worker(run, config, outdir, mode="stages", stages=config.stages, count=1, batch_size=1)
    meta = load_json(outdir / "stages.json")
    arrays: dict[str, OutputArray] = dict(load_outputs(outdir / "stages.npz"))
    stages, raw, dropped = meta.get("stages"), meta.get("entries"), meta.get("dropped", 0)
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise HostileOutputError(f"{outdir / 'stages.json'}: 'stages' is not a list of names")
    if not isinstance(raw, list):
        raise HostileOutputError(f"{outdir / 'stages.json'}: 'entries' is not a list")
    entries = []
    for item in raw:
        if not (
            isinstance(item, dict)
            and item.get("key") in arrays
            and item.get("kind") in ("stage", *INNER)
            and all(isinstance(item.get(k), str) for k in ("stage", "name"))
            and all(item.get(k) is None or isinstance(item[k], str) for k in _OPTIONAL)
        ):
            raise HostileOutputError(f"{outdir / 'stages.json'}: malformed entry {item!r:.200}")
        entries.append(
            _Captured(
                key=item["key"],
                stage=item["stage"],
                kind=item["kind"],
                name=item["name"],
                module=item.get("module"),
                module_class=item.get("class"),
                output=item.get("output"),
            )
        )
    return _Side(stages, entries, arrays, dropped if isinstance(dropped, int) else 0)


_OPTIONAL = ("module", "class", "output")


def _pair(
    stages: tuple[str, ...], ref: list[_Captured], cand: list[_Captured]
) -> list[tuple[_Captured | None, _Captured | None]]:
    """The entries of both sides matched by (stage, kind, name), stage by stage in order:
    each stage's reference entries in execution order, then those only the candidate has."""
    ident = {(c.stage, c.kind, c.name): c for c in cand}
    seen = set()
    pairs: list[tuple[_Captured | None, _Captured | None]] = []
    for stage in stages:
        for r in (e for e in ref if e.stage == stage):
            key = (r.stage, r.kind, r.name)
            seen.add(key)
            pairs.append((r, ident.get(key)))
        for c in (e for e in cand if e.stage == stage):
            if (c.stage, c.kind, c.name) not in seen:
                pairs.append((None, c))
    return pairs


def _compare(
    config: ParityConfig,
    r: _Captured | None,
    c: _Captured | None,
    ref_arrays: dict[str, OutputArray],
    cand_arrays: dict[str, OutputArray],
    ref_name: str,
    cand_name: str,
) -> StageEntry:
    one = r or c
    assert one is not None
    policy = config.tolerance_for(one.output) if one.output else config.tolerance
    common: dict[str, Any] = {
        "name": one.name,
        "kind": one.kind,
        "stage": one.stage,
        "module": one.module,
        "module_class": one.module_class,
        "output": one.output,
        "policy": policy.describe(),
    }
    if r is None or c is None:
        if r is not None:
            arr = ref_arrays[r.key]
            common.update(reference_shape=arr.shape, reference_dtype=str(arr.dtype))
        else:
            arr = cand_arrays[one.key]
            common.update(candidate_shape=arr.shape, candidate_dtype=str(arr.dtype))
        present = ref_name if c is None else cand_name
        return StageEntry(**common, passed=False, cause="missing", reason=f"only in {present}")
    result = compare_arrays(one.name, ref_arrays[r.key], cand_arrays[c.key], policy)
    return StageEntry(
        **common,
        passed=result.passed,
        cause=result.cause,
        reason=result.reason,
        max_abs_diff=result.max_abs_diff if result.cause != "shape" else None,
        reference_shape=result.reference_shape,
        candidate_shape=result.candidate_shape,
        reference_dtype=result.reference_dtype,
        candidate_dtype=result.candidate_dtype,
    )


def _draw(
    entries: list[StageEntry],
    pairs: list[tuple[_Captured | None, _Captured | None]],
    ref_arrays: dict[str, OutputArray],
    cand_arrays: dict[str, OutputArray],
    sample: int,
) -> None:
    """Give pictures to at most `PICTURES` image-like entries whose values differ beyond
    tolerance: the first stage's and the first module's or step's, then the other
    stages', then the rest in execution order (each captured value holds the one sample,
    as a batch of 1)."""
    drawable = [
        i
        for i, e in enumerate(entries)
        if not e.passed
        and e.max_abs_diff
        and e.reference_shape == e.candidate_shape
        and e.reference_shape is not None
        and image_layout(e.reference_shape) is not None
    ]
    stage = [i for i in drawable if entries[i].kind == "stage"]
    inner = [i for i in drawable if entries[i].kind in INNER]
    chosen = list(dict.fromkeys([*stage[:1], *inner[:1], *stage, *drawable]))
    for i in sorted(chosen[:PICTURES]):
        r, c = pairs[i]
        shape = entries[i].reference_shape
        layout = image_layout(shape) if shape is not None else None
        if r is None or c is None or layout is None:
            continue
        drawn = sample_pictures(ref_arrays[r.key], cand_arrays[c.key], layout, 0, sample)
        entries[i] = replace(entries[i], pictures=drawn)


def _summary(
    entries: list[StageEntry],
    stage_fail: StageEntry | None,
    inner_fail: StageEntry | None,
    sample: int,
    ref: str,
    cand: str,
) -> str:
    """One line: the first stage beyond tolerance and why, then the first module or
    Pipeline step (whichever comes first in execution order)."""
    if stage_fail is not None:
        line = (
            f"outputs first diverge in stage {stage_fail.stage!r} ({_brief(stage_fail, ref, cand)})"
        )
    else:
        line = (
            f"no stage's result is beyond tolerance on sample {sample}: the failure does not "
            "show on this sample alone"
        )
    if inner_fail is not None:
        where = "within" if stage_fail is not None else "yet within"
        line += (
            f"; {where} stage {inner_fail.stage!r}, first at {inner_fail.kind} "
            f"{inner_fail.module!r} ({inner_fail.module_class}: {_brief(inner_fail, ref, cand)})"
        )
    elif stage_fail is not None:
        kind = next(
            (e.kind for e in entries if e.kind in INNER and e.stage == stage_fail.stage), None
        )
        if kind is not None:
            line += (
                f"; no {kind} of stage {stage_fail.stage!r} is beyond tolerance: the "
                f"difference arises outside its {kind}s"
            )
    return line


def _brief(e: StageEntry, ref: str, cand: str) -> str:
    """Why one entry is beyond tolerance, in a few words."""
    diff = (
        f"max abs diff {e.max_abs_diff:.3g}"
        if e.max_abs_diff is not None and math.isfinite(e.max_abs_diff)
        else None
    )
    if e.cause == "missing":
        return e.reason or "only in one environment"
    if e.cause == "shape":
        shapes = list(e.reference_shape or ()), list(e.candidate_shape or ())
        return f"shape {shapes[0]} in {ref} vs {shapes[1]} in {cand}"
    if e.cause == "dtype":
        return f"dtype {e.reference_dtype} in {ref} vs {e.candidate_dtype} in {cand}" + (
            f", {diff}" if diff and e.max_abs_diff else ""
        )
    if e.cause == "tolerance" and diff:
        return f"{diff}, beyond {e.policy}"
    return e.reason or str(e.cause)
