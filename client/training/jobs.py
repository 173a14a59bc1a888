"""What a site runs in one train round, planned before it runs: the privacy request, then the work.

Three routes, one shape (:class:`Job`): its :class:`~client.training.privacy.PrivacyRequest` is what
the site's policy and budget are checked against, and ``execute`` does the work only
after that check passed.

- **images**: the end-to-end model (``head = none``) trained with DP-SGD on the images;
- **head**: a head (``linear``, ``mlp``; the DP-SGD rounds of ``dp-stats+linear``) trained
  with DP-SGD on the public encoder's features, or ``finetune`` (the encoder and a linear
  head end to end on the images);
- **stats**: the ``dp-stats`` release, once (sample rate 1, one step).

Noise: planned for ``target-epsilon`` over the whole run (else ``noise-multiplier``). With
``dp-stats+linear`` the release spends ``dp-stats-share`` of the target and the DP-SGD
rounds are planned for the rest, composed after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from client.records import arrays_record, load_record, to_record
from client.site.config import SiteConfig
from client.training.privacy import PrivacyRequest
from common.config import RunConfig
from common.errors import ConfigError
from common.privacy_plan import noise_for_target, one_shot_noise, run_noise, sample_rate

STATS_KIND = "dp-stats"  # the ``site`` record's ``payload`` of a statistics reply


@dataclass(frozen=True)
class Outcome:
    arrays: ArrayRecord  # trained weights, or the released statistics
    metrics: dict[str, float]  # num-examples, train-loss, train-accuracy
    noise_multiplier: float  # what the ledger records (0 without DP)
    sample_rate: float
    steps: int
    payload: str = "weights"  # weights | dp-stats


@dataclass(frozen=True)
class Job:
    request: PrivacyRequest
    execute: Callable[[], Outcome]


def stats_noise(cfg: RunConfig) -> float:
    """Noise multiplier of the dp-stats release (its share of the target when DP-SGD rounds follow)."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    share = cfg.dp_stats_share if cfg.head == "dp-stats+linear" else 1.0
    return one_shot_noise(cfg.target_epsilon * share, delta=cfg.delta, accountant=cfg.accountant)


def sgd_noise(cfg: RunConfig, *, examples: int, batch: int) -> float:
    """DP-SGD noise multiplier for the run's training rounds at a site of ``examples`` images."""
    if cfg.head != "dp-stats+linear":
        return run_noise(cfg, rounds=cfg.num_server_rounds, epochs=cfg.local_epochs, batch_size=batch,
                         examples=examples)
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    steps = (cfg.num_server_rounds - 1) * cfg.local_epochs * math.ceil(examples / batch)
    return noise_for_target(cfg.target_epsilon, sample_rate=sample_rate(examples, batch), steps=steps, delta=cfg.delta,
                            accountant=cfg.accountant, prior=[(stats_noise(cfg), 1.0, 1)])


def _request(cfg: RunConfig, noise: float, clip: float, rate: float, steps: int) -> PrivacyRequest:
    return PrivacyRequest(dp=cfg.dp, noise_multiplier=noise, max_grad_norm=clip, delta=cfg.delta, sample_rate=rate,
                          steps=steps, reproducible_noise=cfg.reproducible_noise)


def stats_job(site: SiteConfig, cfg: RunConfig, server_round: int, x: np.ndarray, y: np.ndarray,
              num_classes: int) -> Job:
    """Release the site's class statistics once (features have norm 1: the 'clip' is 1)."""
    from client.training.privacy.randomness import reproducible_seed
    from client.training.stats_release import release

    noise = stats_noise(cfg) if cfg.dp else 0.0
    seed = reproducible_seed(cfg.seed, server_round, site.name) if cfg.reproducible_noise else None

    def execute() -> Outcome:
        arrays = release(x, y, num_classes=num_classes, solver=cfg.dp_stats_solver, noise_multiplier=noise,
                         dp=cfg.dp, noise_seed=seed)
        record = arrays_record(arrays)
        return Outcome(record, {"num-examples": len(y), "train-loss": 0.0, "train-accuracy": 0.0},
                       noise, 1.0, 1, payload=STATS_KIND)

    return Job(_request(cfg, noise, 1.0, 1.0, 1), execute)


def sgd_job(site: SiteConfig, cfg: RunConfig, server_round: int, model: Any, x: np.ndarray, y: np.ndarray,
            *, proximal_mu: float, augment: bool, grad_sample_mode: str | None = None) -> Job:
    """DP-SGD of ``model`` (already holding the global weights) on ``(x, y)`` for one round."""
    from client.training.settings import train_settings
    from client.training.train import train_local
    from common.device import pick_device

    n = len(y)
    batch = min(cfg.batch_size, n)
    noise = sgd_noise(cfg, examples=n, batch=batch) if cfg.dp else cfg.noise_multiplier
    rate = sample_rate(n, batch)
    steps = cfg.local_epochs * math.ceil(n / batch)

    def execute() -> Outcome:
        import dataclasses

        settings = train_settings(cfg, n, server_round, noise=noise, proximal_mu=proximal_mu, site=site.name)
        settings = dataclasses.replace(settings, augment=augment,
                                       grad_sample_mode=grad_sample_mode or settings.grad_sample_mode)
        result = train_local(model, x, y, settings, device=pick_device(site.device))
        metrics = {"num-examples": n, "train-loss": result.loss, "train-accuracy": result.accuracy}
        return Outcome(to_record(model), metrics, result.noise_multiplier, result.sample_rate, result.steps)

    return Job(_request(cfg, noise, cfg.max_grad_norm, rate, steps), execute)


def head_model(cfg: RunConfig, dim: int, num_classes: int, arrays: ArrayRecord):  # noqa: ANN201
    """The head the server sent (a linear head for the DP-SGD rounds of dp-stats+linear)."""
    from common.models.heads import HeadConfig, build_head

    kind = "linear" if cfg.head in ("dp-stats+linear", "linear") else cfg.head
    if kind not in ("linear", "mlp"):
        raise ConfigError(f"head {cfg.head} has no DP-SGD rounds")
    model = build_head(HeadConfig(kind, dim, num_classes))
    load_record(model, arrays)
    return model


def eval_head(cfg: RunConfig, dim: int, num_classes: int, arrays: ArrayRecord):  # noqa: ANN201
    """The global head to evaluate: the DP-SGD head, or the linear head the server solved from statistics."""
    from common.models.heads import HeadConfig, build_head

    model = build_head(HeadConfig("mlp" if cfg.head == "mlp" else "linear", dim, num_classes))
    load_record(model, arrays)
    return model


def finetune_model(site: SiteConfig, cfg: RunConfig, num_classes: int, arrays: ArrayRecord):  # noqa: ANN201
    """Encoder + linear head, trainable end to end, holding the global weights."""
    from client.training.encoder_features import site_encoder
    from common.models.heads import EncoderClassifier, HeadConfig, build_head

    encoder = site_encoder(site, cfg)
    model = EncoderClassifier(encoder, build_head(HeadConfig("linear", encoder.dim, num_classes)), trainable_encoder=True)
    load_record(model, arrays)
    return model

