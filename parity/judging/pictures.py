"""Which values are images, and one sample of such a value drawn small in both environments.

**Image-like** is one rule, here: a value's per-sample shape (its shape without the
leading sample axis) is

- `(H, W)`: a grey image;
- `(H, W, C)` with C of 1, 3 or 4: channels last (grey, RGB, RGBA);
- any other `(C, H, W)`: channels first, as PyTorch lays images and feature maps out
  (C of 1, 3 or 4 is a grey, RGB or RGBA image; any other C a feature map),

with H and W both at least `MIN_SIDE` (8). Anything else is not image-like: a 2-D value
(samples x columns: logits, tabular rows, embeddings) never is, nor a value of four or
more axes per sample. A channels-last feature map (C other than 1, 3 or 4) reads as
channels first, so its picture shows a slice along its first axis.

Image-like values get a heatmap (`parity.judging.compare`) and, where they differ, the
worst sample's `Pictures`: the two environments' images on one shared scale and |a - b|
per pixel, at most `PICTURE_PX` pixels on the longer side. Only the one sample is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.comparison import BlockDiff, Pictures

if TYPE_CHECKING:
    import numpy as np

    from parity.arrays import OutputArray

MIN_SIDE = 8  # both spatial axes of an image-like value are at least this long
PICTURE_PX = 128  # the longer side of a picture, at most
IMAGE_CHANNELS = {1: "grey", 3: "rgb", 4: "rgba"}


@dataclass(frozen=True)
class ImageLayout:
    """How an image-like value's sample is laid out."""

    height: int
    width: int
    channels: int  # 1 for an (H, W) sample
    channels_last: bool

    @property
    def kind(self) -> str:
        """ "grey", "rgb", "rgba" or "feature map"."""
        return IMAGE_CHANNELS.get(self.channels, "feature map")


def image_layout(shape: tuple[int, ...]) -> ImageLayout | None:
    """The layout of a value of `shape` (samples first) if it is image-like, else None."""
    per = tuple(shape[1:])
    if len(per) == 2:
        layout = ImageLayout(per[0], per[1], 1, channels_last=False)
    elif len(per) == 3 and per[2] in IMAGE_CHANNELS and min(per[0], per[1]) >= MIN_SIDE:
        layout = ImageLayout(per[0], per[1], per[2], channels_last=True)
    elif len(per) == 3:
        layout = ImageLayout(per[1], per[2], per[0], channels_last=False)
    else:
        return None
    if min(layout.height, layout.width) < MIN_SIDE or layout.channels < 1:
        return None
    return layout


def sample_pictures(
    reference: OutputArray,
    candidate: OutputArray,
    layout: ImageLayout,
    index: int,
    sample: int | None = None,
) -> Pictures:
    """Sample `index` of an image-like value in both environments, as `Pictures` of the
    input set's sample `sample` (default: `index`). Colour images are drawn in colour; a
    feature map's channel where the two differ most, in grey."""
    import numpy as np

    ref, cand = reference.sample(index), candidate.sample(index)
    complex_ = "c" in (ref.dtype.kind, cand.dtype.kind)
    work = np.dtype(np.complex128 if complex_ else np.float64)
    diff = _hwc(BlockDiff(ref.reshape(-1), cand.reshape(-1), work).diff.reshape(ref.shape), layout)
    r, c = _hwc(_real(ref), layout), _hwc(_real(cand), layout)
    channel = None
    if layout.kind == "feature map":
        channel = int(np.argmax(diff.reshape(-1, layout.channels).max(axis=0)))
        r, c, diff = (
            r[..., channel : channel + 1],
            c[..., channel : channel + 1],
            diff[..., channel],
        )
    else:
        r, c, diff = r[..., :3], c[..., :3], diff.max(axis=2)  # RGBA: alpha not drawn
    both = np.concatenate([r.reshape(-1), c.reshape(-1)])
    finite = both[np.isfinite(both)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    step = math.ceil(max(layout.height, layout.width) / PICTURE_PX)
    pixels = [_pixels(_mean_blocks(_clipped(x, low, high), step), low, high) for x in (r, c)]
    small = _max_blocks(diff, step)
    return Pictures(
        sample=index if sample is None else sample,
        layout=layout.kind,
        channel=channel,
        channels=layout.channels,
        height=layout.height,
        width=layout.width,
        rows=small.shape[0],
        columns=small.shape[1],
        low=low,
        high=high,
        reference=pixels[0],
        candidate=pixels[1],
        difference=tuple(tuple(float(v) for v in row) for row in small),
        nonfinite=int(both.size - finite.size),
    )


def _real(x: np.ndarray) -> np.ndarray:
    """The values to draw, as float64 (a complex value's magnitude)."""
    import numpy as np

    return np.abs(x) if x.dtype.kind == "c" else x.astype(np.float64)


def _hwc(x: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """One sample as (height, width, channels)."""
    import numpy as np

    if x.ndim == 2:
        return x[..., np.newaxis]
    return x if layout.channels_last else np.moveaxis(x, 0, -1)


def _clipped(x: np.ndarray, low: float, high: float) -> np.ndarray:
    import numpy as np

    return np.clip(np.where(np.isnan(x), low, x), low, high)


def _edges(n: int, step: int) -> np.ndarray:
    import numpy as np

    return np.arange(0, n, step)


def _mean_blocks(x: np.ndarray, step: int) -> np.ndarray:
    """(H, W, C) averaged over `step` x `step` blocks (the last ones may be smaller)."""
    import numpy as np

    if step == 1:
        return x
    rows, cols = _edges(x.shape[0], step), _edges(x.shape[1], step)
    sums = np.add.reduceat(np.add.reduceat(x, rows, axis=0), cols, axis=1)
    heights = np.diff(np.append(rows, x.shape[0]))
    widths = np.diff(np.append(cols, x.shape[1]))
    result: np.ndarray = sums / (heights[:, None, None] * widths[None, :, None])
    return result


def _max_blocks(x: np.ndarray, step: int) -> np.ndarray:
    """(H, W) reduced to the largest value of each `step` x `step` block."""
    import numpy as np

    if step == 1:
        return x
    rows, cols = _edges(x.shape[0], step), _edges(x.shape[1], step)
    result: np.ndarray = np.maximum.reduceat(np.maximum.reduceat(x, rows, axis=0), cols, axis=1)
    return result


def _pixels(x: np.ndarray, low: float, high: float) -> bytes:
    """(rows, columns, 1 or 3) values in [low, high] as 8-bit pixels, 0 for low."""
    import numpy as np

    span = high - low
    scaled = (x - low) * (255 / span) if span > 0 else np.zeros_like(x)
    return bytes(np.clip(np.round(scaled), 0, 255).astype(np.uint8).tobytes())
