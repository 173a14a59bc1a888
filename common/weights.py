"""Model weights <-> Flower records and plain numpy, plus the update norm.

Weights always travel as the *plain* model's ``state_dict`` (never an Opacus
``GradSampleModule``'s), so DP-trained checkpoints load into plain models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn


def plain_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """State dict of ``model`` with any Opacus ``_module.`` wrapper prefix removed."""
    inner = getattr(model, "_module", model)
    return OrderedDict((k, v.detach().cpu()) for k, v in inner.state_dict().items())


def to_record(model: nn.Module) -> ArrayRecord:
    return ArrayRecord(plain_state_dict(model))


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Load an ArrayRecord into ``model`` strictly (shapes and keys must match)."""
    inner = getattr(model, "_module", model)
    inner.load_state_dict(record.to_torch_state_dict(), strict=True)


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def update_norm(new: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``new - ref`` over all floating-point arrays (NaN/inf propagate)."""
    total = 0.0
    for key, ref_arr in ref.items():
        if not np.issubdtype(ref_arr.dtype, np.floating):
            continue
        diff = np.asarray(new[key], dtype=np.float64) - ref_arr.astype(np.float64)
        total += float(np.sum(diff * diff))
    return float(np.sqrt(total))
