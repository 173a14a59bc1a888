"""Model registry: ``--model NAME`` -> a builder taking (num_classes, image_size).

Every model here is DP-ready as built (no BatchNorm) and takes 1-channel input.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from common.errors import ConfigError
from common.models import zoo
from common.models.cnn import CNNConfig, ImplantCNN
from common.models.dnn import DNNConfig, ImplantDNN

Builder = Callable[[int, int], nn.Module]

MODELS: dict[str, Builder] = {
    "cnn": lambda n, s: ImplantCNN(CNNConfig(num_classes=n, image_size=s)),
    "dnn": lambda n, s: ImplantDNN(DNNConfig(num_classes=n, image_size=s)),
    # MONAI backbones with GroupNorm, the attention-guided fusion network and the
    # probability-averaging ensemble (common.models.zoo; MONAI is imported on first build).
    "resnet18": zoo.resnet18,
    "resnet50": zoo.resnet50,
    "densenet121": zoo.densenet121,
    "densenet169": zoo.densenet169,
    "fusion": zoo.fusion,
    "ensemble": zoo.ensemble,
    "ensemble-mura": zoo.ensemble_mura,
}


def build_model(name: str, *, num_classes: int, image_size: int) -> nn.Module:
    """Build a fresh model by registry name."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return builder(num_classes, image_size)


__all__ = ["MODELS", "build_model", "CNNConfig", "DNNConfig", "ImplantCNN", "ImplantDNN"]
