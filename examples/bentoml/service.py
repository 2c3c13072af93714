"""A BentoML service of the reference model (model/ at the repository's root), through its
parity adapter: `bentoml serve service:Espcn` in this folder. One API, `predict`: a batch of
uint8 `lr` images in, `sr` (uint8) and `sr_float` (float32) out, as JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType, Shape

# examples/bentoml/service.py -> the repository's root, where model/ lives
ROOT = Path(os.environ.get("ESPCN_ROOT") or Path(__file__).resolve().parents[2])
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@bentoml.service(workers=1, traffic={"timeout": 300})
class Espcn:
    """The reference model, loaded once; one request is one batch."""

    def __init__(self) -> None:
        import torch

        from model import adapter

        torch.set_num_threads(1)  # as parity's workers run it (run.threads = 1)
        adapter.load_network()
        self.adapter = adapter

    @bentoml.api
    def predict(
        self, lr: Annotated[np.ndarray, DType("uint8"), Shape((-1, 48, 48))]
    ) -> dict[str, np.ndarray]:
        """x2 upscalings of a batch of 48 x 48 uint8 images."""
        return self.adapter.predict({"lr": lr})
