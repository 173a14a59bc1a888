"""The site's side of Flower records: model weights and released statistics <-> ``ArrayRecord``.

The only place in ``client`` where arrays meet Flower's record type; everything under it
works on state dicts and numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from torch import nn

from common.weights import load_state, plain_state_dict


def to_record(model: nn.Module) -> ArrayRecord:
    """The plain model's weights (no Opacus wrapper prefix) as a record."""
    return ArrayRecord(plain_state_dict(model))


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Load a record into ``model`` strictly (names and shapes must match)."""
    load_state(model, record.to_torch_state_dict())


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
