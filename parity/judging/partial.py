"""One output compared in shards, on different machines, merged into the comparison the
whole output gets: `compare_shard`, `merge_partials`, `finish`.

A shard is a contiguous run of samples (the leading axis) of both environments' output,
whose first element sits at flat index `offset` of the whole output of shape
`full_shape`. `compare_shard` makes over it the pass `compare_arrays` makes over the
whole (`parity.judging.compare`, the NumPy path or the compiled one of
`parity.judging.kernels`, as the switch and the shard's size choose), with every position
it keeps global: the worst element's index, the heatmap's rows, a decision's rows (the
judge is told where its blocks start, `Judge.start_at`). What the pass leaves is a
`PartialComparison`, plain data (numbers, strings, lists and small numeric arrays) that
`to_bytes` writes as an `.npz` of numeric arrays and one JSON member, never pickled:

- the counts (elements, mismatched, NaN mismatched, NaN/infinity rule failures) add up;
  the maxima (|a - b|, relative, the atol and rtol that would pass), the heatmap's cells
  and the columns' largest differences are maxima; the columns' mismatched counts add up;
- the worst element is the largest |a - b|, at its lowest global index on a tie: the rule
  of a pass over the whole;
- the quantile sketches (`parity.judging.quantiles.QuantileSketch`): their zeros and
  totals add up; the positive values are kept while the merged ones number at most
  `keep_limit` (as the whole pass keeps them), else binned by their top 16 bits, whose
  counts add up (written sparse: the bins holding values and their counts). The
  histogram of the report comes from these counts, exactly;
- each policy's judge keeps its own state (`Judge.state`: the largest ULP distance,
  cosine's rows and smallest similarity, decision's rows, agreements and first
  disagreeing rows, PSNR's range and scaled sum of squares) and merges it (`Judge.merge`);
- the sums for the means are kept per shard, with the shard's span of the output
  (`spans`), and added with `math.fsum` when finished.

`merge_partials` merges any number of partials of one output (associative; the result
does not depend on their order, the last bits of PSNR's sum of squares aside) and
refuses shards that overlap: an element counted twice. `finish` refuses a merge whose
shards do not cover the output exactly: an element lost.

**Median and p99** are exact, as on one machine: `finish` runs `resolve`'s refining
passes (`parity.judging.quantiles`) with each pass made by the shards. For every pending
target (an order statistic known to lie among the positive values whose float64 key
starts with `prefix`, of which there are `count`), `finish` calls `refine(request)` once
per pass with the targets as plain data (`sketch`: 0 abs, 1 rel; `prefix`, `shift`,
`count`, `collect`), and `refine` returns what the shards found, merged: for a target of
at most `collect_limit` candidates (`collect`), their keys; for a larger one, the counts
of its candidates by their next 16 bits (sparse: `bins`, `counts`) and their smallest and
largest key (`lo`, `hi`; -1 where a shard has none). A shard answers with
`shard_refine(reference_part, candidate_part, request)` (a pass over its own data, the
compiled scan where it applies) and `merge_answers` merges the answers, so a distributed
caller does `finish(merge_partials(partials), lambda request: merge_answers([
shard_refine(part..., request) on every shard]))`: one round trip per pass, none where
the values were kept, one where each quantile's top-16-bit bin holds at most
`keep_limit` values, more (at most four) past that (`refine_over` does it for parts in
this process). Each shard's outputs stay where they were compared until `finish`
returns. The answers' totals are checked against the merged counts: a shard missing or
answering twice is an error, never a wrong quantile.

**What equals the single-machine comparison**: verdict, reason and cause, counts, maxima,
the worst element and its values, histogram, heatmap, columns, median and p99 (absolute
and relative), atol and rtol to pass, the policies' measures and disagreements: EQUAL to
`compare_arrays` on the whole output. **Up to summation order**: `mean_abs_diff` and
`mean_rel_diff` (sums over blocks cut elsewhere, added with fsum: relative differences of
order 1e-15, tested below 1e-12), and `psnr_db` (its sum of squares), hence PSNR's
verdict only for a PSNR within that much of `min_db`. The worst sample's pictures are
left out: a caller draws them from that one sample (`OutputComparison.worst_index[0]`).
A candidate whose shards have shapes different from the reference's, but whose whole
output has the reference's shape, fails as `shape` naming the first such shard (the
whole-output comparison would have compared misaligned samples).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parity.arrays import as_output_array
from parity.comparison import BlockDiff, Noise, OutputComparison
from parity.judging.compare import (
    BLOCK_ELEMENTS,
    QUANTILES,
    _Accumulator,
    _base,
    _rule,
    _shape_differs,
    _unfit,
    identical_blocks,
)
from parity.judging.quantiles import KEEP_LIMIT, QuantileSketch, Target, _keys, _refine, resolve
from parity.policies import TolerancePolicy
from parity.policies.base import Output

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np

    from parity.arrays import OutputArray
    from parity.policies.base import Judge, Policy

    Part = np.ndarray | OutputArray
    Refine = Callable[[dict[str, Any]], dict[str, Any]]

FORMAT = 1  # of `PartialComparison.to_dict`
_BINS = 1 << 16


@dataclass
class PartialComparison:
    """What comparing some shards of one output found, mergeable (see the module)."""

    name: str
    reference_dtype: str
    candidate_dtype: str
    full_shape: tuple[int, ...]
    policy: TolerancePolicy
    noise: dict[str, Noise]
    keep_limit: int
    # [offset, elements, sum of finite |a - b|, sum of finite relative differences] per
    # shard, sorted by offset.
    spans: list[list[Any]]
    reference_shape: tuple[int, ...]  # of the shards' parts joined along the leading axis
    candidate_shape: tuple[int, ...]
    # The first shard whose two parts' shapes differ: [offset, reference's, candidate's].
    shape_difference: list[Any] | None = None
    mismatched: int = 0
    nan_mismatched: int = 0
    special_bad: int = 0
    max_abs: float = 0.0
    worst: int | None = None  # flat index in the whole output
    worst_values: tuple[float, float] | None = None  # (reference, candidate)
    finite_abs: int = 0
    finite_rel: int = 0
    max_rel: float = 0.0
    atol_to_pass: float = 0.0
    rtol_to_pass: float = 0.0
    abs_sketch: QuantileSketch = field(default_factory=QuantileSketch)
    rel_sketch: QuantileSketch = field(default_factory=QuantileSketch)
    heat: np.ndarray | None = None
    columns: tuple[np.ndarray, np.ndarray] | None = None
    judge: dict[str, Any] = field(default_factory=dict)

    @property
    def elements(self) -> int:
        """The elements of the reference these shards hold."""
        return sum(int(s[1]) for s in self.spans)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: numbers, strings, lists, dicts and numeric numpy arrays."""
        return {
            "format": FORMAT,
            "name": self.name,
            "reference_dtype": self.reference_dtype,
            "candidate_dtype": self.candidate_dtype,
            "full_shape": list(self.full_shape),
            "policy": {"kind": self.policy.kind, "values": [list(v) for v in self.policy.values]},
            "noise": {k: [n.max_abs_diff, n.mismatched, n.total] for k, n in self.noise.items()},
            "keep_limit": self.keep_limit,
            "spans": [list(s) for s in self.spans],
            "reference_shape": list(self.reference_shape),
            "candidate_shape": list(self.candidate_shape),
            "shape_difference": self.shape_difference,
            "mismatched": self.mismatched,
            "nan_mismatched": self.nan_mismatched,
            "special_bad": self.special_bad,
            "max_abs": self.max_abs,
            "worst": self.worst,
            "worst_values": None if self.worst_values is None else list(self.worst_values),
            "finite_abs": self.finite_abs,
            "finite_rel": self.finite_rel,
            "max_rel": self.max_rel,
            "atol_to_pass": self.atol_to_pass,
            "rtol_to_pass": self.rtol_to_pass,
            "abs": _sketch_dict(self.abs_sketch),
            "rel": _sketch_dict(self.rel_sketch),
            "heat": self.heat,
            "columns": None if self.columns is None else list(self.columns),
            "judge": self.judge,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartialComparison:
        """The partial `to_dict` gave; ValueError naming the field for anything else."""
        try:
            return cls._from_dict(d)
        except (TypeError, IndexError, KeyError, AttributeError, OverflowError) as e:
            raise ValueError(f"partial comparison: malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> PartialComparison:
        import numpy as np

        r = _Reader(d)
        if r.get("format", int) != FORMAT:
            raise ValueError(f"partial comparison: format {d.get('format')!r}, expected {FORMAT}")
        policy = r.get("policy", dict)
        try:
            values = [(str(k), v) for k, v in policy["values"]]
            tolerance = TolerancePolicy(str(policy["kind"]), values=values)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"partial comparison: field 'policy': {e}") from None
        noise = {
            str(k): Noise(float(v[0]), int(v[1]), int(v[2]))
            for k, v in r.get("noise", dict).items()
        }
        keep_limit = r.get("keep_limit", int)
        columns = r.get("columns", list, none=True)
        worst_values = r.get("worst_values", list, none=True)
        heat = r.get("heat", np.ndarray, none=True)
        return cls(
            name=r.get("name", str),
            reference_dtype=str(np.dtype(r.get("reference_dtype", str))),
            candidate_dtype=str(np.dtype(r.get("candidate_dtype", str))),
            full_shape=r.shape("full_shape"),
            policy=tolerance,
            noise=noise,
            keep_limit=keep_limit,
            spans=[[int(s[0]), int(s[1]), float(s[2]), float(s[3])] for s in r.get("spans", list)],
            reference_shape=r.shape("reference_shape"),
            candidate_shape=r.shape("candidate_shape"),
            shape_difference=r.get("shape_difference", list, none=True),
            mismatched=r.get("mismatched", int),
            nan_mismatched=r.get("nan_mismatched", int),
            special_bad=r.get("special_bad", int),
            max_abs=r.number("max_abs"),
            worst=r.get("worst", int, none=True),
            worst_values=None
            if worst_values is None
            else (float(worst_values[0]), float(worst_values[1])),
            finite_abs=r.get("finite_abs", int),
            finite_rel=r.get("finite_rel", int),
            max_rel=r.number("max_rel"),
            atol_to_pass=r.number("atol_to_pass"),
            rtol_to_pass=r.number("rtol_to_pass"),
            abs_sketch=_sketch_from(r.get("abs", dict), keep_limit, "abs"),
            rel_sketch=_sketch_from(r.get("rel", dict), keep_limit, "rel"),
            heat=None if heat is None else np.asarray(heat, dtype=np.float64),
            columns=None
            if columns is None
            else (
                np.asarray(columns[0], dtype=np.float64),
                np.asarray(columns[1], dtype=np.int64),
            ),
            judge=r.get("judge", dict),
        )

    def to_bytes(self) -> bytes:
        """An `.npz` of numeric arrays and one JSON member (`pack`): no pickle."""
        return pack(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialComparison:
        return cls.from_dict(unpack(data))


def compare_shard(
    name: str,
    reference_part: Part,
    candidate_part: Part,
    policy: TolerancePolicy | None = None,
    *,
    offset: int,
    full_shape: Sequence[int],
    noise: dict[str, Noise] | None = None,
    block_elements: int | None = None,
    keep_limit: int = KEEP_LIMIT,
    on_block: Callable[[int, int], None] | None = None,
) -> PartialComparison:
    """Compare one shard: whole samples of both environments' output (the reference's
    shaped `full_shape` whole), the first at flat index `offset` of the whole output.
    The arguments are `compare_arrays`'; every shard of one output takes the same
    `policy`, `noise` and `keep_limit`. A partial keeps the positive differences while
    they number at most `keep_limit` (8 Mi by default: up to 64 MiB), else their bins
    (a few KiB): a smaller limit makes partials smaller, passes likelier. ValueError for
    a shard that is not whole samples within the output, or that cuts a row a policy
    judges whole (cosine on a 1-D output)."""
    import numpy as np

    from parity.judging import kernels

    rule = _rule(policy, noise)
    ref, cand = as_output_array(reference_part), as_output_array(candidate_part)
    full = tuple(int(n) for n in full_shape)
    total = math.prod(full)
    size = math.prod(ref.shape)
    per = math.prod(full[1:]) if full else 1
    if tuple(ref.shape[1:]) != full[1:] or len(ref.shape) != len(full):
        raise ValueError(
            f"{name}: a shard of shape {ref.shape} is not whole samples of an output of "
            f"shape {full}"
        )
    if offset < 0 or offset + size > total or (per and offset % per):
        raise ValueError(
            f"{name}: a shard of {size} elements at offset {offset} is not whole samples "
            f"within an output of shape {full}"
        )
    partial = PartialComparison(
        name=name,
        reference_dtype=str(ref.dtype),
        candidate_dtype=str(cand.dtype),
        full_shape=full,
        policy=policy or TolerancePolicy(),
        noise=dict(noise or {}),
        keep_limit=keep_limit,
        spans=[[offset, size, 0.0, 0.0]],
        reference_shape=tuple(ref.shape),
        candidate_shape=tuple(cand.shape),
        abs_sketch=QuantileSketch(keep_limit),
        rel_sketch=QuantileSketch(keep_limit),
    )
    if ref.shape != cand.shape:
        partial.shape_difference = [offset, list(ref.shape), list(cand.shape)]
        return partial
    output = Output(full, ref.dtype, cand.dtype)
    judge = rule.judge(output)
    whole = size == total
    if not whole and rule.unfit(output) is None and (offset % judge.row or size % judge.row):
        raise ValueError(
            f"{name}: {rule.name} judges rows of {judge.row} elements whole, and the "
            f"output's shape {full} has them cut by its shards: compare it whole"
        )
    judge.start_at(offset)
    acc = _Accumulator(output, judge, rule.tolerances(), keep_limit)
    views = acc.heat is not None or acc.columns is not None
    fused_rule = kernels.fused_rule(Output(ref.shape, ref.dtype, cand.dtype), judge, views)
    fused = None
    if fused_rule is not None:  # no speculation: `finish`'s passes go to every shard
        fused = kernels.FusedPass(fused_rule, size, QUANTILES, speculate=False)
    if block_elements is None:
        block_elements = BLOCK_ELEMENTS if fused is None else fused.block
    unit = acc.unit if len(full) != 1 or whole else judge.row
    block = unit * max(1, block_elements // unit)
    start = offset
    for rb, cb in zip(ref.blocks(block), cand.blocks(block), strict=True):
        if fused is None:
            acc.add(start, rb, cb)
        else:
            fused.add(start, rb, cb)
        start += int(rb.size)
        if on_block is not None:
            on_block(start - offset, size)
    if fused is not None:
        judge.fused_seen(fused.finish(acc, acc.abs_sketch, acc.rel_sketch))
    partial.spans = [[offset, size, float(acc.sum_abs), float(acc.sum_rel)]]
    partial.mismatched = int(acc.mismatched)
    partial.nan_mismatched = int(acc.nan_mismatched)
    partial.special_bad = int(acc.special_bad)
    partial.max_abs = float(acc.max_abs)
    partial.worst = None if acc.worst is None else int(acc.worst)
    partial.worst_values = acc.worst_values
    partial.finite_abs, partial.finite_rel = int(acc.finite_abs), int(acc.finite_rel)
    partial.max_rel = float(acc.max_rel)
    partial.atol_to_pass = float(acc.atol_to_pass)
    partial.rtol_to_pass = float(acc.rtol_to_pass)
    partial.abs_sketch = _settled(acc.abs_sketch)
    partial.rel_sketch = _settled(acc.rel_sketch)
    partial.heat = acc.heat
    if acc.columns is not None:
        partial.columns = (acc.columns[0], acc.columns[1].astype(np.int64))
    partial.judge = judge.state()
    return partial


def merge_partials(partials: Sequence[PartialComparison]) -> PartialComparison:
    """One partial of all of `partials`' shards (of one output, compared alike); the
    inputs are left as they were. ValueError when they are of different outputs or
    settings, or two of them hold the same elements."""
    if not partials:
        raise ValueError("merge_partials: no partial comparison to merge")
    ordered = sorted(partials, key=lambda p: min((int(s[0]) for s in p.spans), default=0))
    merged = _copy(ordered[0])
    for p in ordered[1:]:
        merged = _merge(merged, p)
    return merged


def finish(merged: PartialComparison, refine: Refine | None = None) -> OutputComparison:
    """The comparison of the whole output from the merge of all its shards: what
    `compare_arrays` gives (see the module for the means and PSNR), without pictures.
    `refine(request)` makes one quantile pass over every shard and returns the merged
    answers (`shard_refine`, `merge_answers`); it is called only where the sketches
    were binned, once per pass. ValueError when the shards do not cover the output."""
    rule = _rule(merged.policy, merged.noise)
    full = merged.full_shape
    total = math.prod(full)
    _check_cover(merged, total)
    dtypes = (_dtype(merged.reference_dtype), _dtype(merged.candidate_dtype))
    base = _base(merged.name, dtypes, (full, merged.candidate_shape), rule, merged.noise or None)
    if merged.candidate_shape != full:
        return _shape_differs(base, total)
    if merged.shape_difference is not None:
        at, ref_part, cand_part = merged.shape_difference
        result = _shape_differs(base, total)
        from dataclasses import replace

        reason = (
            f"shape differs in the shard at flat index {at}: {tuple(ref_part)} (reference) "
            f"vs {tuple(cand_part)}"
        )
        return replace(result, reason=reason)
    output = Output(full, *dtypes)
    unfit = rule.unfit(output)
    judge = rule.judge(output)
    judge.merge(merged.judge)
    acc = _Accumulator(output, judge, rule.tolerances(), merged.keep_limit)
    acc.mismatched = merged.mismatched
    acc.nan_mismatched = merged.nan_mismatched
    acc.special_bad = merged.special_bad
    acc.max_abs = merged.max_abs
    acc.worst = merged.worst
    acc.worst_values = merged.worst_values
    acc.sum_abs = math.fsum(float(s[2]) for s in merged.spans)
    acc.sum_rel = math.fsum(float(s[3]) for s in merged.spans)
    acc.finite_abs, acc.finite_rel = merged.finite_abs, merged.finite_rel
    acc.max_rel = merged.max_rel
    acc.atol_to_pass, acc.rtol_to_pass = merged.atol_to_pass, merged.rtol_to_pass
    acc.abs_sketch = _copy_sketch(merged.abs_sketch)
    acc.rel_sketch = _copy_sketch(merged.rel_sketch)
    if acc.heat is not None:
        if merged.heat is None or merged.heat.shape != acc.heat.shape:
            raise ValueError(f"{merged.name}: the merged heatmap is missing or misshapen")
        acc.heat = merged.heat.copy()
    if acc.columns is not None:
        if merged.columns is None or merged.columns[0].shape != acc.columns[0].shape:
            raise ValueError(f"{merged.name}: the merged columns are missing or misshapen")
        acc.columns = (merged.columns[0].copy(), merged.columns[1].copy())

    def scan(pending: list[list[Target]], collect_limit: int) -> None:
        _distributed_pass(pending, collect_limit, refine)

    def nothing() -> Iterator[Sequence[np.ndarray]]:
        return iter(())

    (median_abs, p99_abs), (median_rel, p99_rel) = resolve(
        [acc.abs_sketch, acc.rel_sketch], QUANTILES, nothing, merged.keep_limit, scan=scan
    )
    return _unfit(acc.result(base, median_abs, p99_abs, median_rel, p99_rel), unfit)


def shard_refine(
    reference_part: Part,
    candidate_part: Part,
    request: dict[str, Any],
    *,
    block_elements: int | None = None,
) -> dict[str, Any]:
    """One quantile pass over one shard (see the module): for each of the request's
    targets, the keys of the shard's candidates, or their sub-histogram (sparse) with
    the smallest and largest key. Plain data, in the request's order."""
    import numpy as np

    from parity.judging import kernels

    ref, cand = as_output_array(reference_part), as_output_array(candidate_part)
    limit, flat = _request(request)
    pending: list[list[Target]] = [[], []]
    for w, t in flat:
        pending[w].append(t)
    output = Output(tuple(ref.shape), ref.dtype, cand.dtype)
    same = output.same_dtype
    complex_ = "c" in (ref.dtype.kind, cand.dtype.kind)
    work = np.dtype(np.complex128 if complex_ else np.float64)
    compiled = bool(flat) and kernels.compiled_for(output)
    if block_elements is None:
        block_elements = kernels.FUSED_BLOCK if compiled else BLOCK_ELEMENTS
    block = max(1, block_elements)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return zip(ref.blocks(block), cand.blocks(block), strict=True)

    def replay() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rb, cb in blocks():
            if not (same and identical_blocks(rb, cb)):
                d = BlockDiff(rb, cb, work)
                yield d.diff, d.rel

    if compiled:
        kernels.scan_targets(kernels._kernels()[1], blocks, pending, limit, whole=False)
    elif flat:
        _refine(pending, replay, limit)
    answers: list[dict[str, Any]] = []
    for _, t in flat:
        if t.count <= limit:
            keys = np.concatenate(t.collected) if t.collected else np.empty(0, np.uint64)
            answers.append({"keys": keys.astype(np.uint64)})
        elif t.sub is None:
            answers.append({"bins": _ints([]), "counts": _ints([]), "lo": -1, "hi": -1})
        else:
            bins = np.flatnonzero(t.sub).astype(np.int64)
            counts = t.sub[bins].astype(np.int64)
            answers.append({"bins": bins, "counts": counts, "lo": t.lo, "hi": t.hi})
    return {"targets": answers}


def merge_answers(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shards' answers to one request (`shard_refine`) as one."""
    import numpy as np

    if not answers:
        raise ValueError("merge_answers: no answer to merge")
    n = len(answers[0]["targets"])
    if any(len(a["targets"]) != n for a in answers):
        raise ValueError("merge_answers: the answers are to different requests")
    merged: list[dict[str, Any]] = []
    for i in range(n):
        parts = [a["targets"][i] for a in answers]
        if all("keys" in p for p in parts):
            keys = [np.asarray(p["keys"], dtype=np.uint64) for p in parts]
            merged.append({"keys": np.concatenate(keys)})
            continue
        if any("keys" in p for p in parts):
            raise ValueError("merge_answers: the answers are to different requests")
        sub = np.zeros(_BINS, dtype=np.int64)
        for p in parts:
            np.add.at(sub, np.asarray(p["bins"], dtype=np.int64), np.asarray(p["counts"]))
        los = [int(p["lo"]) for p in parts if int(p["lo"]) >= 0]
        his = [int(p["hi"]) for p in parts if int(p["hi"]) >= 0]
        bins = np.flatnonzero(sub).astype(np.int64)
        merged.append(
            {
                "bins": bins,
                "counts": sub[bins],
                "lo": min(los) if los else -1,
                "hi": max(his) if his else -1,
            }
        )
    return {"targets": merged}


def refine_over(parts: Sequence[tuple[Part, Part]], *, block_elements: int | None = None) -> Refine:
    """`finish`'s `refine` over shards held in this process: (reference, candidate) pairs."""

    def refine(request: dict[str, Any]) -> dict[str, Any]:
        return merge_answers(
            [shard_refine(r, c, request, block_elements=block_elements) for r, c in parts]
        )

    return refine


def pack(data: Any) -> bytes:
    """Plain data (dicts with string keys, lists, strings, numbers, None, numeric numpy
    arrays) as bytes: an `.npz` of the arrays and one JSON member of the rest (NaN and
    infinities written as JSON's Python extension, NaN, Infinity). Read by `unpack`."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise ValueError(f"pack: arrays of dtype {v.dtype} are not plain numbers")
            key = f"a{len(arrays)}"
            arrays[key] = v
            return {"$array": key}
        if isinstance(v, dict):
            if any(not isinstance(k, str) or k == "$array" for k in v):
                raise ValueError("pack: dict keys must be strings (not '$array')")
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, np.integer | np.floating | np.bool_):
            return v.item()
        if v is None or isinstance(v, str | int | float | bool):
            return v
        raise ValueError(f"pack: {type(v).__name__} is not plain data")

    text = json.dumps(plain(data)).encode()
    out = io.BytesIO()
    arrays["__json__"] = np.frombuffer(text, dtype=np.uint8)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def unpack(data: bytes) -> Any:
    """What `pack` wrote; ValueError for anything else (arrays are never unpickled)."""
    import numpy as np

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            members = {k: npz[k] for k in npz.files}
    except Exception as e:  # a zip or .npy format error: not what pack wrote
        raise ValueError(f"unpack: not packed data ({e})") from None
    text = members.pop("__json__", None)
    if text is None or text.dtype != np.uint8:
        raise ValueError("unpack: no JSON member")
    for key, a in members.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"unpack: array {key} has dtype {a.dtype}")

    def restore(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"$array"}:
                if v["$array"] not in members:
                    raise ValueError(f"unpack: no array {v['$array']!r}")
                return members[v["$array"]]
            return {k: restore(x) for k, x in v.items()}
        if isinstance(v, list):
            return [restore(x) for x in v]
        return v

    try:
        return restore(json.loads(text.tobytes().decode()))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"unpack: bad JSON member ({e})") from None


def _request(request: dict[str, Any]) -> tuple[int, list[tuple[int, Target]]]:
    """The collect limit and the (sketch, Target) pairs of a `refine` request."""
    try:
        limit = int(request["collect_limit"])
        flat = []
        for t in request["targets"]:
            w = int(t["sketch"])
            target = Target(int(t["prefix"]), int(t["shift"]), int(t["count"]), {})
            if w not in (0, 1) or target.shift not in (16, 32, 48) or target.count < 1:
                raise ValueError(f"target {t}")
            if bool(t["collect"]) != (target.count <= limit):
                raise ValueError(f"target {t}: collect contradicts collect_limit {limit}")
            flat.append((w, target))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"quantile pass request: {e}") from None
    return limit, flat


def _distributed_pass(
    pending: list[list[Target]], collect_limit: int, refine: Refine | None
) -> None:
    """One of `resolve`'s passes made by the shards: each target left as `_refine`
    leaves it after a pass over the whole output."""
    import numpy as np

    flat = [(w, t) for w, ts in enumerate(pending) for t in ts]
    if not flat:
        return
    if refine is None:
        raise ValueError("finish: the quantiles need a pass over the shards, and no refine")
    request = {
        "collect_limit": collect_limit,
        "targets": [
            {
                "sketch": w,
                "prefix": t.prefix,
                "shift": t.shift,
                "count": t.count,
                "collect": t.count <= collect_limit,
            }
            for w, t in flat
        ],
    }
    answer = refine(request)
    got = answer.get("targets") if isinstance(answer, dict) else None
    if not isinstance(got, list) or len(got) != len(flat):
        raise ValueError("finish: refine's answer does not answer the request")
    for (_, t), a in zip(flat, got, strict=True):
        if t.count <= collect_limit:
            keys = np.array(a["keys"], dtype=np.uint64)  # a copy: _settle partitions it
            found = int(keys.size)
            t.collected = [keys]
        else:
            sub = np.zeros(_BINS, dtype=np.int64)
            sub[np.asarray(a["bins"], dtype=np.int64)] = np.asarray(a["counts"], dtype=np.int64)
            found = int(sub.sum())
            t.sub, t.lo, t.hi = sub, int(a["lo"]), int(a["hi"])
        if found != t.count:
            raise ValueError(
                f"finish: the shards hold {found} values of a quantile bin the merged "
                f"counts say holds {t.count}: a shard missing, or answering twice"
            )


def _check_cover(p: PartialComparison, total: int) -> None:
    """The shards hold every element of the output once."""
    at = 0
    for offset, size, *_ in sorted(p.spans, key=lambda s: (int(s[0]), int(s[1]))):
        offset, size = int(offset), int(size)
        if not size:
            continue
        if offset > at:
            raise ValueError(f"{p.name}: no shard holds elements {at} to {offset - 1}")
        if offset < at:
            raise ValueError(f"{p.name}: two shards hold element {offset}")
        at = offset + size
    if at != total:
        raise ValueError(f"{p.name}: no shard holds elements {at} to {total - 1}")


def _merge(a: PartialComparison, b: PartialComparison) -> PartialComparison:
    """a and b's shards in one partial (a is the merge so far: changed in place)."""
    import numpy as np

    for attr in ("name", "reference_dtype", "candidate_dtype", "full_shape", "policy"):
        if getattr(a, attr) != getattr(b, attr):
            raise ValueError(
                f"merge_partials: {attr} differs: {getattr(a, attr)!r} vs {getattr(b, attr)!r}"
            )
    if a.noise != b.noise or a.keep_limit != b.keep_limit:
        raise ValueError(f"merge_partials: {a.name}: compared with different noise or keep_limit")
    spans = sorted([*a.spans, *b.spans], key=lambda s: (int(s[0]), int(s[1])))
    ends = 0
    for s in spans:
        if int(s[1]) and int(s[0]) < ends:
            raise ValueError(f"merge_partials: {a.name}: two shards hold element {int(s[0])}")
        ends = max(ends, int(s[0]) + int(s[1]))
    a.spans = [list(s) for s in spans]
    a.reference_shape = _join(a.reference_shape, b.reference_shape, a.name)
    a.candidate_shape = _join(a.candidate_shape, b.candidate_shape, a.name)
    differences = [d for d in (a.shape_difference, b.shape_difference) if d is not None]
    a.shape_difference = min(differences, key=lambda d: int(d[0])) if differences else None
    a.mismatched += b.mismatched
    a.nan_mismatched += b.nan_mismatched
    a.special_bad += b.special_bad
    if b.worst is not None and (
        a.worst is None or b.max_abs > a.max_abs or (b.max_abs == a.max_abs and b.worst < a.worst)
    ):
        a.max_abs, a.worst, a.worst_values = b.max_abs, b.worst, b.worst_values
    a.finite_abs += b.finite_abs
    a.finite_rel += b.finite_rel
    a.max_rel = max(a.max_rel, b.max_rel)
    a.atol_to_pass = max(a.atol_to_pass, b.atol_to_pass)
    a.rtol_to_pass = max(a.rtol_to_pass, b.rtol_to_pass)
    a.abs_sketch = _merge_sketch(a.abs_sketch, b.abs_sketch, a.keep_limit)
    a.rel_sketch = _merge_sketch(a.rel_sketch, b.rel_sketch, a.keep_limit)
    if a.heat is None or b.heat is None:
        a.heat = a.heat if b.heat is None else b.heat.copy()
    else:
        np.maximum(a.heat, b.heat, out=a.heat)
    if a.columns is None or b.columns is None:
        a.columns = a.columns if b.columns is None else (b.columns[0].copy(), b.columns[1].copy())
    else:
        a.columns = (np.maximum(a.columns[0], b.columns[0]), a.columns[1] + b.columns[1])
    if a.shape_difference is None:
        judge = _judge(a)
        judge.merge(a.judge)
        judge.merge(b.judge)
        a.judge = judge.state()
    return a


def _judge(p: PartialComparison) -> Judge:
    rule: Policy = _rule(p.policy, p.noise or None)
    return rule.judge(Output(p.full_shape, _dtype(p.reference_dtype), _dtype(p.candidate_dtype)))


def _join(s: tuple[int, ...], t: tuple[int, ...], name: str) -> tuple[int, ...]:
    """Two shards' parts' shapes joined along the leading axis."""
    if not s or not t or s[1:] != t[1:]:
        raise ValueError(f"merge_partials: {name}: shards of shapes {s} and {t} do not join")
    return (s[0] + t[0], *s[1:])


def _copy(p: PartialComparison) -> PartialComparison:
    from dataclasses import replace

    return replace(
        p,
        spans=[list(s) for s in p.spans],
        abs_sketch=_copy_sketch(p.abs_sketch),
        rel_sketch=_copy_sketch(p.rel_sketch),
        heat=None if p.heat is None else p.heat.copy(),
        columns=None if p.columns is None else (p.columns[0].copy(), p.columns[1].copy()),
        judge=json.loads(json.dumps(p.judge)),
    )


def _settled(s: QuantileSketch) -> QuantileSketch:
    """`s` with its kept values as one array (or none kept: binned)."""
    import numpy as np

    out = QuantileSketch(s.keep_limit, total=s.total, zeros=s.zeros, kept=None, top=s.top)
    if s.kept is not None:
        values = np.concatenate(s.kept) if s.kept else np.empty(0)
        out.kept, out.kept_count = [values], int(values.size)
    return out


def _copy_sketch(s: QuantileSketch) -> QuantileSketch:
    out = _settled(s)
    if out.kept is not None:
        out.kept = [out.kept[0].copy()]
    if out.top is not None:
        out.top = out.top.copy()
    return out


def _merge_sketch(a: QuantileSketch, b: QuantileSketch, keep_limit: int) -> QuantileSketch:
    """Both sketches' values: kept while they number at most `keep_limit`, as one pass
    over both would have kept them, else binned by their top 16 bits."""
    import numpy as np

    out = QuantileSketch(keep_limit, total=a.total + b.total, zeros=a.zeros + b.zeros)
    if a.kept is not None and b.kept is not None and a.kept_count + b.kept_count <= keep_limit:
        values = np.concatenate([*a.kept, *b.kept])
        out.kept, out.kept_count = [values], int(values.size)
        return out
    out.kept, out.top = None, np.zeros(_BINS, dtype=np.int64)
    for s in (a, b):
        if s.top is not None:
            out.top += s.top
        for part in s.kept or []:
            out.top += np.bincount(_keys(part) >> 48, minlength=_BINS)
    return out


def _sketch_dict(s: QuantileSketch) -> dict[str, Any]:
    import numpy as np

    kept = bins = None
    if s.kept is not None:
        kept = np.concatenate(s.kept) if s.kept else np.empty(0)
    elif s.top is not None:  # sparse: the bins holding values, and their counts
        at = np.flatnonzero(s.top).astype(np.int64)
        bins = [at, s.top[at].astype(np.int64)]
    return {"total": s.total, "zeros": s.zeros, "kept": kept, "bins": bins}


def _sketch_from(d: dict[str, Any], keep_limit: int, what: str) -> QuantileSketch:
    import numpy as np

    r = _Reader(d, what)
    kept = r.get("kept", np.ndarray, none=True)
    bins = r.get("bins", list, none=True)
    if (kept is None) == (bins is None):
        raise ValueError(f"partial comparison: sketch {what}: kept values or bins, one of them")
    s = QuantileSketch(keep_limit, total=r.get("total", int), zeros=r.get("zeros", int))
    if kept is not None:
        values = np.asarray(kept, dtype=np.float64).reshape(-1)
        if values.size > keep_limit or not (values > 0).all():
            raise ValueError(f"partial comparison: sketch {what}: bad kept values")
        s.kept, s.kept_count, s.top = [values], int(values.size), None
    else:
        assert bins is not None
        at, counts = (np.asarray(b) for b in bins) if len(bins) == 2 else (None, None)
        if (
            at is None
            or counts is None
            or at.shape != counts.shape
            or at.ndim != 1
            or at.dtype.kind not in "iu"
            or counts.dtype.kind not in "iu"
            or (at.size and (at.min() < 0 or at.max() >= _BINS))
            or (counts < 0).any()
        ):
            raise ValueError(f"partial comparison: sketch {what}: bad bins")
        s.kept, s.kept_count, s.top = None, 0, np.zeros(_BINS, dtype=np.int64)
        np.add.at(s.top, at.astype(np.int64), counts.astype(np.int64))
    positives = s.kept_count if s.top is None else int(s.top.sum())
    if s.zeros < 0 or s.zeros + positives != s.total:
        raise ValueError(f"partial comparison: sketch {what}: counts do not add up")
    return s


class _Reader:
    """Typed fields of a dict, ValueError naming the field otherwise."""

    def __init__(self, d: Any, what: str = "") -> None:
        if not isinstance(d, dict):
            raise ValueError(f"partial comparison {what}: expected an object")
        self.d = d
        self.what = f" {what}" if what else ""

    def get(self, key: str, kind: type, none: bool = False) -> Any:
        if key not in self.d:
            raise ValueError(f"partial comparison{self.what}: field {key!r} missing")
        v = self.d[key]
        if v is None and none:
            return None
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if not ok:
            raise ValueError(
                f"partial comparison{self.what}: field {key!r}: expected {kind.__name__}, "
                f"got {type(v).__name__}"
            )
        return v

    def number(self, key: str) -> float:
        v = self.d.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"partial comparison{self.what}: field {key!r}: expected a number")
        return float(v)

    def shape(self, key: str) -> tuple[int, ...]:
        v = self.get(key, list)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v):
            raise ValueError(f"partial comparison{self.what}: field {key!r}: not a shape")
        return tuple(v)


def _dtype(name: str) -> np.dtype:
    import numpy as np

    return np.dtype(name)


def _ints(values: list[int]) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.int64)
