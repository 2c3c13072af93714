"""Seeded input sets: sample i depends on (seed, i, array name) alone, on every machine.

Only `Generator.random()` (53 random bits per double, a stable algorithm) feeds the
generators, so the same spec gives the same bytes whatever NumPy version the host has;
the report records the content digest so that claim is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

GENERATORS = ("uniform", "normal", "image")
# How an `image` array's axes are laid out: channels before the two spatial axes (the
# default, e.g. [3, 224, 224]) or after them (e.g. [224, 224, 3], PIL's and TensorFlow's).
LAYOUTS = ("channels_first", "channels_last")
# A last axis this long is most likely a channel axis (grey, RGB, RGBA).
_CHANNEL_COUNTS = (1, 3, 4)


@dataclass(frozen=True)
class ArraySpec:
    """One named input array: per-sample shape, dtype, and how values are drawn."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    generator: str = "uniform"
    params: dict[str, float] = field(default_factory=dict)
    # `image` only: None is channels_first (the last two axes are spatial), as before
    # the setting existed, so existing configs keep their bytes and their reports.
    layout: str | None = None

    def layout_warning(self) -> str | None:
        """For an `image` array without a layout whose shape looks channels-last (at least
        3 axes, the last one 1, 3 or 4 long), the warning saying how it is drawn and how to
        say otherwise; else None."""
        if self.generator != "image" or self.layout is not None or len(self.shape) < 3:
            return None
        if self.shape[-1] not in _CHANNEL_COUNTS:
            return None
        planes = 1
        for n in self.shape[:-2]:
            planes *= n
        return (
            f"warning: inputs.arrays.{self.name}: shape {list(self.shape)} looks channels-last, "
            f"but images are drawn with the last two axes spatial ({planes} images of "
            f'{self.shape[-2]}x{self.shape[-1]} pixels); set layout = "channels_last" '
            f'(or "channels_first" to keep them)'
        )


@dataclass(frozen=True)
class InputSpec:
    """A seeded input set: `count` samples of each array, replayed in batches."""

    seed: int
    count: int
    arrays: tuple[ArraySpec, ...]
    batch_size: int = 64

    @property
    def label(self) -> str:
        """The input set in a few words, for progress lines."""
        return f"{self.count} samples, seed {self.seed}"

    def warnings(self) -> list[str]:
        """Warnings about the spec, for progress output (see `ArraySpec.layout_warning`)."""
        return [w for a in self.arrays if (w := a.layout_warning()) is not None]

    def describe(self) -> dict[str, Any]:
        """The spec as plain data, for reports."""
        return {
            "seed": self.seed,
            "count": self.count,
            "batch_size": self.batch_size,
            "arrays": {
                a.name: {
                    "shape": list(a.shape),
                    "dtype": a.dtype,
                    "generator": a.generator,
                    **({"layout": a.layout} if a.layout is not None else {}),
                    **a.params,
                }
                for a in self.arrays
            },
        }


def describe_label(inputs: dict[str, Any]) -> str:
    """A report's input set in a few words: `12 samples, seed 7`, or for a folder of
    samples `12 samples from data/samples` plus its DVC hash when it is tracked."""
    if "folder" not in inputs:
        return f"{inputs.get('count')} samples, seed {inputs.get('seed')}"
    words = f"{inputs.get('count')} samples from {inputs.get('folder')}"
    dvc = inputs.get("dvc")
    if isinstance(dvc, dict):
        words += f" (DVC {str(dvc.get('md5', ''))[:12]}…"
        words += ", modified since dvc add)" if dvc.get("modified") else ")"
    return words


def sample(spec: InputSpec, index: int) -> dict[str, np.ndarray]:
    """Sample `index` of the input set: one array per name, drawn from (seed, index, name)."""
    return {a.name: _samples(spec.seed, a, index, index + 1)[0] for a in spec.arrays}


def generate(spec: InputSpec) -> dict[str, np.ndarray]:
    """The whole input set: for each array name, a (count, *shape) array; sample i is
    `sample(spec, i)`, bit for bit (computed many samples at a time)."""
    return {a.name: _samples(spec.seed, a, 0, spec.count) for a in spec.arrays}


def _rng(seed: int, index: int, a: ArraySpec) -> np.random.Generator:
    import numpy as np

    seq = np.random.SeedSequence([seed, index, zlib.crc32(a.name.encode())])
    return np.random.Generator(np.random.PCG64(seq))


# Samples computed at once: their random numbers drawn one sample after another, as each
# sample's generator gives them, then the arithmetic done on all of them together (the
# same operations on every element, so the same bits as one sample at a time), in
# temporaries of about this many values (8 bytes each).
_BATCH_VALUES = 1 << 20


def _samples(seed: int, a: ArraySpec, first: int, stop: int) -> np.ndarray:
    """Samples first..stop-1 of array `a`: a (stop - first, *shape) array of its dtype."""
    import numpy as np

    size = 1
    for n in a.shape:
        size *= n
    out = np.empty((stop - first, *a.shape), dtype=np.dtype(a.dtype))
    step = max(1, _BATCH_VALUES // max(size, 1))
    for lo in range(first, stop, step):
        hi = min(stop, lo + step)
        rngs = [_rng(seed, i, a) for i in range(lo, hi)]
        out[lo - first : hi - first] = _draw(rngs, a)
    return out


def _draw(rngs: list[np.random.Generator], a: ArraySpec) -> np.ndarray:
    """One sample of `a` from each generator: a (len(rngs), *shape) array of its dtype."""
    import numpy as np

    dtype = np.dtype(a.dtype)
    k = len(rngs)
    if a.generator == "normal":
        # Box-Muller on random(): stable across NumPy versions, unlike standard_normal.
        n = int(np.prod(a.shape))
        u1 = np.empty((k, n))
        u2 = np.empty((k, n))
        for j, rng in enumerate(rngs):
            u1[j] = rng.random(n)
            u2[j] = rng.random(n)
        u1 = 1.0 - u1
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        values = a.params.get("mean", 0.0) + a.params.get("std", 1.0) * z
        values = values.reshape((k, *a.shape))
    elif a.generator == "image" and a.layout == "channels_last":
        # The same images as channels_first with the channel axis moved last: the planes
        # are drawn in the same order from the same random numbers.
        *lead, h, w, c = a.shape
        unit = np.moveaxis(_image(rngs, (*lead, c, h, w)), -3, -1)
        lo, hi = value_range(a)
        values = lo + unit * (hi - lo)
    elif a.generator == "image":
        unit = _image(rngs, a.shape)
        lo, hi = value_range(a)
        values = lo + unit * (hi - lo)
    else:
        lo, hi = value_range(a)
        values = lo + np.stack([rng.random(a.shape) for rng in rngs]) * (hi - lo)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def digest(arrays: dict[str, np.ndarray]) -> str:
    """`sha256:<hex>` of the arrays' names, dtypes, shapes and bytes, in name order."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def value_range(a: ArraySpec) -> tuple[float, float]:
    """The range a `uniform` or `image` array spans: its `low` and `high`, else 0 to 1 for
    floats, 0 to 255 for bytes and -1000 to 1000 for wider integers."""
    import numpy as np

    dtype = np.dtype(a.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = (0.0, 255.0) if dtype.itemsize == 1 else (-1000.0, 1000.0)
        lo, hi = max(lo, float(info.min)), min(hi, float(info.max))
    else:
        lo, hi = (0.0, 1.0)
    return a.params.get("low", lo), a.params.get("high", hi)


def _image(rngs: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """A smooth, structured image in [0, 1] from each generator: gradient, waves, soft
    shapes and mild noise; a (len(rngs), *shape) array.

    The last two axes are spatial; leading axes (channels) get independent images
    (`_draw` moves the channel axis for `layout = "channels_last"`). Each image takes 24
    random numbers, then its noise, from its sample's generator.
    """
    import numpy as np

    if len(shape) < 2:
        return np.stack([rng.random(shape) for rng in rngs])
    h, w = shape[-2], shape[-1]
    lead = shape[:-2]
    planes = int(np.prod(lead)) if lead else 1
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    total = len(rngs) * planes
    r = np.empty((24, total, 1, 1))
    noise = np.empty((total, h, w))
    for j, rng in enumerate(rngs):
        for p in range(j * planes, (j + 1) * planes):
            r[:, p, 0, 0] = rng.random(24)
            noise[p] = rng.random((h, w))
    # Each line is the one-image formula with its scalars made columns: the same
    # operations, in the same order, on each element.
    img = (r[0] - 0.5) * x + (r[1] - 0.5) * y
    for k in range(3):
        fx, fy, phase, amp = r[2 + 4 * k : 6 + 4 * k]
        img += 0.3 * amp * np.sin(2 * np.pi * (6 * fx * x + 6 * fy * y) + 2 * np.pi * phase)
    for k in range(2):
        cx, cy, rad = r[14 + 3 * k : 17 + 3 * k]
        d = np.hypot(x - cx, y - cy) / (0.1 + 0.3 * rad)
        img += 0.6 * (r[20 + k] - 0.5) / (1.0 + np.exp((d - 1.0) * 12.0))
    img += 0.03 * (noise - 0.5)
    lo = img.min(axis=(1, 2), keepdims=True)
    hi = img.max(axis=(1, 2), keepdims=True)
    flat = hi <= lo
    out: np.ndarray = (img - lo) / np.where(flat, 1.0, hi - lo)
    out[np.broadcast_to(flat, out.shape)] = 0.5
    return out.reshape((len(rngs), *shape))
