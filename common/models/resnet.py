"""MONAI's ResNet (2-D, 1 channel) built DP-ready: GroupNorm everywhere, no in-place ReLU.

Two things in MONAI 1.6's ``ResNet`` need care, and both are handled here without
copying the architecture:

- ``norm=`` reaches only the stem: ``_make_layer`` is called without it, so every
  residual block and shortcut would silently be BatchNorm (MONAI PR #9028 fixes this
  upstream). :class:`GroupNormResNet` threads the norm into ``_make_layer``.
- The blocks modify their last norm's output in place (``out += residual``, in-place
  ReLU), which Opacus' backward hooks reject ("Output 0 of BackwardHookFunction is a
  view and is being modified inplace"). The blocks are MONAI's, with a ``forward`` that
  adds the shortcut out of place; every ReLU is switched to out-of-place.

The block layout (basic/bottleneck, blocks per stage) comes from MONAI's own
``resnet_params`` table. Shortcuts are type "B" (1x1 conv + norm): MONAI's type "A"
zero-pads a ``.data`` copy, which cuts the gradient through the shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets.resnet import (
    ResNet,
    ResNetBlock,
    ResNetBottleneck,
    get_inplanes,
    resnet_params,
)
from torch import nn


@dataclass(frozen=True)
class ResNetConfig:
    num_classes: int  # size of the catalog; 0 = no classifier (feature extractor only)
    image_size: int = 64  # input side in pixels (1 channel); any size >= 16 works
    depth: int = 18  # MONAI layout resnet<depth>: 10, 18, 34, 50, 101, 152, 200
    groups: int = 8  # GroupNorm groups (every stage width divides by it)
    stem_stride: int = 2  # stride of the 7x7 stem convolution (ImageNet-style)
    widen_factor: float = 1.0  # multiplies every stage width (0.5 = half-width, faster)


class _BasicBlock(ResNetBlock):
    """MONAI's basic block; the shortcut is added out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class _Bottleneck(ResNetBottleneck):
    """MONAI's bottleneck block; the shortcut is added out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


_OUT_OF_PLACE: dict[type, type] = {ResNetBlock: _BasicBlock, ResNetBottleneck: _Bottleneck}


class GroupNormResNet(ResNet):
    """MONAI ``ResNet`` whose residual stages honour ``norm=`` (GroupNorm here)."""

    def __init__(self, *, norm: tuple[str, dict[str, Any]], **kwargs: Any) -> None:
        self._stage_norm = norm  # read by _make_layer during super().__init__
        super().__init__(norm=norm, **kwargs)
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
            elif isinstance(m, _BasicBlock | _Bottleneck):
                # Zero-init the last norm of each block: every block starts as the identity,
                # which keeps deep ResNets without BatchNorm stable from scratch (Goyal et al. 2017).
                nn.init.zeros_((m.bn3 if isinstance(m, _Bottleneck) else m.bn2).weight)

    def _make_layer(self, block: type, *args: Any, **kwargs: Any) -> nn.Sequential:
        kwargs["norm"] = self._stage_norm
        return super()._make_layer(_OUT_OF_PLACE.get(block, block), *args, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (N, feature_channels, h, w)."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    @property
    def feature_channels(self) -> int:
        return int(self.in_planes)  # MONAI leaves the last stage's output width here

    @property
    def cam_layer(self) -> nn.Module:
        """The last residual stage: Grad-CAM hooks here."""
        return self.layer4


def build_resnet(cfg: ResNetConfig) -> GroupNormResNet:
    name = f"resnet{cfg.depth}"
    if name not in resnet_params:
        raise ValueError(f"no MONAI ResNet of depth {cfg.depth}")
    block, layers = resnet_params[name][:2]
    return GroupNormResNet(
        block=block,
        layers=list(layers),
        block_inplanes=get_inplanes(),
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=cfg.stem_stride,
        shortcut_type="B",
        widen_factor=cfg.widen_factor,
        num_classes=max(cfg.num_classes, 1),
        feed_forward=cfg.num_classes > 0,
        bias_downsample=False,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": cfg.groups}),
    )
