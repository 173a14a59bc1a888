"""Checkpoints of a federated run: global weights, round, history, strategy state. Written atomically.

``state.json`` is written last, so a checkpoint is complete when it exists; a strategy
with model-sized state (FedAdam's moments) keeps it in ``strategy.npz``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from common.errors import InvalidInputError
from server.history import RunHistory

logger = logging.getLogger(__name__)

WEIGHTS = "global.npz"
STATE = "state.json"
STRATEGY = "strategy.npz"


@dataclass
class Checkpoint:
    round: int  # last completed round
    arrays: ArrayRecord  # global model after that round
    history: RunHistory
    meta: dict[str, Any]  # run config, catalog fingerprint, strategy
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. FedAdam's moments


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.numpy() for k, v in ckpt.arrays.items()}

    def npz_writer(values: dict[str, np.ndarray]) -> Any:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **values)
        return write

    _atomic_write(directory / WEIGHTS, npz_writer(arrays))
    if ckpt.strategy_arrays:
        _atomic_write(directory / STRATEGY, npz_writer(ckpt.strategy_arrays))
    else:
        (directory / STRATEGY).unlink(missing_ok=True)
    state = {"round": ckpt.round, "history": ckpt.history.to_list(), "meta": ckpt.meta}
    _atomic_write(directory / STATE, lambda tmp: tmp.write_text(json.dumps(state, indent=1)))
    logger.info("checkpoint saved after round %d", ckpt.round)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The last checkpoint in ``directory``, or None if there is none."""
    if not (directory / STATE).exists() or not (directory / WEIGHTS).exists():
        return None
    try:
        state = json.loads((directory / STATE).read_text())
        with np.load(directory / WEIGHTS) as npz:
            arrays = ArrayRecord({k: Array(npz[k]) for k in npz.files})
        strategy_arrays: dict[str, np.ndarray] = {}
        if (directory / STRATEGY).exists():
            with np.load(directory / STRATEGY) as npz:
                strategy_arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"checkpoint cannot be read: {type(e).__name__}") from e
    return Checkpoint(int(state["round"]), arrays, RunHistory.from_list(state["history"]), dict(state["meta"]),
                      strategy_arrays)
