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
    import numpy as np

    out = {}
    for a in spec.arrays:
        seq = np.random.SeedSequence([spec.seed, index, zlib.crc32(a.name.encode())])
        rng = np.random.Generator(np.random.PCG64(seq))
        out[a.name] = _draw(rng, a)
    return out


def generate(spec: InputSpec) -> dict[str, np.ndarray]:
    """The whole input set: for each array name, a (count, *shape) array."""
    import numpy as np

    batches: dict[str, list[np.ndarray]] = {a.name: [] for a in spec.arrays}
    for i in range(spec.count):
        for name, value in sample(spec, i).items():
            batches[name].append(value)
    return {name: np.stack(values) for name, values in batches.items()}


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


def _draw(rng: np.random.Generator, a: ArraySpec) -> np.ndarray:
    import numpy as np

    dtype = np.dtype(a.dtype)
    if a.generator == "normal":
        # Box-Muller on random(): stable across NumPy versions, unlike standard_normal.
        n = int(np.prod(a.shape))
        u1 = 1.0 - rng.random(n)
        u2 = rng.random(n)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        values = a.params.get("mean", 0.0) + a.params.get("std", 1.0) * z
        values = values.reshape(a.shape)
    elif a.generator == "image" and a.layout == "channels_last":
        # The same images as channels_first with the channel axis moved last: the planes
        # are drawn in the same order from the same random numbers.
        *lead, h, w, c = a.shape
        unit = np.moveaxis(_image(rng, (*lead, c, h, w)), -3, -1)
        lo, hi = value_range(a)
        values = lo + unit * (hi - lo)
    elif a.generator == "image":
        unit = _image(rng, a.shape)
        lo, hi = value_range(a)
        values = lo + unit * (hi - lo)
    else:
        lo, hi = value_range(a)
        values = lo + rng.random(a.shape) * (hi - lo)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def _image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth, structured image in [0, 1]: gradient, waves, soft shapes and mild noise.

    The last two axes are spatial; leading axes (channels) get independent images
    (`_draw` moves the channel axis for `layout = "channels_last"`).
    """
    import numpy as np

    if len(shape) < 2:
        return rng.random(shape)
    h, w = shape[-2], shape[-1]
    lead = shape[:-2]
    planes = int(np.prod(lead)) if lead else 1
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((planes, h, w))
    for p in range(planes):
        r = rng.random(24)
        img = (r[0] - 0.5) * x + (r[1] - 0.5) * y
        for k in range(3):
            fx, fy, phase, amp = r[2 + 4 * k : 6 + 4 * k]
            img += 0.3 * amp * np.sin(2 * np.pi * (6 * fx * x + 6 * fy * y) + 2 * np.pi * phase)
        for k in range(2):
            cx, cy, rad = r[14 + 3 * k : 17 + 3 * k]
            d = np.hypot(x - cx, y - cy) / (0.1 + 0.3 * rad)
            img += 0.6 * (r[20 + k] - 0.5) / (1.0 + np.exp((d - 1.0) * 12.0))
        img += 0.03 * (rng.random((h, w)) - 0.5)
        lo, hi = img.min(), img.max()
        out[p] = (img - lo) / (hi - lo) if hi > lo else 0.5
    return out.reshape(shape)
