"""NumPy pre- and postprocessing for the reference model."""

from __future__ import annotations

import numpy as np

INPUT_SCALE = np.float64(1.0 / 255.0)


def preprocess(lr: np.ndarray) -> np.ndarray:
    """Give the network input for a batch of uint8 images, scaled to [0, 1].

    ``lr`` is ``N x H x W`` uint8; the result is ``N x 1 x H x W`` floating point.
    """
    x = lr.astype(np.float32)
    x = x * INPUT_SCALE
    return x[:, np.newaxis, :, :]


def postprocess(y: np.ndarray) -> np.ndarray:
    """Give ``N x H x W`` uint8 images for an ``N x 1 x H x W`` network output in [0, 1]."""
    y = y[:, 0, :, :]
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
