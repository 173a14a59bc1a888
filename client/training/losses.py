"""Local training losses for sites that hold only a few of the catalog's classes.

A manufacturer site sees only its own implant models; plain cross-entropy then pushes
every absent class's logit down at every step, and the averaged model forgets what the
other sites taught it. The options here change only the local loss:

``ce``
    plain cross-entropy.
``fedrs``
    restricted softmax (FedRS, Li & Zhan, KDD 2021): the logits of classes absent from
    the site are scaled by ``alpha`` in [0, 1] before the softmax, so they are pushed
    down less. ``alpha = 1`` is cross-entropy.
``logit-adjust``
    logit-adjusted cross-entropy (Menon et al., ICLR 2021; Balanced Softmax at
    ``tau = 1``): ``CE(z + tau * log prior, y)`` with the site's class prior. Absent
    classes get ``log 0 = -inf``: they drop out of the local softmax and receive no
    gradient (restricted softmax in its limit).
``class-balanced``
    cross-entropy weighted by the effective number of samples per class (Cui et al.,
    CVPR 2019), ``w_c ~ (1 - beta) / (1 - beta ** n_c)``, normalised so the mean weight
    over the site's examples is 1.

DP-SGD compatibility: every loss is a mean of per-sample terms, each depending only on
that sample's logits and label, so Opacus' per-sample gradients and ``mean`` reduction
stay valid. The site's class set and counts enter the loss as constants: DP-SGD's
guarantee covers the images and labels of the gradient steps, not these counts. For a
manufacturer site the class set is its public product list; a hospital that must keep
its class prevalence private should use ``ce`` or ``fedrs`` (which needs only the set).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("ce", "fedrs", "logit-adjust", "class-balanced")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_counts(labels: np.ndarray, num_classes: int | None = None) -> torch.Tensor:
    """Examples per class (float), length ``max(num_classes, max label + 1)``."""
    y = np.asarray(labels, dtype=np.int64)
    return torch.as_tensor(np.bincount(y, minlength=num_classes or 0), dtype=torch.float32)


def _fit(counts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Counts padded (absent classes = 0) to the logits' width, on their device."""
    c = logits.shape[1]
    if len(counts) > c:
        raise ValueError("a label is outside the model's output classes")
    return F.pad(counts, (0, c - len(counts))).to(device=logits.device, dtype=logits.dtype)


def fedrs_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """FedRS: absent classes' logits scaled by ``alpha`` before cross-entropy."""
    present = _fit(counts, logits) > 0
    scale = torch.where(present, torch.ones_like(logits[0]), torch.full_like(logits[0], alpha))
    return F.cross_entropy(logits * scale, target)


def logit_adjusted_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Cross-entropy on ``logits + tau * log(prior)``; absent classes drop out."""
    if tau == 0:
        return F.cross_entropy(logits, target)
    c = _fit(counts, logits)
    shift = tau * torch.log(c / c.sum())  # -inf for absent classes
    return F.cross_entropy(logits + shift, target)


def class_balanced_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Effective-number weighted cross-entropy, mean over the batch (not weight-normalised per batch)."""
    c = _fit(counts, logits)
    present = c > 0
    weights = torch.where(present, (1.0 - beta) / (1.0 - beta ** c.clamp_min(1.0)), torch.zeros_like(c))
    weights = weights * c.sum() / (weights * c).sum()  # mean weight over the site's examples = 1
    per_sample = F.cross_entropy(logits, target, reduction="none")
    return (weights[target] * per_sample).mean()


def make_loss(
    name: str,
    labels: np.ndarray,
    *,
    fedrs_alpha: float = 0.5,
    logit_tau: float = 1.0,
    cb_beta: float = 0.999,
) -> Loss:
    """The local loss ``(logits, target) -> scalar`` for a site whose training labels are ``labels``."""
    if name == "ce":
        return F.cross_entropy
    if name not in LOSSES:
        raise ValueError(f"unknown local loss {name!r}; choose one of {', '.join(LOSSES)}")
    counts = class_counts(labels)
    if name == "fedrs":
        if not 0.0 <= fedrs_alpha <= 1.0:
            raise ValueError("fedrs alpha must be in [0, 1]")
        return lambda z, t: fedrs_loss(z, t, counts, alpha=fedrs_alpha)
    if name == "logit-adjust":
        if logit_tau < 0:
            raise ValueError("logit-adjustment tau must be >= 0")
        return lambda z, t: logit_adjusted_loss(z, t, counts, tau=logit_tau)
    if not 0.0 <= cb_beta < 1.0:
        raise ValueError("class-balanced beta must be in [0, 1)")
    return lambda z, t: class_balanced_loss(z, t, counts, beta=cb_beta)
