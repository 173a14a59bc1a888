"""Pooled (centralised) baseline: the same model trained on all sites' data in one place.

This is the upper bound the federation is compared with; it is trained without DP and
for the same number of passes over the data as the federation (rounds x local epochs).
With ``dp=True`` (``implantfl-sim centralized --dp``) the pooled data are trained with
DP-SGD as if they were one site, with the noise planned for the run's ``target-epsilon``
(or its ``noise-multiplier``): the private pooled figure, which separates what DP costs
from what federation costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from client.task import grad_sample_mode
from client.training.privacy.randomness import reproducible_seed
from client.training.train import TrainSettings, evaluate, train_local
from common.config import RunConfig
from common.metrics import classification_summary
from common.models import build_model
from common.privacy_plan import epsilon_for, run_noise


@dataclass(frozen=True)
class BaselineResult:
    final: dict  # classification_summary on the test set
    accuracy_per_epoch: list[float]
    wall_s: float
    train_examples: int
    privacy: dict | None = None  # with dp: epsilon, delta, noise_multiplier, sample_rate, steps, accountant


def train_centralized(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    cfg: RunConfig,
    class_ids: Sequence[str],
    *,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = False,
    dp: bool = False,
) -> BaselineResult:
    """Pool ``train`` splits, train (with DP-SGD if ``dp``), evaluate on ``test`` after every epoch."""
    t0 = time.monotonic()
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=len(class_ids), image_size=cfg.image_size)
    n_epochs = epochs or cfg.num_server_rounds * cfg.local_epochs
    batch = min(cfg.batch_size, len(y))
    noise = run_noise(cfg, rounds=1, epochs=n_epochs, batch_size=batch, examples=len(y)) if dp else 0.0
    settings = TrainSettings(
        epochs=1, batch_size=batch, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, dp=dp, noise_multiplier=noise, max_grad_norm=cfg.max_grad_norm,
        grad_sample_mode=grad_sample_mode(cfg, proximal_mu=0.0), accountant=cfg.accountant,
    )
    history, steps, sample_rate = [], 0, 0.0
    for epoch in _epochs(n_epochs, progress):
        noise_seed = reproducible_seed(cfg.seed, epoch, "pooled") if cfg.reproducible_noise else None
        result = train_local(model, x, y, replace(settings, seed=cfg.seed * 100_003 + epoch, noise_seed=noise_seed),
                             device=device)
        steps, sample_rate = steps + result.steps, result.sample_rate
        res = evaluate(model, *test, device=device)  # after every epoch; the last one is the final result
        history.append(res.accuracy)
    final = classification_summary(res.labels, res.probs, class_ids)
    privacy = None
    if dp:
        privacy = {"epsilon": epsilon_for(noise, sample_rate, steps=steps, delta=cfg.delta, accountant=cfg.accountant),
                   "delta": cfg.delta, "noise_multiplier": noise, "sample_rate": sample_rate, "steps": steps,
                   "accountant": cfg.accountant}
    return BaselineResult(final, history, time.monotonic() - t0, int(len(y)), privacy)


def _epochs(n: int, progress: bool):  # noqa: ANN202
    if not progress:
        yield from range(n)
        return
    from rich.progress import track

    yield from track(range(n), description="centralised baseline epochs", transient=True)
