"""The compiled pass (`parity.judging.kernels`) gives the NumPy path's results: verdict,
counts, maxima, worst element, histogram and exact quantiles, the means up to summation
order, over random and adversarial outputs; outputs it does not take stay on the NumPy
path, and `PARITY_COMPARE_KERNEL` chooses as documented."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.arrays import MemoryArray
from parity.comparison import OutputComparison
from parity.errors import ConfigError
from parity.judging import kernels
from parity.judging.compare import compare_arrays
from parity.judging.pictures import image_layout
from parity.policies import TolerancePolicy

pytest.importorskip("numba")
# The NumPy path's own warnings on overflowing and NaN casts, as in tests/test_compare.py.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1.0, -1.0, 5e-324, 1e-45, 3.4e38, 1.8e308]

fused_policies = st.one_of(
    st.builds(
        TolerancePolicy,
        kind=st.just("allclose"),
        atol=st.one_of(st.just(0.0), st.floats(0, 10)),
        rtol=st.one_of(st.just(0.0), st.floats(0, 1)),
    ),
    st.builds(TolerancePolicy, kind=st.just("exact")),
    st.builds(TolerancePolicy, kind=st.just("ulp"), max_ulp=st.integers(0, 1000)),
)
other_policies = st.one_of(
    st.builds(TolerancePolicy, kind=st.just("decision"), top_k=st.just(1)),
    st.builds(TolerancePolicy, kind=st.just("psnr"), min_db=st.floats(-50, 200)),
    st.builds(TolerancePolicy, kind=st.just("cosine")),
)


def _plain(c: OutputComparison) -> dict[str, Any]:
    """The comparison's fields, NaN written as a string so that equal NaNs compare equal."""

    def plain(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, tuple | list):
            return tuple(plain(x) for x in v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(c).items()}


def assert_same(fast: OutputComparison, ref: OutputComparison) -> None:
    """Equal in every field; the means up to the order of summation."""
    for key in ("mean_abs_diff", "mean_rel_diff"):
        assert getattr(fast, key) == pytest.approx(getattr(ref, key), rel=1e-9, abs=0)
    sums = {k: getattr(ref, k) for k in ("mean_abs_diff", "mean_rel_diff")}
    assert _plain(dataclasses.replace(fast, **sums)) == _plain(ref)


class Spy:
    """Counts the compiled passes started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        real = kernels.FusedPass.__init__

        def init(this: kernels.FusedPass, *args: Any, **kw: Any) -> None:
            self.started += 1
            real(this, *args, **kw)

        monkeypatch.setattr(kernels.FusedPass, "__init__", init)


def both(
    reference: np.ndarray, candidate: np.ndarray, **kw: Any
) -> tuple[OutputComparison, OutputComparison, int]:
    """The comparison on the NumPy path, on the compiled one where it may, and how many
    compiled passes that second one started."""
    with pytest.MonkeyPatch.context() as m:
        spy = Spy(m)
        m.setenv(kernels.SWITCH, "numpy")
        slow = compare_arrays("y", reference, candidate, **kw)
        m.setenv(kernels.SWITCH, "numba")
        fast = compare_arrays("y", reference, candidate, **kw)
    assert spy.started <= 1
    return slow, fast, spy.started


@st.composite
def pairs(draw: st.DrawFn, dtypes: list[type]) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a candidate: special values, subnormals, huge values, and a
    candidate that is independent, equal, or the reference moved a few ULP."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=9))
    if dtype.kind == "f":
        width = min(64, dtype.itemsize * 8)
        elements: st.SearchStrategy[Any] = st.one_of(
            st.floats(width=width), st.sampled_from(SPECIAL)
        )
    else:
        elements = hnp.from_dtype(dtype)
    ref = draw(hnp.arrays(dtype, shape, elements=elements))
    how = draw(st.sampled_from(["independent", "equal", "ulp"]))
    if how == "equal":
        return ref, ref.copy()
    if how == "ulp" and dtype.kind == "f":
        u = np.dtype(f"i{dtype.itemsize}")
        steps = draw(hnp.arrays(u, shape, elements=st.integers(-4, 4)))
        return ref, (ref.view(u) + steps).view(dtype)
    return ref, draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=300, deadline=None)
@given(
    pairs([np.float32, np.float64]),
    fused_policies,
    st.integers(1, 50),
    st.integers(0, 40),
    st.tuples(st.integers(1, 3), st.integers(1, 64), st.booleans()),
)
def test_the_compiled_pass_gives_the_numpy_paths_results(
    pair: tuple[np.ndarray, np.ndarray],
    policy: TolerancePolicy,
    block: int,
    keep: int,
    split: tuple[int, int, bool],
) -> None:
    """Float32/64 under allclose, exact, ulp, with NaN, infinities, -0.0, subnormals and
    overflowing differences; small blocks and keep limits force the compiled quantile
    passes, histogram levels included; blocks split over 1 to 3 threads, speculation on
    a sample of 1 to 64 elements (its predictions right or wrong) or none."""
    ref, cand = pair
    threads, sample, speculate = split
    mp = pytest.MonkeyPatch()
    mp.setattr(kernels, "threads", lambda: threads)
    mp.setattr(kernels, "_MIN_SPLIT", 1)
    mp.setattr(kernels, "SAMPLE", sample)
    mp.setattr(kernels, "SPECULATE", speculate)
    try:
        _compare_both_ways(ref, cand, policy, block, keep)
    finally:
        mp.undo()


def _compare_both_ways(
    ref: np.ndarray, cand: np.ndarray, policy: TolerancePolicy, block: int, keep: int
) -> None:
    views = image_layout(ref.shape) is not None or (ref.ndim == 2 and 0 < ref.shape[1] <= 64)
    for block_elements, keep_limit in ((block, keep), (1 << 16, 1 << 23)):
        slow, fast, started = both(
            ref,
            cand,
            policy=policy,
            block_elements=block_elements,
            keep_limit=keep_limit,
        )
        assert_same(fast, slow)
        assert started == int(not views)


@settings(max_examples=150, deadline=None)
@given(pairs([np.float16, np.int32, np.uint8, np.complex64]), fused_policies)
def test_other_dtypes_stay_on_the_numpy_path(
    pair: tuple[np.ndarray, np.ndarray], policy: TolerancePolicy
) -> None:
    ref, cand = pair
    slow, fast, started = both(ref, cand, policy=policy, block_elements=7)
    assert started == 0
    assert_same(fast, slow)


@settings(max_examples=60, deadline=None)
@given(pairs([np.float32]), other_policies)
def test_other_policies_and_mixed_dtypes_stay_on_the_numpy_path(
    pair: tuple[np.ndarray, np.ndarray], policy: TolerancePolicy
) -> None:
    ref, cand = pair
    assert both(ref, cand, policy=policy)[2] == 0
    mixed = both(ref, cand.astype(np.float64), policy=TolerancePolicy())
    assert mixed[2] == 0


@pytest.mark.parametrize("kind", ["allclose", "exact", "ulp"])
def test_quantiles_of_a_large_output_few_ulp_apart_over_many_passes(kind: str) -> None:
    """256 Ki float32 elements a few ULP apart (bins of equal keys, far past the keep
    limit): the exact median and p99 by compiled passes are numpy's own."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((256, 1024), dtype=np.float32)
    cand = (ref.view(np.int32) + rng.integers(-4, 5, ref.shape, dtype=np.int32)).view(np.float32)
    cand[0, 0], ref[1, 1], cand[1, 1] = np.nan, np.inf, np.inf
    policy = TolerancePolicy(kind=kind, atol=1e-8, rtol=1e-5, max_ulp=3)
    slow, fast, started = both(ref, cand, policy=policy, keep_limit=1000)
    assert started == 1
    assert_same(fast, slow)
    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64)).ravel()
    diff[0], diff[1025] = np.inf, 0.0
    assert fast.median_abs_diff == np.quantile(diff, 0.5)
    assert fast.p99_abs_diff == np.quantile(diff, 0.99)


def test_auto_takes_the_compiled_pass_for_large_outputs_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    a = np.linspace(0, 1, 4096, dtype=np.float32)
    compare_arrays("y", a, a + 1)
    assert spy.started == 0
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 4096)
    compare_arrays("y", a, a + 1)
    assert spy.started == 1
    monkeypatch.setattr(kernels, "available", lambda: False)  # numba not installed
    compare_arrays("y", a, a + 1)
    assert spy.started == 1


def test_an_unknown_switch_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.SWITCH, "fortran")
    with pytest.raises(ConfigError, match="PARITY_COMPARE_KERNEL: 'fortran': expected one of") as e:
        compare_arrays("y", np.zeros(3), np.ones(3))
    assert e.value.exit_code == 2


def test_numba_asked_for_but_missing_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """PARITY_COMPARE_KERNEL=numba without numba: one line, exit 2, not an ImportError."""
    monkeypatch.setenv(kernels.SWITCH, "numba")
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    with pytest.raises(ConfigError, match="needs numba, which is not importable") as e:
        compare_arrays("y", np.zeros(3), np.ones(3))
    assert e.value.exit_code == 2
    assert "\n" not in str(e.value)


class Counted(MemoryArray):
    """An output in memory that counts the passes over it."""

    passes = 0

    def blocks(self, elements: int) -> Iterator[np.ndarray]:
        self.passes += 1
        yield from super().blocks(elements)


def _few_ulp(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, 1024), dtype=np.float32)
    steps = rng.integers(-4, 5, ref.shape, dtype=np.int32)
    return ref, (ref.view(np.int32) + steps).view(np.float32)


def test_speculation_makes_one_pass_with_the_numpy_paths_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 Mi float32 elements a few ULP apart: the quantile bins predicted from the sample
    are collected during the first pass, so the compiled path reads the data once (the
    NumPy path, keeping at most 64 Ki values, twice), or twice without speculation, with
    the same results each way."""
    ref, cand = _few_ulp(2048, 11)
    results, passes = [], []
    for path, speculate in (("numpy", True), ("numba", True), ("numba", False)):
        monkeypatch.setenv(kernels.SWITCH, path)
        monkeypatch.setattr(kernels, "SPECULATE", speculate)
        r, c = Counted(ref), Counted(cand)
        policy = TolerancePolicy(atol=1e-8, rtol=1e-5)
        results.append(compare_arrays("y", r, c, policy, keep_limit=1 << 16))
        passes.append(r.passes)
    assert passes == [2, 1, 2]
    assert_same(results[1], results[0])
    assert_same(results[2], results[0])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_same_results_whatever_the_number_of_threads(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Blocks split over 1, 2 or 3 threads (ties of the largest difference across parts
    resolve to the lowest index) give the NumPy path's results."""
    ref, cand = _few_ulp(256, 12)
    cand[3, 7] = ref[3, 7] + 1  # the largest difference, twice: the first is the worst
    cand[200, 9] = ref[200, 9] + 1
    ref[200, 9] = ref[3, 7]
    cand[200, 9] = cand[3, 7]
    monkeypatch.setattr(kernels, "threads", lambda: threads)
    monkeypatch.setattr(kernels, "_MIN_SPLIT", 1)
    slow, fast, started = both(ref, cand, policy=TolerancePolicy(atol=1e-8, rtol=1e-5))
    assert started == 1
    assert_same(fast, slow)
    assert fast.worst_index == (3, 7)


def test_without_a_writable_cache_the_kernels_are_compiled_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read-only install with no home: numba finds no cache locator and refuses
    cache=True; the kernels are compiled for the process instead, with the same results."""
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(kernels, "_compiled", {})
    rng = np.random.default_rng(5)
    ref = rng.standard_normal(5000).astype(np.float32)
    cand = ref + np.float32(1e-3)
    slow, fast, started = both(ref, cand, keep_limit=100)
    assert started == 1
    assert_same(fast, slow)
    assert kernels._compiled["first"]._cache.__class__.__name__ == "NullCache"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 3).map(lambda b: b + 0x3FF0),  # 4 top-16-bit bins
                st.sampled_from([0, 1, 2, 0xFFFF]),  # few sub-bins, the last one included
                st.integers(0, (1 << 32) - 1),
            ),
            max_size=40,
        ),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 3),
    st.integers(0, 5),
)
def test_a_speculated_bins_keys_are_found_by_rank_from_their_sub_bins(
    regions: list[list[tuple[int, int, int]]], which: int, garbage: int
) -> None:
    """The speculative look resolves a rank in a bin from the keys the threads collected
    (each thread's region followed by slots it did not fill), counting them by sub-bin and
    partitioning only the sub-bins wanted: every rank gives the key that sorting all the
    bin's keys gives, and the counts below a representative are those of the keys."""
    keys_of = [[(b << 48) | (s << 32) | low for b, s, low in r] for r in regions]
    buf, base, fill = [], [], []
    for keys in keys_of:
        base.append(len(buf))
        fill.append(len(keys))
        buf += keys + [(1 << 64) - 1 - g for g in range(garbage)]  # not filled: not read
    arrays = [np.array(x, dtype=np.uint64) for x in (buf, base, fill)]
    buf_a, base_a, fill_a = arrays[0], arrays[1].astype(np.int64), arrays[2].astype(np.int64)
    fp = kernels.FusedPass((kernels.ALLCLOSE, 0.0, 0.0, 0), 1, (0.5,))
    prefix = 0x3FF0 + which
    mine = sorted(k for keys in keys_of for k in keys if k >> 48 == prefix)
    first, last = np.uint64(prefix << 48), np.uint64(((prefix + 1) << 48) - 1)
    rep = mine[len(mine) // 2] if mine else (1 << 64) - 1
    sub = np.zeros(1 << 16, dtype=np.int64)
    count, below = fp.census(buf_a, base_a, fill_a, first, last, np.uint64(rep), sub)
    assert (count, below) == (len(mine), sum(k < rep for k in mine))
    found = fp._kth(buf_a, base_a, fill_a, first, sub, list(range(len(mine))))
    assert [found[i] for i in range(len(mine))] == mine
