"""The convolutional network of the hip-implant study, made DP-ready.

Convolution blocks (conv -> GroupNorm -> ReLU -> max-pool, optional dropout) followed by
a small classifier head with dropout. GroupNorm instead of BatchNorm so that per-sample gradients are
well defined and Opacus accepts the model as built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    num_classes: int  # size of the catalog
    image_size: int = 64  # input side in pixels (1 channel)
    channels: tuple[int, ...] = (16, 32, 64, 64)  # output channels of each conv block
    groups: int = 8  # GroupNorm groups (each block's channels must divide by it)
    block_dropout: float = 0.0  # dropout after each conv block (measured: > 0 stalls SGD on 1.3k images)
    dropout: float = 0.2  # dropout before the last layer
    hidden: int = 128  # width of the fully connected layer
    pool_size: int = 4  # spatial grid kept before the head (4x4 keeps the implant's geometry)


def _block(c_in: int, c_out: int, groups: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(min(groups, c_out), c_out),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


class ImplantCNN(nn.Module):
    """Small CNN for 1-channel implant crops."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        if cfg.image_size % (2 ** len(cfg.channels)):
            raise ValueError("image_size must be divisible by 2**len(channels)")
        layers, c_in = [], 1
        for c_out in cfg.channels:
            layers.append(_block(c_in, c_out, cfg.groups, cfg.block_dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * cfg.pool_size**2, cfg.hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-image standardisation: exposure differences between sites do not reach the filters.
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.head(self.pool(self.features(x)))

    @property
    def cam_layer(self) -> nn.Module:
        """The last convolution block: Grad-CAM hooks here."""
        return self.features[-1]
