"""MONAI's DenseNet-121/169 (2-D, 1 channel) built DP-ready.

MONAI's ``DenseNet`` threads ``norm=`` and ``act=`` through every layer, so GroupNorm and
out-of-place ReLU (Opacus' backward hooks reject in-place activations) are set at
construction. The wrapper adds what the rest of ImplantFL expects of a model: a
``cam_layer`` for Grad-CAM and ``forward_features`` for the fusion network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DenseNetConfig:
    num_classes: int  # size of the catalog; 0 = no classifier (feature extractor only)
    image_size: int = 64  # input side in pixels (1 channel); any size >= 32 works
    depth: int = 121  # MONAI DenseNet121 or DenseNet169
    groups: int = 8  # GroupNorm groups (all DenseNet widths are multiples of 32)
    dropout: float = 0.0  # dropout after each dense layer (MONAI dropout_prob)


class ZooDenseNet(nn.Module):
    """MONAI DenseNet-121/169 with GroupNorm; ``net`` is the MONAI module itself."""

    def __init__(self, cfg: DenseNetConfig) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121, DenseNet169

        arch = {121: DenseNet121, 169: DenseNet169}.get(cfg.depth)
        if arch is None:
            raise ValueError("depth must be 121 or 169")
        self.net = arch(
            spatial_dims=2,
            in_channels=1,
            out_channels=max(cfg.num_classes, 1),
            norm=("group", {"num_groups": cfg.groups}),
            act=("relu", {"inplace": False}),
            dropout_prob=cfg.dropout,
        )
        self._channels = int(self.net.class_layers.out.in_features)
        if cfg.num_classes == 0:  # no unused parameters: Opacus needs a gradient for each
            self.net.class_layers.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map after norm5 + ReLU (N, feature_channels, h, w)."""
        return self.net.class_layers.relu(self.net.features(x))

    @property
    def feature_channels(self) -> int:
        return self._channels

    @property
    def cam_layer(self) -> nn.Module:
        """The last dense block: Grad-CAM hooks here."""
        return self.net.features.denseblock4
