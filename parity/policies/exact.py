"""`exact`: every element bitwise identical, so -0.0 differs from 0.0, as do NaN payloads.

Outputs of different dtypes have no bits to compare; there (the dtype change fails the
output anyway) elements are compared by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.policies.base import Judge, Output, Policy, Tally, Verdict, elementwise

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import BlockDiff


@dataclass(frozen=True)
class Exact(Policy):
    """Every element bitwise identical."""

    name = "exact"

    def judge(self, output: Output) -> Judge:
        return _Bitwise(output.same_dtype)


class _Bitwise(Judge):
    def __init__(self, same_dtype: bool) -> None:
        self.same_dtype = same_dtype

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        return bitwise_equal(rb, cb) if self.same_dtype else super().test(rb, cb, d)

    def fused(self) -> tuple[int, float, float, int] | None:
        return (1, 0.0, 0.0, 0) if self.same_dtype else None  # kernels.EXACT

    def verdict(self, tally: Tally) -> Verdict:
        return elementwise(tally, "differ bitwise")


def bitwise_equal(rb: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Which elements of two blocks of one dtype hold the same bytes."""
    import numpy as np

    size = rb.dtype.itemsize
    if size in (1, 2, 4, 8):
        u = np.dtype(f"u{size}")
        return np.asarray(rb.view(u) == cb.view(u))
    # Wider elements (complex128, longdouble) compare as rows of 8-byte words.
    return np.asarray(
        (rb.view(np.uint64).reshape(rb.size, -1) == cb.view(np.uint64).reshape(cb.size, -1)).all(
            axis=1
        )
    )
