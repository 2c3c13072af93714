"""A tiny stand-in model for the DVC example: plain NumPy, so the check runs in seconds.

`predict` gets a batch of the samples' arrays (`lr`: (n, 24, 24) float32 images in
[0, 1]) and returns a 2x upscaled, lightly sharpened image and a per-image score. Point
`[model] adapter` in parity.toml at your own model instead (see the comments there).
"""

from __future__ import annotations

import numpy as np


def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    lr = inputs["lr"].astype(np.float32)
    up = lr.repeat(2, axis=1).repeat(2, axis=2)
    blur = (
        up
        + np.roll(up, 1, axis=1)
        + np.roll(up, -1, axis=1)
        + np.roll(up, 1, axis=2)
        + np.roll(up, -1, axis=2)
    ) / np.float32(5)
    sr = np.clip(up + np.float32(0.5) * (up - blur), 0, 1)
    return {"sr": sr, "score": sr.mean(axis=(1, 2))}
