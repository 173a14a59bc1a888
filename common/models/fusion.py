"""Attention-guided global/local fusion network (AG-CNN style), one DP-ready module.

The founding MURA study fused a global branch (the whole radiograph) with a local branch
(the region the global branch attends to most) in the manner of AG-CNN (Guan et al.,
2018). Here the three stages are one ``nn.Module`` trained end to end by the usual loop:

1. global branch -> feature map ``F`` (N, C, h, w);
2. attention map ``max_c |F|``, min-max normalised per image; the cells at or above
   ``threshold`` span the crop box (at least ``min_crop`` of the side, kept inside the
   image). The box is computed on the *detached* map: no gradient flows through the
   crop coordinates, only through the features;
3. the box is cut from the input and resampled to the input size with
   ``F.affine_grid`` / ``F.grid_sample`` (bilinear);
4. local branch on the crop; global-average-pooled features of both branches are
   concatenated and a linear head gives the logits.

Every step is per-image (GroupNorm branches, per-sample boxes), so per-sample gradients
stay well defined and Opacus accepts the module. The branches are any modules with
``forward_features``, ``feature_channels`` and ``cam_layer`` (see ``common.models.zoo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FusionConfig:
    num_classes: int  # size of the catalog
    image_size: int = 64  # input side in pixels (1 channel); the crop is resampled to this size
    backbone: str = "resnet18"  # both branches: cnn | resnet18 | resnet50 | densenet121 | densenet169
    threshold: float = 0.7  # attention cells >= threshold x (normalised max) span the crop box
    min_crop: float = 0.25  # smallest crop side, as a fraction of the image side
    dropout: float = 0.2  # dropout on the fused features before the head


def attention_boxes(features: torch.Tensor, *, threshold: float, min_crop: float) -> torch.Tensor:
    """Crop boxes (N, 4) as (x0, y0, x1, y1) in [0, 1] image fractions, from a feature map."""
    with torch.no_grad():
        heat = features.detach().abs().amax(dim=1)  # (N, h, w)
        lo = heat.amin(dim=(1, 2), keepdim=True)
        hi = heat.amax(dim=(1, 2), keepdim=True)
        heat = (heat - lo) / (hi - lo).clamp_min(1e-12)
        mask = heat >= threshold
        mask[~mask.flatten(1).any(1)] = True  # a flat map: use the whole image
        h, w = mask.shape[1:]
        x0, x1 = _span(mask.any(dim=1), w)
        y0, y1 = _span(mask.any(dim=2), h)
        x0, x1 = _widen(x0, x1, min_crop)
        y0, y1 = _widen(y0, y1, min_crop)
        return torch.stack([x0, y0, x1, y1], dim=1)


def _span(hits: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last hit along the last axis, as fractions of ``n``."""
    idx = torch.arange(n, device=hits.device)
    first = torch.where(hits, idx, n).amin(dim=1)
    last = torch.where(hits, idx, -1).amax(dim=1) + 1
    return first.float() / n, last.float() / n


def _widen(a: torch.Tensor, b: torch.Tensor, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    size = (b - a).clamp(min=min(max(min_size, 0.0), 1.0))
    start = ((a + b) / 2 - size / 2).clamp(min=0.0)
    start = torch.minimum(start, 1.0 - size)
    return start, start + size


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box (x0, y0, x1, y1 in [0, 1]) to ``size`` x ``size``."""
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = x1 - x0  # half-width in [-1, 1] coordinates
    theta[:, 0, 2] = x0 + x1 - 1.0  # centre in [-1, 1] coordinates
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [len(x), x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class AttentionFusionNet(nn.Module):
    """Global branch -> attended crop -> local branch -> fused linear head."""

    def __init__(self, cfg: FusionConfig, *, global_branch: nn.Module, local_branch: nn.Module) -> None:
        super().__init__()
        if not 0.0 < cfg.threshold <= 1.0 or not 0.0 < cfg.min_crop <= 1.0:
            raise ValueError("threshold and min_crop must be in (0, 1]")
        self.cfg = cfg
        self.global_branch = global_branch
        self.local_branch = local_branch
        width = int(global_branch.feature_channels) + int(local_branch.feature_channels)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.global_branch.forward_features(x)
        boxes = attention_boxes(g, threshold=self.cfg.threshold, min_crop=self.cfg.min_crop)
        local = self.local_branch.forward_features(crop_and_resize(x, boxes, x.shape[-1]))
        return self.head(torch.cat([g.mean(dim=(2, 3)), local.mean(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def attention_boxes(self, x: torch.Tensor) -> torch.Tensor:
        """The crop boxes the model would use for ``x`` (for plots and reports)."""
        return attention_boxes(self.global_branch.forward_features(x), threshold=self.cfg.threshold,
                               min_crop=self.cfg.min_crop)

    @property
    def cam_layer(self) -> nn.Module:
        """The global branch's last convolution block (it sees the whole image)."""
        return self.global_branch.cam_layer
