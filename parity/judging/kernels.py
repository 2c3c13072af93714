"""The comparison's fused pass, compiled with numba: every statistic of a block in one loop.

`parity.judging.compare` computes a block's statistics with NumPy, a dozen whole-block
temporaries each read and written once: that path is the reference, and the only one
without numba (the optional extra `fast`). For large outputs of one float dtype (float32
or float64) judged by allclose, exact or ulp, and without a heatmap or per-column view,
`FusedPass` computes the same, element by element in one compiled loop reading the two
blocks once: the NaN and infinity rules, the policy's test, the mismatched counts, the
maxima and the worst element (its first occurrence), the sums for the means, the atol and
rtol that would pass, the ULP distance, and the top-16-bit histograms of the absolute and
relative differences that `parity.judging.quantiles` resolves to exact quantiles (further
passes are compiled too: `FusedPass.scan`). Only the means may differ from the NumPy
path's, in the last bits: the summation order differs.

`PARITY_COMPARE_KERNEL` chooses: `auto` (the default) uses the compiled pass for outputs
of at least `MIN_ELEMENTS` elements when numba is importable; `numpy` never; `numba`
whenever the output allows it, whatever its size (tests and benchmarks). numba is imported
only when a pass is first compiled. Compiled kernels are cached on disk (numba's
`cache=True`: beside this file, or in the user's cache directory when that is read-only,
or in `NUMBA_CACHE_DIR`); where no cache can be written they are compiled once per process.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np  # numba compiles module-level names only; this module is imported lazily

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from parity.judging.quantiles import QuantileSketch, Target
    from parity.policies.base import Judge, Output

# Smaller outputs take the NumPy path under `auto`: importing numba and loading the cached
# kernels costs about 1 s, what the NumPy path takes for some 4M elements.
MIN_ELEMENTS = 1 << 23
SWITCH = "PARITY_COMPARE_KERNEL"
_MODES = ("auto", "numpy", "numba")

_MARGIN = 1 - 2.0**-40  # far below any rounding error of one product

# The rules the compiled pass knows (`Judge.fused`).
ALLCLOSE, EXACT, ULP = 0, 1, 2

# Slots of the pass's state arrays.
_MISMATCHED, _SPECIAL_BAD, _NAN_BAD, _WORST, _FINITE_ABS, _FINITE_REL = range(6)
_ABS_ZEROS, _REL_ZEROS = 6, 7
_MAX_ABS, _WORST_B, _WORST_A, _SUM_ABS, _SUM_REL, _MAX_REL, _ATOL_PASS, _RTOL_PASS = range(8)


def mode() -> str:
    """The switch's setting (`auto` when unset); ValueError for anything else."""
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"{SWITCH}={value!r}: expected one of {', '.join(_MODES)}")
    return value


def available() -> bool:
    """Whether numba can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def fused_rule(output: Output, judge: Judge, views: bool) -> tuple[int, float, float, int] | None:
    """The rule for `FusedPass` if this comparison may take the compiled pass, else None.
    `views`: whether the comparison gathers a heatmap or per-column view (then it may not)."""
    chosen = mode()
    if chosen == "numpy" or views or not output.same_dtype:
        return None
    if output.reference_dtype.kind != "f" or output.reference_dtype.itemsize not in (4, 8):
        return None
    rule = judge.fused()
    if rule is None:
        return None
    if chosen == "auto" and (output.total < MIN_ELEMENTS or not available()):
        return None
    return rule


def _element(bf: float, af: float) -> tuple[float, float, float, bool, bool]:
    """|a - b|, |b|, |a - b| / |b|, whether the NaN and infinity rules fail the element and
    whether a NaN takes part in that: `parity.comparison.BlockDiff`, one element at a time."""
    d = abs(af - bf)
    ab = abs(bf)
    bad = False
    nan_bad = False
    if not math.isfinite(d):
        nan_a, nan_b = math.isnan(af), math.isnan(bf)
        if nan_a or nan_b or math.isinf(af) or math.isinf(bf):  # else a - b overflowed
            if (nan_a and nan_b) or af == bf:
                d = 0.0
            else:
                bad = True
                nan_bad = nan_a or nan_b
                d = math.inf
            if not math.isfinite(ab):
                ab = 0.0
    rel = 0.0 if d == 0 else d / ab
    return d, ab, rel, bad, nan_bad


def _ordered(raw: Any, top: Any) -> Any:
    """A float's bits on one ordered line (as the ulp policy: -0.0 and 0.0 coincide)."""
    mag = raw & (top - np.uint64(1))
    return top - mag if raw & top else top + mag


def _first_pass(
    b: np.ndarray,
    a: np.ndarray,
    bu: np.ndarray,
    au: np.ndarray,
    rule: int,
    atol: float,
    rtol: float,
    max_ulp: Any,
    start: int,
    counts: np.ndarray,
    floats: np.ndarray,
    ulps: np.ndarray,
    abs_top: np.ndarray,
    rel_top: np.ndarray,
) -> None:
    """One block's statistics, added to the state arrays (see `FusedPass`). The state is
    kept in local variables during the loop, so that the compiler keeps it in registers."""
    n = b.size
    k = 0
    while k < n and bu[k] == au[k]:  # stops at the first difference: cheap when there is one
        k += 1
    if k == n:  # bitwise identical (as the NumPy path finds them): every difference is zero
        counts[_FINITE_ABS] += n
        counts[_FINITE_REL] += n
        counts[_ABS_ZEROS] += n
        counts[_REL_ZEROS] += n
        return
    top = np.uint64(1) << np.uint64(bu.itemsize * 8 - 1)
    shift = np.uint64(48)
    mismatched, special_bad, nan_bads = counts[_MISMATCHED], counts[_SPECIAL_BAD], counts[_NAN_BAD]
    worst, finite_abs, finite_rel = counts[_WORST], counts[_FINITE_ABS], counts[_FINITE_REL]
    abs_zeros, rel_zeros = counts[_ABS_ZEROS], counts[_REL_ZEROS]
    max_abs, worst_b, worst_a = floats[_MAX_ABS], floats[_WORST_B], floats[_WORST_A]
    max_rel, atol_pass, rtol_pass = floats[_MAX_REL], floats[_ATOL_PASS], floats[_RTOL_PASS]
    most_ulp = ulps[0]
    sum_abs = 0.0
    sum_rel = 0.0
    for k in range(b.size):
        bf = np.float64(b[k])
        af = np.float64(a[k])
        d, ab, rel, bad, nan_bad = _element(bf, af)
        if rule == ALLCLOSE:
            ok = d <= atol + rtol * ab
        elif rule == EXACT:
            ok = bu[k] == au[k]
        else:
            ka = _ordered(np.uint64(au[k]), top)
            kb = _ordered(np.uint64(bu[k]), top)
            dist = ka - kb if ka > kb else kb - ka
            if bad:
                dist = np.uint64(0)
            if dist > most_ulp:
                most_ulp = dist
            ok = dist <= max_ulp
        if bad:
            ok = False
            special_bad += 1
            if nan_bad:
                nan_bads += 1
        if not ok:
            mismatched += 1
        if d > max_abs:
            max_abs = d
            worst = start + k
            worst_b = bf
            worst_a = af
        if math.isfinite(d):
            sum_abs += d
            finite_abs += 1
        if math.isfinite(rel):
            sum_rel += rel
            finite_rel += 1
        if rel > max_rel:
            max_rel = rel
        slack = d if rtol == 0 else d - rtol * ab
        if slack > atol_pass:
            atol_pass = slack
        # (d - atol) / ab > rtol_pass, with a division only where it may be (rarely): the
        # product's rounding is covered by the margin, the quotient decides.
        if d > atol and d - atol >= rtol_pass * ab * _MARGIN:
            need = (d - atol) / ab
            if need > rtol_pass:
                rtol_pass = need
        if d > 0:
            abs_top[np.float64(d).view(np.uint64) >> shift] += 1
        else:
            abs_zeros += 1
        if rel > 0:
            rel_top[np.float64(rel).view(np.uint64) >> shift] += 1
        else:
            rel_zeros += 1
    counts[_MISMATCHED], counts[_SPECIAL_BAD], counts[_NAN_BAD] = mismatched, special_bad, nan_bads
    counts[_WORST], counts[_FINITE_ABS], counts[_FINITE_REL] = worst, finite_abs, finite_rel
    counts[_ABS_ZEROS], counts[_REL_ZEROS] = abs_zeros, rel_zeros
    floats[_MAX_ABS], floats[_WORST_B], floats[_WORST_A] = max_abs, worst_b, worst_a
    floats[_MAX_REL], floats[_ATOL_PASS], floats[_RTOL_PASS] = max_rel, atol_pass, rtol_pass
    ulps[0] = most_ulp
    floats[_SUM_ABS] += sum_abs
    floats[_SUM_REL] += sum_rel


_CHUNK = 1024  # elements whose differences a quantile pass computes at a time (16 KiB)
_FINITE_MAX = 1.7976931348623157e308


def _scan(
    b: np.ndarray,
    a: np.ndarray,
    which: np.ndarray,
    prefix: np.ndarray,
    shift: np.ndarray,
    collect: np.ndarray,
    offsets: np.ndarray,
    fill: np.ndarray,
    buf: np.ndarray,
    sub: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    wanted: np.ndarray,
) -> None:
    """One block of a quantile refining pass (`parity.judging.quantiles`): the keys of
    target t's candidates (positive values of sketch `which[t]`, 0 abs and 1 rel, whose
    key >> shift[t] is prefix[t]) are collected into buf from offsets[t], or counted in
    sub[t] by their next 16 bits, with their smallest and largest key. wanted[w, bin]:
    whether any target of sketch w lies in the top-16-bit bin `bin` (zero: none)."""
    n = b.size
    k = 0
    while k < n and (b[k] == a[k] or (b[k] != b[k] and a[k] != a[k])):
        k += 1
    if k == n:  # equal, or NaN in both, everywhere: no positive difference to look at
        return
    zero = np.uint64(0)
    top = np.uint64(48)
    dbuf = np.empty(_CHUNK)
    rbuf = np.empty(_CHUNK)
    for k in range(n):
        i = k % _CHUNK
        if i == 0:  # the chunk's differences, in SIMD where all are finite
            m = min(n, k + _CHUNK) - k
            nonfinite = 0
            for j in range(m):
                bf = np.float64(b[k + j])
                d = abs(np.float64(a[k + j]) - bf)
                r = d / abs(bf)
                dbuf[j] = d
                rbuf[j] = r if d != 0 else 0.0
                nonfinite += 0 if d <= _FINITE_MAX else 1
            if nonfinite:
                for j in range(m):
                    exact = _element(np.float64(b[k + j]), np.float64(a[k + j]))
                    dbuf[j] = exact[0]
                    rbuf[j] = exact[2]
        d = dbuf[i]
        rel = rbuf[i]
        key_abs = np.float64(d).view(np.uint64) if d > 0 else zero
        key_rel = np.float64(rel).view(np.uint64) if rel > 0 else zero
        if not (wanted[0, key_abs >> top] or wanted[1, key_rel >> top]):
            continue  # most values: no target starts with their top 16 bits
        for t in range(prefix.size):
            key = key_abs if which[t] == 0 else key_rel
            if key == zero or (key >> np.uint64(shift[t])) != np.uint64(prefix[t]):
                continue
            if collect[t]:
                if fill[t] < offsets[t + 1] - offsets[t]:  # never past its own buffer
                    buf[offsets[t] + fill[t]] = key
                fill[t] += 1
            else:
                sub[t, (key >> np.uint64(shift[t] - 16)) & np.uint64(0xFFFF)] += 1
                signed = np.int64(key)
                if lo[t] < 0 or signed < lo[t]:
                    lo[t] = signed
                if signed > hi[t]:
                    hi[t] = signed


_compiled: dict[str, Any] = {}


def _compile(fn: Callable[..., Any]) -> Any:
    """`fn` compiled by numba, cached on disk where numba can write its cache."""
    import warnings

    import numba

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            return numba.njit(cache=True, error_model="numpy", nogil=True)(fn)
    except Exception:  # no cache locator (a read-only folder and no home): no cache
        return numba.njit(cache=False, error_model="numpy", nogil=True)(fn)


def _kernels() -> tuple[Any, Any]:
    if not _compiled:
        import numba

        # The helpers are called from the kernels: compiled first, in place of the Python.
        glob = _first_pass.__globals__
        glob["_element"] = numba.njit(inline="always", error_model="numpy")(_PY_ELEMENT)
        glob["_ordered"] = numba.njit(inline="always")(_PY_ORDERED)
        _compiled["first"] = _compile(_first_pass)
        _compiled["scan"] = _compile(_scan)
    return _compiled["first"], _compiled["scan"]


_PY_ELEMENT = _element
_PY_ORDERED = _ordered


class FusedPass:
    """The compiled pass's state over one comparison; `finish` hands it to the comparison's
    accumulator and sketches as the NumPy path would have left them."""

    def __init__(self, rule: tuple[int, float, float, int]) -> None:
        self.rule, self.atol, self.rtol, self.max_ulp = rule
        self.counts = np.zeros(8, dtype=np.int64)
        self.counts[_WORST] = -1
        self.floats = np.zeros(8)
        self.ulps = np.zeros(1, dtype=np.uint64)
        self.abs_top = np.zeros(1 << 16, dtype=np.int64)
        self.rel_top = np.zeros(1 << 16, dtype=np.int64)
        self.total = 0
        self.first, self.scanner = _kernels()

    def add(self, start: int, rb: np.ndarray, cb: np.ndarray) -> None:
        """Account for one pair of blocks (flat, C order, of one float dtype)."""
        u = np.dtype(f"u{rb.dtype.itemsize}")
        b, a = np.ravel(rb), np.ravel(cb)
        self.first(
            b,
            a,
            b.view(u),
            a.view(u),
            self.rule,
            self.atol,
            self.rtol,
            np.uint64(min(self.max_ulp, (1 << 64) - 1)),
            start,
            self.counts,
            self.floats,
            self.ulps,
            self.abs_top,
            self.rel_top,
        )
        self.total += int(b.size)

    def finish(self, acc: Any, abs_sketch: QuantileSketch, rel_sketch: QuantileSketch) -> int:
        """Fill the accumulator's statistics and the sketches; the largest ULP distance."""
        c, f = self.counts, self.floats
        acc.mismatched = int(c[_MISMATCHED])
        acc.special_bad = int(c[_SPECIAL_BAD])
        acc.nan_mismatched = int(c[_NAN_BAD])
        acc.max_abs = float(f[_MAX_ABS])
        if c[_WORST] >= 0:
            acc.worst = int(c[_WORST])
            acc.worst_values = (float(f[_WORST_B]), float(f[_WORST_A]))
        acc.sum_abs, acc.finite_abs = float(f[_SUM_ABS]), int(c[_FINITE_ABS])
        acc.sum_rel, acc.finite_rel = float(f[_SUM_REL]), int(c[_FINITE_REL])
        acc.max_rel = float(f[_MAX_REL])
        acc.atol_to_pass = float(f[_ATOL_PASS])
        acc.rtol_to_pass = float(f[_RTOL_PASS])
        for sketch, top, zeros in (
            (abs_sketch, self.abs_top, c[_ABS_ZEROS]),
            (rel_sketch, self.rel_top, c[_REL_ZEROS]),
        ):
            sketch.total, sketch.zeros = self.total, int(zeros)
            sketch.kept, sketch.kept_count, sketch.top = None, 0, top
        return int(self.ulps[0])

    def scan(
        self,
        blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
        pending: list[list[Target]],
        collect_limit: int,
    ) -> None:
        """One refining pass over `blocks()` for the targets of the two sketches (abs,
        rel), leaving in each what `parity.judging.quantiles` expects of a pass."""
        targets = [(w, t) for w, ts in enumerate(pending) for t in ts]
        if not targets:
            return
        n = len(targets)
        which = np.array([w for w, _ in targets], dtype=np.int64)
        prefix = np.array([t.prefix for _, t in targets], dtype=np.uint64)
        shift = np.array([t.shift for _, t in targets], dtype=np.int64)
        collect = np.array([t.count <= collect_limit for _, t in targets])
        sizes = [t.count if t.count <= collect_limit else 0 for _, t in targets]
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        fill = np.zeros(n, dtype=np.int64)
        buf = np.empty(int(offsets[-1]), dtype=np.uint64)
        sub = np.zeros((n, 1 << 16), dtype=np.int64)
        lo = np.full(n, -1, dtype=np.int64)
        hi = np.full(n, -1, dtype=np.int64)
        wanted = np.zeros((2, 1 << 16), dtype=np.bool_)
        for w, t in targets:
            wanted[w, t.prefix >> (48 - t.shift)] = True  # its top 16 bits
        for rb, cb in blocks():
            b, a = np.ravel(rb), np.ravel(cb)
            self.scanner(
                b, a, which, prefix, shift, collect, offsets, fill, buf, sub, lo, hi, wanted
            )
        for i, (_, t) in enumerate(targets):
            if collect[i]:
                if fill[i] != sizes[i]:
                    raise RuntimeError("quantile pass: a bin's count changed between passes")
                t.collected = [buf[offsets[i] : offsets[i + 1]]] if sizes[i] else []
            elif hi[i] >= 0:
                t.sub = sub[i].copy()
                t.lo, t.hi = int(lo[i]), int(hi[i])
