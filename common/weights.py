"""Model weights as plain numpy, and the update norm.

Weights always travel as the *plain* model's ``state_dict`` (never an Opacus
``GradSampleModule``'s), so DP-trained checkpoints load into plain models. The Flower
records they travel in are the adapters' (``client.records``, ``server.records``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def plain_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """State dict of ``model`` with any Opacus ``_module.`` wrapper prefix removed."""
    inner = getattr(model, "_module", model)
    return OrderedDict((k, v.detach().cpu()) for k, v in inner.state_dict().items())


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict into the plain ``model`` (inside any Opacus wrapper) strictly."""
    inner = getattr(model, "_module", model)
    inner.load_state_dict(dict(state), strict=True)


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (what a reply carries, without the transport's framing)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def update_norm(new: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``new - ref`` over all floating-point arrays (NaN/inf propagate)."""
    total = 0.0
    for key, ref_arr in ref.items():
        if not np.issubdtype(ref_arr.dtype, np.floating):
            continue
        diff = np.asarray(new[key], dtype=np.float64) - ref_arr.astype(np.float64)
        total += float(np.sum(diff * diff))
    return float(np.sqrt(total))
