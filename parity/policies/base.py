"""What every tolerance policy is made of, and the parts policies share.

A policy is a frozen dataclass whose fields are its settings, each declared with `number`
or `integer` (the default, and the bounds a config table must respect), and whose
methods are its rule. `parity.judging.compare` makes one pass over an output block by
block and keeps everything that does not depend on the policy: shapes and dtypes, the
NaN and infinity rules, the difference statistics. Of each comparison it asks the policy
for a `Judge`, shows the judge every block, and takes the judge's `Verdict` at the end.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    import numpy as np

    from parity.comparison import BlockDiff, Disagreement, OutputComparison

Value = float | int | None
_SPEC = "parity.setting"  # the key of a field's `Setting` in its metadata


class SettingError(ValueError):
    """A setting's value is out of its bounds; the message completes `KEY: ...`."""


@dataclass(frozen=True)
class Setting:
    """One setting of a policy, as a config table writes it."""

    name: str
    default: Value
    integer: bool = False  # else a number: an integer written in the config becomes a float
    low: float = 0.0
    high: float = math.inf
    positive: bool = False  # `low` is 0 and 0 itself is refused as well

    @property
    def types(self) -> tuple[type, ...]:
        """The TOML value types the setting accepts."""
        return (int,) if self.integer else (int, float)

    @property
    def what(self) -> str:
        """What the setting must be, for an error message."""
        return "an integer" if self.integer else "a number"

    def check(self, value: float) -> Value:
        """`value` as the policy keeps it; `SettingError` when it is out of bounds."""
        if self.integer:
            if value < self.low:
                raise SettingError(f"must be {self.low:g} or more, got {value}")
            return int(value)
        value = float(value)
        if not math.isfinite(value):  # an infinite tolerance passes anything, NaN nothing
            raise SettingError(f"must be a finite number, got {value:g}")
        if not self.low <= value <= self.high:
            bound = (
                f"between {self.low:g} and {self.high:g}"
                if self.high < math.inf
                else f"{self.low:g} or more"
            )
            raise SettingError(f"must be {bound}, got {value:g}")
        if self.positive and value <= 0:
            raise SettingError("must be positive")
        return value

    def show(self, value: Value) -> str | None:
        """`value` as `describe` writes it; None leaves an unset setting out."""
        if value is None:
            return None
        return str(value) if self.integer else f"{value:g}"


def number(
    default: float | None,
    *,
    low: float = 0.0,
    high: float = math.inf,
    positive: bool = False,
) -> Any:
    """A policy field that is a number setting, between `low` and `high` (or positive)."""
    spec = Setting("", default, low=low, high=high, positive=positive)
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def integer(default: int, *, low: int = 0) -> Any:
    """A policy field that is an integer setting of at least `low`."""
    spec = Setting("", default, integer=True, low=low)
    return dataclasses.field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Output:
    """What a judge knows of an output before it sees the first block."""

    shape: tuple[int, ...]
    reference_dtype: np.dtype
    candidate_dtype: np.dtype

    @property
    def same_dtype(self) -> bool:
        return bool(self.reference_dtype == self.candidate_dtype)

    @property
    def row(self) -> int:
        """Elements per row of the last axis (1 for a scalar or an empty last axis); the
        comparison's blocks always hold whole rows."""
        return self.shape[-1] if self.shape and self.shape[-1] > 0 else 1

    @property
    def total(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Tally:
    """What the comparison counted over every block, for the judge's verdict."""

    total: int  # elements
    mismatched: int  # elements that failed the judge's test or the NaN and infinity rules
    nan_inf: int  # of those, the ones the NaN and infinity rules failed
    max_abs_diff: float


@dataclass(frozen=True)
class Verdict:
    """A policy's judgement of one output. `total` and `mismatched` count `unit`s; None
    keeps the comparison's count of elements. The measures fill the report fields of
    the same name."""

    failed: bool
    reason: str | None = None
    unit: str = "elements"
    total: int | None = None
    mismatched: int | None = None
    max_ulp_diff: int | None = None
    agreement: float | None = None
    psnr_db: float | None = None
    # Any other measure by name, reported in the comparison's `measures`.
    measures: dict[str, float] = dataclasses.field(default_factory=dict)
    # The first rows whose decision differs (the comparison's `disagreements`).
    disagreements: tuple[Disagreement, ...] = ()


def elementwise(tally: Tally, beyond: str, **measures: Any) -> Verdict:
    """The verdict of a rule on single elements: failed when an element fails the rule
    itself (NaN and infinity mismatches have a reason of their own), e.g.
    `3 of 8 elements differ bitwise (max abs diff 0.5)` for `beyond="differ bitwise"`."""
    if tally.mismatched <= tally.nan_inf:
        return Verdict(failed=False, **measures)
    reason = (
        f"{tally.mismatched} of {tally.total} elements {beyond} "
        f"(max abs diff {tally.max_abs_diff:.6g})"
    )
    return Verdict(failed=True, reason=reason, **measures)


class Judge(ABC):
    """One policy's running state over the blocks of one comparison."""

    # Elements the judge reads together (a row it judges whole): an output compared in
    # shards (`parity.judging.partial`) is cut between rows only. 1: element by element.
    row: int = 1

    def see(self, rb: np.ndarray, cb: np.ndarray) -> None:  # noqa: B027 - most judges need nothing
        """Look at a block of the reference and the candidate before the comparison
        computes their difference, which it skips for bitwise-identical blocks."""

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        """Which elements of a block that is not bitwise identical pass (a boolean mask
        shaped as the flat block); the comparison fails NaN and infinity mismatches
        whatever the mask says. By default an element passes only when it equals its
        reference."""
        mask: np.ndarray = d.diff == 0
        return mask

    def fused(self) -> tuple[int, float, float, int] | None:
        """The rule as the compiled pass of `parity.judging.kernels` computes it in place of
        `see` and `test`: (rule, atol, rtol, max_ulp), rule one of its ALLCLOSE, EXACT,
        ULP; None (the default) when only `test` can judge."""
        return None

    def fused_seen(self, max_ulp: int) -> None:  # noqa: B027 - most judges keep nothing
        """What the compiled pass measured that `test` would have kept (the largest ULP
        distance)."""

    def start_at(self, offset: int) -> None:  # noqa: B027 - most judges keep no positions
        """The blocks it will see start at flat index `offset` of the output (a shard's:
        `parity.judging.partial`); 0 unless said."""

    def state(self) -> dict[str, Any]:
        """What it has kept of the blocks seen, as plain data (numbers, lists, strings),
        for `merge` into the judge of another part of the same output; {} by default."""
        return {}

    def merge(self, state: dict[str, Any]) -> None:  # noqa: B027 - most judges keep nothing
        """Add the `state` of a judge that saw other blocks of the same output: afterwards
        its verdict is the one a judge shown both parts' blocks gives (a fresh judge
        merged with a state takes it over)."""

    @abstractmethod
    def verdict(self, tally: Tally) -> Verdict:
        """The judgement, once every block has been seen."""


# The causes of a failure that no setting of a policy can pass (a shape or dtype change, a
# NaN or infinity that moved, an output the policy cannot judge): no advice for them.
FAILS_WHATEVER_THE_SETTING = frozenset({"shape", "dtype", "nan_inf", "policy"})


@dataclass(frozen=True)
class Policy(ABC):
    """A tolerance rule and its settings. Register a subclass in `parity.policies`."""

    name: ClassVar[str]  # as `policy = "..."` names it in a config
    # Whether the rule reads the size of |a - b|: then the worst element and the atol and
    # rtol that would pass are advice on it, and renderers show them. A rule that decides
    # on something else (the classes a row chooses) sets False: those statistics stay in
    # the JSON, but the renderers present what the policy measures instead.
    reads_difference: ClassVar[bool] = True
    # Whether the rule is a bound atol + rtol * |reference| on |a - b|: then the atol and
    # rtol that would pass are advice in its own terms. Any other rule gives its own
    # advice (`would_pass`) or none: "atol >= x" means nothing to a cosine or ULP rule.
    bounds_difference: ClassVar[bool] = False

    @classmethod
    def setting_specs(cls) -> tuple[Setting, ...]:
        """The policy's settings, in the order `describe` writes them."""
        return tuple(
            dataclasses.replace(f.metadata[_SPEC], name=f.name)
            for f in dataclasses.fields(cls)
            if _SPEC in f.metadata
        )

    def settings(self) -> dict[str, Value]:
        """The settings by name (for reports)."""
        return {s.name: getattr(self, s.name) for s in self.setting_specs()}

    def describe(self) -> str:
        """The policy as a user would write it, e.g. `allclose(atol=1e-06, rtol=0)`."""
        shown = []
        for s in self.setting_specs():
            text = s.show(getattr(self, s.name))
            if text is not None:
                shown.append(f"{s.name}={text}")
        return f"{self.name}({', '.join(shown)})" if shown else self.name

    def tolerances(self) -> tuple[float, float]:
        """The (atol, rtol) the report states and measures `atol_to_pass` and
        `rtol_to_pass` against: (0, 0) unless the rule bounds |a - b| itself."""
        return 0.0, 0.0

    def calibrated(self, noise: float) -> Self:
        """The policy for a calibrated check in which an environment's two runs differed
        by at most `noise` (|a - b|); unchanged unless a setting scales with noise."""
        return self

    def unfit(self, output: Output) -> str | None:
        """Why the policy cannot judge this output at all, if it cannot."""
        return None

    @abstractmethod
    def judge(self, output: Output) -> Judge:
        """A fresh judge for one comparison of `output`."""

    def distance(self, c: OutputComparison) -> float | None:
        """How far `c` is from this policy's tolerance as a ratio (above 1 fails), or
        None when the policy has no graded distance, only pass or fail."""
        return None

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        """The policy's own measure of `c` as (label, value) for renderers, if any."""
        return None

    @classmethod
    def would_pass(cls, c: OutputComparison) -> str | None:
        """For a policy that is not an atol/rtol bound (`bounds_difference` False): the
        setting that would pass `c`, in its own terms, e.g. `min_agreement ≤ 0.9375`, in
        place of the atol and rtol renderers give for allclose; None when no setting of
        the policy would (exact) or it has none to give."""
        return None
