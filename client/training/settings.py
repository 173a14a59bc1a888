"""The local training settings a site derives from the run config (one rule for sites and benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.config import RunConfig
from common.models import DP_GRAD_SAMPLE_MODE

if TYPE_CHECKING:
    from client.training.train import TrainSettings


def grad_sample_mode(cfg: RunConfig, *, proximal_mu: float) -> str:
    """The Opacus per-sample-gradient mode for ``cfg``: ``auto`` becomes the model's fastest valid one.

    ``auto`` takes :data:`common.models.DP_GRAD_SAMPLE_MODE` (``hooks`` for a model not
    measured) and never ghost clipping where it cannot work (a loss other than ``ce``, or a
    proximal term).
    """
    if cfg.grad_sample_mode != "auto":
        return cfg.grad_sample_mode
    mode = DP_GRAD_SAMPLE_MODE.get(cfg.model, "hooks")
    if mode == "ghost" and (cfg.local_loss != "ce" or proximal_mu > 0):
        return "hooks"
    return mode


def train_settings(cfg: RunConfig, n: int, server_round: int, *, noise: float, proximal_mu: float,
                   site: str = "") -> TrainSettings:
    """The local training a site with ``n`` images runs in ``server_round`` (benchmarks reuse it).

    The DP noise and batches are secret (``noise_seed=None``: OS entropy at the site) unless the
    run asks for ``reproducible-noise``; then they follow the run's seed, the round and ``site``.
    """
    from client.training.privacy.randomness import reproducible_seed
    from client.training.train import TrainSettings

    noise_seed = reproducible_seed(cfg.seed, server_round, site) if cfg.reproducible_noise else None

    return TrainSettings(
        epochs=cfg.local_epochs, batch_size=min(cfg.batch_size, n), optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, dp=cfg.dp,
        noise_multiplier=noise, max_grad_norm=cfg.max_grad_norm, proximal_mu=proximal_mu,
        grad_sample_mode=grad_sample_mode(cfg, proximal_mu=proximal_mu), seed=cfg.seed * 100_003 + server_round,
        noise_seed=noise_seed, accountant=cfg.accountant, loss=cfg.local_loss, fedrs_alpha=cfg.fedrs_alpha, logit_tau=cfg.logit_adjust_tau,
    )
