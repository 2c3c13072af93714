"""ESPCN-style sub-pixel convolution network for single-channel super-resolution."""

from __future__ import annotations

import torch
from torch import nn


class ESPCN(nn.Module):
    """Efficient sub-pixel CNN (Shi et al., 2016) for ``scale``-times upscaling.

    Input is ``N x C x H x W`` float32 in [0, 1]; output is
    ``N x C x (H * scale) x (W * scale)``.
    """

    def __init__(self, scale: int = 2, channels: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(64, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, scale * scale * channels, kernel_size=3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Give the upscaled image batch for a low-resolution batch ``x``."""
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))
