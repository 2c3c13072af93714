"""Exact quantiles of a stream of non-negative numbers, in bounded memory.

Comparing two multi-gigabyte outputs cannot keep every difference in memory, yet a
median or p99 that is only approximately right is a poor basis for a tolerance. A
`QuantileSketch` keeps the values while they are few; past `keep_limit` it keeps a
histogram of the top 16 bits of each value's float64 bit pattern instead (non-negative
floats sort like their bit patterns) and `resolve` finds the wanted order statistics
exactly with further passes over the stream: each pass either collects the few values
of the one bin a rank falls in, or histograms the next 16 bits of that bin. Two passes
suffice for most data; four at most.

Quantiles use numpy's default ("linear") definition: position q * (n - 1) between the
two nearest order statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

KEEP_LIMIT = 1 << 23  # values kept in memory (64 MiB of float64) before switching to bins
_BITS = 16
_BINS = 1 << _BITS


@dataclass
class QuantileSketch:
    """What one pass over a stream of non-negative float64 values leaves for quantiles."""

    keep_limit: int = KEEP_LIMIT
    total: int = 0
    zeros: int = 0
    kept: list[np.ndarray] | None = field(default_factory=list)
    kept_count: int = 0
    top: np.ndarray | None = None  # counts of positive values by their top 16 bits

    def add(self, values: np.ndarray) -> None:
        """Account for one block of values (non-negative, no NaN; +inf allowed)."""
        import numpy as np

        self.total += int(values.size)
        positive = values[values > 0]
        self.zeros += int(values.size - positive.size)
        parts = [positive]  # boolean indexing made a copy already
        if self.kept is not None:
            self.kept.append(positive)
            self.kept_count += int(positive.size)
            if self.kept_count <= self.keep_limit:
                return
            parts, self.kept = self.kept, None  # binned part by part: no concatenated copy
        if self.top is None:
            self.top = np.zeros(_BINS, dtype=np.int64)
        for part in parts:
            self.top += np.bincount(_keys(part) >> 48, minlength=_BINS)

    def add_zeros(self, n: int) -> None:
        """Account for `n` zero values without materializing them."""
        self.total += n
        self.zeros += n

    def positive_by_exponent(self) -> dict[int, int]:
        """Counts of positive values by binary exponent e (values in [2**e, 2**(e+1)))."""
        import numpy as np

        if self.kept is not None:
            values = np.concatenate(self.kept) if self.kept else np.empty(0)
            raw = np.bincount(_keys(values) >> 52, minlength=2048)
        else:
            assert self.top is not None
            raw = self.top.reshape(-1, 16).sum(axis=1)
        return {int(e) - 1023: int(raw[e]) for e in np.flatnonzero(raw)}


def resolve(
    sketches: Sequence[QuantileSketch],
    qs: Sequence[float],
    stream: Callable[[], Iterable[Sequence[np.ndarray]]],
    collect_limit: int = KEEP_LIMIT,
    scan: Callable[[list[list[Target]], int], None] | None = None,
) -> list[list[float]]:
    """The quantiles `qs` of each sketch's values; `stream()` replays the values, one tuple
    of blocks (one block per sketch) at a time, for sketches that dropped theirs. `scan`,
    if given, makes each pass in place of `stream`: it leaves in every target what the
    values it replays would (the compiled pass, `parity.judging.kernels`)."""
    ranks = [_ranks(s.total, qs) for s in sketches]
    stats: list[dict[int, float]] = []
    pending: list[list[Target]] = []
    for s, rs in zip(sketches, ranks, strict=True):
        found, targets = _start(s, {r for pair in rs for r in pair})
        stats.append(found)
        pending.append(targets)
    while any(pending):
        if scan is None:
            _refine(pending, stream, collect_limit)
        else:
            scan(pending, collect_limit)
        _settle(pending)
        for i, targets in enumerate(pending):
            still: list[Target] = []
            for t in targets:
                for part in [t] if t.resolved is not None else t.split():
                    if part.resolved is not None:
                        stats[i].update(part.resolved)
                    else:
                        still.append(part)
            pending[i] = still
    return [
        [_interpolate(found, pair, s.total, q) for pair, q in zip(rs, qs, strict=True)]
        for found, rs, s in zip(stats, ranks, sketches, strict=True)
    ]


@dataclass
class Target:
    """Order statistics known to lie among the positive values whose key starts `prefix`."""

    prefix: int
    shift: int  # key >> shift == prefix selects the candidates
    count: int
    ranks: dict[int, int]  # overall rank -> rank among the candidates
    resolved: dict[int, float] | None = None
    collected: list[np.ndarray] = field(default_factory=list)
    sub: np.ndarray | None = None
    lo: int = -1
    hi: int = -1

    def split(self) -> list[Target]:
        """The narrower targets this one's sub-histogram points to."""
        assert self.sub is not None
        shift = self.shift - _BITS
        targets = []
        for b, ranks in _by_bin(self.sub, self.ranks).items():
            t = Target((self.prefix << _BITS) | b, shift, int(self.sub[b]), ranks)
            if shift == 0:  # the whole key is known: so is the value
                t.resolved = dict.fromkeys(ranks, _value(t.prefix))
            targets.append(t)
        return targets


def _by_bin(counts: np.ndarray, ranks: dict[int, int]) -> dict[int, dict[int, int]]:
    """Which bin of `counts` each rank falls in, and its rank within that bin."""
    import numpy as np

    cum = np.cumsum(counts)
    by_bin: dict[int, dict[int, int]] = {}
    for rank, within in ranks.items():
        b = int(np.searchsorted(cum, within, side="right"))
        before = int(cum[b - 1]) if b else 0
        by_bin.setdefault(b, {})[rank] = within - before
    return by_bin


def _start(sketch: QuantileSketch, ranks: set[int]) -> tuple[dict[int, float], list[Target]]:
    import numpy as np

    found: dict[int, float] = {}
    if not sketch.total:  # no values (an empty output): no order statistic to find
        return found, []
    positive_ranks = {}
    for r in ranks:
        if r < sketch.zeros:
            found[r] = 0.0
        else:
            positive_ranks[r] = r - sketch.zeros
    if not positive_ranks:
        return found, []
    if sketch.kept is not None:
        values = np.concatenate(sketch.kept)
        part = np.partition(values, sorted(set(positive_ranks.values())))
        found.update({r: float(part[w]) for r, w in positive_ranks.items()})
        return found, []
    assert sketch.top is not None
    by_bin = _by_bin(sketch.top, positive_ranks)
    return found, [Target(b, 48, int(sketch.top[b]), rs) for b, rs in by_bin.items()]


def _refine(
    pending: list[list[Target]],
    stream: Callable[[], Iterable[Sequence[np.ndarray]]],
    collect_limit: int,
) -> None:
    """One pass over the stream: collect small targets, sub-histogram large ones."""
    import numpy as np

    for blocks in stream():
        for targets, values in zip(pending, blocks, strict=True):
            if not targets:
                continue
            keys = _keys(values[values > 0])
            for t in targets:
                mine = keys[(keys >> t.shift) == t.prefix]
                if not mine.size:
                    continue
                if t.count <= collect_limit:
                    t.collected.append(mine)
                    continue
                lo, hi = int(mine.min()), int(mine.max())
                t.lo = lo if t.lo < 0 else min(t.lo, lo)
                t.hi = max(t.hi, hi)
                sub = np.bincount((mine >> (t.shift - _BITS)) & (_BINS - 1), minlength=_BINS)
                t.sub = sub if t.sub is None else t.sub + sub


def _settle(pending: list[list[Target]]) -> None:
    """After a pass: resolve the targets whose candidates were collected, or all alike."""
    import numpy as np

    for targets in pending:
        for t in targets:
            if t.collected:
                # The collected arrays are this pass's own: partitioned in place, no copy.
                part = t.collected[0] if len(t.collected) == 1 else np.concatenate(t.collected)
                part.partition(sorted(set(t.ranks.values())))
                t.resolved = {r: _value(int(part[w])) for r, w in t.ranks.items()}
                t.collected = []
            elif t.lo >= 0 and t.lo == t.hi:
                t.resolved = dict.fromkeys(t.ranks, _value(t.lo))


def _value(key: int) -> float:
    """The float64 whose bit pattern is `key`."""
    import struct

    return float(struct.unpack("<d", struct.pack("<Q", key))[0])


def _keys(values: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


def _ranks(n: int, qs: Sequence[float]) -> list[tuple[int, int]]:
    out = []
    for q in qs:
        pos = q * (n - 1) if n else 0.0
        lo = math.floor(pos)
        out.append((lo, min(lo + 1, max(n - 1, 0))))
    return out


def _interpolate(found: dict[int, float], pair: tuple[int, int], n: int, q: float) -> float:
    if n == 0:
        return 0.0
    lo, hi = pair
    a, b = found[lo], found[hi]
    t = q * (n - 1) - lo
    if a == b or t == 0:
        return a
    if math.isinf(b):
        return math.inf
    # numpy's lerp: exact at both ends, monotonic in t.
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t
