"""Tolerance policies: the rule one output of the candidate must meet against the reference.

- `exact`: every element bitwise identical (so -0.0 differs from 0.0, as do NaN payloads).
- `ulp`: floating-point elements at most `max_ulp` units in the last place apart (0.0 and
  -0.0 are 0 ULP apart); integers at most `max_ulp` apart.
- `allclose`: `|a - b| <= atol + rtol * |b|` element by element, `b` from the reference
  environment (as `numpy.isclose`, so deliberately not symmetric). With `noise_factor = k`
  and a calibrated check (`--calibrate`), atol becomes at least k times the largest
  difference either environment shows between two runs of itself.
- `decision`: the top-k indices along the last axis agree (argmax when k = 1) in at least
  `min_agreement` of the rows: for classifiers, whose scores may move while the answer
  stays.
- `psnr`: peak signal-to-noise ratio of the candidate against the reference at least
  `min_db`; `data_range` defaults to the dtype's range for integers (255 for uint8) and
  to the reference's max - min for floats.

Under every policy shapes and dtypes must be equal (a dtype change is how NumPy's NEP 50
promotion drift shows), and NaN and infinities must sit at the same positions with the
same signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PolicyKind = Literal["exact", "ulp", "allclose", "decision", "psnr"]
KINDS: tuple[PolicyKind, ...] = ("exact", "ulp", "allclose", "decision", "psnr")
# The settings each policy reads (anything else in its config table is a mistake).
SETTINGS: dict[str, tuple[str, ...]] = {
    "exact": (),
    "ulp": ("max_ulp",),
    "allclose": ("atol", "rtol", "noise_factor"),
    "decision": ("top_k", "min_agreement"),
    "psnr": ("min_db", "data_range"),
}


@dataclass(frozen=True)
class TolerancePolicy:
    """The rule one output must meet; only the settings of `kind` matter."""

    kind: PolicyKind = "allclose"
    atol: float = 0.0
    rtol: float = 0.0
    noise_factor: float | None = None
    max_ulp: int = 0
    top_k: int = 1
    min_agreement: float = 1.0
    min_db: float = 60.0
    data_range: float | None = None

    def describe(self) -> str:
        """The policy as a user would write it, e.g. `allclose(atol=1e-06, rtol=0)`."""
        values = {
            "atol": f"{self.atol:g}",
            "rtol": f"{self.rtol:g}",
            "noise_factor": None if self.noise_factor is None else f"{self.noise_factor:g}",
            "max_ulp": str(self.max_ulp),
            "top_k": str(self.top_k),
            "min_agreement": f"{self.min_agreement:g}",
            "min_db": f"{self.min_db:g}",
            "data_range": None if self.data_range is None else f"{self.data_range:g}",
        }
        shown = [f"{k}={values[k]}" for k in SETTINGS[self.kind] if values[k] is not None]
        return f"{self.kind}({', '.join(shown)})" if shown else self.kind

    def settings(self) -> dict[str, float | int | None]:
        """The settings of this policy's kind, by name (for reports)."""
        return {k: getattr(self, k) for k in SETTINGS[self.kind]}
