"""Pooled (centralised) baseline: the same model trained on all sites' data in one place.

This is the upper bound the federation is compared with; it is trained without DP and
for the same number of passes over the data as the federation (rounds x local epochs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client.train import TrainSettings, evaluate, train_local
from common.config import RunConfig
from common.metrics import classification_summary
from common.models import build_model


@dataclass(frozen=True)
class BaselineResult:
    final: dict  # classification_summary on the test set
    accuracy_per_epoch: list[float]
    wall_s: float
    train_examples: int


def train_centralized(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    cfg: RunConfig,
    class_ids: Sequence[str],
    *,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = False,
) -> BaselineResult:
    """Pool ``train`` splits, train without DP, evaluate on ``test`` after every epoch."""
    t0 = time.monotonic()
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=len(class_ids), image_size=cfg.image_size)
    n_epochs = epochs or cfg.num_server_rounds * cfg.local_epochs
    history = []
    for epoch in _epochs(n_epochs, progress):
        settings = TrainSettings(
            epochs=1, batch_size=cfg.batch_size, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, dp=False, seed=cfg.seed * 100_003 + epoch,
        )
        train_local(model, x, y, settings, device=device)
        history.append(evaluate(model, *test, device=device).accuracy)
    res = evaluate(model, *test, device=device)
    final = classification_summary(res.labels, res.probs, class_ids)
    return BaselineResult(final, history, time.monotonic() - t0, int(len(y)))


def _epochs(n: int, progress: bool):  # noqa: ANN202
    if not progress:
        yield from range(n)
        return
    from rich.progress import track

    yield from track(range(n), description="centralised baseline epochs", transient=True)
