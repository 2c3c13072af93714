"""The comparison rule users rely on: |a - b| <= atol + rtol * |b|, NaN and dtype rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.compare import Tolerance, compare_arrays

floats = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
tolerances = st.builds(
    Tolerance,
    atol=st.floats(0, 10, allow_nan=False),
    rtol=st.floats(0, 1, allow_nan=False),
)


@given(floats, tolerances)
def test_an_output_compared_with_itself_passes(a: np.ndarray, tol: Tolerance) -> None:
    result = compare_arrays("y", a, a.copy(), tol)
    assert result.passed, result.reason
    assert result.mismatched == 0


@settings(max_examples=200)
@given(floats, st.data(), tolerances, st.floats(0, 10), st.floats(0, 1))
def test_a_looser_tolerance_never_turns_a_pass_into_a_fail(
    a: np.ndarray, data: st.DataObject, tol: Tolerance, extra_atol: float, extra_rtol: float
) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(width=32)))
    looser = Tolerance(tol.atol + extra_atol, tol.rtol + extra_rtol)
    strict = compare_arrays("y", a, b, tol)
    loose = compare_arrays("y", a, b, looser)
    assert loose.mismatched <= strict.mismatched
    if strict.passed:
        assert loose.passed


@given(floats, st.data())
def test_atol_to_pass_is_enough_to_pass(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(hnp.arrays(dtype=a.dtype, shape=a.shape, elements=st.floats(-1e6, 1e6, width=32)))
    a = np.where(np.isfinite(a), a, 0).astype(a.dtype)
    result = compare_arrays("y", a, b, Tolerance(0, 0))
    again = compare_arrays("y", a, b, Tolerance(result.atol_to_pass, 0))
    assert again.passed


def test_formula_uses_the_reference_magnitude() -> None:
    ref = np.array([100.0, 1.0])
    cand = np.array([100.9, 1.9])
    # 0.9 <= 0 + 0.01 * 100 passes; 0.9 <= 0 + 0.01 * 1 does not.
    result = compare_arrays("y", ref, cand, Tolerance(0, 0.01))
    assert result.mismatched == 1
    assert result.worst_index == (1,) or result.max_abs_diff == pytest.approx(0.9)
    assert not result.passed


def test_nan_must_be_at_the_same_positions() -> None:
    ref = np.array([1.0, np.nan, 3.0])
    assert compare_arrays("y", ref, ref.copy(), Tolerance()).passed
    moved = np.array([np.nan, 2.0, 3.0])
    result = compare_arrays("y", ref, moved, Tolerance(atol=1e9))
    assert not result.passed
    assert result.nan_mismatched == 2
    assert result.mismatched == 2


def test_infinities_must_match_in_sign() -> None:
    ref = np.array([np.inf, -np.inf])
    assert compare_arrays("y", ref, ref.copy(), Tolerance()).passed
    flipped = compare_arrays("y", ref, -ref, Tolerance(atol=1e300))
    assert flipped.mismatched == 2


def test_dtype_change_fails_and_says_so() -> None:
    ref = np.ones(4, dtype=np.float32)
    result = compare_arrays("y", ref, ref.astype(np.float64), Tolerance(1, 1))
    assert not result.passed
    assert result.reason == "dtype differs: float32 (reference) vs float64"
    assert result.max_abs_diff == 0


def test_shape_change_fails_and_says_so() -> None:
    result = compare_arrays("y", np.zeros((2, 3)), np.zeros((3, 2)), Tolerance(1, 1))
    assert not result.passed
    assert result.reason == "shape differs: (2, 3) (reference) vs (3, 2)"


def test_uint8_differences_do_not_wrap_around() -> None:
    ref = np.array([0, 255], dtype=np.uint8)
    cand = np.array([1, 254], dtype=np.uint8)
    result = compare_arrays("y", ref, cand, Tolerance())
    assert result.max_abs_diff == 1
    assert result.mismatched == 2
    assert compare_arrays("y", ref, cand, Tolerance(atol=1)).passed


def test_statistics_name_the_worst_element() -> None:
    ref = np.zeros((2, 3))
    cand = ref.copy()
    cand[1, 2] = 0.5
    cand[0, 0] = 0.1
    result = compare_arrays("y", ref, cand, Tolerance(atol=0.2))
    assert result.worst_index == (1, 2)
    assert result.worst_candidate == 0.5
    assert result.mismatched == 1
    assert result.atol_to_pass == pytest.approx(0.5)


def test_a_finite_value_never_matches_an_infinity() -> None:
    result = compare_arrays(
        "y", np.array([np.inf, 1.0]), np.array([1e308, np.inf]), Tolerance(0, 1)
    )
    assert result.mismatched == 2


def test_signed_zeros_are_equal_values_though_not_equal_bytes() -> None:
    result = compare_arrays("y", np.array([0.0, 1.0]), np.array([-0.0, 1.0]), Tolerance())
    assert result.passed and result.max_abs_diff == 0


def test_non_contiguous_identical_outputs_pass() -> None:
    ref = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    assert compare_arrays("y", ref, ref.copy(), Tolerance()).passed
