"""A probability-averaging ensemble trained as one model in one federated run.

The founding MURA study averaged the class probabilities of DenseNet, ResNet-50 and a
fusion network. Here the members live in one ``nn.Module`` whose forward returns the
log of the (weighted) mean of the members' softmax probabilities::

    out = log( sum_m w_m softmax(f_m(x)) ),   sum_m w_m = 1

so ``softmax(out)`` is the vote, and cross-entropy on ``out`` is the negative
log-likelihood of the mixture: the usual training loop, DP-SGD included, trains the
members jointly without any change (per-sample gradients stay per sample).

``member_weights`` is a buffer (uniform when built): it travels with the weights and
FedAvg keeps it on the simplex. :func:`fit_ensemble_weights` fits it on held-out data
after training. That step reads the validation images directly and is *not* covered by
DP-SGD's guarantee: run it on data whose owner allows it (e.g. a public test set or
the researcher's own split), never silently at a site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ProbabilityEnsemble(nn.Module):
    """Members' softmax probabilities averaged with ``member_weights``; returns log-probs."""

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.names = tuple(names) if names is not None else tuple(f"member{i}" for i in range(len(members)))
        if len(self.names) != len(members):
            raise ValueError("one name per member")
        self.register_buffer("member_weights", torch.full((len(members),), 1.0 / len(members)))

    def member_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, C) log-softmax of every member."""
        return torch.stack([F.log_softmax(m(x), dim=1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.member_log_probs(x), self.member_weights)

    @property
    def cam_layer(self) -> nn.Module:
        """The Grad-CAM layer of the most heavily weighted member that has one."""
        order = torch.argsort(self.member_weights, descending=True, stable=True).tolist()
        for i in order:
            layer = getattr(self.members[i], "cam_layer", None)
            if isinstance(layer, nn.Module):
                return layer
        raise AttributeError("no ensemble member has a cam_layer")


def _mix(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log sum_m w_m p_m, computed stably in log space."""
    log_w = torch.log(weights.clamp_min(1e-12)).to(log_probs.dtype)
    return torch.logsumexp(log_probs + log_w[:, None, None], dim=0)


def fit_ensemble_weights(
    model: ProbabilityEnsemble,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 0.1,
    batch_size: int = 256,
) -> torch.Tensor:
    """Fit ``member_weights`` to minimise the mixture's NLL on (x_val, y_val); returns them.

    The NLL of a mixture is convex in the weights; they are parametrised by a softmax and
    fitted with Adam on the members' cached validation log-probabilities.
    """
    x = torch.as_tensor(np.asarray(x_val, dtype=np.float32) if isinstance(x_val, np.ndarray) else x_val)
    y = torch.as_tensor(np.asarray(y_val) if isinstance(y_val, np.ndarray) else y_val).long()
    if len(y) == 0:
        raise ValueError("no validation examples to fit the ensemble weights on")
    device = model.member_weights.device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        parts = [model.member_log_probs(x[i : i + batch_size].to(device)) for i in range(0, len(y), batch_size)]
    model.train(was_training)
    log_probs = torch.cat(parts, dim=1)  # (M, N, C)
    picked = log_probs.gather(2, y.to(device)[None, :, None].expand(len(log_probs), -1, 1)).squeeze(2)  # (M, N)
    logits = torch.zeros(len(log_probs), device=device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nll = -torch.logsumexp(picked + F.log_softmax(logits, dim=0)[:, None], dim=0).mean()
        nll.backward()
        opt.step()
    weights = F.softmax(logits.detach(), dim=0)
    model.member_weights.copy_(weights)
    return weights.clone()
