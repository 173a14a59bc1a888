"""Builders for the model zoo: MONAI ResNet/DenseNet, the fusion network, the ensemble.

Each builder has the registry signature ``(num_classes, image_size) -> nn.Module`` and
imports MONAI only when called, so ``common.models`` stays cheap to import. Every model
is DP-ready as built (GroupNorm, no in-place activations) and has a ``cam_layer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from common.models.cnn import CNNConfig, ImplantCNN

# Members of the default ensemble (the founding study's CNN plus one ResNet and one DenseNet).
DEFAULT_ENSEMBLE: tuple[str, ...] = ("cnn", "resnet18", "densenet121")
# The founding MURA study's ensemble: DenseNet, ResNet-50 and the attention-guided fusion network.
MURA_ENSEMBLE: tuple[str, ...] = ("densenet121", "resnet50", "fusion")
GROUPS = 8  # GroupNorm groups for every zoo model


class CNNFeatures(nn.Module):
    """The study CNN's convolution blocks as a feature branch (no head)."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        cfg = CNNConfig(num_classes=1, image_size=image_size)
        self.features = ImplantCNN(cfg).features
        self.feature_channels = cfg.channels[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    forward = forward_features

    @property
    def cam_layer(self) -> nn.Module:
        return self.features[-1]


def resnet(num_classes: int, image_size: int, *, depth: int = 18, stem_stride: int = 2) -> nn.Module:
    from common.models.resnet import ResNetConfig, build_resnet

    return build_resnet(ResNetConfig(num_classes=num_classes, image_size=image_size, depth=depth, groups=GROUPS,
                                     stem_stride=stem_stride))


def densenet(num_classes: int, image_size: int, *, depth: int = 121) -> nn.Module:
    from common.models.densenet import DenseNetConfig, ZooDenseNet

    return ZooDenseNet(DenseNetConfig(num_classes=num_classes, image_size=image_size, depth=depth, groups=GROUPS))


def resnet18(num_classes: int, image_size: int) -> nn.Module:
    return resnet(num_classes, image_size, depth=18)


def resnet50(num_classes: int, image_size: int) -> nn.Module:
    return resnet(num_classes, image_size, depth=50)


def densenet121(num_classes: int, image_size: int) -> nn.Module:
    return densenet(num_classes, image_size, depth=121)


def densenet169(num_classes: int, image_size: int) -> nn.Module:
    return densenet(num_classes, image_size, depth=169)


def feature_branch(name: str, image_size: int) -> nn.Module:
    """A headless branch with ``forward_features``/``feature_channels``/``cam_layer``."""
    if name == "cnn":
        return CNNFeatures(image_size)
    if name in ("resnet18", "resnet50"):
        return resnet(0, image_size, depth=int(name[6:]))
    if name in ("densenet121", "densenet169"):
        return densenet(0, image_size, depth=int(name[8:]))
    raise ValueError(f"no fusion backbone {name!r}; choose cnn, resnet18, resnet50, densenet121 or densenet169")


def fusion(num_classes: int, image_size: int, *, backbone: str = "resnet18", **options: float) -> nn.Module:
    from common.models.fusion import AttentionFusionNet, FusionConfig

    cfg = FusionConfig(num_classes=num_classes, image_size=image_size, backbone=backbone, **options)
    return AttentionFusionNet(cfg, global_branch=feature_branch(backbone, image_size),
                              local_branch=feature_branch(backbone, image_size))


def ensemble(
    num_classes: int,
    image_size: int,
    *,
    build: Callable[[str, int, int], nn.Module],
    members: Sequence[str] = DEFAULT_ENSEMBLE,
) -> nn.Module:
    """Members built by registry name with ``build(name, num_classes, image_size)`` (the registry passes its own)."""
    from common.models.ensemble import ProbabilityEnsemble

    if "ensemble" in members:
        raise ValueError("an ensemble cannot contain an ensemble")
    return ProbabilityEnsemble([build(m, num_classes, image_size) for m in members], names=members)
