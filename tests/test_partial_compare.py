"""An output compared in shards (`parity.judging.partial`) and merged gives what
`compare_arrays` gives on the whole output: every field equal, the means (and PSNR) up to
the order of summation; the quantile passes made by the shards, exactly; shards lost or
counted twice refused; partials and pass answers carried as plain data, never pickled."""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from parity.comparison import Noise, OutputComparison
from parity.judging import kernels
from parity.judging.compare import compare_arrays
from parity.judging.partial import (
    PartialComparison,
    compare_shard,
    finish,
    merge_answers,
    merge_partials,
    pack,
    refine_over,
    shard_refine,
    unpack,
)
from parity.policies import TolerancePolicy

# The NumPy path's own warnings on overflowing and NaN casts, as in tests/test_compare.py.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SUMMED = ("mean_abs_diff", "mean_rel_diff", "psnr_db")


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


def assert_same(got: OutputComparison, want: OutputComparison) -> None:
    """Equal in every field; the means and PSNR up to the order of summation (1e-12)."""
    for key in SUMMED:
        g, w = getattr(got, key), getattr(want, key)
        if w is None or math.isinf(w):
            assert g == w, key
        else:
            assert g == pytest.approx(w, rel=1e-12, abs=0), key
    same = {k: getattr(want, k) for k in SUMMED}
    if want.psnr_db is not None and want.reason and got.reason:  # PSNR's digits: its sum
        same["reason"] = re.sub(r"PSNR \S+ dB", "PSNR x dB", want.reason)
        got = dataclasses.replace(got, reason=re.sub(r"PSNR \S+ dB", "PSNR x dB", got.reason))
    assert _plain(dataclasses.replace(got, **same)) == _plain(dataclasses.replace(want, **same))


class Passes:
    """A `refine` that carries each request and answer as bytes (as between machines) and
    records them."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.parts = parts
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        request = unpack(pack(request))
        self.requests.append(request)
        answers = [unpack(pack(shard_refine(r, c, request))) for r, c in self.parts]
        return unpack(pack(merge_answers(answers)))


def cut(n: int, shards: int, rng: np.random.Generator) -> list[int]:
    """Sample boundaries of `shards` shards of n samples, some of them empty."""
    inner = sorted(int(x) for x in rng.integers(0, n + 1, shards - 1))
    return [0, *inner, n]


def sharded(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    policy: TolerancePolicy,
    bounds: list[int],
    rng: np.random.Generator | None = None,
    **kw: Any,
) -> tuple[OutputComparison, Passes]:
    """The comparison made shard by shard at `bounds` (samples), each partial carried as
    bytes, merged in a shuffled order and in a random tree."""
    per = math.prod(reference.shape[1:])
    parts = [(reference[i:j], candidate[i:j]) for i, j in itertools.pairwise(bounds)]
    partials = [
        PartialComparison.from_bytes(
            compare_shard(
                name, r, c, policy, offset=i * per, full_shape=reference.shape, **kw
            ).to_bytes()
        )
        for (r, c), i in zip(parts, bounds, strict=False)
    ]
    rng = rng or np.random.default_rng(0)
    order = list(rng.permutation(len(partials)))
    pool = [partials[i] for i in order]
    while len(pool) > 1:  # a random tree of merges, as nodes would make them
        k = int(rng.integers(2, len(pool) + 1))
        pool = [merge_partials(pool[:k]), *pool[k:]]
        pool = [pool[i] for i in rng.permutation(len(pool))]
    passes = Passes(parts)
    return finish(pool[0], passes), passes


def data(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> tuple[Any, Any]:
    """A reference and a candidate: mostly close, some elements changed, NaN and
    infinities placed alike or not (floats), a few equal samples."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        ref = rng.standard_normal(shape).astype(dtype)
        cand = (ref + rng.standard_normal(shape) * 1e-4).astype(dtype)
        flat_r, flat_c = ref.reshape(-1), cand.reshape(-1)
        n = flat_r.size
        for value in (np.nan, np.inf, -np.inf):
            at = rng.integers(0, n, 3)
            flat_r[at[0]] = flat_c[at[0]] = value  # alike
            flat_c[at[1]] = value  # the candidate's alone
            flat_r[at[2]] = value  # the reference's alone
        flat_r[rng.integers(0, n, 2)] = 0.0
    elif kind == "c":
        ref = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        cand = (ref + rng.standard_normal(shape) * 1e-3).astype(dtype)
        cand.reshape(-1)[rng.integers(0, cand.size, 2)] = complex(np.nan, 0)
    else:
        ref = rng.integers(-50, 50, shape).astype(dtype)
        cand = ref.copy()
        flat_c = cand.reshape(-1)
        at = rng.integers(0, flat_c.size, max(1, flat_c.size // 10))
        flat_c[at] += rng.integers(-3, 4, at.size).astype(dtype)
    if shape and shape[0] > 4:  # a few samples identical (whole blocks skipped)
        cand[:2] = ref[:2]
    return ref, cand


SHAPES = {
    "1-D": (300,),
    "columns": (60, 5),
    "wide": (12, 70),
    "channels first": (6, 3, 9, 8),
    "channels last": (5, 8, 10, 3),
    "labels": (80, 1),
}
POLICIES = {
    "allclose": TolerancePolicy(kind="allclose", atol=1e-4, rtol=1e-3),
    "exact": TolerancePolicy(kind="exact"),
    "ulp": TolerancePolicy(kind="ulp", max_ulp=40),
    "cosine": TolerancePolicy(kind="cosine", min_cosine=0.9999),
    "decision": TolerancePolicy(kind="decision"),
    "psnr": TolerancePolicy(kind="psnr", min_db=60.0),
}


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "complex128"])
@pytest.mark.parametrize("layout", list(SHAPES))
def test_shards_merge_into_the_whole_outputs_comparison(
    policy: str, dtype: str, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kernels.SWITCH, "numpy")
    shape = SHAPES[layout]
    rng = np.random.default_rng(zlib.crc32(f"{policy} {dtype} {layout}".encode()))
    for keep_limit in (20, 200, 1 << 20):
        ref, cand = data(shape, dtype, rng)
        want = compare_arrays("y", ref, cand, POLICIES[policy], keep_limit=keep_limit)
        bounds = cut(shape[0], int(rng.integers(1, 8)), rng)
        if policy == "cosine" and len(shape) == 1:  # one row: compared whole (see below)
            bounds = [0, shape[0]]
        got, _ = sharded("y", ref, cand, POLICIES[policy], bounds, rng, keep_limit=keep_limit)
        assert_same(got, want)


def test_the_worst_element_tied_across_shards_is_the_lowest_index() -> None:
    ref = np.zeros((40, 4))
    cand = ref.copy()
    cand[7, 1] = cand[30, 2] = 2.5  # two equal largest differences, in different shards
    cand[12, 0] = -2.5
    policy = TolerancePolicy(kind="allclose", atol=0.1)
    want = compare_arrays("y", ref, cand, policy)
    assert want.worst_index == (7, 1)
    for bounds in ([0, 10, 40], [0, 8, 20, 40], [0, 31, 40], [0, 0, 7, 8, 40]):
        got, passes = sharded("y", ref, cand, policy, bounds)
        assert_same(got, want)
        assert got.worst_index == (7, 1) and got.worst_candidate == 2.5
        assert not passes.requests  # few values: kept, no pass over the shards


def test_the_merge_does_not_depend_on_the_order_of_the_shards() -> None:
    rng = np.random.default_rng(5)
    ref, cand = data((90, 6), "float64", rng)
    policy = POLICIES["psnr"]
    bounds = [0, 13, 40, 41, 77, 90]
    parts = [(ref[i:j], cand[i:j]) for i, j in itertools.pairwise(bounds)]
    partials = [
        compare_shard("y", r, c, policy, offset=i * 6, full_shape=ref.shape, keep_limit=30)
        for (r, c), i in zip(parts, bounds, strict=False)
    ]
    results = [
        _plain(finish(merge_partials([partials[k] for k in order]), refine_over(parts)))
        for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3])
    ]
    assert results[0] == results[1] == results[2]


def test_decision_names_the_first_disagreeing_rows_of_the_whole_output() -> None:
    rng = np.random.default_rng(8)
    ref = rng.standard_normal((50, 4))
    cand = ref.copy()
    rows = [3, 9, 10, 22, 23, 24, 40, 49]
    cand[rows] = -cand[rows]  # the argmax moves on each of these rows
    policy = TolerancePolicy(kind="decision", min_agreement=0.9)
    want = compare_arrays("y", ref, cand, policy)
    got, _ = sharded("y", ref, cand, policy, [0, 10, 11, 23, 50], rng)
    assert_same(got, want)
    assert [d.index for d in got.disagreements] == [(r,) for r in (3, 9, 10, 22, 23)]
    assert (
        got.mismatched
        == want.mismatched
        == len([r for r in rows if np.argmax(ref[r]) != np.argmax(cand[r])])
    )


def test_labels_disagree_at_their_global_sample() -> None:
    ref = np.arange(30) % 4
    cand = ref.copy()
    cand[[2, 17, 29]] += 1
    policy = TolerancePolicy(kind="decision", min_agreement=0.95)
    want = compare_arrays("y", ref, cand, policy)
    got, _ = sharded("y", ref, cand, policy, [0, 5, 18, 30])
    assert_same(got, want)
    assert [d.index for d in got.disagreements] == [(2,), (17,), (29,)]


def large_pair() -> tuple[np.ndarray, np.ndarray]:
    """200 Ki float64 elements whose differences crowd a few top-16-bit bins (a bin of
    far more than the keep limit: a sub-histogram pass) and some exactly equal ones."""
    rng = np.random.default_rng(11)
    ref = rng.standard_normal((400, 512))
    cand = ref + (1.0 + rng.integers(0, 2**20, ref.shape) * 2.0**-40) * 1e-3
    cand[:50] = ref[:50] + 0.5  # differences many alike: a bin resolved by lo == hi
    cand[3, 3] = np.nan
    return ref, cand


@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_binned_sketches_resolve_by_passes_over_the_shards(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv(kernels.SWITCH, path)
    ref, cand = large_pair()
    policy = TolerancePolicy(kind="allclose", atol=1e-3)
    want = compare_arrays("y", ref, cand, policy, keep_limit=1000)
    got, passes = sharded("y", ref, cand, policy, [0, 77, 77, 200, 333, 400], keep_limit=1000)
    assert_same(got, want)
    diff = np.abs(cand - ref).ravel()
    diff[3 * 512 + 3] = np.inf
    assert got.median_abs_diff == np.quantile(diff, 0.5)
    assert got.p99_abs_diff == np.quantile(diff, 0.99)
    # The distributed passes ran: a target too large to collect took a sub-histogram,
    # then the narrower ones were collected.
    targets = [t for r in passes.requests for t in r["targets"]]
    assert len(passes.requests) >= 2
    assert any(not t["collect"] for t in targets) and any(t["collect"] for t in targets)


def test_the_compiled_pass_on_the_shards_gives_the_numpy_paths_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shards on the compiled pass (and its compiled quantile scans), merged, against the
    whole output on the NumPy path; each shard took the compiled pass."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((64, 3000)).astype(np.float32)
    cand = (ref.view(np.int32) + rng.integers(-3, 4, ref.shape, dtype=np.int32)).view(np.float32)
    cand[5, 5], ref[9, 9], cand[9, 9] = np.nan, np.inf, np.inf
    cand[40, 1] = ref[40, 1] + 1  # the worst element
    started: list[bool | None] = []
    scans: list[bool] = []
    real, real_scan = kernels.FusedPass.__init__, kernels.scan_targets

    def init(this: kernels.FusedPass, *args: Any, **kw: Any) -> None:
        started.append(kw.get("speculate"))
        real(this, *args, **kw)

    def scan(*args: Any, **kw: Any) -> None:
        scans.append(kw.get("whole", True))
        real_scan(*args, **kw)

    for kind in ("allclose", "exact", "ulp"):
        policy = TolerancePolicy(kind=kind, atol=1e-7, rtol=1e-6, max_ulp=2)
        monkeypatch.setenv(kernels.SWITCH, "numpy")
        want = compare_arrays("y", ref, cand, policy, keep_limit=1000)
        monkeypatch.setenv(kernels.SWITCH, "numba")
        started.clear()
        scans.clear()
        with monkeypatch.context() as m:
            m.setattr(kernels.FusedPass, "__init__", init)
            m.setattr(kernels, "scan_targets", scan)
            got, passes = sharded("y", ref, cand, policy, [0, 20, 21, 64], keep_limit=1000)
        assert_same(got, want)
        assert started == [False, False, False]  # each shard compiled, not speculating
        assert passes.requests and scans and not any(scans)  # the shards' scans, compiled


def test_a_lost_or_doubled_shard_is_refused() -> None:
    rng = np.random.default_rng(4)
    ref, cand = data((30, 4), "float64", rng)
    policy = POLICIES["allclose"]

    def part(i: int, j: int) -> PartialComparison:
        return compare_shard(
            "y", ref[i:j], cand[i:j], policy, offset=i * 4, full_shape=ref.shape, keep_limit=5
        )

    with pytest.raises(ValueError, match="no shard holds elements 40 to 79"):
        finish(merge_partials([part(0, 10), part(20, 30)]), refine_over([]))
    with pytest.raises(ValueError, match="two shards hold element 40"):
        merge_partials([part(0, 15), part(10, 30)])
    with pytest.raises(ValueError, match="two shards hold element 0"):
        merge_partials([part(0, 30), part(0, 30)])
    # The passes' answers count every value: a shard answering twice is caught.
    whole = merge_partials([part(0, 10), part(10, 30)])
    twice = refine_over([(ref[:10], cand[:10]), (ref[:10], cand[:10]), (ref[10:], cand[10:])])
    with pytest.raises(ValueError, match="a shard missing, or answering twice"):
        finish(whole, twice)
    with pytest.raises(ValueError, match="a shard missing, or answering twice"):
        finish(whole, refine_over([(ref[10:], cand[10:])]))
    assert_same(
        finish(whole, refine_over([(ref[:10], cand[:10]), (ref[10:], cand[10:])])),
        compare_arrays("y", ref, cand, policy, keep_limit=5),
    )


def test_shards_of_other_outputs_or_settings_do_not_merge() -> None:
    ref = np.zeros((10, 2))
    a = compare_shard("y", ref[:5], ref[:5], offset=0, full_shape=ref.shape)
    b = compare_shard("z", ref[5:], ref[5:], offset=10, full_shape=ref.shape)
    with pytest.raises(ValueError, match="name differs"):
        merge_partials([a, b])
    c = compare_shard(
        "y", ref[5:], ref[5:], TolerancePolicy(kind="exact"), offset=10, full_shape=ref.shape
    )
    with pytest.raises(ValueError, match="policy differs"):
        merge_partials([a, c])


def test_a_shard_must_be_whole_samples_within_the_output() -> None:
    ref = np.zeros((10, 3))
    with pytest.raises(ValueError, match="not whole samples"):
        compare_shard("y", ref[:4], ref[:4], offset=1, full_shape=ref.shape)
    with pytest.raises(ValueError, match="not whole samples"):
        compare_shard("y", ref[:4], ref[:4], offset=27, full_shape=ref.shape)
    with pytest.raises(ValueError, match="not whole samples"):
        compare_shard("y", ref[:4, :2], ref[:4, :2], offset=0, full_shape=ref.shape)


def test_cosine_on_a_1d_output_is_one_row_compared_whole() -> None:
    rng = np.random.default_rng(6)
    ref = rng.standard_normal(50)
    cand = ref + 0.1 * rng.standard_normal(50)
    policy = POLICIES["cosine"]
    with pytest.raises(ValueError, match="compare it whole"):
        compare_shard("y", ref[:20], cand[:20], policy, offset=0, full_shape=ref.shape)
    got, _ = sharded("y", ref, cand, policy, [0, 50])
    assert_same(got, compare_arrays("y", ref, cand, policy))


def test_a_candidate_of_another_shape_fails_as_the_whole_comparison_does() -> None:
    ref = np.zeros((12, 3))
    wider = np.zeros((12, 4))
    policy = POLICIES["allclose"]
    want = compare_arrays("y", ref, wider, policy)
    per = 3
    partials = [
        compare_shard("y", ref[i:j], wider[i:j], policy, offset=i * per, full_shape=ref.shape)
        for i, j in ((0, 5), (5, 12))
    ]
    assert_same(finish(merge_partials(partials)), want)
    # One shard short of a sample: the whole candidate is short of one.
    shorter = compare_arrays("y", ref, ref[:11], policy)
    partials = [
        compare_shard("y", ref[:5], ref[:5], policy, offset=0, full_shape=ref.shape),
        compare_shard("y", ref[5:], ref[5:11], policy, offset=15, full_shape=ref.shape),
    ]
    assert_same(finish(merge_partials(partials)), shorter)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_an_empty_output_and_a_scalar_compare_as_a_whole(kind: str) -> None:
    """Shards of no samples, and a 0-d output in one shard (an empty output failed
    compare_arrays itself before: no value to take a quantile of)."""
    empty = np.zeros((0, 3))
    want = compare_arrays("y", empty, empty, POLICIES[kind])
    assert want.passed and want.median_abs_diff == 0.0
    got, _ = sharded("y", empty, empty, POLICIES[kind], [0, 0, 0])
    assert_same(got, want)
    ref, cand = np.array(1.5), np.array(2.0)
    p = compare_shard("y", ref, cand, POLICIES[kind], offset=0, full_shape=())
    got = finish(merge_partials([PartialComparison.from_bytes(p.to_bytes())]))
    assert_same(got, compare_arrays("y", ref, cand, POLICIES[kind]))


def test_noise_calibrates_every_shard_alike() -> None:
    rng = np.random.default_rng(9)
    ref, cand = data((40, 5), "float64", rng)
    noise = {"train": Noise(max_abs_diff=1e-3, mismatched=3, total=200)}
    policy = TolerancePolicy(kind="allclose", noise_factor=2.0)
    want = compare_arrays("y", ref, cand, policy, noise=noise)
    got, _ = sharded("y", ref, cand, policy, [0, 11, 40], noise=noise)
    assert_same(got, want)
    assert got.atol == 2e-3 and got.cause == want.cause == "nondeterministic"


def test_a_partial_is_plain_data_and_nothing_else_is_read() -> None:
    rng = np.random.default_rng(1)
    ref, cand = data((6, 3, 9, 8), "float32", rng)
    policy = POLICIES["psnr"]
    p = compare_shard("y", ref[:4], cand[:4], policy, offset=0, full_shape=ref.shape, keep_limit=9)
    again = PartialComparison.from_bytes(p.to_bytes())
    assert _plain_partial(again) == _plain_partial(p)
    with np.load(io.BytesIO(p.to_bytes()), allow_pickle=False) as npz:
        assert all(npz[k].dtype.kind in "biuf" for k in npz.files)
    # An object array (a pickle) is refused, as is anything not packed.
    out = io.BytesIO()
    np.savez(out, __json__=np.frombuffer(b"{}", np.uint8), a0=np.array([{}], dtype=object))
    with pytest.raises(ValueError, match="unpack"):
        unpack(out.getvalue())
    with pytest.raises(ValueError, match="unpack"):
        unpack(b"not an npz")
    broken = p.to_dict()
    broken["mismatched"] = "many"
    with pytest.raises(ValueError, match="field 'mismatched'"):
        PartialComparison.from_dict(broken)
    broken = p.to_dict()
    broken["abs"]["zeros"] += 1
    with pytest.raises(ValueError, match="counts do not add up"):
        PartialComparison.from_dict(broken)


def _plain_partial(p: PartialComparison) -> Any:
    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return ("array", str(v.dtype), v.tolist())
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(p.to_dict())
