"""`psnr`: peak signal-to-noise ratio of the candidate against the reference at least
`min_db`; `data_range` defaults to the dtype's range for integers (255 for uint8) and to
the reference's max - min for floats (of magnitudes for complex outputs).
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

    from parity.comparison import BlockDiff, OutputComparison


@dataclass(frozen=True)
class Psnr(Policy):
    """A peak signal-to-noise ratio of at least `min_db`."""

    name = "psnr"
    min_db: float = number(60.0, low=-math.inf)
    data_range: float | None = number(None, positive=True)

    def judge(self, output: Output) -> Judge:
        return _Noise(self, output.reference_dtype)

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        return None if c.psnr_db is None else ("PSNR", f"{c.psnr_db:.4g} dB")

    @classmethod
    def would_pass(cls, c: OutputComparison) -> str | None:
        if c.psnr_db is None or math.isinf(c.psnr_db) or c.cause in FAILS_WHATEVER_THE_SETTING:
            return None
        # Rounded down, so that the bound shown passes: 24.8457 dB is shown as 24.84.
        return f"min_db ≤ {math.floor(c.psnr_db * 100) / 100:g}"


class _Noise(Judge):
    def __init__(self, policy: Psnr, ref_dtype: np.dtype) -> None:
        self.policy = policy
        self.ref_dtype = ref_dtype
        # The sum of squared differences as scale² · ssq, rescaled as larger differences
        # come (as BLAS's nrm2 does): squaring 1e200 would overflow to inf, and
        # span² / inf gave 0, then a math domain error, or a NaN that passed every min_db.
        self.scale = 0.0
        self.ssq = 0.0
        self.ref_lo = math.inf
        self.ref_hi = -math.inf

    def see(self, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        # The range comes from every block, also those the comparison skips as identical.
        if self.policy.data_range is None and rb.dtype.kind in "fc":
            finite = rb[np.isfinite(rb)]
            values = np.abs(finite) if rb.dtype.kind == "c" else finite
            if values.size:
                self.ref_lo = min(self.ref_lo, float(values.min()))
                self.ref_hi = max(self.ref_hi, float(values.max()))

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        import numpy as np

        diffs = d.diff[np.isfinite(d.diff)]
        largest = float(np.abs(diffs).max()) if diffs.size else 0.0
        if largest > 0:
            ssq = float(np.square(diffs / largest).sum())
            if largest > self.scale:
                self.ssq = self.ssq * (self.scale / largest) ** 2 + ssq
                self.scale = largest
            else:
                self.ssq += ssq * (largest / self.scale) ** 2
        return super().test(rb, cb, d)

    def state(self) -> dict[str, Any]:
        return {"scale": self.scale, "ssq": self.ssq, "ref_lo": self.ref_lo, "ref_hi": self.ref_hi}

    def merge(self, state: dict[str, Any]) -> None:
        # The range exactly; the sum of squares up to its order of summation (its last bits).
        self.ref_lo = min(self.ref_lo, float(state["ref_lo"]))
        self.ref_hi = max(self.ref_hi, float(state["ref_hi"]))
        scale, ssq = float(state["scale"]), float(state["ssq"])
        if scale > self.scale:
            self.ssq = self.ssq * (self.scale / scale) ** 2 + ssq
            self.scale = scale
        elif scale > 0:
            self.ssq += ssq * (scale / self.scale) ** 2

    def verdict(self, tally: Tally) -> Verdict:
        psnr = self._psnr(tally.total)
        failed = psnr < self.policy.min_db
        reason = f"PSNR {psnr:.4g} dB, below min_db {self.policy.min_db:g}" if failed else None
        return Verdict(failed=failed, reason=reason, psnr_db=psnr)

    def _psnr(self, total: int) -> float:
        import numpy as np

        if self.policy.data_range is not None:
            span_db = 20 * math.log10(self.policy.data_range)
        elif self.ref_dtype.kind in "iub":
            info = np.iinfo(self.ref_dtype) if self.ref_dtype.kind != "b" else None
            span_db = 20 * math.log10(float(info.max - info.min)) if info else 0.0
        elif self.ref_hi > self.ref_lo:  # halves: the range of ±1e308 does not overflow
            span_db = 20 * (math.log10(self.ref_hi / 2 - self.ref_lo / 2) + math.log10(2))
        else:
            span_db = 0.0
        if self.scale == 0 or not total:
            return math.inf
        # 10·log10(span² / mse), mse = scale² · ssq / total, in logarithms: nothing overflows
        return span_db - 20 * math.log10(self.scale) - 10 * math.log10(self.ssq / total)
