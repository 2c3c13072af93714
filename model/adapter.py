"""Adapter the parity tool calls: uint8 low-resolution images in, x2 upscaled images out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from model.network import ESPCN
from model.preprocess import postprocess, preprocess

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "espcn_x2.safetensors"
# Where the network runs: "cpu" (default) or a torch device such as "cuda" or "cuda:1".
DEVICE = os.environ.get("MODEL_DEVICE", "cpu")

_network: ESPCN | None = None


def load_network() -> ESPCN:
    """Give the reference network with the committed weights, in eval mode (cached)."""
    global _network
    if _network is None:
        network = ESPCN(scale=2, channels=1)
        network.load_state_dict(load_file(str(WEIGHTS_PATH)))
        network.eval()
        network.to(DEVICE)
        _network = network
    return _network


def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give ``{"sr": uint8, "sr_float": float32}`` x2 upscalings of ``inputs["lr"]``.

    ``inputs["lr"]`` is ``N x H x W`` uint8; both outputs are ``N x 2H x 2W``.
    ``sr_float`` is the raw network output, ``sr`` the postprocessed image.
    """
    return outputs(run_network(network_input(inputs)))


def stages() -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """Give predict's stages for ``parity check --localize``, in order: preprocess (NumPy),
    model (the network, whose modules parity hooks), postprocess (the outputs dict)."""
    return [
        ("preprocess", network_input),
        ("model", run_network, load_network()),
        ("postprocess", outputs),
    ]


def network_input(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Give the preprocessed batch, exactly as ``preprocess`` makes it (dtype included)."""
    return preprocess(np.asarray(inputs["lr"]))


def run_network(x: np.ndarray) -> np.ndarray:
    """Give the network's ``N x 1 x 2H x 2W`` float32 output for a preprocessed batch."""
    torch.set_grad_enabled(False)
    network = load_network()
    return network(torch.from_numpy(x).to(device=DEVICE, dtype=torch.float32)).cpu().numpy()


def outputs(y: np.ndarray) -> dict[str, np.ndarray]:
    """Give predict's outputs for a network output ``y``."""
    return {
        "sr": postprocess(y),
        "sr_float": np.ascontiguousarray(y[:, 0, :, :], dtype=np.float32),
    }
