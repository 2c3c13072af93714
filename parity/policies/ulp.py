"""`ulp`: floating-point elements at most `max_ulp` units in the last place apart (0.0 and
-0.0 are 0 ULP apart); integers, and floats of two different dtypes, at most `max_ulp`
apart in value. Complex outputs have no ULP distance and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parity.policies.base import (
    FAILS_WHATEVER_THE_SETTING,
    Judge,
    Output,
    Policy,
    Tally,
    Verdict,
    elementwise,
    integer,
)

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import BlockDiff, OutputComparison


@dataclass(frozen=True)
class Ulp(Policy):
    """At most `max_ulp` units in the last place apart."""

    name = "ulp"
    max_ulp: int = integer(0)

    def unfit(self, output: Output) -> str | None:
        if output.reference_dtype.kind == "c":
            return "ulp policy applies to real numbers; this output is complex"
        return None

    def judge(self, output: Output) -> Judge:
        return _Distance(self, output.same_dtype)

    def distance(self, c: OutputComparison) -> float | None:
        if self.max_ulp > 0 and c.max_ulp_diff is not None:
            return c.max_ulp_diff / self.max_ulp
        return None

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        return None if c.max_ulp_diff is None else ("ULP", str(c.max_ulp_diff))

    @classmethod
    def would_pass(cls, c: OutputComparison) -> str | None:
        if c.max_ulp_diff is None or c.cause in FAILS_WHATEVER_THE_SETTING:
            return None
        return f"max_ulp ≥ {c.max_ulp_diff}"


class _Distance(Judge):
    def __init__(self, policy: Ulp, same_dtype: bool) -> None:
        self.policy = policy
        self.same_dtype = same_dtype
        self.max_ulp = 0

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        dist = self._ulp(rb, cb, d.diff)
        if d.bad is not None:
            dist[d.bad] = 0  # a NaN or infinity that moved is failed, not measured
        if dist.size:
            self.max_ulp = max(self.max_ulp, int(dist.max()))
        ok: np.ndarray = dist <= self.policy.max_ulp
        return ok

    def fused(self) -> tuple[int, float, float, int] | None:
        return (2, 0.0, 0.0, self.policy.max_ulp) if self.same_dtype else None  # kernels.ULP

    def fused_seen(self, max_ulp: int) -> None:
        self.max_ulp = max(self.max_ulp, max_ulp)

    def state(self) -> dict[str, Any]:
        return {"max_ulp": self.max_ulp}

    def merge(self, state: dict[str, Any]) -> None:
        self.max_ulp = max(self.max_ulp, int(state["max_ulp"]))

    def verdict(self, tally: Tally) -> Verdict:
        beyond = f"more than {self.policy.max_ulp} ULP apart (max {self.max_ulp} ULP)"
        return elementwise(tally, beyond, max_ulp_diff=self.max_ulp)

    def _ulp(self, rb: np.ndarray, cb: np.ndarray, diff: np.ndarray) -> np.ndarray:
        """Units in the last place between elements (integers: their difference)."""
        import numpy as np

        if not (self.same_dtype and rb.dtype.kind == "f"):
            return np.where(np.isfinite(diff), diff, 0).astype(np.uint64)
        bits = rb.dtype.itemsize * 8
        top = np.uint64(1 << (bits - 1))
        u = np.dtype(f"u{rb.dtype.itemsize}")

        def ordered(x: np.ndarray) -> np.ndarray:
            raw = x.view(u).astype(np.uint64)
            mag = raw & (top - np.uint64(1))
            # Sign-magnitude to one ordered line; -0.0 and 0.0 land on the same point.
            return np.where(raw & top, top - mag, top + mag)

        ka, kb = ordered(cb), ordered(rb)
        return np.asarray(np.where(ka > kb, ka - kb, kb - ka))
