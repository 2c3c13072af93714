"""What comparing one output found: `OutputComparison` (the verdict, the statistics and
the evidence to set a tolerance from), with its `Histogram`, `Heatmap`, `Columns`,
`Pictures` and `Noise`; and
`BlockDiff`, the difference of one block that every policy's judge is shown.

Values only: `parity.judging.compare` computes them, the policies (`parity.policies`)
read them, the report carries them and the renderers format them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Histogram:
    """How many elements' absolute differences fall in each power-of-two range."""

    zero: int  # elements with no difference
    bins: tuple[tuple[float, float, int], ...]  # [low, high) and count, contiguous
    inf: int  # infinite differences (NaN or infinity on one side only)


@dataclass(frozen=True)
class Heatmap:
    """Where an image-like output (`parity.judging.pictures.image_layout`) differs: the
    largest |a - b| in each cell of a grid over its two spatial axes (height, width),
    taken over the samples and channels."""

    height: int
    width: int
    values: tuple[tuple[float, ...], ...]  # rows x columns


COLUMN_LIMIT = 64  # a 2-D output with more columns has no per-column view


@dataclass(frozen=True)
class Columns:
    """A 2-D output (samples x columns: logits, tabular, embeddings) column by column: the
    largest |a - b| in each column, and how many of its elements are mismatched (fail the
    policy's element test or the NaN and infinity rules; for the row-wise policies,
    whose test is equality, the elements that differ)."""

    max_abs_diff: tuple[float, ...]
    mismatched: tuple[int, ...]


@dataclass(frozen=True)
class Pictures:
    """One sample of an image-like value as both environments computed it, drawn small:
    the reference's and the candidate's image on one shared scale, and |a - b| per pixel.

    Pixels are 8-bit, row-major, `rows` x `columns`: one byte each (grey) or three (RGB);
    0 is `low` and 255 is `high`, the smallest and largest finite value of the two
    samples' drawn channels (NaN and -inf drawn as `low`, inf as `high`). When the value
    is larger than the pictures, each pixel is the mean of its block, and the difference
    the largest in its block. Rendered into the HTML report only, never into the JSON."""

    sample: int  # the sample's index in the input set
    layout: str  # "grey", "rgb", "rgba" (alpha not drawn) or "feature map"
    channel: int | None  # for a feature map: the channel drawn (the two differ most in it)
    channels: int  # the value's channel count (1 for a 2-D sample)
    height: int  # the value's spatial size
    width: int
    rows: int  # the pictures' size (smaller than height x width when downsampled)
    columns: int
    low: float
    high: float
    reference: bytes
    candidate: bytes
    # |a - b| per pixel, the largest over its channels (RGB and alpha) and block; inf
    # where NaN or an infinity sits on one side only.
    difference: tuple[tuple[float, ...], ...]
    nonfinite: int = 0  # NaN and infinite values among the two samples' drawn channels

    @property
    def colour(self) -> bool:
        """Whether the pixels are RGB (three bytes each) rather than grey."""
        return self.layout in ("rgb", "rgba")

    @property
    def downsampled(self) -> bool:
        return (self.rows, self.columns) != (self.height, self.width)


@dataclass(frozen=True)
class Noise:
    """How much one environment disagrees with itself between two runs of one output."""

    max_abs_diff: float
    mismatched: int  # elements not bitwise identical between the runs
    total: int


@dataclass(frozen=True)
class Disagreement:
    """One row whose decision differs: its index over the output's leading axes (for
    per-sample labels, the sample's), and the classes each environment chose there (the
    top-k, best first; one class id for labels)."""

    index: tuple[int, ...]
    reference: tuple[int, ...]
    candidate: tuple[int, ...]

    def describe(self, reference: str, candidate: str) -> str:
        """E.g. `[3]: 7 (train) vs 2 (infer)`; top-k classes as lists, best first."""

        def shown(classes: tuple[int, ...]) -> str:
            return str(classes[0]) if len(classes) == 1 else str(list(classes))

        return (
            f"{list(self.index)}: {shown(self.reference)} ({reference}) vs "
            f"{shown(self.candidate)} ({candidate})"
        )


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the candidate environment compares with the reference."""

    name: str
    passed: bool
    reason: str | None
    reference_dtype: str
    candidate_dtype: str
    reference_shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    atol: float
    rtol: float
    total: int
    mismatched: int
    nan_mismatched: int = 0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    median_abs_diff: float = 0.0
    p99_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    mean_rel_diff: float = 0.0
    median_rel_diff: float = 0.0
    p99_rel_diff: float = 0.0
    worst_index: tuple[int, ...] | None = None
    worst_reference: float | None = None
    worst_candidate: float | None = None
    atol_to_pass: float = 0.0  # the smallest atol that passes with this rtol
    rtol_to_pass: float = 0.0  # the smallest rtol that passes with this atol
    policy: str = "allclose"
    policy_description: str = "allclose(atol=0, rtol=0)"
    # Why it failed: shape, dtype, nan_inf, tolerance, or nondeterministic (the
    # environments disagree with themselves, so the difference is not drift).
    cause: str | None = None
    unit: str = "elements"  # what total and mismatched count: elements, or the policy's unit
    max_ulp_diff: int | None = None
    agreement: float | None = None
    psnr_db: float | None = None
    # Measures of policies beyond the fields above, by name (e.g. cosine's min_cosine).
    measures: dict[str, float] = field(default_factory=dict)
    # The first rows whose decision differs, for the row-wise policies that decide (decision).
    disagreements: tuple[Disagreement, ...] = ()
    histogram: Histogram | None = None
    heatmap: Heatmap | None = None  # image-like outputs only
    columns: Columns | None = None  # 2-D outputs of at most COLUMN_LIMIT columns only
    # the worst element's sample, for the HTML report (image-like outputs that differ)
    pictures: Pictures | None = None
    noise: dict[str, Noise] = field(default_factory=dict)
    nondeterministic: bool = False

    @property
    def mismatched_fraction(self) -> float:
        """Mismatched elements (or rows) as a fraction of all of them."""
        return self.mismatched / self.total if self.total else 0.0


def describe_disagreements(o: OutputComparison, reference: str, candidate: str) -> list[str]:
    """The first rows of `o` whose decision differs, one a line (`disagrees at [3]: 7
    (train) vs 2 (infer)`), then how many more there are."""
    lines = [f"disagrees at {d.describe(reference, candidate)}" for d in o.disagreements]
    more = o.mismatched - len(o.disagreements)
    if o.disagreements and more > 0:
        lines.append(f"and {more} more {o.unit}")
    return lines


class BlockDiff:
    """|a - b| and |a - b| / |b| of one block, with the NaN and infinity rules applied
    (`bad`: where they fail; there `diff` is infinite), as every policy's judge sees it."""

    def __init__(self, rb: np.ndarray, cb: np.ndarray, work: np.dtype) -> None:
        import numpy as np

        b = rb.astype(work, copy=False)
        a = cb.astype(work, copy=False)
        with np.errstate(all="ignore"):
            self.diff = np.abs(a - b)
            self.abs_b = np.abs(b)
            self.bad: np.ndarray | None = None
            self.nan_bad = 0
            # |a - b| is finite unless a or b is NaN or infinite (or it overflows): the
            # masks below are needed only then.
            self.all_finite = bool(np.isfinite(self.diff).all())
            if not self.all_finite:
                nan_a, nan_b = np.isnan(a), np.isnan(b)
                special = nan_a | nan_b | np.isinf(a) | np.isinf(b)
                if special.any():
                    # NaN matches only NaN; an infinity only the same infinity.
                    same = (nan_a & nan_b) | (special & (a == b))
                    self.bad = special & ~same
                    self.nan_bad = int(np.count_nonzero(self.bad & (nan_a | nan_b)))
                    self.diff[same] = 0.0
                    self.diff[self.bad] = np.inf
                    self.abs_b[~np.isfinite(self.abs_b)] = 0.0
            # abs_b is finite here: x / 0 is inf, inf / x is inf; only 0 / 0 needs fixing.
            self.rel = self.diff / self.abs_b
            self.rel[self.diff == 0] = 0.0
        self.a, self.b = a, b
