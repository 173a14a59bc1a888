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
    "ensemble": lambda n, s: zoo.ensemble(n, s, build=_member),
    "ensemble-mura": lambda n, s: zoo.ensemble(n, s, build=_member, members=zoo.MURA_ENSEMBLE),
}


def _member(name: str, num_classes: int, image_size: int) -> nn.Module:
    return build_model(name, num_classes=num_classes, image_size=image_size)

# Fastest valid Opacus per-sample-gradient mode per model: what run-config
# ``grad-sample-mode = auto`` uses (client.task). Measured by ``benchmarks.dp_overhead``
# (benchmarks/results/dp_overhead.json, 64 px, batch 32, 1 thread): ``ew`` trains at
# 1.95x the plain time for the CNN (hooks 2.56x, ghost 2.15x, functorch 2.85x) and 4.2x
# for ResNet-18 (hooks 8.6x, ghost 5.9x), with the same clipped step as hooks. A model not
# listed gets ``hooks``, Opacus' reference; ``ew`` fails on MONAI's DenseNet (so on both
# ensembles too), and the other models are not measured.
DP_GRAD_SAMPLE_MODE: dict[str, str] = {"cnn": "ew", "resnet18": "ew"}


def build_model(name: str, *, num_classes: int, image_size: int) -> nn.Module:
    """Build a fresh model by registry name."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return builder(num_classes, image_size)


__all__ = ["MODELS", "DP_GRAD_SAMPLE_MODE", "build_model", "CNNConfig", "DNNConfig", "ImplantCNN", "ImplantDNN"]
