"""`decision`: the top-k indices along the last axis agree (argmax when k = 1) in at least
`min_agreement` of the rows: for classifiers, whose scores may move while the answer
stays. The report counts rows, not elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.policies.base import Judge, Output, Policy, Tally, Verdict, integer, number

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import OutputComparison


@dataclass(frozen=True)
class Decision(Policy):
    """The same top-k classes in at least `min_agreement` of the rows."""

    name = "decision"
    top_k: int = integer(1, low=1)
    min_agreement: float = number(1.0, high=1.0)

    def unfit(self, output: Output) -> str | None:
        if not output.shape:
            return "decision policy needs an output with a class axis; this one is a scalar"
        if self.top_k > output.shape[-1]:
            return f"decision policy top_k={self.top_k}, but the last axis has {output.shape[-1]}"
        return None

    def judge(self, output: Output) -> Judge:
        return _Rows(self, output.row)

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        return None if c.agreement is None else ("agreement", f"{c.agreement:.6g}")


class _Rows(Judge):
    def __init__(self, policy: Decision, row: int) -> None:
        self.policy = policy
        self.row = row
        self.rows = 0
        self.agree = 0

    def see(self, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        k = self.policy.top_k
        if k > self.row:
            return  # unfit: the comparison says why
        r = rb.reshape(-1, self.row)
        c = cb.reshape(-1, self.row)
        self.rows += r.shape[0]
        if k == 1:
            agree = np.argmax(r, axis=1) == np.argmax(c, axis=1)
        else:
            top_r = np.sort(np.argpartition(-r.astype(np.float64), k - 1, axis=1)[:, :k], axis=1)
            top_c = np.sort(np.argpartition(-c.astype(np.float64), k - 1, axis=1)[:, :k], axis=1)
            agree = (top_r == top_c).all(axis=1)
        self.agree += int(np.count_nonzero(agree))

    def verdict(self, tally: Tally) -> Verdict:
        p = self.policy
        mismatched = self.rows - self.agree
        agreement = self.agree / self.rows if self.rows else 1.0
        failed = agreement < p.min_agreement
        reason = None
        if failed:
            which = "argmax" if p.top_k == 1 else f"top-{p.top_k}"
            reason = (
                f"{which} agreement {agreement:.6g} ({mismatched} of {self.rows} rows differ), "
                f"below min_agreement {p.min_agreement:g}"
            )
        return Verdict(
            failed=failed,
            reason=reason,
            unit="rows",
            total=self.rows,
            mismatched=mismatched,
            agreement=agreement,
        )
