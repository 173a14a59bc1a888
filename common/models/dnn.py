"""The fully connected network (DNN) of the hip-implant study: an MLP over pixels.

Inputs are standardised per image (zero mean, unit variance) before the first layer, so
exposure differences between sites do not dominate. LayerNorm keeps it DP-ready.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DNNConfig:
    num_classes: int  # size of the catalog
    image_size: int = 64  # input side in pixels (1 channel)
    hidden: tuple[int, ...] = (512, 256)  # widths of the hidden layers
    dropout: float = 0.3  # dropout after each hidden layer
    downsample: int = 2  # average-pool factor applied to the input first (1 = none)


class ImplantDNN(nn.Module):
    """MLP over (optionally downsampled) standardised pixels."""

    def __init__(self, cfg: DNNConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.downsample:
            raise ValueError("image_size must be divisible by downsample")
        side = cfg.image_size // cfg.downsample
        self.pool = nn.AvgPool2d(cfg.downsample) if cfg.downsample > 1 else nn.Identity()
        layers: list[nn.Module] = [nn.Flatten()]
        width = side * side
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=False), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, cfg.num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.mlp((x - mean) / std)
