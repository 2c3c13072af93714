"""`cosine`: each row along the last axis points the same way in both environments: its
cosine similarity to the reference's row is at least `min_cosine`. For embeddings, whose
consumers (nearest-neighbour search, ranking) read directions, not coordinates. The
report counts rows, and measures the smallest similarity of any row.

Two all-zero rows are the same direction (similarity 1); a zero row against a non-zero
one has none (similarity 0). Rows with NaN or infinities fail (the comparison's NaN and
infinity rules name them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parity.policies.base import (
    FAILS_WHATEVER_THE_SETTING,
    Judge,
    Output,
    Policy,
    Tally,
    Verdict,
    number,
)

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import OutputComparison


@dataclass(frozen=True)
class Cosine(Policy):
    """Every row's cosine similarity to the reference row at least `min_cosine`."""

    name = "cosine"
    min_cosine: float = number(0.9999, low=-1.0, high=1.0)

    def unfit(self, output: Output) -> str | None:
        if not output.shape:
            return "cosine policy needs vectors along the last axis; this output is a scalar"
        if "c" in (output.reference_dtype.kind, output.candidate_dtype.kind):
            return "cosine policy applies to real numbers; this output is complex"
        return None

    def judge(self, output: Output) -> Judge:
        return _Similarity(self, output.row, judged=self.unfit(output) is None)

    def distance(self, c: OutputComparison) -> float | None:
        # How much of the allowed turn (1 - min_cosine) the worst row used.
        lowest = c.measures.get("min_cosine")
        if lowest is None or self.min_cosine >= 1.0:
            return None
        return (1.0 - lowest) / (1.0 - self.min_cosine)

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        lowest = c.measures.get("min_cosine")
        return None if lowest is None else ("min cosine", f"{lowest:.6g}")

    @classmethod
    def would_pass(cls, c: OutputComparison) -> str | None:
        lowest = c.measures.get("min_cosine")
        if lowest is None or c.cause in FAILS_WHATEVER_THE_SETTING:
            return None
        # Rounded down, so that the bound shown passes: 0.9987654 is shown as 0.998765.
        return f"min_cosine ≤ {math.floor(lowest * 1e6) / 1e6:g}"


class _Similarity(Judge):
    def __init__(self, policy: Cosine, row: int, judged: bool) -> None:
        self.policy = policy
        self.row = row
        self.judged = judged  # else unfit: the comparison says why
        self.rows = 0
        self.below = 0
        self.lowest = 1.0

    def see(self, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        if not self.judged:
            return
        r = rb.reshape(-1, self.row).astype(np.float64)
        c = cb.reshape(-1, self.row).astype(np.float64)
        with np.errstate(all="ignore"):
            # Scaled by each row's largest magnitude first, so squares neither overflow
            # nor vanish for rows of very large or very small values.
            r = r / _scale(r)
            c = c / _scale(c)
            norms = np.sqrt((r * r).sum(axis=1)) * np.sqrt((c * c).sum(axis=1))
            similarity = (r * c).sum(axis=1) / norms
        both_zero = ~r.any(axis=1) & ~c.any(axis=1)
        similarity = np.where(both_zero, 1.0, np.where(norms == 0, 0.0, similarity))
        finite = np.isfinite(similarity)
        self.rows += int(similarity.size)
        self.below += int(np.count_nonzero(~finite | (similarity < self.policy.min_cosine)))
        if finite.any():
            self.lowest = min(self.lowest, float(similarity[finite].min()))

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "below": self.below, "lowest": self.lowest}

    def merge(self, state: dict[str, Any]) -> None:
        self.rows += int(state["rows"])
        self.below += int(state["below"])
        self.lowest = min(self.lowest, float(state["lowest"]))

    def verdict(self, tally: Tally) -> Verdict:
        p = self.policy
        failed = self.below > 0
        reason = None
        if failed:
            reason = (
                f"{self.below} of {self.rows} rows below cosine similarity {p.min_cosine:g} "
                f"(min {self.lowest:.6g})"
            )
        return Verdict(
            failed=failed,
            reason=reason,
            unit="rows",
            total=self.rows,
            mismatched=self.below,
            measures={"min_cosine": self.lowest},
        )


def _scale(x: np.ndarray) -> np.ndarray:
    """Each row's largest magnitude (1 for an all-zero row), as a column."""
    import numpy as np

    peak = np.abs(x).max(axis=1, keepdims=True)
    return np.where((peak == 0) | ~np.isfinite(peak), 1.0, peak)
