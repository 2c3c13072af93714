"""Deterministic training of the reference ESPCN x2 model on synthetic images.

Run from the repository root::

    python -m model.train --out model/weights/espcn_x2.safetensors

Writes the weights (with the training record as safetensors metadata) and the same
record as JSON next to them (``espcn_x2.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from model.network import ESPCN
from model.preprocess import postprocess, preprocess

SCALE = 2
HR_SIZE = 96
TRAIN_IMAGES = 512
HELDOUT_IMAGES = 64


def synthetic_images(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Give ``count`` smooth random ``size x size`` uint8 images.

    Each image is a sum of a linear gradient, a few oriented sinusoids and a few
    soft-edged discs and rectangles, stretched to a random contrast range.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        theta = rng.uniform(0.0, 2.0 * np.pi)
        img = rng.uniform(-1.0, 1.0) * (xx * np.cos(theta) + yy * np.sin(theta)) / size

        for _ in range(rng.integers(1, 4)):
            # Frequencies stay below the LR Nyquist limit (0.25 cycles per HR pixel)
            # so the LR image still carries enough information to recover them.
            freq = rng.uniform(0.005, 0.18)
            phi = rng.uniform(0.0, 2.0 * np.pi)
            amp = rng.uniform(0.05, 0.35)
            img += amp * np.sin(
                2.0 * np.pi * freq * (xx * np.cos(phi) + yy * np.sin(phi))
                + rng.uniform(0.0, 2.0 * np.pi)
            )

        for _ in range(rng.integers(1, 6)):
            cx, cy = rng.uniform(0.0, size, 2)
            softness = rng.uniform(0.4, 3.0)
            amp = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.2)
            if rng.random() < 0.5:
                radius = rng.uniform(4.0, size / 3.0)
                dist = np.hypot(xx - cx, yy - cy) - radius
            else:
                hw, hh = rng.uniform(3.0, size / 3.0, 2)
                dist = np.maximum(np.abs(xx - cx) - hw, np.abs(yy - cy) - hh)
            img += amp / (1.0 + np.exp(np.clip(dist / softness, -50.0, 50.0)))

        lo, hi = img.min(), img.max()
        low = rng.uniform(0.0, 80.0)
        high = rng.uniform(175.0, 255.0)
        img = low + (img - lo) / max(hi - lo, 1e-9) * (high - low)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images


def box_downsample(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Give the ``scale x scale`` box-averaged, uint8-rounded downsampling of ``hr`` (N x H x W)."""
    n, h, w = hr.shape
    blocks = hr.astype(np.float64).reshape(n, h // scale, scale, w // scale, scale)
    return np.clip(np.rint(blocks.mean(axis=(2, 4))), 0, 255).astype(np.uint8)


def nearest_upscale(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Give the nearest-neighbour ``scale``-times upscaling of ``lr`` (N x H x W)."""
    return np.repeat(np.repeat(lr, scale, axis=1), scale, axis=2)


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """Give the PSNR in dB of uint8 ``pred`` against uint8 ``ref`` over the whole batch."""
    mse = np.mean((pred.astype(np.float64) - ref.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Give the float32 ``N x 1 x H x W`` network tensor for uint8 ``images``."""
    return torch.from_numpy(np.ascontiguousarray(preprocess(images), dtype=np.float32))


def super_resolve(network: ESPCN, lr: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Give the uint8 network upscaling of ``lr`` (N x H x W), computed in batches."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(lr), batch_size):
            y = network(to_tensor(lr[start : start + batch_size])).numpy()
            outputs.append(postprocess(y))
    return np.concatenate(outputs)


def progress(steps: int) -> Iterable[int]:
    """Give the step range, wrapped in a tqdm bar on stderr when tqdm is available."""
    try:
        from tqdm import tqdm
    except ImportError:
        return range(steps)
    return tqdm(range(steps), file=sys.stderr, desc="train", mininterval=1.0)


def train(seed: int, steps: int, batch_size: int, lr: float) -> tuple[ESPCN, dict[str, str]]:
    """Give the trained network and its training record (a string dict)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    data_rng = np.random.default_rng(seed)
    train_hr = synthetic_images(data_rng, TRAIN_IMAGES, HR_SIZE)
    heldout_hr = synthetic_images(data_rng, HELDOUT_IMAGES, HR_SIZE)
    train_lr = box_downsample(train_hr)
    heldout_lr = box_downsample(heldout_hr)
    inputs = to_tensor(train_lr)
    targets = to_tensor(train_hr)

    network = ESPCN(scale=SCALE, channels=1)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    # Halving the rate for the last third settles the loss without extra steps.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2 * steps // 3], gamma=0.5)
    loss_fn = torch.nn.MSELoss()
    batch_rng = np.random.default_rng(seed + 1)

    network.train()
    loss = torch.tensor(float("nan"))
    for _ in progress(steps):
        idx = torch.from_numpy(batch_rng.choice(TRAIN_IMAGES, size=batch_size, replace=False))
        optimizer.zero_grad()
        loss = loss_fn(network(inputs[idx]), targets[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
    network.eval()

    record = {
        "seed": str(seed),
        "steps": str(steps),
        "batch_size": str(batch_size),
        "learning_rate": repr(lr),
        "train_images": str(TRAIN_IMAGES),
        "heldout_images": str(HELDOUT_IMAGES),
        "hr_size": str(HR_SIZE),
        "scale": str(SCALE),
        "final_loss": repr(float(loss.item())),
        "psnr_model_db": f"{psnr(super_resolve(network, heldout_lr), heldout_hr):.4f}",
        "psnr_nearest_db": f"{psnr(nearest_upscale(heldout_lr), heldout_hr):.4f}",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    return network, record


def serialize(network: ESPCN, record: dict[str, str]) -> bytes:
    """Give the safetensors file bytes for ``network`` with ``record`` as metadata.

    safetensors writes metadata keys in hash-map order, which varies from run to run;
    the header is rewritten with sorted metadata so identical training gives identical
    bytes.
    """
    state = {name: t.detach().contiguous() for name, t in network.state_dict().items()}
    raw = save(state, metadata=record)
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # The format pads the header with spaces so the tensor data stays 8-byte aligned.
    header_bytes += b" " * (-len(header_bytes) % 8)
    return len(header_bytes).to_bytes(8, "little") + header_bytes + raw[8 + header_len :]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Give the parsed command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model/weights/espcn_x2.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Give the exit status after training and writing the weights and record."""
    args = parse_args(argv)
    started = time.perf_counter()
    network, record = train(args.seed, args.steps, args.batch_size, args.lr)
    elapsed = time.perf_counter() - started

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(serialize(network, record))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    print(json.dumps(record, indent=2, sort_keys=True), file=sys.stderr)
    print(f"trained in {elapsed:.1f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
