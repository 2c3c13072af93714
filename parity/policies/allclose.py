"""`allclose`: `|a - b| <= atol + rtol * |b|` element by element, `b` from the reference
environment (as `numpy.isclose`, so deliberately not symmetric).

With `noise_factor = k` and a calibrated check (`--calibrate`), atol becomes at least k
times the largest difference either environment shows between two runs of itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Self

from parity.policies.base import Judge, Output, Policy, Tally, Verdict, elementwise, number

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import BlockDiff, OutputComparison


@dataclass(frozen=True)
class Allclose(Policy):
    """Every element within atol + rtol * |reference|."""

    name = "allclose"
    bounds_difference = True
    atol: float = number(0.0)
    rtol: float = number(0.0)
    noise_factor: float | None = number(None)

    def tolerances(self) -> tuple[float, float]:
        return self.atol, self.rtol

    def calibrated(self, noise: float) -> Self:
        if self.noise_factor is None:
            return self
        return replace(self, atol=max(self.atol, self.noise_factor * noise))

    def judge(self, output: Output) -> Judge:
        return _Close(self)

    def distance(self, c: OutputComparison) -> float | None:
        # The comparison's own atol and rtol: calibration may have raised atol.
        if c.atol > 0:
            return c.atol_to_pass / c.atol
        if c.rtol > 0:
            return c.rtol_to_pass / c.rtol
        return None


class _Close(Judge):
    def __init__(self, policy: Allclose) -> None:
        self.policy = policy

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        import numpy as np

        with np.errstate(invalid="ignore"):
            ok: np.ndarray = d.diff <= self.policy.atol + self.policy.rtol * d.abs_b
        return ok

    def fused(self) -> tuple[int, float, float, int] | None:
        return 0, self.policy.atol, self.policy.rtol, 0  # kernels.ALLCLOSE

    def verdict(self, tally: Tally) -> Verdict:
        p = self.policy
        return elementwise(tally, f"beyond atol={p.atol:g}, rtol={p.rtol:g}")
