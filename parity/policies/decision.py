"""`decision`: the classes each row chooses agree in at least `min_agreement` of the rows:
for classifiers, whose scores may move while the answer stays. The report counts rows, not
elements, and names the first rows that disagree with both environments' classes.

Two shapes of output are decisions:

- scores with a class axis last (`(rows, classes)`, or more leading axes): a row's
  decision is its top-k classes (argmax for k = 1);
- per-sample labels, a 1-D integer (or bool) output (`(rows,)`), or one with the labels
  as a column (`(rows, 1)`, as many models return class ids): each element is one row's
  predicted class id, compared as it is. `top_k` > 1 cannot apply to a label; a float
  output of one score per row (`(rows,)` or `(rows, 1)`) has no class axis to decide on
  (an argmax over one class always agrees). Both are policy errors that name the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parity.policies.base import Judge, Output, Policy, Tally, Verdict, integer, number

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import Disagreement, OutputComparison

KEEP = 5  # disagreeing rows named in the report


def labels(output: Output) -> bool:
    """Whether `output` is per-sample labels: integers or bools, 1-D or one column."""
    return _one_per_row(output.shape) and output.reference_dtype.kind in "biu"


def _one_per_row(shape: tuple[int, ...]) -> bool:
    """Whether an output of `shape` holds one value per row: `(rows,)` or `(rows, 1)`."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


@dataclass(frozen=True)
class Decision(Policy):
    """The same top-k classes (or the same label) in at least `min_agreement` of the rows."""

    name = "decision"
    reads_difference = False
    top_k: int = integer(1, low=1)
    min_agreement: float = number(1.0, high=1.0)

    def unfit(self, output: Output) -> str | None:
        if not output.shape:
            return "decision policy needs an output with a class axis; this one is a scalar"
        if labels(output):
            if self.top_k > 1:
                return (
                    f"decision policy top_k={self.top_k} on labels: this {_shape(output)} "
                    "integer output holds one class id per row, so only top_k = 1 applies; "
                    "set top_k = 1 "
                    "for it, or output the class scores (rows, classes) to judge the top-k"
                )
            return None
        if _one_per_row(output.shape):
            return (
                f"decision policy on a {_shape(output)} {output.reference_dtype} output is "
                "ambiguous: one score per row has no class axis to decide on. Use policy = "
                "'allclose' for scores, or output them with the class axis last (rows, "
                "classes); labels are an integer output of shape (rows,) or (rows, 1)"
            )
        if self.top_k > output.shape[-1]:
            return f"decision policy top_k={self.top_k}, but the last axis has {output.shape[-1]}"
        return None

    def judge(self, output: Output) -> Judge:
        judged = self.unfit(output) is None
        if labels(output):
            return _Rows(self, output.shape, 1, judged=judged, labels=True)
        return _Rows(self, output.shape[:-1], output.row, judged=judged, labels=False)

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        return None if c.agreement is None else ("agreement", f"{c.agreement:.6g}")

    @classmethod
    def would_pass(cls, c: OutputComparison) -> str | None:
        if c.agreement is None:
            return None
        # Rounded down, so that the bound shown passes: 0.916667 is shown as 0.9166.
        return f"min_agreement ≤ {math.floor(c.agreement * 1e4) / 1e4:g}"


class _Rows(Judge):
    """Counts rows whose decisions agree; `shape` is the rows' (the output's leading axes,
    or the labels' own) and `row` the elements of one row (1 for labels)."""

    def __init__(
        self, policy: Decision, shape: tuple[int, ...], row: int, *, judged: bool, labels: bool
    ) -> None:
        self.policy = policy
        self.labels = labels
        self.shape = shape
        self.row = row
        self.judged = judged  # else unfit: the comparison says why
        self.first = 0  # the row the first block starts at (a shard's: `start_at`)
        self.rows = 0
        self.agree = 0
        self.disagreements: list[Disagreement] = []

    def start_at(self, offset: int) -> None:
        self.first = offset // self.row

    def state(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "agree": self.agree,
            "disagreements": [
                [list(d.index), list(d.reference), list(d.candidate)] for d in self.disagreements
            ],
        }

    def merge(self, state: dict[str, Any]) -> None:
        from parity.comparison import Disagreement

        self.rows += int(state["rows"])
        self.agree += int(state["agree"])
        theirs = [
            Disagreement(
                index=tuple(int(i) for i in index),
                reference=tuple(int(c) for c in reference),
                candidate=tuple(int(c) for c in candidate),
            )
            for index, reference, candidate in state["disagreements"]
        ]
        # The first rows of both parts (each kept its first KEEP): in the output's order.
        both = sorted([*self.disagreements, *theirs], key=lambda d: d.index)
        self.disagreements = both[:KEEP]

    def see(self, rb: np.ndarray, cb: np.ndarray) -> None:
        import numpy as np

        if not self.judged:
            return
        k = self.policy.top_k
        r = rb.reshape(-1, self.row)
        c = cb.reshape(-1, self.row)
        if self.labels:  # each row's class is its value
            agree = r[:, 0] == c[:, 0]
        elif k == 1:
            agree = np.argmax(r, axis=1) == np.argmax(c, axis=1)
        else:
            agree = (_top_set(r, k) == _top_set(c, k)).all(axis=1)
        if len(self.disagreements) < KEEP and not agree.all():
            # Imported here: a config's policies are read before a check's workers start,
            # the comparison's values only once they ran.
            from parity.comparison import Disagreement

            for i in np.flatnonzero(~agree)[: KEEP - len(self.disagreements)]:
                index = np.unravel_index(self.first + self.rows + int(i), self.shape)
                self.disagreements.append(
                    Disagreement(
                        index=tuple(int(j) for j in index),
                        reference=_decided(r[i], k, self.labels),
                        candidate=_decided(c[i], k, self.labels),
                    )
                )
        self.rows += r.shape[0]
        self.agree += int(np.count_nonzero(agree))

    def verdict(self, tally: Tally) -> Verdict:
        p = self.policy
        if not self.judged:  # unfit: the comparison gives the reason, there is no agreement
            return Verdict(failed=False, unit="rows", total=0, mismatched=0)
        mismatched = self.rows - self.agree
        agreement = self.agree / self.rows if self.rows else 1.0
        failed = agreement < p.min_agreement
        reason = None
        if failed:
            which = "label" if self.labels else "argmax" if p.top_k == 1 else f"top-{p.top_k}"
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
            disagreements=tuple(self.disagreements),
        )


def _shape(output: Output) -> str:
    """`1-D` or `(rows, 1)`: how the messages name a one-value-per-row output."""
    return "1-D" if len(output.shape) == 1 else "(rows, 1)"


def _top_set(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's top-k classes as a sorted set (to compare rows, not orders)."""
    import numpy as np

    return np.sort(np.argpartition(-x.astype(np.float64), k - 1, axis=1)[:, :k], axis=1)


def _decided(row: np.ndarray, k: int, labels: bool) -> tuple[int, ...]:
    """One row's decision for the report: its label, or its top-k classes best first."""
    import numpy as np

    if labels:
        return (int(row[0]),)
    order = np.argsort(-row.astype(np.float64), kind="stable")
    return tuple(int(j) for j in order[:k])
