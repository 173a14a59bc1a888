"""Private heads on a public encoder's features, and the encoder + head as one image model.

A head is the only part a site trains (or releases statistics for): a linear layer, or a
tiny MLP, on the encoder's unit-norm features. :class:`EncoderClassifier` joins a frozen
encoder and a head into the model a release holds and ``predict`` runs on images; with
``trainable_encoder=True`` it is the ``finetune`` model (end-to-end DP-SGD from the
public encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    kind: str  # linear | mlp
    dim: int  # the encoder's feature dimension
    num_classes: int  # catalog size
    hidden: int = 64  # mlp: hidden width


def build_head(cfg: HeadConfig) -> nn.Module:
    """A fresh head (zero-initialised linear layer, so every site starts from the same point)."""
    if cfg.kind == "linear":
        head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head
    if cfg.kind == "mlp":
        return nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(inplace=False), nn.Linear(cfg.hidden, cfg.num_classes))
    raise ValueError(f"unknown head {cfg.kind!r}; choose one of {', '.join(HEADS)}")


class EncoderClassifier(nn.Module):
    """Images -> public encoder features -> head logits; ``cam_layer`` is the encoder's last spatial layer."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, trainable_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        if trainable_encoder:
            self.encoder.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    @property
    def cam_layer(self) -> nn.Module:
        return self.encoder.cam_layer
