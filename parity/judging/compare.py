"""Compare one output of two environments under its tolerance policy, in bounded memory.

The candidate `a` is compared with the reference `b` block by block (`BLOCK_ELEMENTS`
elements at a time, whole rows of the last axis), so memory stays bounded whatever the
output's size. The policy (`parity.policies`) judges each block as the pass meets it;
what holds under every policy is this module's: shapes and dtypes must be equal, NaN and
infinities must sit at the same positions. Besides the verdict every comparison gives the
evidence to set a tolerance from: max, mean, median and p99 of the absolute and relative
difference (exact, see `parity.judging.quantiles`), the mismatched count, the worst
element, and the smallest atol and rtol that would pass. Differences are computed in
float64 (complex128 for complex outputs), so integers compare exactly up to 2**53.
Relative difference is |a - b| / |b|: 0 where equal, inf where b is 0 and a is not.
Where an output is laid out so, the pass also gathers a heatmap (image-like outputs,
`parity.judging.pictures.image_layout`) or each column's largest difference and
mismatched count (2-D outputs of at most `COLUMN_LIMIT` columns); on request, the worst
sample of an image-like output is drawn in both environments (`Pictures`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from parity.arrays import OutputArray, as_output_array, read_ahead
from parity.comparison import (
    COLUMN_LIMIT,
    BlockDiff,
    Columns,
    Heatmap,
    Histogram,
    Noise,
    OutputComparison,
)
from parity.judging.pictures import ImageLayout, image_layout, sample_pictures
from parity.judging.quantiles import KEEP_LIMIT, QuantileSketch, resolve
from parity.policies import TolerancePolicy
from parity.policies.base import Output, Tally

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

    from parity.judging.kernels import FusedPass
    from parity.judging.quantiles import Target
    from parity.policies.base import Judge, Policy

# 64 Ki elements: each block's dozen float64 work arrays (512 KiB each) are reused by the
# allocator instead of being mapped afresh from the OS; measured 2.3x faster than 4 Mi
# blocks on two 2 GiB outputs, at half the peak memory.
BLOCK_ELEMENTS = 1 << 16
HEATMAP_CELLS = 64  # at most 64 x 64 cells per heatmap
QUANTILES = (0.5, 0.99)


def compare_arrays(
    name: str,
    reference: np.ndarray | OutputArray,
    candidate: np.ndarray | OutputArray,
    policy: TolerancePolicy | None = None,
    *,
    noise: dict[str, Noise] | None = None,
    block_elements: int | None = None,
    keep_limit: int = KEEP_LIMIT,
    on_block: Callable[[int, int], None] | None = None,
    pictures: bool = False,
) -> OutputComparison:
    """Compare `candidate` against `reference` under `policy` (allclose 0, 0 by default).

    `noise` is each environment's self-disagreement from a calibrated check: it marks a
    failure as nondeterministic and scales atol by the policy's `noise_factor`.
    `on_block(done, total)` is called after each block of the first pass (for progress).
    `block_elements`: elements per block (default `BLOCK_ELEMENTS`, or the compiled
    pass's `parity.judging.kernels.FUSED_BLOCK`).
    With `pictures`, an image-like output that differs carries the `Pictures` of the
    sample holding its worst element (that one sample is read again from each side)."""
    rule = _rule(policy, noise)
    ref, cand = as_output_array(reference), as_output_array(candidate)
    base = _base(name, (ref.dtype, cand.dtype), (ref.shape, cand.shape), rule, noise)
    size = math.prod(ref.shape)
    if ref.shape != cand.shape:
        return _shape_differs(base, size)
    output = Output(ref.shape, ref.dtype, cand.dtype)
    unfit = rule.unfit(output)
    acc = _Accumulator(output, rule.judge(output), rule.tolerances(), keep_limit)
    fused = _fused(output, acc)
    if block_elements is None:  # the path's own: the compiled pass takes larger blocks
        block_elements = BLOCK_ELEMENTS if fused is None else fused.block
    block = acc.unit * max(1, block_elements // acc.unit)
    start = 0
    # The compiled pass reads an archive's next blocks while it compares (`read_ahead`);
    # the NumPy path's small blocks take longer to compare than to read.
    first = zip(ref.blocks(block), cand.blocks(block), strict=True)
    for rb, cb in first if fused is None else read_ahead(ref, cand, block):
        if fused is None:
            acc.add(start, rb, cb)
        else:
            fused.add(start, rb, cb)
        start += int(rb.size)
        if on_block is not None:
            on_block(start, size)
    if fused is not None:
        acc.judge.fused_seen(fused.finish(acc, acc.abs_sketch, acc.rel_sketch))

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return zip(ref.blocks(block), cand.blocks(block), strict=True)

    def replay() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rb, cb in blocks():
            if not acc.identical(rb, cb):
                d = BlockDiff(rb, cb, acc.work)
                yield d.diff, d.rel

    def scan(pending: list[list[Target]], collect_limit: int) -> None:
        assert fused is not None
        fused.scan(blocks, pending, collect_limit)

    (median_abs, p99_abs), (median_rel, p99_rel) = resolve(
        [acc.abs_sketch, acc.rel_sketch],
        QUANTILES,
        replay,
        keep_limit,
        scan=None if fused is None else scan,
    )
    result = _unfit(acc.result(base, median_abs, p99_abs, median_rel, p99_rel), unfit)
    if pictures and acc.layout is not None and result.worst_index is not None:
        drawn = sample_pictures(ref, cand, acc.layout, result.worst_index[0])
        result = replace(result, pictures=drawn)
    return result


def _rule(policy: TolerancePolicy | None, noise: dict[str, Noise] | None) -> Policy:
    """The policy's rule, calibrated by `noise` where there is any."""
    rule = (policy or TolerancePolicy()).rule
    if noise:
        rule = rule.calibrated(max(n.max_abs_diff for n in noise.values()))
    return rule


def _base(
    name: str,
    dtypes: tuple[np.dtype, np.dtype],
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    rule: Policy,
    noise: dict[str, Noise] | None,
) -> dict[str, object]:
    """The fields of an `OutputComparison` known before any block is read."""
    atol, rtol = rule.tolerances()
    return {
        "name": name,
        "reference_dtype": str(dtypes[0]),
        "candidate_dtype": str(dtypes[1]),
        "reference_shape": shapes[0],
        "candidate_shape": shapes[1],
        "atol": atol,
        "rtol": rtol,
        "policy": rule.name,
        "policy_description": rule.describe(),
        "noise": dict(noise or {}),
        "nondeterministic": any(n.mismatched for n in (noise or {}).values()),
    }


def _shape_differs(base: dict[str, object], size: int) -> OutputComparison:
    return OutputComparison(
        **base,  # type: ignore[arg-type]
        passed=False,
        reason=f"shape differs: {base['reference_shape']} (reference) vs {base['candidate_shape']}",
        cause="shape",
        total=size,
        mismatched=size,
    )


def _unfit(result: OutputComparison, unfit: str | None) -> OutputComparison:
    """`result` failed by the policy's refusal of the output, where it refused it."""
    if unfit and result.passed:
        return replace(result, passed=False, reason=unfit, cause="policy")
    if unfit:  # a dtype or NaN change is the environments' finding: it keeps the cause
        return replace(result, reason=f"{result.reason}; {unfit}")
    return result


def _fused(output: Output, acc: _Accumulator) -> FusedPass | None:
    """The compiled pass for this comparison, when `parity.judging.kernels` allows it."""
    views = acc.heat is not None or acc.columns is not None
    from parity.judging import kernels

    rule = kernels.fused_rule(output, acc.judge, views)
    return None if rule is None else kernels.FusedPass(rule, output.total, QUANTILES)


def measure_noise(first: np.ndarray | OutputArray, second: np.ndarray | OutputArray) -> Noise:
    """How two runs of one output in one environment differ (bitwise, and by how much)."""
    c = compare_arrays("noise", first, second, TolerancePolicy(kind="exact"))
    if c.cause == "shape":
        return Noise(max_abs_diff=math.inf, mismatched=c.total, total=c.total)
    return Noise(max_abs_diff=c.max_abs_diff, mismatched=c.mismatched, total=c.total)


class _Accumulator:
    """Everything one pass over the blocks accumulates."""

    def __init__(
        self, output: Output, judge: Judge, tolerances: tuple[float, float], keep_limit: int
    ) -> None:
        import numpy as np

        self.shape = output.shape
        self.judge = judge
        self.atol, self.rtol = tolerances
        self.same_dtype = output.same_dtype
        complex_ = "c" in (output.reference_dtype.kind, output.candidate_dtype.kind)
        self.work = np.dtype(np.complex128 if complex_ else np.float64)
        self.row = output.row
        self.total = output.total
        self.mismatched = 0
        self.nan_mismatched = 0
        self.special_bad = 0
        self.max_abs = 0.0
        self.worst: int | None = None
        self.worst_values: tuple[float, float] | None = None
        self.sum_abs = 0.0
        self.finite_abs = 0
        self.sum_rel = 0.0
        self.finite_rel = 0
        self.max_rel = 0.0
        self.atol_to_pass = 0.0
        self.rtol_to_pass = 0.0
        self.abs_sketch = QuantileSketch(keep_limit)
        self.rel_sketch = QuantileSketch(keep_limit)
        # Blocks hold whole rows of the last axis; of a channels-last image, whole pixel rows.
        self.unit = self.row
        self.layout: ImageLayout | None = image_layout(self.shape)
        self.heat: np.ndarray | None = None
        if self.layout is not None:
            h, w = self.layout.height, self.layout.width
            self.heat = np.zeros((min(h, HEATMAP_CELLS), min(w, HEATMAP_CELLS)))
            self.heat_cols = (np.arange(self.heat.shape[1]) * w) // self.heat.shape[1]
            if self.layout.channels_last:
                self.unit = w * self.layout.channels
        self.columns: tuple[np.ndarray, np.ndarray] | None = None
        if len(self.shape) == 2 and 0 < self.shape[1] <= COLUMN_LIMIT:
            cols = self.shape[1]
            self.columns = (np.zeros(cols), np.zeros(cols, dtype=np.int64))

    def identical(self, rb: np.ndarray, cb: np.ndarray) -> bool:
        """Whether two blocks hold the same bytes (then every difference is zero)."""
        return self.same_dtype and identical_blocks(rb, cb)

    def add(self, start: int, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        n = int(rb.size)
        self.judge.see(rb, cb)
        if self.identical(rb, cb):
            for sketch in (self.abs_sketch, self.rel_sketch):
                sketch.add_zeros(n)
            self.finite_abs += n
            self.finite_rel += n
            return
        d = BlockDiff(rb, cb, self.work)
        diff, rel = d.diff, d.rel
        bad = d.bad
        ok = self.judge.test(rb, cb, d)
        if bad is not None:
            ok &= ~bad
            self.special_bad += int(np.count_nonzero(bad))
            self.nan_mismatched += d.nan_bad
        self.mismatched += int(ok.size - np.count_nonzero(ok))
        if self.columns is not None:  # blocks hold whole rows
            worst, count = self.columns
            width = self.shape[1]
            np.maximum(worst, diff.reshape(-1, width).max(axis=0), out=worst)
            count += np.count_nonzero(~ok.reshape(-1, width), axis=0)

        i = int(np.argmax(diff))
        if diff[i] > self.max_abs or self.worst is None:
            self.max_abs = float(diff[i])
            self.worst = start + i
            self.worst_values = (_real(d.b[i]), _real(d.a[i]))
        if d.all_finite:
            self.sum_abs += float(diff.sum())
            self.finite_abs += n
        else:
            finite = np.isfinite(diff)
            self.sum_abs += float(diff[finite].sum())
            self.finite_abs += int(np.count_nonzero(finite))
        finite_rel = np.isfinite(rel)
        self.sum_rel += float(rel[finite_rel].sum())
        self.finite_rel += int(np.count_nonzero(finite_rel))
        self.max_rel = max(self.max_rel, float(rel.max()))
        atol, rtol = self.atol, self.rtol
        slack_max = float(diff[i]) if rtol == 0 else float((diff - rtol * d.abs_b).max())
        self.atol_to_pass = max(self.atol_to_pass, slack_max)
        over = diff > atol
        if over.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                need = (diff[over] - atol) / d.abs_b[over]
            self.rtol_to_pass = max(self.rtol_to_pass, float(need.max()))
        self.abs_sketch.add(diff)
        self.rel_sketch.add(rel)
        if self.heat is not None:
            self._heat(start, diff)

    def _heat(self, start: int, diff: np.ndarray) -> None:
        import numpy as np

        assert self.heat is not None and self.layout is not None
        h, w = self.layout.height, self.layout.width
        if self.layout.channels_last:  # the largest over each pixel's channels
            channels = self.layout.channels
            diff = diff.reshape(-1, channels).max(axis=1)
            start //= channels
        rows = diff.reshape(-1, w)
        by_col = np.maximum.reduceat(rows, self.heat_cols, axis=1)
        first = start // w
        cell_rows = ((first + np.arange(rows.shape[0])) % h) * self.heat.shape[0] // h
        np.maximum.at(self.heat, cell_rows, by_col)

    def result(
        self,
        base: dict[str, object],
        median_abs: float,
        p99_abs: float,
        median_rel: float,
        p99_rel: float,
    ) -> OutputComparison:
        import numpy as np

        reasons = []
        cause = None
        if not self.same_dtype:
            cause = "dtype"
            reasons.append(
                f"dtype differs: {base['reference_dtype']} (reference) vs {base['candidate_dtype']}"
            )
        if self.special_bad:
            cause = cause or "nan_inf"
            reasons.append(
                f"{self.special_bad} NaN/Inf positions or signs differ"
                + (f" ({self.nan_mismatched} NaN)" if self.nan_mismatched else "")
            )
        verdict = self.judge.verdict(
            Tally(self.total, self.mismatched, self.special_bad, self.max_abs)
        )
        if verdict.failed and verdict.reason:
            reasons.append(verdict.reason)
        cause = cause or ("tolerance" if verdict.failed else None)
        passed = cause is None
        noise = base["noise"]
        assert isinstance(noise, dict)
        if not passed and base["nondeterministic"]:
            cause = "nondeterministic"
            noisy = ", ".join(
                f"{env} (max abs diff {n.max_abs_diff:.3g} between two runs)"
                for env, n in noise.items()
                if n.mismatched
            )
            reasons.insert(0, f"nondeterministic, not drift: {noisy} disagree with themselves")
        worst = None
        if self.worst is not None and self.max_abs > 0:
            worst = tuple(int(i) for i in np.unravel_index(self.worst, self.shape))
        return OutputComparison(
            **base,  # type: ignore[arg-type]
            passed=passed,
            reason="; ".join(reasons) or None,
            cause=cause,
            unit=verdict.unit,
            total=self.total if verdict.total is None else verdict.total,
            mismatched=self.mismatched if verdict.mismatched is None else verdict.mismatched,
            nan_mismatched=self.nan_mismatched,
            max_abs_diff=self.max_abs,
            mean_abs_diff=self.sum_abs / self.finite_abs if self.finite_abs else 0.0,
            median_abs_diff=median_abs,
            p99_abs_diff=p99_abs,
            max_rel_diff=self.max_rel,
            mean_rel_diff=self.sum_rel / self.finite_rel if self.finite_rel else 0.0,
            median_rel_diff=median_rel,
            p99_rel_diff=p99_rel,
            worst_index=worst,
            worst_reference=self.worst_values[0]
            if worst is not None and self.worst_values
            else None,
            worst_candidate=self.worst_values[1]
            if worst is not None and self.worst_values
            else None,
            atol_to_pass=max(0.0, self.atol_to_pass),
            rtol_to_pass=self.rtol_to_pass,
            max_ulp_diff=verdict.max_ulp_diff,
            agreement=verdict.agreement,
            psnr_db=verdict.psnr_db,
            measures=dict(verdict.measures),
            disagreements=verdict.disagreements,
            histogram=self._histogram(),
            heatmap=self._heatmap(),
            columns=self._columns(),
        )

    def _histogram(self) -> Histogram:
        by_exp = self.abs_sketch.positive_by_exponent()
        inf = by_exp.pop(1024, 0)
        bins: tuple[tuple[float, float, int], ...] = ()
        if by_exp:
            lo, hi = min(by_exp), max(by_exp)
            bins = tuple((2.0**e, _upper(e), by_exp.get(e, 0)) for e in range(lo, hi + 1))
        return Histogram(zero=self.abs_sketch.zeros, bins=bins, inf=inf)

    def _columns(self) -> Columns | None:
        if self.columns is None:
            return None
        worst, count = self.columns
        return Columns(
            max_abs_diff=tuple(float(v) for v in worst), mismatched=tuple(int(n) for n in count)
        )

    def _heatmap(self) -> Heatmap | None:
        if self.heat is None or self.layout is None:
            return None
        return Heatmap(
            height=self.layout.height,
            width=self.layout.width,
            values=tuple(tuple(float(v) for v in row) for row in self.heat),
        )


def identical_blocks(rb: np.ndarray, cb: np.ndarray) -> bool:
    """Whether two blocks of one dtype hold the same bytes."""
    import numpy as np

    size = rb.dtype.itemsize
    as_uint = np.dtype(f"u{size}") if size in (1, 2, 4, 8) else np.dtype(np.uint64)
    return bool(np.array_equal(rb.view(as_uint), cb.view(as_uint)))


def _upper(exponent: int) -> float:
    """The upper edge of the bin [2**exponent, 2**(exponent + 1)): the largest float64 for
    the top one, as 2**1024 is beyond float64."""
    return 2.0 ** (exponent + 1) if exponent < 1023 else sys.float_info.max


def _real(value: object) -> float:
    return float(abs(value)) if isinstance(value, complex) else float(value)  # type: ignore[arg-type]
