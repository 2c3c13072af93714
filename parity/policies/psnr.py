"""`psnr`: peak signal-to-noise ratio of the candidate against the reference at least
`min_db`; `data_range` defaults to the dtype's range for integers (255 for uint8) and to
the reference's max - min for floats (of magnitudes for complex outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
        self.sum_sq = 0.0
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

        finite = np.isfinite(d.diff)
        self.sum_sq += float(np.square(d.diff[finite]).sum())
        return super().test(rb, cb, d)

    def verdict(self, tally: Tally) -> Verdict:
        psnr = self._psnr(tally.total)
        failed = psnr < self.policy.min_db
        reason = f"PSNR {psnr:.4g} dB, below min_db {self.policy.min_db:g}" if failed else None
        return Verdict(failed=failed, reason=reason, psnr_db=psnr)

    def _psnr(self, total: int) -> float:
        import numpy as np

        if self.policy.data_range is not None:
            span = self.policy.data_range
        elif self.ref_dtype.kind in "iub":
            info = np.iinfo(self.ref_dtype) if self.ref_dtype.kind != "b" else None
            span = float(info.max - info.min) if info else 1.0
        else:
            span = self.ref_hi - self.ref_lo if self.ref_hi > self.ref_lo else 1.0
        mse = self.sum_sq / total if total else 0.0
        return math.inf if mse == 0 else 10 * math.log10(span * span / mse)
