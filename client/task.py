"""One federated task at a site: train or evaluate the global model on local data.

Sits between the Flower adapter (``client.app``) and the Flower-free training code: it
parses what the server asked for, enforces the site's privacy policy and budget against
its ledger, trains, records the privacy spent, and builds the reply records.

Every reply carries the same metric keys (the server validates that) and a ``site``
ConfigRecord with the site name and a ``status``: ``ok``, ``policy-refused``,
``budget-exhausted`` or ``error``. Refusals carry no weights. Error texts are built
from our own exception messages only, which never hold paths or patient values. A train
reply's weights travel as run-config ``update-compression`` asks (:mod:`common.compression`);
its ``site`` record then names the mode under ``compression`` for the server to rebuild them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.runtime import SiteRuntime
from common.compression import REPLY_KEY, compress_update
from common.config import RunConfig
from common.device import pick_device
from common.errors import ConfigError, ImplantFLError
from common.models import DP_GRAD_SAMPLE_MODE, build_model
from common.weights import load_record, to_record

if TYPE_CHECKING:
    from client.train import TrainSettings

logger = logging.getLogger(__name__)

# Keys the server adds to the run config it sends; not part of RunConfig itself.
ROUND_KEYS = ("server-round", "catalog-fingerprint", "proximal-mu")
TRAIN_METRICS = (
    "num-examples", "train-loss", "train-accuracy", "epsilon", "epsilon-run",
    "dp-steps", "noise-multiplier", "sample-rate",
)
EVAL_METRICS = ("num-examples", "val-loss", "val-accuracy", "epsilon")


def _metrics(keys: tuple[str, ...], values: Mapping[str, float]) -> MetricRecord:
    return MetricRecord({k: float(values.get(k, 0.0)) if k != "num-examples" else int(values.get(k, 0)) for k in keys})


def _status(site: str, status: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord({"name": site, "status": status, "reason": reason})


def _parse(config: Mapping[str, Any]) -> tuple[RunConfig, int, str]:
    cfg = RunConfig.from_flower(config, ignore=ROUND_KEYS)
    return cfg, int(config.get("server-round", 0)), str(config.get("catalog-fingerprint", ""))


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
    from client.privacy.randomness import reproducible_seed
    from client.train import TrainSettings

    noise_seed = reproducible_seed(cfg.seed, server_round, site) if cfg.reproducible_noise else None

    return TrainSettings(
        epochs=cfg.local_epochs, batch_size=min(cfg.batch_size, n), optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay, dp=cfg.dp,
        noise_multiplier=noise, max_grad_norm=cfg.max_grad_norm, proximal_mu=proximal_mu,
        grad_sample_mode=grad_sample_mode(cfg, proximal_mu=proximal_mu), seed=cfg.seed * 100_003 + server_round,
        noise_seed=noise_seed, accountant=cfg.accountant, loss=cfg.local_loss, fedrs_alpha=cfg.fedrs_alpha, logit_tau=cfg.logit_adjust_tau,
    )


def _load_data(site: SiteRuntime, cfg: RunConfig, fingerprint: str):  # noqa: ANN202
    from client.site_data import load_site

    catalog = site.catalog()
    if fingerprint and fingerprint != catalog.fingerprint():
        raise ConfigError("the run's catalog differs from this site's catalog; update the site's catalog.json")
    params = dataclasses.replace(site.preprocess, image_size=cfg.image_size)
    data = load_site(
        site.data_dir, catalog=catalog, params=params, label_map=site.label_map,
        cache_dir=site.cache_dir, val_fraction=cfg.val_fraction,
    )
    return catalog, data


def _model(cfg: RunConfig, num_classes: int, arrays: ArrayRecord):  # noqa: ANN202
    model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    load_record(model, arrays)
    return model


def train(site: SiteRuntime, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    """Train the received global model locally; reply with weights and metrics, or a refusal."""
    try:
        return _train(site, arrays, config, run_id=run_id)
    except ImplantFLError as e:
        logger.error("training refused: %s", e)
        return RecordDict({"metrics": _metrics(TRAIN_METRICS, {}), "site": _status(site.name, "error", str(e))})
    except Exception as e:  # noqa: BLE001 - never let a raw exception text leave the site
        logger.exception("training failed at this site")
        return RecordDict({"metrics": _metrics(TRAIN_METRICS, {}), "site": _status(site.name, "error", type(e).__name__)})


def _train(site: SiteRuntime, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    from client.privacy import PrivacyLedger, PrivacyPolicy, PrivacyRequest, check
    from client.train import train_local

    cfg, server_round, fingerprint = _parse(config)
    proximal_mu = float(config.get("proximal-mu", 0.0))
    catalog, data = _load_data(site, cfg, fingerprint)
    x, y = data.train()
    n = len(y)
    if n == 0:
        raise ConfigError("this site has no accepted training images")
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    sample_rate = 1.0 / steps_per_epoch
    noise = cfg.noise_multiplier
    if cfg.dp:
        from common.privacy_plan import run_noise

        noise = run_noise(cfg, rounds=cfg.num_server_rounds, epochs=cfg.local_epochs, batch_size=batch, examples=n)

    policy = PrivacyPolicy.from_dict(site.policy or {})
    ledger = PrivacyLedger(site.ledger_path, accountant=cfg.accountant)
    request = PrivacyRequest(
        dp=cfg.dp, noise_multiplier=noise, max_grad_norm=cfg.max_grad_norm, delta=cfg.delta,
        sample_rate=sample_rate, steps=cfg.local_epochs * steps_per_epoch, reproducible_noise=cfg.reproducible_noise,
    )
    decision = check(policy, request, ledger)
    if not decision.allowed:
        logger.warning("round %d refused (%s): %s", server_round, decision.code, decision.reason)
        spent = ledger.cumulative_epsilon(policy.delta) if ledger.rows() else 0.0
        return RecordDict({
            "metrics": _metrics(TRAIN_METRICS, {"epsilon": spent}),
            "site": _status(site.name, str(decision.code), str(decision.reason)),
        })

    device = pick_device(site.device)
    model = _model(cfg, len(catalog), arrays)
    settings = train_settings(cfg, n, server_round, noise=noise, proximal_mu=proximal_mu, site=site.name)
    result = train_local(model, x, y, settings, device=device)
    eps_cum = eps_run = 0.0
    if cfg.dp:
        row = ledger.record_round(
            run_id=str(run_id), round=server_round, noise_multiplier=noise,
            sample_rate=result.sample_rate, steps=result.steps, delta=cfg.delta,
        )
        eps_cum, eps_run = row.epsilon_cumulative, row.epsilon_run
    logger.info("round %d trained on %d images, loss %.3f, epsilon %.2f", server_round, n, result.loss, eps_cum)
    metrics = {
        "num-examples": n, "train-loss": result.loss, "train-accuracy": result.accuracy,
        "epsilon": eps_cum, "epsilon-run": eps_run, "dp-steps": result.steps,
        "noise-multiplier": result.noise_multiplier, "sample-rate": result.sample_rate,
    }
    status = _status(site.name, "ok")
    status[REPLY_KEY] = cfg.update_compression
    return RecordDict({"arrays": _compressed(to_record(model), arrays, cfg.update_compression),
                       "metrics": _metrics(TRAIN_METRICS, metrics), "site": status})


def _compressed(new: ArrayRecord, received: ArrayRecord, mode: str) -> ArrayRecord:
    """The trained weights as the run sends them: themselves, or their update at lower precision."""
    try:
        return compress_update(new, received, mode)
    except ValueError as e:  # a non-finite update cannot be quantised; the server would reject it anyway
        raise ImplantFLError(f"the trained update cannot be sent as {mode}: {e}") from e


def evaluate(site: SiteRuntime, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    """Evaluate the received global model on the site's validation split."""
    try:
        from client.privacy import PrivacyLedger
        from client.train import evaluate as evaluate_model

        cfg, _, fingerprint = _parse(config)
        catalog, data = _load_data(site, cfg, fingerprint)
        x, y = data.val()
        model = _model(cfg, len(catalog), arrays)
        res = evaluate_model(model, x, y, device=pick_device(site.device))
        ledger = PrivacyLedger(site.ledger_path, accountant=cfg.accountant)
        eps = ledger.cumulative_epsilon(cfg.delta) if ledger.rows() else 0.0
        metrics = {"num-examples": res.num_examples, "val-loss": res.loss, "val-accuracy": res.accuracy, "epsilon": eps}
        return RecordDict({"metrics": _metrics(EVAL_METRICS, metrics), "site": _status(site.name, "ok")})
    except ImplantFLError as e:
        logger.error("evaluation refused: %s", e)
        return RecordDict({"metrics": _metrics(EVAL_METRICS, {}), "site": _status(site.name, "error", str(e))})
    except Exception as e:  # noqa: BLE001
        logger.exception("evaluation failed at this site")
        return RecordDict({"metrics": _metrics(EVAL_METRICS, {}), "site": _status(site.name, "error", type(e).__name__)})
