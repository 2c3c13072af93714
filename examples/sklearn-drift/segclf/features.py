"""segclf's feature step: plain NumPy code whose numbers depend on the NumPy version.

`rescale` multiplies a float32 copy of the features by a NumPy float64 scalar. NumPy 1.x
(value-based casting) keeps float32; NumPy 2 (NEP 50) promotes to float64. A pipeline that
starts with it gives other numbers under NumPy 2: the `scorer` model's drift, for
`parity bisect` and `parity check --localize` to find.
"""

from __future__ import annotations

import numpy as np

GAIN = np.float64(1.1)


def rescale(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float32) * GAIN
