"""The comparison rules users rely on: every policy, the NaN/Inf/dtype/shape rules, the
statistics a tolerance is set from, and that block-wise comparison changes nothing."""

from __future__ import annotations

import dataclasses
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.arrays import NpzMember
from parity.comparison import Noise, OutputComparison
from parity.judging.compare import compare_arrays, measure_noise
from parity.policies import KINDS, TolerancePolicy

floats = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=16),
)
finite_floats = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
    elements=st.floats(-1e6, 1e6, width=32),
)
policies = st.one_of(
    st.builds(
        TolerancePolicy,
        kind=st.just("allclose"),
        atol=st.floats(0, 10),
        rtol=st.floats(0, 1),
    ),
    st.builds(TolerancePolicy, kind=st.just("exact")),
    st.builds(TolerancePolicy, kind=st.just("ulp"), max_ulp=st.integers(0, 1000)),
    st.builds(
        TolerancePolicy,
        kind=st.just("decision"),
        top_k=st.just(1),
        min_agreement=st.floats(0, 1),
    ),
    st.builds(
        TolerancePolicy,
        kind=st.just("psnr"),
        min_db=st.floats(-50, 200),
        data_range=st.one_of(st.none(), st.floats(1e-3, 1e3)),
    ),
)


def assert_same(x: OutputComparison, y: OutputComparison) -> None:
    """Equal in every field; sums of blocks (means, PSNR) up to the order of summation."""
    sums = {k: getattr(y, k) for k in ("mean_abs_diff", "mean_rel_diff", "psnr_db")}
    for key, value in sums.items():
        assert getattr(x, key) == (value if value is None else pytest.approx(value, rel=1e-12))
    assert dataclasses.replace(x, **sums) == y


def _loosen(policy: TolerancePolicy, amount: float) -> TolerancePolicy:
    """The same policy, looser by `amount` (0..1) in every setting it reads."""
    return dataclasses.replace(
        policy,
        atol=policy.atol + 10 * amount,
        rtol=policy.rtol + amount,
        max_ulp=policy.max_ulp + int(1000 * amount),
        min_agreement=policy.min_agreement * (1 - amount),
        min_db=policy.min_db - 100 * amount,
    )


# -- properties -------------------------------------------------------------------------


@given(floats, policies)
def test_every_policy_passes_an_output_compared_with_itself(
    a: np.ndarray, policy: TolerancePolicy
) -> None:
    result = compare_arrays("y", a, a.copy(), policy)
    if policy.kind == "decision" and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
        # One float per row, (rows,) or (rows, 1), has no class axis: a policy error,
        # however equal the values.
        assert result.cause == "policy", result.reason
        return
    assert result.passed, result.reason
    assert result.mismatched == 0
    assert result.max_abs_diff == 0 and result.p99_abs_diff == 0


@settings(max_examples=200)
@given(finite_floats, st.data(), policies, st.floats(0, 1))
def test_a_looser_tolerance_never_turns_a_pass_into_a_fail(
    a: np.ndarray, data: st.DataObject, policy: TolerancePolicy, amount: float
) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(-1e6, 1e6, width=32)))
    strict = compare_arrays("y", a, b, policy)
    loose = compare_arrays("y", a, b, _loosen(policy, amount))
    if policy.kind in ("allclose", "ulp"):
        assert loose.mismatched <= strict.mismatched
    if strict.passed:
        assert loose.passed, loose.reason


@settings(max_examples=200)
@given(floats, st.data(), policies)
def test_symmetric_policies_judge_both_directions_alike(
    a: np.ndarray, data: st.DataObject, policy: TolerancePolicy
) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(width=16)))
    if policy.kind == "allclose":
        policy = dataclasses.replace(policy, rtol=0.0)  # |b| in the formula breaks symmetry
    if policy.kind == "psnr" and policy.data_range is None:
        policy = dataclasses.replace(policy, data_range=1.0)  # else the range is b's
    forward = compare_arrays("y", a, b, policy)
    backward = compare_arrays("y", b, a, policy)
    assert forward.passed == backward.passed
    assert forward.mismatched == backward.mismatched
    assert forward.max_abs_diff == backward.max_abs_diff


@given(floats, st.data(), policies)
def test_a_nan_or_infinity_that_moves_fails_every_policy(
    a: np.ndarray, data: st.DataObject, policy: TolerancePolicy
) -> None:
    i = data.draw(st.integers(0, a.size - 1))
    special = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    b = a.copy()
    flat = b.reshape(-1)
    original = flat[i]
    flat[i] = special
    if (np.isnan(original) and np.isnan(special)) or original == special:
        return  # nothing moved
    result = compare_arrays("y", a, b, policy)
    assert not result.passed
    assert result.cause in ("nan_inf", "policy")
    assert "NaN/Inf positions or signs differ" in (result.reason or "")


@given(finite_floats, st.data())
def test_atol_and_rtol_to_pass_are_enough_to_pass(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(-1e6, 1e6, width=32)))
    atol = data.draw(st.floats(0, 1))
    result = compare_arrays("y", a, b, TolerancePolicy(atol=0, rtol=0.001))
    assert compare_arrays("y", a, b, TolerancePolicy(atol=result.atol_to_pass, rtol=0.001)).passed
    result = compare_arrays("y", a, b, TolerancePolicy(atol=atol))
    if math.isfinite(result.rtol_to_pass):
        # Up to rounding: (d - atol) / |b| * |b| may land one ulp under d - atol.
        rtol = result.rtol_to_pass * (1 + 1e-9)
        assert compare_arrays("y", a, b, TolerancePolicy(atol=atol, rtol=rtol)).passed


@settings(max_examples=150)
@given(finite_floats, st.data(), policies, st.integers(1, 40), st.integers(0, 30))
def test_comparing_block_by_block_gives_the_same_result_as_all_at_once(
    a: np.ndarray, data: st.DataObject, policy: TolerancePolicy, block: int, keep: int
) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(-1e6, 1e6, width=32)))
    whole = compare_arrays("y", a, b, policy)
    # Tiny blocks, and quantiles found by repeated passes instead of kept values.
    blocked = compare_arrays("y", a, b, policy, block_elements=block, keep_limit=keep)
    assert_same(blocked, whole)


@given(finite_floats, st.data())
def test_median_and_p99_are_numpys_quantiles(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(-1e6, 1e6, width=32)))
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b.astype(np.float64)))
    for keep in (1 << 20, 3):
        result = compare_arrays("y", b, a, keep_limit=keep, block_elements=5)
        assert result.median_abs_diff == np.quantile(diff, 0.5)
        assert result.p99_abs_diff == np.quantile(diff, 0.99)
        if np.isfinite(rel).all():
            assert result.median_rel_diff == np.quantile(rel, 0.5)
            assert result.p99_rel_diff == np.quantile(rel, 0.99)


# -- each policy, by example --------------------------------------------------------------


def test_exact_tells_signed_zeros_apart_and_allclose_does_not() -> None:
    ref, cand = np.array([0.0, 1.0]), np.array([-0.0, 1.0])
    exact = compare_arrays("y", ref, cand, TolerancePolicy(kind="exact"))
    assert not exact.passed
    assert exact.reason == "1 of 2 elements differ bitwise (max abs diff 0)"
    assert compare_arrays("y", ref, cand).passed
    assert compare_arrays("y", ref, cand, TolerancePolicy(kind="ulp")).passed


def test_ulp_counts_representable_numbers_between_values() -> None:
    ref = np.array([1.0, -2.0, 1e-30], dtype=np.float32)
    cand = ref.copy()
    for _ in range(3):
        cand = np.nextafter(cand, np.float32(np.inf))
    result = compare_arrays("y", ref, cand, TolerancePolicy(kind="ulp", max_ulp=2))
    assert not result.passed
    assert result.max_ulp_diff == 3
    assert (
        result.reason
        == "3 of 3 elements more than 2 ULP apart (max 3 ULP) (max abs diff 3.57628e-07)"
    )
    assert compare_arrays("y", ref, cand, TolerancePolicy(kind="ulp", max_ulp=3)).passed
    # Across zero: the smallest subnormals on either side are 2 ULP apart.
    tiny = np.array([np.finfo(np.float64).smallest_subnormal])
    across = compare_arrays("y", tiny, -tiny, TolerancePolicy(kind="ulp", max_ulp=1))
    assert across.max_ulp_diff == 2


def test_decision_agreement_on_class_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((100, 10)).astype(np.float32)
    moved = scores + rng.normal(0, 1e-4, scores.shape).astype(np.float32)
    moved[7, scores[7].argmin()] = 2.0  # row 7's least likely class now wins
    assert not compare_arrays("y", scores, moved).passed
    strict = compare_arrays("y", scores, moved, TolerancePolicy(kind="decision"))
    assert (strict.passed, strict.mismatched, strict.total, strict.unit) == (False, 1, 100, "rows")
    assert strict.agreement == 0.99
    assert strict.reason == "argmax agreement 0.99 (1 of 100 rows differ), below min_agreement 1"
    lenient = TolerancePolicy(kind="decision", min_agreement=0.99)
    assert compare_arrays("y", scores, moved, lenient).passed
    top3 = compare_arrays("y", scores, moved, TolerancePolicy(kind="decision", top_k=3))
    assert top3.mismatched == 1  # row 7's set of three best changed too


def test_decision_top_k_larger_than_the_class_axis_is_a_clear_failure() -> None:
    result = compare_arrays(
        "y", np.zeros((2, 3)), np.zeros((2, 3)), TolerancePolicy(kind="decision", top_k=4)
    )
    assert not result.passed
    assert result.cause == "policy"
    assert result.reason == "decision policy top_k=4, but the last axis has 3"


def labels_with_eight_changed() -> tuple[np.ndarray, np.ndarray]:
    """128 class ids (one per sample) and the same with 8 of them moved to another class."""
    ref = (np.arange(128) * 7 % 10).astype(np.int64)
    cand = ref.copy()
    changed = [5, 9, 30, 31, 64, 90, 100, 127]
    cand[changed] = (cand[changed] + 3) % 10
    return ref, cand


def test_decision_on_1d_integers_compares_labels_sample_by_sample() -> None:
    ref, cand = labels_with_eight_changed()
    strict = compare_arrays("label", ref, cand, TolerancePolicy(kind="decision"))
    assert (strict.passed, strict.cause) == (False, "tolerance")
    assert (strict.mismatched, strict.total, strict.unit) == (8, 128, "rows")
    assert strict.agreement == 120 / 128 == 0.9375
    assert strict.reason == "label agreement 0.9375 (8 of 128 rows differ), below min_agreement 1"
    # The first five disagreeing samples, each with both labels.
    assert [(d.index, d.reference, d.candidate) for d in strict.disagreements] == [
        ((i,), (int(ref[i]),), (int(cand[i]),)) for i in (5, 9, 30, 31, 64)
    ]
    assert strict.disagreements[0].describe("train", "infer") == "[5]: 5 (train) vs 8 (infer)"
    lenient = TolerancePolicy(kind="decision", min_agreement=0.9)
    assert compare_arrays("label", ref, cand, lenient).passed
    assert not compare_arrays(
        "label", ref, cand, TolerancePolicy(kind="decision", min_agreement=0.94)
    ).passed
    # Block by block (blocks of 3 labels) the same judgement, disagreements included.
    blocked = compare_arrays("label", ref, cand, TolerancePolicy(kind="decision"), block_elements=3)
    assert_same(blocked, strict)
    # Bools and unsigned integers are labels too; identical labels agree fully.
    same = compare_arrays(
        "label", ref.astype(np.uint8), ref.astype(np.uint8), TolerancePolicy(kind="decision")
    )
    assert (same.passed, same.agreement, same.total) == (True, 1.0, 128)
    flags = compare_arrays("flag", ref > 4, cand > 4, TolerancePolicy(kind="decision"))
    assert flags.mismatched == int(np.count_nonzero((ref > 4) != (cand > 4))) > 0


def test_a_dtype_change_keeps_its_cause_beside_a_policy_error() -> None:
    scores = np.linspace(0, 1, 8, dtype=np.float32)
    result = compare_arrays(
        "p", scores, scores.astype(np.float64), TolerancePolicy(kind="decision")
    )
    assert (result.passed, result.cause) == (False, "dtype")
    assert result.reason is not None
    assert result.reason.startswith("dtype differs: float32 (reference) vs float64; ")
    assert "decision policy on a 1-D float32 output is ambiguous" in result.reason


def test_top_k_on_labels_is_a_policy_error_naming_the_fix() -> None:
    ref, cand = labels_with_eight_changed()
    result = compare_arrays("label", ref, cand, TolerancePolicy(kind="decision", top_k=3))
    assert (result.passed, result.cause, result.agreement) == (False, "policy", None)
    assert result.reason is not None
    assert result.reason.startswith("decision policy top_k=3 on labels")
    assert "set top_k = 1" in result.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decision_on_1d_floats_is_a_policy_error(dtype: type) -> None:
    scores = np.linspace(0, 1, 128).astype(dtype)
    # Even identical: one score per row is ambiguous, never silently a single argmax.
    result = compare_arrays("p", scores, scores.copy(), TolerancePolicy(kind="decision"))
    assert (result.passed, result.cause, result.agreement) == (False, "policy", None)
    assert result.reason is not None
    assert f"1-D {np.dtype(dtype)} output is ambiguous" in result.reason
    assert "policy = 'allclose'" in result.reason and "class axis" in result.reason


def test_decision_names_the_first_disagreeing_rows_over_the_leading_axes() -> None:
    scores = np.tile(np.array([0.1, 0.5, 0.3, 0.2]), (2, 3, 1))  # class 1 first, then 2
    moved = scores.copy()
    moved[1, 2] = [0.6, 0.5, 0.3, 0.2]  # class 0 now wins: top-2 {0, 1} instead of {1, 2}
    moved[0, 1] = [0.1, 0.3, 0.5, 0.2]  # 1 and 2 swap: the same top-2 set
    top1 = compare_arrays("y", scores, moved, TolerancePolicy(kind="decision"))
    assert [(d.index, d.reference, d.candidate) for d in top1.disagreements] == [
        ((0, 1), (1,), (2,)),
        ((1, 2), (1,), (0,)),
    ]
    top2 = compare_arrays("y", scores, moved, TolerancePolicy(kind="decision", top_k=2))
    assert top2.mismatched == 1
    assert [(d.index, d.reference, d.candidate) for d in top2.disagreements] == [
        ((1, 2), (1, 2), (0, 1)),
    ]
    assert top2.disagreements[0].describe("a", "b") == "[1, 2]: [1, 2] (a) vs [0, 1] (b)"


def test_psnr_of_an_image_off_by_one_level_everywhere() -> None:
    ref = np.full((2, 32, 32), 100, dtype=np.uint8)
    cand = ref + np.uint8(1)
    # MSE 1 over a 0..255 range: 20 * log10(255) = 48.13 dB.
    result = compare_arrays("y", ref, cand, TolerancePolicy(kind="psnr", min_db=48))
    assert result.passed
    assert result.psnr_db == pytest.approx(48.1308, abs=1e-4)
    failed = compare_arrays("y", ref, cand, TolerancePolicy(kind="psnr", min_db=49))
    assert failed.reason == "PSNR 48.13 dB, below min_db 49"


def test_psnr_of_huge_differences_fails_and_never_overflows() -> None:
    # Squared, 2e200 is inf: the PSNR was NaN, which no min_db caught, so this passed.
    ref = np.array([1e200, -1e200, 0.0])
    cand = np.array([-1e200, 1e200, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way either
        result = compare_arrays("y", ref, cand, TolerancePolicy(kind="psnr", min_db=40))
    # range 2e200, MSE (2e200)² · 2/3: 10 · log10(3/2) dB
    assert result.psnr_db == pytest.approx(10 * np.log10(1.5))
    assert result.reason == "PSNR 1.761 dB, below min_db 40"
    # A range of ±1e308 (its width overflows a float) and a tiny difference: a high PSNR.
    ref = np.array([1e308, -1e308, 0.0])
    tiny = compare_arrays("y", ref, ref + np.array([0, 0, 1e-300]), TolerancePolicy(kind="psnr"))
    assert tiny.passed and tiny.psnr_db is not None and 12000 < tiny.psnr_db < math.inf


def test_dtype_change_fails_under_every_policy_and_says_so() -> None:
    ref = np.ones((2, 2), dtype=np.float32)  # rows of classes: every policy can judge it
    for kind in KINDS:
        result = compare_arrays(
            "y", ref, ref.astype(np.float64), TolerancePolicy(kind=kind, atol=1)
        )
        assert not result.passed and result.cause == "dtype"
        assert result.reason == "dtype differs: float32 (reference) vs float64"
        assert result.max_abs_diff == 0


def test_shape_change_fails_and_says_so() -> None:
    result = compare_arrays("y", np.zeros((2, 3)), np.zeros((3, 2)), TolerancePolicy(atol=1))
    assert not result.passed and result.cause == "shape"
    assert result.reason == "shape differs: (2, 3) (reference) vs (3, 2)"


def test_formula_uses_the_reference_magnitude() -> None:
    ref = np.array([100.0, 1.0])
    cand = np.array([100.9, 1.9])
    # 0.9 <= 0 + 0.01 * 100 passes; 0.9 <= 0 + 0.01 * 1 does not.
    result = compare_arrays("y", ref, cand, TolerancePolicy(rtol=0.01))
    assert result.mismatched == 1
    assert not result.passed
    assert result.rtol_to_pass == pytest.approx(0.9)


def test_nan_must_be_at_the_same_positions() -> None:
    ref = np.array([1.0, np.nan, 3.0])
    assert compare_arrays("y", ref, ref.copy()).passed
    moved = np.array([np.nan, 2.0, 3.0])
    result = compare_arrays("y", ref, moved, TolerancePolicy(atol=1e9))
    assert not result.passed
    assert (result.nan_mismatched, result.mismatched, result.cause) == (2, 2, "nan_inf")


def test_infinities_must_match_in_sign() -> None:
    ref = np.array([np.inf, -np.inf])
    assert compare_arrays("y", ref, ref.copy()).passed
    flipped = compare_arrays("y", ref, -ref, TolerancePolicy(atol=1e300))
    assert flipped.mismatched == 2
    assert (
        compare_arrays(
            "y", np.array([np.inf, 1.0]), np.array([1e308, np.inf]), TolerancePolicy(rtol=1)
        ).mismatched
        == 2
    )


def test_uint8_differences_do_not_wrap_around() -> None:
    ref = np.array([0, 255], dtype=np.uint8)
    cand = np.array([1, 254], dtype=np.uint8)
    result = compare_arrays("y", ref, cand)
    assert result.max_abs_diff == 1
    assert result.mismatched == 2
    assert compare_arrays("y", ref, cand, TolerancePolicy(atol=1)).passed


def test_statistics_name_the_worst_element_and_what_would_pass() -> None:
    ref = np.zeros((2, 3))
    cand = ref.copy()
    cand[1, 2] = 0.5
    cand[0, 0] = 0.1
    result = compare_arrays("y", ref, cand, TolerancePolicy(atol=0.2))
    assert result.worst_index == (1, 2)
    assert (result.worst_reference, result.worst_candidate) == (0.0, 0.5)
    assert result.mismatched == 1
    assert result.mismatched_fraction == pytest.approx(1 / 6)
    assert result.atol_to_pass == pytest.approx(0.5)
    assert result.rtol_to_pass == math.inf  # the reference is 0 there: no rtol helps
    assert result.mean_abs_diff == pytest.approx(0.1)
    assert result.median_abs_diff == 0


def test_histogram_counts_differences_by_power_of_two() -> None:
    ref = np.zeros(8)
    cand = np.array([0, 0, 0, 0.3, 0.4, 1.5, 6.0, np.inf])
    h = compare_arrays("y", ref, cand).histogram
    assert h is not None
    assert h.zero == 3 and h.inf == 1
    assert h.bins == ((0.25, 0.5, 2), (0.5, 1.0, 0), (1.0, 2.0, 1), (2.0, 4.0, 0), (4.0, 8.0, 1))


def test_heatmap_shows_where_an_image_differs() -> None:
    ref = np.zeros((3, 128, 96), dtype=np.float32)
    cand = ref.copy()
    cand[2, 100, 10] = 0.25
    heat = compare_arrays("y", ref, cand, block_elements=96 * 7).heatmap
    assert heat is not None and (heat.height, heat.width) == (128, 96)
    grid = np.array(heat.values)
    assert grid.shape == (64, 64)
    assert grid[50, 7] == 0.25  # row 100 of 128 -> cell 50 of 64; column 10 of 96 -> 7
    assert np.count_nonzero(grid) == 1
    assert compare_arrays("y", np.zeros(10), np.ones(10)).heatmap is None


def test_heatmap_of_a_channels_last_image_covers_its_height_and_width() -> None:
    ref = np.zeros((2, 40, 24, 3), dtype=np.float32)
    cand = ref.copy()
    cand[1, 30, 5, 2] = 0.5
    # blocks of 100 elements would split pixel rows: they are widened to whole rows
    c = compare_arrays("rgb", ref, cand, block_elements=100)
    heat = c.heatmap
    assert heat is not None and (heat.height, heat.width) == (40, 24)
    grid = np.array(heat.values)
    assert grid.shape == (40, 24) and grid[30, 5] == 0.5 and np.count_nonzero(grid) == 1
    assert c.worst_index == (1, 30, 5, 2) and c.max_abs_diff == 0.5
    # not images: logits and tabular rows have none
    for shape in [(128, 10), (512, 6)]:
        assert compare_arrays("t", np.zeros(shape), np.ones(shape)).heatmap is None


# -- calibration --------------------------------------------------------------------------


def test_noise_is_how_two_runs_of_one_environment_differ() -> None:
    run1 = np.array([1.0, 2.0, 3.0])
    run2 = np.array([1.0, 2.0 + 1e-6, 3.0])
    noise = measure_noise(run1, run2)
    assert noise == Noise(max_abs_diff=pytest.approx(1e-6), mismatched=1, total=3)
    assert measure_noise(run1, run1.copy()).mismatched == 0


def test_a_nondeterministic_failure_is_reported_as_such_not_as_drift() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    cand = ref + 3e-6
    noise = {"train": Noise(2e-6, 3, 3), "infer": Noise(0.0, 0, 3)}
    result = compare_arrays("y", ref, cand, noise=noise)
    assert not result.passed and result.nondeterministic
    assert result.cause == "nondeterministic"
    assert (result.reason or "").startswith(
        "nondeterministic, not drift: train (max abs diff 2e-06 between two runs)"
    )
    # A tolerance of k times the measured noise: 2 x 2e-6 covers a 3e-6 difference.
    scaled = compare_arrays("y", ref, cand, TolerancePolicy(noise_factor=2), noise=noise)
    assert scaled.passed and scaled.atol == pytest.approx(4e-6)
    assert scaled.policy_description == "allclose(atol=4e-06, rtol=0, noise_factor=2)"


# -- outputs read from archives -----------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_outputs_are_read_from_the_archive_block_by_block(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((5, 40, 30)).astype(">f4")  # big-endian on disk: converted per block
    cand = ref.astype(np.float32) + rng.normal(0, 1e-5, ref.shape).astype(np.float32)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "ref.npz", y=ref)
    save(tmp_path / "cand.npz", y=np.asfortranarray(cand))  # Fortran order is read whole
    a, b = NpzMember(tmp_path / "ref.npz", "y.npy"), NpzMember(tmp_path / "cand.npz", "y.npy")
    assert a.shape == (5, 40, 30) and a.dtype == np.float32
    policy = TolerancePolicy(atol=2e-5)
    from_files = compare_arrays("y", a, b, policy, block_elements=1000, keep_limit=10)
    in_memory = compare_arrays("y", ref.astype(np.float32), cand, policy)
    assert_same(from_files, in_memory)


def test_a_truncated_archive_member_is_refused(tmp_path: Path) -> None:
    from parity.errors import HostileOutputError

    path = tmp_path / "o.npz"
    with zipfile.ZipFile(path, "w") as zf, zf.open("y.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1000,)}
        )
        f.write(b"\0" * 100)
    member = NpzMember(path, "y.npy")
    with pytest.raises(HostileOutputError, match="truncated"):
        compare_arrays("y", member, np.zeros(1000, np.float32))


def test_progress_is_reported_after_every_block() -> None:
    seen: list[tuple[int, int]] = []
    compare_arrays(
        "y",
        np.zeros((10, 7)),
        np.ones((10, 7)),
        block_elements=20,
        on_block=lambda *a: seen.append(a),
    )
    # Blocks hold whole rows: 2 rows of 7 = 14 elements each, the last one 14 too.
    assert seen == [(14, 70), (28, 70), (42, 70), (56, 70), (70, 70)]


def test_decision_on_a_column_of_integers_compares_labels_sample_by_sample() -> None:
    # (rows, 1): class ids as a column, as many models return them. An argmax over the
    # one "class" of each row would always agree; as labels, 8 of 128 rows differ.
    ref, cand = labels_with_eight_changed()
    column = compare_arrays("label", ref[:, None], cand[:, None], TolerancePolicy(kind="decision"))
    flat = compare_arrays("label", ref, cand, TolerancePolicy(kind="decision"))
    assert (column.passed, column.cause, column.unit) == (False, "tolerance", "rows")
    assert (column.mismatched, column.total, column.agreement) == (8, 128, 0.9375)
    assert column.reason == flat.reason
    assert column.reason is not None and column.reason.startswith("label agreement 0.9375")
    # each disagreement names the row (and the column's one index) and both labels
    assert [d.index for d in column.disagreements] == [(5, 0), (9, 0), (30, 0), (31, 0), (64, 0)]
    assert [(d.reference, d.candidate) for d in column.disagreements] == [
        (d.reference, d.candidate) for d in flat.disagreements
    ]
    same = compare_arrays("label", ref[:, None], ref[:, None], TolerancePolicy(kind="decision"))
    assert (same.passed, same.agreement, same.total) == (True, 1.0, 128)
    topk = compare_arrays(
        "label", ref[:, None], cand[:, None], TolerancePolicy(kind="decision", top_k=2)
    )
    assert (topk.passed, topk.cause) == (False, "policy")
    assert topk.reason is not None and "(rows, 1) integer output holds one class id" in topk.reason


def test_decision_on_a_column_of_floats_is_a_policy_error() -> None:
    scores = np.linspace(0, 1, 8, dtype=np.float32)[:, None]
    moved = scores[::-1].copy()
    result = compare_arrays("p", scores, moved, TolerancePolicy(kind="decision"))
    assert (result.passed, result.cause) == (False, "policy")  # not an argmax that agrees
    assert result.reason is not None
    assert "decision policy on a (rows, 1) float32 output is ambiguous" in result.reason


def _archives(tmp_path: Path, n: int) -> tuple[NpzMember, NpzMember, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    ref = rng.random(n)
    cand = ref + rng.normal(0, 1e-9, n)
    np.savez(tmp_path / "ref.npz", y=ref)
    np.savez(tmp_path / "cand.npz", y=cand)
    return (
        NpzMember(tmp_path / "ref.npz", "y.npy"),
        NpzMember(tmp_path / "cand.npz", "y.npy"),
        ref,
        cand,
    )


def _readers() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "parity-read-ahead"]


def test_reading_ahead_gives_the_blocks_in_order_and_stops_with_its_reader(
    tmp_path: Path,
) -> None:
    """The compiled pass reads an archive's next blocks in a thread while it compares
    (`parity.arrays.read_ahead`): the same pairs as reading them in turn, and a caller that
    stops early leaves no reader behind."""
    from parity.arrays import read_ahead

    a, b, ref, cand = _archives(tmp_path, 10_000)
    pairs = list(read_ahead(a, b, 1024))
    assert [p[0].size for p in pairs] == [1024] * 9 + [784]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pairs]), ref)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pairs]), cand)
    ahead = read_ahead(a, b, 1024)
    next(ahead)
    ahead.close()  # the caller stops after one pair
    assert _readers() == []


def test_a_corrupt_member_read_ahead_fails_where_its_block_comes(tmp_path: Path) -> None:
    """A member whose last bytes no longer match its CRC: the pairs before it come, then
    the reader's error, raised in the caller."""
    from parity.arrays import read_ahead
    from parity.errors import HostileOutputError

    a, b, _, _ = _archives(tmp_path, 10_000)
    with zipfile.ZipFile(tmp_path / "cand.npz") as zf:
        data = zf.read("y.npy")
    raw = bytearray((tmp_path / "cand.npz").read_bytes())
    raw[bytes(raw).index(data) + len(data) - 1] ^= 0xFF  # its last data byte
    (tmp_path / "cand.npz").write_bytes(bytes(raw))
    got = []
    with pytest.raises(HostileOutputError, match="Bad CRC-32"):
        for pair in read_ahead(a, b, 1024):
            got.append(pair)
    assert len(got) == 9  # the CRC is checked as the last block is read
    assert _readers() == []
