"""Compare one output of two environments under an explicit tolerance.

An element of the candidate `a` matches the reference `b` when

    |a - b| <= atol + rtol * |b|

(`b` comes from the reference environment, so the test is deliberately not symmetric, as
in `numpy.isclose`). NaN matches only NaN at the same position; an infinity matches only
the same infinity. The output passes when shapes and dtypes are equal and every element
matches. Values are compared in float64, so integer outputs are compared exactly up to 2**53.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance of one output (0, 0 means bit-exact values)."""

    atol: float = 0.0
    rtol: float = 0.0


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
    max_rel_diff: float = 0.0
    worst_index: tuple[int, ...] | None = None
    worst_reference: float | None = None
    worst_candidate: float | None = None
    atol_to_pass: float = 0.0

    @property
    def mismatched_fraction(self) -> float:
        """Mismatched elements as a fraction of all elements."""
        return self.mismatched / self.total if self.total else 0.0


def compare_arrays(
    name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance
) -> OutputComparison:
    """Compare `candidate` against `reference` element by element under `tolerance`."""
    import numpy as np

    ref_shape, cand_shape = tuple(reference.shape), tuple(candidate.shape)
    result = functools.partial(
        OutputComparison,
        name=name,
        reference_dtype=str(reference.dtype),
        candidate_dtype=str(candidate.dtype),
        reference_shape=ref_shape,
        candidate_shape=cand_shape,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
    )
    if ref_shape != cand_shape:
        return result(
            passed=False,
            reason=f"shape differs: {ref_shape} (reference) vs {cand_shape}",
            total=int(reference.size),
            mismatched=int(reference.size),
        )
    if reference.dtype == candidate.dtype and _same_bytes(reference, candidate):
        # Bitwise identical (NaNs included): every statistic is zero; skip the float math.
        return result(passed=True, reason=None, total=int(reference.size), mismatched=0)
    b = reference.astype(np.float64, copy=False)
    a = candidate.astype(np.float64, copy=False)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    nan_bad = nan_a != nan_b
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
        same_inf = np.isinf(a) & np.isinf(b) & (a == b)
        # An infinity matches only the same infinity, whatever the tolerance.
        inf_bad = (np.isinf(a) | np.isinf(b)) & ~same_inf
        diff[same_inf | (nan_a & nan_b)] = 0.0
        diff[nan_bad | inf_bad] = np.inf
        ok = diff <= tolerance.atol + tolerance.rtol * np.abs(b)
        ok[(nan_a & nan_b) | same_inf] = True
        ok[inf_bad] = False
    mismatched = int(ok.size - np.count_nonzero(ok))
    finite = np.isfinite(diff)
    abs_b = np.abs(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / abs_b)
    max_abs = float(diff.max()) if diff.size else 0.0
    worst = (
        tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        if diff.size
        else None
    )
    # The smallest atol that would pass with this rtol: max over elements of diff - rtol*|b|.
    with np.errstate(invalid="ignore"):
        slack = np.where(np.isinf(diff), np.inf, diff - tolerance.rtol * np.where(finite, abs_b, 0))
    atol_to_pass = float(max(0.0, slack.max())) if slack.size else 0.0
    reason = None
    dtype_differs = reference.dtype != candidate.dtype
    if dtype_differs:
        reason = f"dtype differs: {reference.dtype} (reference) vs {candidate.dtype}"
    elif mismatched:
        reason = (
            f"{mismatched} of {ok.size} elements beyond atol={tolerance.atol:g}, "
            f"rtol={tolerance.rtol:g} (max abs diff {max_abs:.6g})"
        )
    return result(
        passed=not dtype_differs and mismatched == 0,
        reason=reason,
        total=int(ok.size),
        mismatched=mismatched,
        nan_mismatched=int(np.count_nonzero(nan_bad)),
        max_abs_diff=max_abs,
        mean_abs_diff=float(diff[finite].mean()) if finite.any() else 0.0,
        max_rel_diff=float(rel.max()) if rel.size else 0.0,
        worst_index=worst,
        worst_reference=float(b[worst]) if worst is not None else None,
        worst_candidate=float(a[worst]) if worst is not None else None,
        atol_to_pass=atol_to_pass,
    )


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes."""
    import numpy as np

    if a.size == 0:
        return True
    flat_a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    flat_b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return bool(np.array_equal(flat_a, flat_b))
