"""The comparison's fused pass, compiled with numba: every statistic of a block in one loop.

`parity.judging.compare` computes a block's statistics with NumPy, a dozen whole-block
temporaries each read and written once: that path is the reference, and the only one
without numba (the optional extra `fast`). For large outputs of one float dtype (float32
or float64) judged by allclose, exact or ulp, and without a heatmap or per-column view,
`FusedPass` computes the same, element by element in one compiled loop reading the two
blocks once: the NaN and infinity rules, the policy's test, the mismatched counts, the
maxima and the worst element (its first occurrence), the sums for the means, the atol and
rtol that would pass, the ULP distance, and the top-16-bit histograms of the absolute and
relative differences that `parity.judging.quantiles` resolves to exact quantiles. Each
block is split over numba's threads (`threads`), 512 elements at a time computed into
small buffers and reduced in SIMD; the keys of the quantile bins predicted from a sample
are collected during the pass, so that most comparisons read the data once (`FusedPass`;
further passes, when the prediction misses, are compiled too: `FusedPass.scan`). Only
the means may differ from the NumPy path's, in the last bits: the summation order
differs.

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
    """The switch's setting (`auto` when unset); ConfigError (exit 2) for anything else."""
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value not in _MODES:
        from parity.errors import ConfigError

        raise ConfigError(SWITCH, None, f"{value!r}: expected one of {', '.join(_MODES)}")
    return value


def available() -> bool:
    """Whether numba can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def fused_rule(output: Output, judge: Judge, views: bool) -> tuple[int, float, float, int] | None:
    """The rule for `FusedPass` if this comparison may take the compiled pass, else None.
    `views`: whether the comparison gathers a heatmap or per-column view (then it may not)."""
    if views or not compiled_for(output):
        return None
    return judge.fused()


def compiled_for(output: Output) -> bool:
    """Whether the switch and the output's dtypes let the compiled passes read it (one
    float dtype, float32 or float64; under `auto`, large enough and numba importable)."""
    chosen = mode()
    if chosen == "numpy" or not output.same_dtype:
        return False
    if output.reference_dtype.kind != "f" or output.reference_dtype.itemsize not in (4, 8):
        return False
    return not (chosen == "auto" and (output.total < MIN_ELEMENTS or not available()))


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


_CH = 512  # elements per chunk: its work buffers (5 x 4 KiB) stay in the L1 cache
_SUBS = 4  # sub-histograms: runs of one bin do not wait on their own increments
_FINITE_MAX = 1.7976931348623157e308
_INT_MIN = np.int64(-(1 << 63))
_LOW63 = np.int64((1 << 63) - 1)
_NONE = np.uint64((1 << 64) - 1)  # not a key (a NaN's bits): the start of an empty range
_RANGES = 4  # speculative ranges per sketch


def _reduce(
    dbuf: np.ndarray,
    abuf: np.ndarray,
    rbuf: np.ndarray,
    sbuf: np.ndarray,
    m: int,
    atol: float,
    rtol: float,
) -> Any:
    """A chunk's reductions where every difference is finite (rel may be +inf): compiled
    with reassociation (the sums' order, hence the means' last bits) and without NaN, so
    that they run in SIMD. The maxima are taken on the bit patterns as integers (ordered
    like the non-negative floats; the slack d - rtol |b| mapped onto one ordered line):
    LLVM vectorizes integer maxima, not floating-point ones."""
    dint = dbuf.view(np.int64)
    rint = rbuf.view(np.int64)
    sint = sbuf.view(np.int64)
    nok = 0
    zd = 0
    zr = 0
    fr = 0
    sa = 0.0
    sr = 0.0
    mx: Any = 0
    mr: Any = 0
    ap: Any = _INT_MIN
    for j in range(m):
        d = dbuf[j]
        r = rbuf[j]
        nok += 0 if d <= atol + rtol * abuf[j] else 1
        zd += 1 if d == 0 else 0
        zr += 1 if r == 0 else 0
        finite = r <= _FINITE_MAX
        fr += 1 if finite else 0
        sa += d
        sr += r if finite else 0.0
        x = dint[j]
        mx = x if x > mx else mx
        y = rint[j]
        mr = y if y > mr else mr
        z = sint[j]
        z ^= (z >> 63) & _LOW63
        ap = z if z > ap else ap
    return nok, zd, zr, fr, sa, sr, mx, mr, ap ^ ((ap >> 63) & _LOW63)


def _take(keys: np.ndarray, ranges: np.ndarray, masks: np.ndarray, m: int) -> Any:
    """Which of a chunk's keys to collect (see `_pass`): bit j % 64 of masks[j // 64], and
    how many. The ranges in use come first; a loop for one, two or four of them."""
    lo0, sp0, rp0 = ranges[0, 0], ranges[0, 1], ranges[0, 2]
    lo1, sp1, rp1 = ranges[1, 0], ranges[1, 1], ranges[1, 2]
    lo2, sp2, rp2 = ranges[2, 0], ranges[2, 1], ranges[2, 2]
    lo3, sp3, rp3 = ranges[3, 0], ranges[3, 1], ranges[3, 2]
    taken: Any = 0
    for w in range((m + 63) >> 6):
        at = w << 6
        word = np.uint64(0)
        if lo1 == _NONE:
            for b in range(min(64, m - at)):
                key = keys[at + b]
                take = (key - lo0 <= sp0) & (key != rp0)
                word |= np.uint64(take) << np.uint64(b)
                taken += np.int64(take)
        elif lo2 == _NONE:
            for b in range(min(64, m - at)):
                key = keys[at + b]
                take = ((key - lo0 <= sp0) & (key != rp0)) | ((key - lo1 <= sp1) & (key != rp1))
                word |= np.uint64(take) << np.uint64(b)
                taken += np.int64(take)
        else:
            for b in range(min(64, m - at)):
                key = keys[at + b]
                take = (
                    ((key - lo0 <= sp0) & (key != rp0))
                    | ((key - lo1 <= sp1) & (key != rp1))
                    | ((key - lo2 <= sp2) & (key != rp2))
                    | ((key - lo3 <= sp3) & (key != rp3))
                )
                word |= np.uint64(take) << np.uint64(b)
                taken += np.int64(take)
        masks[w] = word
    return taken


def _ctz(x: Any) -> int:
    """The index of the lowest set bit of a non-zero 64-bit word (compiled: numba's)."""
    return (int(x) & -int(x)).bit_length() - 1


def _pass(
    b: np.ndarray,
    a: np.ndarray,
    bu: np.ndarray,
    au: np.ndarray,
    lo: int,
    hi: int,
    rule: int,
    atol: float,
    rtol: float,
    max_ulp: Any,
    start: int,
    counts: np.ndarray,
    floats: np.ndarray,
    ulps: np.ndarray,
    habs: np.ndarray,
    hrel: np.ndarray,
    speculating: bool,
    ranges: np.ndarray,
    buf: np.ndarray,
    base: np.ndarray,
    cap: np.ndarray,
    fill: np.ndarray,
) -> None:
    """Elements lo..hi of one block: their statistics added to one thread's state (see
    `FusedPass`). Speculating, the keys of sketch w (0 abs, 1 rel) that lie in one of its
    ranges ranges[w, r] = (first key, span, representative) and are not that range's
    representative (counted by the histogram alone) are collected into
    buf[base[w]:base[w] + cap[w]], counted in fill[w] (past cap[w]: lost).
    Chunk by chunk: the differences into small buffers, reduced in SIMD; a chunk with a
    non-finite difference takes the exact element-by-element rules instead."""
    k = lo
    while k < hi and bu[k] == au[k]:  # stops at the first difference: cheap when there is one
        k += 1
    if k == hi:  # bitwise identical (as the NumPy path finds them): every difference is zero
        n = hi - lo
        counts[_FINITE_ABS] += n
        counts[_FINITE_REL] += n
        counts[_ABS_ZEROS] += n
        counts[_REL_ZEROS] += n
        return
    top = np.uint64(1) << np.uint64(bu.itemsize * 8 - 1)
    shift = np.uint64(48)
    zero = np.uint64(0)
    mismatched, special_bad, nan_bads = counts[_MISMATCHED], counts[_SPECIAL_BAD], counts[_NAN_BAD]
    worst, finite_abs, finite_rel = counts[_WORST], counts[_FINITE_ABS], counts[_FINITE_REL]
    abs_zeros, rel_zeros = counts[_ABS_ZEROS], counts[_REL_ZEROS]
    max_abs, worst_b, worst_a = floats[_MAX_ABS], floats[_WORST_B], floats[_WORST_A]
    max_rel, atol_pass, rtol_pass = floats[_MAX_REL], floats[_ATOL_PASS], floats[_RTOL_PASS]
    most_ulp = ulps[0]
    sum_abs = 0.0
    sum_rel = 0.0
    dbuf = np.empty(_CH)
    abuf = np.empty(_CH)
    rbuf = np.empty(_CH)
    sbuf = np.empty(_CH)
    masks = np.empty((_CH + 63) >> 6, dtype=np.uint64)
    dkey = dbuf.view(np.uint64)
    rkey = rbuf.view(np.uint64)
    for c0 in range(lo, hi, _CH):
        m = min(hi, c0 + _CH) - c0
        nonfinite = 0
        for j in range(m):
            bf = np.float64(b[c0 + j])  # float() would keep float32 in numba
            d = abs(np.float64(a[c0 + j]) - bf)
            ab = abs(bf)
            r = d / ab
            dbuf[j] = d
            abuf[j] = ab
            rbuf[j] = r if d != 0 else 0.0
            sbuf[j] = d - rtol * ab
            nonfinite += 0 if d <= _FINITE_MAX else 1
        if nonfinite:  # NaN or infinities: the exact rules, element by element
            for j in range(m):
                k = c0 + j
                bf = np.float64(b[k])
                af = np.float64(a[k])
                de, abe, rel, bad, nan_bad = _element(bf, af)
                if rule == ALLCLOSE:
                    oke = de <= atol + rtol * abe
                elif rule == EXACT:
                    oke = bu[k] == au[k]
                else:
                    ka = _ordered(np.uint64(au[k]), top)
                    kb = _ordered(np.uint64(bu[k]), top)
                    dist = ka - kb if ka > kb else kb - ka
                    if bad:
                        dist = zero
                    if dist > most_ulp:
                        most_ulp = dist
                    oke = dist <= max_ulp
                if bad:
                    oke = False
                    special_bad += 1
                    if nan_bad:
                        nan_bads += 1
                if not oke:
                    mismatched += 1
                if de > max_abs:
                    max_abs = de
                    worst = start + k
                    worst_b = bf
                    worst_a = af
                if math.isfinite(de):
                    sum_abs += de
                    finite_abs += 1
                if math.isfinite(rel):
                    sum_rel += rel
                    finite_rel += 1
                if rel > max_rel:
                    max_rel = rel
                slack = de if rtol == 0 else de - rtol * abe
                if slack > atol_pass:
                    atol_pass = slack
                if de > atol and de - atol >= rtol_pass * abe * _MARGIN:
                    need = (de - atol) / abe
                    if need > rtol_pass:
                        rtol_pass = need
                dbuf[j] = de
                rbuf[j] = rel
                if de > 0:
                    habs[np.float64(de).view(np.uint64) >> shift] += 1
                else:
                    abs_zeros += 1
                if rel > 0:
                    hrel[np.float64(rel).view(np.uint64) >> shift] += 1
                else:
                    rel_zeros += 1
        else:
            nok, zd, zr, fr, sa, sr, mxi, mri, api = _reduce(dbuf, abuf, rbuf, sbuf, m, atol, rtol)
            mx = np.int64(mxi).view(np.float64)
            mr = np.int64(mri).view(np.float64)
            ap = np.int64(api).view(np.float64)
            if rule == ALLCLOSE:
                mismatched += nok
            elif rule == EXACT:
                for j in range(m):
                    mismatched += 0 if bu[c0 + j] == au[c0 + j] else 1
            else:
                for j in range(m):
                    ka = _ordered(np.uint64(au[c0 + j]), top)
                    kb = _ordered(np.uint64(bu[c0 + j]), top)
                    dist = ka - kb if ka > kb else kb - ka
                    most_ulp = max(most_ulp, dist)
                    mismatched += 0 if dist <= max_ulp else 1
            abs_zeros += zd
            rel_zeros += zr
            finite_abs += m
            finite_rel += fr
            sum_abs += sa
            sum_rel += sr
            if mx > max_abs:  # its first occurrence
                j = 0
                while dbuf[j] != mx:
                    j += 1
                max_abs = mx
                worst = start + c0 + j
                worst_b = np.float64(b[c0 + j])
                worst_a = np.float64(a[c0 + j])
            max_rel = max(max_rel, mr)
            atol_pass = max(atol_pass, ap)
            # (d - atol) / ab > rtol_pass, with a division only where it may be (rarely):
            # the product's rounding is covered by the margin, the quotient decides.
            bound = rtol_pass * _MARGIN
            maybe = 0
            for j in range(m):
                d = dbuf[j]
                maybe += 1 if d > atol and d - atol >= bound * abuf[j] else 0
            if maybe:
                for j in range(m):
                    d = dbuf[j]
                    if d > atol and d - atol >= rtol_pass * abuf[j] * _MARGIN:
                        need = (d - atol) / abuf[j]
                        if need > rtol_pass:
                            rtol_pass = need
            for j in range(m):  # zeros land in bin 0 of sub-histogram 0, taken off below
                sub = np.uint64(j & (_SUBS - 1)) << np.uint64(16)
                habs[sub + (dkey[j] >> shift)] += 1
                hrel[sub + (rkey[j] >> shift)] += 1
            habs[0] -= zd
            hrel[0] -= zr
        if speculating:  # dbuf, rbuf hold the chunk's differences (zero where none)
            for w in range(2):
                if ranges[w, 0, 0] == _NONE:
                    continue
                keys = dkey if w == 0 else rkey
                taken = _take(keys, ranges[w], masks, m)
                if taken:  # the taken keys alone, found from the masks' set bits
                    f = fill[w]
                    room = cap[w]
                    at = base[w]
                    for i in range((m + 63) >> 6):
                        word = masks[i]
                        while word:
                            buf[at + min(f, room)] = keys[(i << 6) + _ctz(word)]
                            f += 1
                            word &= word - np.uint64(1)
                    fill[w] = f
    counts[_MISMATCHED], counts[_SPECIAL_BAD], counts[_NAN_BAD] = mismatched, special_bad, nan_bads
    counts[_WORST], counts[_FINITE_ABS], counts[_FINITE_REL] = worst, finite_abs, finite_rel
    counts[_ABS_ZEROS], counts[_REL_ZEROS] = abs_zeros, rel_zeros
    floats[_MAX_ABS], floats[_WORST_B], floats[_WORST_A] = max_abs, worst_b, worst_a
    floats[_MAX_REL], floats[_ATOL_PASS], floats[_RTOL_PASS] = max_rel, atol_pass, rtol_pass
    ulps[0] = most_ulp
    floats[_SUM_ABS] += sum_abs
    floats[_SUM_REL] += sum_rel


def scan_targets(
    scanner: Any,
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    pending: list[list[Target]],
    collect_limit: int,
    whole: bool = True,
) -> None:
    """One refining pass of the compiled `scanner` (`_kernels()[1]`) over `blocks()` for
    the targets of the two sketches (abs, rel): a target of at most `collect_limit`
    candidates collects their keys, a larger one counts them by their next 16 bits.
    `whole`: the blocks are the whole output, so a target's candidates are exactly its
    count; else (a shard's, `parity.judging.partial`) at most its count, and a target
    with none there is left as it was."""
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
        scanner(b, a, which, prefix, shift, collect, offsets, fill, buf, sub, lo, hi, wanted)
    for i, (_, t) in enumerate(targets):
        if collect[i]:
            if fill[i] != sizes[i] if whole else fill[i] > sizes[i]:
                raise RuntimeError("quantile pass: a bin's count changed between passes")
            got = int(fill[i])
            t.collected = [buf[offsets[i] : offsets[i] + got]] if got else []
        elif hi[i] >= 0:
            t.sub = sub[i].copy()
            t.lo, t.hi = int(lo[i]), int(hi[i])


_CHUNK = 1024  # elements whose differences a quantile pass computes at a time (16 KiB)


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


_SUB = np.uint64(32)  # a bin's sub-bins: the next 16 bits of its keys


def _census(
    buf: np.ndarray,
    base: np.ndarray,
    fill: np.ndarray,
    first: Any,
    last: Any,
    rep: Any,
    sub: np.ndarray,
) -> Any:
    """Over the keys collected by each thread i (buf[base[i]:base[i] + fill[i]]), those
    from `first` to `last` (one top-16-bit bin): how many, how many below `rep`, and
    their counts by sub-bin (the next 16 bits) added to `sub`."""
    count: Any = 0
    below: Any = 0
    mask = np.uint64(0xFFFF)
    span = last - first
    for i in range(base.size):
        for k in range(base[i], base[i] + fill[i]):  # no branch: keys of bins interleave
            key = buf[k]
            inside = np.int64(key - first <= span)
            count += inside
            below += inside & np.int64(key < rep)
            sub[(key >> _SUB) & mask] += inside
    return count, below


def _gather(
    buf: np.ndarray,
    base: np.ndarray,
    fill: np.ndarray,
    first: Any,
    last: Any,
    out: np.ndarray,
) -> int:
    """The keys from `first` to `last` that the threads collected (see `_census`), copied
    into `out` in the order found; how many there were (at most out.size are copied)."""
    n = 0
    for i in range(base.size):
        for k in range(base[i], base[i] + fill[i]):
            key = buf[k]
            if first <= key <= last:
                if n < out.size:
                    out[n] = key
                n += 1
    return n


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
        try:
            import numba
        except ImportError as e:
            from parity.errors import ConfigError

            raise ConfigError(
                SWITCH,
                None,
                f"numba: the compiled comparison needs numba, which is not importable ({e}):"
                f" install parity[fast], or set {SWITCH}=auto or numpy",
            ) from None

        # The helpers are called from the kernels: compiled first, in place of the Python.
        glob = _pass.__globals__
        glob["_element"] = numba.njit(inline="always", error_model="numpy")(_PY_ELEMENT)
        glob["_ordered"] = numba.njit(inline="always")(_PY_ORDERED)
        glob["_take"] = numba.njit(_PY_TAKE)
        from numba.cpython.unsafe.numbers import trailing_zeros

        glob["_ctz"] = trailing_zeros
        # Reassociated sums and maxima without NaN (none reach it): SIMD reductions.
        glob["_reduce"] = numba.njit(error_model="numpy", fastmath={"reassoc", "nnan", "nsz"})(
            _PY_REDUCE
        )
        _compiled["first"] = _compile(_pass)
        _compiled["scan"] = _compile(_scan)
        _compiled["census"] = _compile(_census)
        _compiled["gather"] = _compile(_gather)
    return _compiled["first"], _compiled["scan"]


_PY_ELEMENT = _element
_PY_ORDERED = _ordered
_PY_REDUCE = _reduce
_PY_TAKE = _take


def threads() -> int:
    """How many threads a pass splits each block over: numba's setting (NUMBA_NUM_THREADS,
    or `numba.set_num_threads`), at most the CPUs this process may use."""
    import numba

    return max(1, numba.get_num_threads())


_pool: Any = None


def _workers(n: int) -> Any:
    """A pool of `n` threads (the calling thread is the pass's first)."""
    global _pool
    from concurrent.futures import ThreadPoolExecutor

    if _pool is None or _pool._max_workers < n:
        _pool = ThreadPoolExecutor(n, thread_name_prefix="parity-compare")
    return _pool


FUSED_BLOCK = 1 << 20  # elements a block of the compiled pass holds (4 MiB of float32)
SAMPLE = 1 << 18  # elements whose differences predict where the quantiles lie
SPECULATE = True  # whether a pass speculates (tests compare both ways)
SPEC_KEYS = 12 << 20  # keys the speculative ranges may collect at most (96 MiB)
_MIN_SPLIT = 1 << 15  # fewer elements than this per thread: one thread takes the block


def _ranges(keys: np.ndarray, runs: list[tuple[int, int]]) -> tuple[list[Any], int]:
    """A speculative range (first key, last key, representative or 0) for each run of
    bins, and how many of the sample's `keys` the ranges would collect."""
    top16 = keys >> np.uint64(48)
    spec = []
    others = 0
    for first, last in runs:
        mine = keys[(top16 >= first) & (top16 <= last)]
        rep = 0
        if mine.size:
            uniq, counts = np.unique(mine, return_counts=True)
            i = int(np.argmax(counts))
            rep = int(uniq[i]) if counts[i] > 1 else 0
            others += int(mine.size) - (int(counts[i]) if rep else 0)
        spec.append((max(first << 48, 1), ((last + 1) << 48) - 1, rep))
    return spec, others


def _runs(bins: list[int]) -> list[tuple[int, int]]:
    """Sorted bins as runs of consecutive ones (first, last)."""
    runs: list[tuple[int, int]] = []
    for b in bins:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


class FusedPass:
    """The compiled pass's state over one comparison, one row per thread; `finish` hands
    it to the comparison's accumulator and sketches as the NumPy path would have left
    them. Each block is split into one contiguous part per thread; merging the rows in
    thread order (sums, maxima, the lowest index of the largest difference) gives the
    same results whatever the number of threads, the means up to their last bits.

    Speculation: the first `SAMPLE` elements predict, for the median and p99 of each
    sketch, the top-16-bit bins their ranks will fall in (with a margin of six standard
    errors), and each such bin's most frequent key (its representative); the pass then
    collects every key of those bins but the representative (the sample's too, by a
    second look at it), at most `SPEC_KEYS` in all. A quantile whose bin was speculated
    and collected whole is exact from those keys and the bin's count, without a further
    pass over the data; any other takes the quantile passes (`scan`)."""

    def __init__(
        self,
        rule: tuple[int, float, float, int],
        total: int,
        quantiles: tuple[float, ...],
        speculate: bool | None = None,
    ) -> None:
        self.rule, self.atol, self.rtol, self.max_ulp = rule
        self.first, self.scanner = _kernels()
        self.census, self.gather = _compiled["census"], _compiled["gather"]
        self.threads = threads()
        t = self.threads
        self.counts = np.zeros((t, 8), dtype=np.int64)
        self.counts[:, _WORST] = -1
        self.floats = np.zeros((t, 8))
        self.ulps = np.zeros((t, 1), dtype=np.uint64)
        self.habs = np.zeros((t, _SUBS << 16), dtype=np.int64)
        self.hrel = np.zeros((t, _SUBS << 16), dtype=np.int64)
        self.ranges = np.zeros((2, _RANGES, 3), dtype=np.uint64)
        self.ranges[:, :, 0] = _NONE  # empty: no key but _NONE is past it
        self.speculating = False
        self.buf = np.empty(0, dtype=np.uint64)
        self.base = np.zeros((t, 2), dtype=np.int64)
        self.cap = np.zeros((t, 2), dtype=np.int64)
        self.fill = np.zeros((t, 2), dtype=np.int64)
        self.total = 0
        self.expected = total
        self.quantiles = quantiles
        self.predicted = not (SPECULATE if speculate is None else speculate)
        self.block = FUSED_BLOCK

    def _run(self, b: np.ndarray, a: np.ndarray, start: int, rows: list[Any] | None = None) -> None:
        """Elements of one block, split over the threads (`rows`: other state, one row)."""
        u = np.dtype(f"u{b.dtype.itemsize}")
        bu, au = b.view(u), a.view(u)
        n = int(b.size)
        parts = max(1, min(self.threads, n // _MIN_SPLIT))
        cuts = [n * i // parts for i in range(parts + 1)]
        max_ulp = np.uint64(min(self.max_ulp, (1 << 64) - 1))

        def part(i: int) -> None:
            state = rows or [
                self.counts[i],
                self.floats[i],
                self.ulps[i],
                self.habs[i],
                self.hrel[i],
            ]
            self.first(
                b, a, bu, au, cuts[i], cuts[i + 1], self.rule, self.atol, self.rtol, max_ulp,
                start, *state, self.speculating, self.ranges, self.buf, self.base[i],
                self.cap[i], self.fill[i],
            )  # fmt: skip

        if parts == 1:
            part(0)
            return
        pool = _workers(parts - 1)
        futures = [pool.submit(part, i) for i in range(1, parts)]
        part(0)
        for f in futures:
            f.result()

    def add(self, start: int, rb: np.ndarray, cb: np.ndarray) -> None:
        """Account for one pair of blocks (flat, C order, of one float dtype)."""
        b, a = np.ravel(rb), np.ravel(cb)
        if not self.predicted:
            cut = min(int(b.size), SAMPLE)
            self._run(b[:cut], a[:cut], start)
            self.total += cut
            self._predict(b[:cut], a[:cut])
            if self.speculating:  # the sample's keys, its statistics again apart
                scratch = [
                    np.zeros(8, dtype=np.int64),
                    np.zeros(8),
                    np.zeros(1, dtype=np.uint64),
                    np.zeros(_SUBS << 16, dtype=np.int64),
                    np.zeros(_SUBS << 16, dtype=np.int64),
                ]
                self._run(b[:cut], a[:cut], start, scratch)
            b, a, start = b[cut:], a[cut:], start + cut
            if not b.size:
                return
        self._run(b, a, start)
        self.total += int(b.size)

    def _predict(self, b: np.ndarray, a: np.ndarray) -> None:
        """The speculated bins and their representatives, from the sample `b`, `a` that
        the pass has seen (see the class)."""
        self.predicted = True
        n0 = self.total
        if n0 == 0 or self.expected <= n0:
            return  # nothing more to read: the quantile passes will be short
        zeros = self.counts[:, [_ABS_ZEROS, _REL_ZEROS]].sum(axis=0)
        with np.errstate(all="ignore"):
            bf = b.astype(np.float64)
            d = np.abs(a.astype(np.float64) - bf)
            rel = np.where(d == 0, 0.0, d / np.abs(bf))
        room = SPEC_KEYS
        for w, (hist, values) in enumerate(((self.habs, d), (self.hrel, rel))):
            top = hist.sum(axis=0).reshape(_SUBS, -1).sum(axis=0)
            cum = np.cumsum(top) + zeros[w]
            if cum[-1] <= zeros[w]:
                continue  # no positive difference so far: nothing to predict from
            keys = values[np.isfinite(values) & (values > 0)].view(np.uint64)
            bins: set[int] = set()
            for q in self.quantiles:
                spread = 6 * math.sqrt(q * (1 - q) / n0) + 2 / n0
                low, high = (q - spread) * (n0 - 1), (q + spread) * (n0 - 1) + 1
                if high < zeros[w]:
                    continue  # among the zeros
                first = int(np.searchsorted(cum, max(low, zeros[w]), side="right"))
                last = int(np.searchsorted(cum, min(high, n0 - 1), side="right"))
                bins.update(range(first, min(last, (1 << 16) - 1) + 1))
            if not bins or len(bins) > 64:
                continue
            runs = _runs(sorted(bins))
            if len(runs) > _RANGES:
                continue
            spec, others = _ranges(keys, runs)
            if len(bins) <= _RANGES and len(bins) > len(runs):  # a representative each?
                apart, fewer = _ranges(keys, [(b, b) for b in sorted(bins)])
                if fewer < others // 2:
                    spec, others = apart, fewer
            want = int(others / n0 * self.expected * 1.25) + 4096 * self.threads
            if want > room:
                continue
            room -= want
            for r, (first, last, rep) in enumerate(spec):
                self.ranges[w, r] = (first, last - first, rep)
            self.cap[:, w] = want // self.threads
        if room == SPEC_KEYS:
            return
        offset = 0
        for i in range(self.threads):
            for w in range(2):
                self.base[i, w] = offset
                offset += int(self.cap[i, w]) + 1  # and a slot for what does not fit
        self.buf = np.empty(offset, dtype=np.uint64)
        self.speculating = True

    def finish(self, acc: Any, abs_sketch: QuantileSketch, rel_sketch: QuantileSketch) -> int:
        """Fill the accumulator's statistics and the sketches; the largest ULP distance."""
        c, f = self.counts.sum(axis=0), self.floats
        acc.mismatched = int(c[_MISMATCHED])
        acc.special_bad = int(c[_SPECIAL_BAD])
        acc.nan_mismatched = int(c[_NAN_BAD])
        worst = -1
        for i in range(self.threads):  # the largest, at its lowest index
            w = int(self.counts[i, _WORST])
            if w < 0:
                continue
            best = f[i, _MAX_ABS] > acc.max_abs or (f[i, _MAX_ABS] == acc.max_abs and w < worst)
            if worst < 0 or best:
                worst = w
                acc.max_abs = float(f[i, _MAX_ABS])
                acc.worst = w
                acc.worst_values = (float(f[i, _WORST_B]), float(f[i, _WORST_A]))
        acc.sum_abs, acc.finite_abs = float(f[:, _SUM_ABS].sum()), int(c[_FINITE_ABS])
        acc.sum_rel, acc.finite_rel = float(f[:, _SUM_REL].sum()), int(c[_FINITE_REL])
        acc.max_rel = float(f[:, _MAX_REL].max())
        acc.atol_to_pass = float(f[:, _ATOL_PASS].max())
        acc.rtol_to_pass = float(f[:, _RTOL_PASS].max())
        for sketch, hist, zeros in (
            (abs_sketch, self.habs, c[_ABS_ZEROS]),
            (rel_sketch, self.hrel, c[_REL_ZEROS]),
        ):
            sketch.total, sketch.zeros = self.total, int(zeros)
            top = hist.sum(axis=0).reshape(_SUBS, -1).sum(axis=0)
            sketch.kept, sketch.kept_count, sketch.top = None, 0, top
        return int(self.ulps.max())

    def _speculated(self, pending: list[list[Target]]) -> list[list[Target]]:
        """Resolve the top-level targets whose bin was speculated and collected whole (see
        the class); the others, still pending."""
        from parity.judging.quantiles import _value as value

        left: list[list[Target]] = []
        buf, self.buf = self.buf, np.empty(0, dtype=np.uint64)  # this look only
        for w, targets in enumerate(pending):
            still = []
            whole = bool((self.fill[:, w] <= self.cap[:, w]).all())
            for t in targets:
                covering = self._covering(w, t) if t.shift == 48 and whole else None
                if covering is None:
                    still.append(t)
                    continue
                rep = covering if covering and covering >> 48 == t.prefix else int(_NONE)
                # The bin's collected keys are counted by sub-bin (its next 16 bits) in
                # place; only the sub-bins holding a wanted rank are copied and partitioned.
                first, last = np.uint64(t.prefix << 48), np.uint64(((t.prefix + 1) << 48) - 1)
                base = np.ascontiguousarray(self.base[:, w])
                fill = np.ascontiguousarray(self.fill[:, w])
                sub = np.zeros(1 << 16, dtype=np.int64)
                mine, below = self.census(buf, base, fill, first, last, np.uint64(rep), sub)
                same = t.count - int(mine)  # the representative's count
                if same < 0 or (rep == int(_NONE) and same):
                    raise RuntimeError("quantile pass: a bin's count changed between passes")
                # In the bin's order: the keys below the representative, `same` copies of
                # it, the keys above; the collected keys sorted hold the first and the last.
                below = int(below) if same else int(mine)
                where = {}
                for rank, within in t.ranks.items():
                    if within < below:
                        where[rank] = within
                    elif within >= below + same:
                        where[rank] = within - same
                found = self._kth(buf, base, fill, first, sub, sorted(set(where.values())))
                resolved = dict.fromkeys(t.ranks, value(rep))
                resolved.update({r: value(found[i]) for r, i in where.items()})
                t.resolved = resolved
            left.append(still)
        return left

    def _kth(
        self,
        buf: np.ndarray,
        base: np.ndarray,
        fill: np.ndarray,
        first: Any,
        sub: np.ndarray,
        indices: list[int],
    ) -> dict[int, int]:
        """The keys at `indices` in the sorted order of the bin's collected keys (from
        `first`, counted by sub-bin in `sub`): each from its sub-bin's keys alone."""
        cum = np.cumsum(sub)
        found: dict[int, int] = {}
        by_sub: dict[int, list[int]] = {}
        for i in indices:
            by_sub.setdefault(int(np.searchsorted(cum, i, side="right")), []).append(i)
        for s, wanted in by_sub.items():
            lo = first | (np.uint64(s) << _SUB)
            keys = np.empty(int(sub[s]), dtype=np.uint64)
            hi = lo + np.uint64((1 << 32) - 1)
            if self.gather(buf, base, fill, lo, hi, keys) != keys.size:
                raise RuntimeError("quantile pass: a bin's count changed between passes")
            skip = int(cum[s]) - keys.size  # keys in the sub-bins below
            keys.partition([i - skip for i in wanted])
            found.update({i: int(keys[i - skip]) for i in wanted})
        return found

    def _covering(self, w: int, t: Target) -> int | None:
        """The representative (0: none) of the range of sketch w holding target t's whole
        bin, or None when no range does."""
        for first, span, rep in self.ranges[w].tolist():
            if first <= t.prefix << 48 and ((t.prefix + 1) << 48) - 1 <= first + span:
                return int(rep)
        return None

    def scan(
        self,
        blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
        pending: list[list[Target]],
        collect_limit: int,
    ) -> None:
        """One refining pass over `blocks()` for the targets of the two sketches (abs,
        rel), leaving in each what `parity.judging.quantiles` expects of a pass. Targets the
        speculative ranges resolve take no pass."""
        if self.buf.size:
            pending = self._speculated(pending)
        scan_targets(self.scanner, blocks, pending, collect_limit)
