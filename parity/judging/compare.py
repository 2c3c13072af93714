"""Compare one output of two environments under its tolerance policy, in bounded memory.

The candidate `a` is compared with the reference `b` block by block (`BLOCK_ELEMENTS`
elements at a time, whole rows of the last axis), so memory stays bounded whatever the
output's size; the policies are described in `parity.policies`. Besides the verdict every
comparison gives the evidence to set a tolerance from: max, mean, median and p99 of the
absolute and relative difference (exact, see `parity.judging.quantiles`), the mismatched count,
the worst element, and the smallest atol and rtol that would pass. Differences are
computed in float64 (complex128 for complex outputs), so integers compare exactly up to
2**53. Relative difference is |a - b| / |b|: 0 where equal, inf where b is 0 and a is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from parity.arrays import OutputArray, as_output_array
from parity.judging.quantiles import KEEP_LIMIT, QuantileSketch, resolve
from parity.policies import TolerancePolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

# 64 Ki elements: each block's dozen float64 work arrays (512 KiB each) are reused by the
# allocator instead of being mapped afresh from the OS; measured 2.3x faster than 4 Mi
# blocks on two 2 GiB outputs, at half the peak memory.
BLOCK_ELEMENTS = 1 << 16
HEATMAP_CELLS = 64  # at most 64 x 64 cells per heatmap
QUANTILES = (0.5, 0.99)


@dataclass(frozen=True)
class Histogram:
    """How many elements' absolute differences fall in each power-of-two range."""

    zero: int  # elements with no difference
    bins: tuple[tuple[float, float, int], ...]  # [low, high) and count, contiguous
    inf: int  # infinite differences (NaN or infinity on one side only)


@dataclass(frozen=True)
class Heatmap:
    """Where an image-like output differs: the largest |a - b| in each cell of a grid over
    its last two axes (height, width), taken over all leading axes (samples, channels)."""

    height: int
    width: int
    values: tuple[tuple[float, ...], ...]  # rows x columns


@dataclass(frozen=True)
class Noise:
    """How much one environment disagrees with itself between two runs of one output."""

    max_abs_diff: float
    mismatched: int  # elements not bitwise identical between the runs
    total: int


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the candidate environment compares with the reference."""

    name: str
    passed: bool
    reason: str | None
    reference_dtype: str
    candidate_dtype: str
    reference_shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    atol: float
    rtol: float
    total: int
    mismatched: int
    nan_mismatched: int = 0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    median_abs_diff: float = 0.0
    p99_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    mean_rel_diff: float = 0.0
    median_rel_diff: float = 0.0
    p99_rel_diff: float = 0.0
    worst_index: tuple[int, ...] | None = None
    worst_reference: float | None = None
    worst_candidate: float | None = None
    atol_to_pass: float = 0.0  # the smallest atol that passes with this rtol
    rtol_to_pass: float = 0.0  # the smallest rtol that passes with this atol
    policy: str = "allclose"
    policy_description: str = "allclose(atol=0, rtol=0)"
    # Why it failed: shape, dtype, nan_inf, tolerance, or nondeterministic (the
    # environments disagree with themselves, so the difference is not drift).
    cause: str | None = None
    unit: str = "elements"  # what total and mismatched count: elements, or rows (decision)
    max_ulp_diff: int | None = None
    agreement: float | None = None
    psnr_db: float | None = None
    histogram: Histogram | None = None
    heatmap: Heatmap | None = None
    noise: dict[str, Noise] = field(default_factory=dict)
    nondeterministic: bool = False

    @property
    def mismatched_fraction(self) -> float:
        """Mismatched elements (or rows) as a fraction of all of them."""
        return self.mismatched / self.total if self.total else 0.0

    def measure(self) -> tuple[str, str] | None:
        """The policy's own measure as (label, value), where it has one: ULP distance,
        agreement or PSNR (renderers lay the two out as they like)."""
        if self.max_ulp_diff is not None:
            return "ULP", str(self.max_ulp_diff)
        if self.agreement is not None:
            return "agreement", f"{self.agreement:.6g}"
        if self.psnr_db is not None:
            return "PSNR", f"{self.psnr_db:.4g} dB"
        return None


def compare_arrays(
    name: str,
    reference: np.ndarray | OutputArray,
    candidate: np.ndarray | OutputArray,
    policy: TolerancePolicy | None = None,
    *,
    noise: dict[str, Noise] | None = None,
    block_elements: int = BLOCK_ELEMENTS,
    keep_limit: int = KEEP_LIMIT,
    on_block: Callable[[int, int], None] | None = None,
) -> OutputComparison:
    """Compare `candidate` against `reference` under `policy` (allclose 0, 0 by default).

    `noise` is each environment's self-disagreement from a calibrated check: it marks a
    failure as nondeterministic and scales atol by the policy's `noise_factor`.
    `on_block(done, total)` is called after each block of the first pass (for progress)."""
    policy = _calibrated(policy or TolerancePolicy(), noise or {})
    ref, cand = as_output_array(reference), as_output_array(candidate)
    base = {
        "name": name,
        "reference_dtype": str(ref.dtype),
        "candidate_dtype": str(cand.dtype),
        "reference_shape": ref.shape,
        "candidate_shape": cand.shape,
        "atol": policy.atol if policy.kind == "allclose" else 0.0,
        "rtol": policy.rtol if policy.kind == "allclose" else 0.0,
        "policy": policy.kind,
        "policy_description": policy.describe(),
        "noise": dict(noise or {}),
        "nondeterministic": any(n.mismatched for n in (noise or {}).values()),
    }
    size = math.prod(ref.shape)
    if ref.shape != cand.shape:
        return OutputComparison(
            **base,  # type: ignore[arg-type]
            passed=False,
            reason=f"shape differs: {ref.shape} (reference) vs {cand.shape}",
            cause="shape",
            total=size,
            mismatched=size,
        )
    unfit = _unfit(policy, ref)
    acc = _Accumulator(ref, cand, policy, keep_limit)
    block = acc.row * max(1, block_elements // acc.row)
    start = 0
    for rb, cb in zip(ref.blocks(block), cand.blocks(block), strict=True):
        acc.add(start, rb, cb)
        start += int(rb.size)
        if on_block is not None:
            on_block(start, size)

    def replay() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rb, cb in zip(ref.blocks(block), cand.blocks(block), strict=True):
            if not acc.identical(rb, cb):
                d = _BlockDiff(rb, cb, acc.work)
                yield d.diff, d.rel

    (median_abs, p99_abs), (median_rel, p99_rel) = resolve(
        [acc.abs_sketch, acc.rel_sketch], QUANTILES, replay, keep_limit
    )
    result = acc.result(base, median_abs, p99_abs, median_rel, p99_rel)
    if unfit:
        result = replace(result, passed=False, reason=unfit, cause="policy")
    return result


def measure_noise(first: np.ndarray | OutputArray, second: np.ndarray | OutputArray) -> Noise:
    """How two runs of one output in one environment differ (bitwise, and by how much)."""
    c = compare_arrays("noise", first, second, TolerancePolicy(kind="exact"))
    if c.cause == "shape":
        return Noise(max_abs_diff=math.inf, mismatched=c.total, total=c.total)
    return Noise(max_abs_diff=c.max_abs_diff, mismatched=c.mismatched, total=c.total)


def _calibrated(policy: TolerancePolicy, noise: dict[str, Noise]) -> TolerancePolicy:
    """The policy with atol raised to noise_factor x the measured noise, if asked for."""
    if policy.kind != "allclose" or policy.noise_factor is None or not noise:
        return policy
    measured = max(n.max_abs_diff for n in noise.values())
    return replace(policy, atol=max(policy.atol, policy.noise_factor * measured))


def _unfit(policy: TolerancePolicy, ref: OutputArray) -> str | None:
    """Why `policy` cannot judge this output at all, if it cannot."""
    if policy.kind == "decision":
        if not ref.shape:
            return "decision policy needs an output with a class axis; this one is a scalar"
        if policy.top_k > ref.shape[-1]:
            return f"decision policy top_k={policy.top_k}, but the last axis has {ref.shape[-1]}"
    if policy.kind == "ulp" and ref.dtype.kind == "c":
        return "ulp policy applies to real numbers; this output is complex"
    return None


class _BlockDiff:
    """|a - b| and |a - b| / |b| of one block, with the NaN and infinity rules applied."""

    def __init__(self, rb: np.ndarray, cb: np.ndarray, work: np.dtype) -> None:
        import numpy as np

        b = rb.astype(work, copy=False)
        a = cb.astype(work, copy=False)
        with np.errstate(all="ignore"):
            self.diff = np.abs(a - b)
            self.abs_b = np.abs(b)
            self.bad: np.ndarray | None = None
            self.nan_bad = 0
            # |a - b| is finite unless a or b is NaN or infinite (or it overflows): the
            # masks below are needed only then.
            self.all_finite = bool(np.isfinite(self.diff).all())
            if not self.all_finite:
                nan_a, nan_b = np.isnan(a), np.isnan(b)
                special = nan_a | nan_b | np.isinf(a) | np.isinf(b)
                if special.any():
                    # NaN matches only NaN; an infinity only the same infinity.
                    same = (nan_a & nan_b) | (special & (a == b))
                    self.bad = special & ~same
                    self.nan_bad = int(np.count_nonzero(self.bad & (nan_a | nan_b)))
                    self.diff[same] = 0.0
                    self.diff[self.bad] = np.inf
                    self.abs_b[~np.isfinite(self.abs_b)] = 0.0
            # abs_b is finite here: x / 0 is inf, inf / x is inf; only 0 / 0 needs fixing.
            self.rel = self.diff / self.abs_b
            self.rel[self.diff == 0] = 0.0
        self.a, self.b = a, b


class _Accumulator:
    """Everything one pass over the blocks accumulates."""

    def __init__(
        self, ref: OutputArray, cand: OutputArray, policy: TolerancePolicy, keep_limit: int
    ) -> None:
        import numpy as np

        self.shape = ref.shape
        self.policy = policy
        self.same_dtype = ref.dtype == cand.dtype
        complex_ = "c" in (ref.dtype.kind, cand.dtype.kind)
        self.work = np.dtype(np.complex128 if complex_ else np.float64)
        self.ref_dtype = ref.dtype
        self.row = self.shape[-1] if self.shape and self.shape[-1] > 0 else 1
        self.total = math.prod(self.shape)
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
        self.max_ulp = 0
        self.rows = 0
        self.rows_agree = 0
        self.sum_sq = 0.0
        self.ref_lo = math.inf
        self.ref_hi = -math.inf
        self.abs_sketch = QuantileSketch(keep_limit)
        self.rel_sketch = QuantileSketch(keep_limit)
        h, w = (self.shape[-2], self.shape[-1]) if len(self.shape) >= 2 else (0, 0)
        self.heat: np.ndarray | None = None
        if h >= 2 and w >= 2:
            self.heat = np.zeros((min(h, HEATMAP_CELLS), min(w, HEATMAP_CELLS)))
            self.heat_cols = (np.arange(self.heat.shape[1]) * w) // self.heat.shape[1]

    def identical(self, rb: np.ndarray, cb: np.ndarray) -> bool:
        """Whether two blocks hold the same bytes (then every difference is zero)."""
        import numpy as np

        if not self.same_dtype:
            return False
        size = rb.dtype.itemsize
        as_uint = np.dtype(f"u{size}") if size in (1, 2, 4, 8) else np.dtype(np.uint64)
        return bool(np.array_equal(rb.view(as_uint), cb.view(as_uint)))

    def add(self, start: int, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        n = int(rb.size)
        kind = self.policy.kind
        if kind == "decision":
            self._decide(rb, cb)
        if kind == "psnr" and self.policy.data_range is None and rb.dtype.kind in "fc":
            finite = rb[np.isfinite(rb)]
            values = np.abs(finite) if rb.dtype.kind == "c" else finite
            if values.size:
                self.ref_lo = min(self.ref_lo, float(values.min()))
                self.ref_hi = max(self.ref_hi, float(values.max()))
        if self.identical(rb, cb):
            for sketch in (self.abs_sketch, self.rel_sketch):
                sketch.add_zeros(n)
            self.finite_abs += n
            self.finite_rel += n
            return
        d = _BlockDiff(rb, cb, self.work)
        diff, rel = d.diff, d.rel
        bad = d.bad
        p = self.policy
        if kind == "exact":
            ok = self._bitwise_equal(rb, cb) if self.same_dtype else diff == 0
        elif kind == "ulp":
            dist = self._ulp(rb, cb, diff)
            if bad is not None:
                dist[bad] = 0
            if dist.size:
                self.max_ulp = max(self.max_ulp, int(dist.max()))
            ok = dist <= p.max_ulp
        elif kind == "allclose":
            with np.errstate(invalid="ignore"):
                ok = diff <= p.atol + p.rtol * d.abs_b
        else:
            ok = diff == 0
        if bad is not None:
            ok &= ~bad
            self.special_bad += int(np.count_nonzero(bad))
            self.nan_mismatched += d.nan_bad
        self.mismatched += int(ok.size - np.count_nonzero(ok))

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
        atol, rtol = (p.atol, p.rtol) if kind == "allclose" else (0.0, 0.0)
        slack_max = float(diff[i]) if rtol == 0 else float((diff - rtol * d.abs_b).max())
        self.atol_to_pass = max(self.atol_to_pass, slack_max)
        over = diff > atol
        if over.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                need = (diff[over] - atol) / d.abs_b[over]
            self.rtol_to_pass = max(self.rtol_to_pass, float(need.max()))
        if kind == "psnr":
            finite = np.isfinite(diff)
            self.sum_sq += float(np.square(diff[finite]).sum())
        self.abs_sketch.add(diff)
        self.rel_sketch.add(rel)
        if self.heat is not None:
            self._heat(start, diff)

    def _decide(self, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        k = self.policy.top_k
        r = rb.reshape(-1, self.row)
        c = cb.reshape(-1, self.row)
        if k > self.row:
            return
        self.rows += r.shape[0]
        if k == 1:
            agree = np.argmax(r, axis=1) == np.argmax(c, axis=1)
        else:
            top_r = np.sort(np.argpartition(-r.astype(np.float64), k - 1, axis=1)[:, :k], axis=1)
            top_c = np.sort(np.argpartition(-c.astype(np.float64), k - 1, axis=1)[:, :k], axis=1)
            agree = (top_r == top_c).all(axis=1)
        self.rows_agree += int(np.count_nonzero(agree))

    @staticmethod
    def _bitwise_equal(rb: np.ndarray, cb: np.ndarray) -> np.ndarray:
        import numpy as np

        size = rb.dtype.itemsize
        if size in (1, 2, 4, 8):
            u = np.dtype(f"u{size}")
            return np.asarray(rb.view(u) == cb.view(u))
        return np.asarray(
            (
                rb.view(np.uint64).reshape(rb.size, -1) == cb.view(np.uint64).reshape(cb.size, -1)
            ).all(axis=1)
        )

    def _ulp(self, rb: np.ndarray, cb: np.ndarray, diff: np.ndarray) -> np.ndarray:
        """Units in the last place between elements (integers: their difference)."""
        import numpy as np

        if not (self.same_dtype and rb.dtype.kind == "f"):
            return np.where(np.isfinite(diff), diff, 0).astype(np.uint64)
        bits = rb.dtype.itemsize * 8
        top = np.uint64(1 << (bits - 1))
        u = np.dtype(f"u{rb.dtype.itemsize}")

        def ordered(x: np.ndarray) -> np.ndarray:
            raw = x.view(u).astype(np.uint64)
            mag = raw & (top - np.uint64(1))
            # Sign-magnitude to one ordered line; -0.0 and 0.0 land on the same point.
            return np.where(raw & top, top - mag, top + mag)

        ka, kb = ordered(cb), ordered(rb)
        return np.asarray(np.where(ka > kb, ka - kb, kb - ka))

    def _heat(self, start: int, diff: np.ndarray) -> None:
        import numpy as np

        assert self.heat is not None
        h, w = self.shape[-2], self.shape[-1]
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

        p = self.policy
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
        total, mismatched, unit = self.total, self.mismatched, "elements"
        agreement = psnr = None
        policy_fails = False
        if p.kind == "decision":
            unit, total = "rows", self.rows
            mismatched = self.rows - self.rows_agree
            agreement = self.rows_agree / self.rows if self.rows else 1.0
            policy_fails = agreement < p.min_agreement
            if policy_fails:
                which = "argmax" if p.top_k == 1 else f"top-{p.top_k}"
                reasons.append(
                    f"{which} agreement {agreement:.6g} ({mismatched} of {total} rows differ), "
                    f"below min_agreement {p.min_agreement:g}"
                )
        elif p.kind == "psnr":
            psnr = self._psnr()
            policy_fails = psnr < p.min_db
            if policy_fails:
                reasons.append(f"PSNR {psnr:.4g} dB, below min_db {p.min_db:g}")
        elif mismatched > self.special_bad:
            policy_fails = True
            beyond = {
                "exact": "differ bitwise",
                "ulp": f"more than {p.max_ulp} ULP apart (max {self.max_ulp} ULP)",
                "allclose": f"beyond atol={p.atol:g}, rtol={p.rtol:g}",
            }[p.kind]
            reasons.append(
                f"{mismatched} of {total} elements {beyond} (max abs diff {self.max_abs:.6g})"
            )
        cause = cause or ("tolerance" if policy_fails else None)
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
            unit=unit,
            total=total,
            mismatched=mismatched,
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
            max_ulp_diff=self.max_ulp if p.kind == "ulp" else None,
            agreement=agreement,
            psnr_db=psnr,
            histogram=self._histogram(),
            heatmap=self._heatmap(),
        )

    def _psnr(self) -> float:
        import numpy as np

        p = self.policy
        if p.data_range is not None:
            span = p.data_range
        elif self.ref_dtype.kind in "iub":
            info = np.iinfo(self.ref_dtype) if self.ref_dtype.kind != "b" else None
            span = float(info.max - info.min) if info else 1.0
        else:
            span = self.ref_hi - self.ref_lo if self.ref_hi > self.ref_lo else 1.0
        mse = self.sum_sq / self.total if self.total else 0.0
        return math.inf if mse == 0 else 10 * math.log10(span * span / mse)

    def _histogram(self) -> Histogram:
        by_exp = self.abs_sketch.positive_by_exponent()
        inf = by_exp.pop(1024, 0)
        bins: tuple[tuple[float, float, int], ...] = ()
        if by_exp:
            lo, hi = min(by_exp), max(by_exp)
            bins = tuple((2.0**e, 2.0 ** (e + 1), by_exp.get(e, 0)) for e in range(lo, hi + 1))
        return Histogram(zero=self.abs_sketch.zeros, bins=bins, inf=inf)

    def _heatmap(self) -> Heatmap | None:
        if self.heat is None:
            return None
        return Heatmap(
            height=self.shape[-2],
            width=self.shape[-1],
            values=tuple(tuple(float(v) for v in row) for row in self.heat),
        )


def _real(value: object) -> float:
    return float(abs(value)) if isinstance(value, complex) else float(value)  # type: ignore[arg-type]
