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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.records import arrays_record, load_record, record_arrays
from client.site.config import SiteConfig
from client.training.jobs import (
    STATS_KIND,
    Job,
    eval_head,
    finetune_model,
    head_model,
    sgd_job,
    stats_job,
)
from client.training.settings import grad_sample_mode, train_settings  # noqa: F401 - re-exported for callers
from common.compression import REPLY_KEY, compress_update
from common.config import RunConfig
from common.device import pick_device
from common.errors import ConfigError, ImplantFLError
from common.models import build_model

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

# Keys the server adds to the run config it sends; not part of RunConfig itself.
ROUND_KEYS = ("server-round", "catalog-fingerprint", "proximal-mu")
TRAIN_METRICS = (
    "num-examples", "train-loss", "train-accuracy", "epsilon", "epsilon-run",
    "dp-steps", "noise-multiplier", "sample-rate", "max-epsilon",  # the site's own budget: policy, not patient data
)
EVAL_METRICS = ("num-examples", "val-loss", "val-accuracy", "epsilon")


def _metrics(keys: tuple[str, ...], values: Mapping[str, float]) -> MetricRecord:
    return MetricRecord({k: float(values.get(k, 0.0)) if k != "num-examples" else int(values.get(k, 0)) for k in keys})


def _status(site: str, status: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord({"name": site, "status": status, "reason": reason})


def _parse(config: Mapping[str, Any]) -> tuple[RunConfig, int, str]:
    cfg = RunConfig.from_flower(config, ignore=ROUND_KEYS)
    return cfg, int(config.get("server-round", 0)), str(config.get("catalog-fingerprint", ""))


def _load_data(site: SiteConfig, cfg: RunConfig, fingerprint: str):  # noqa: ANN202
    from client.data.site_data import load_site

    catalog = site.catalog()
    if fingerprint and fingerprint != catalog.fingerprint():
        raise ConfigError("the run's catalog differs from this site's catalog; update the site's catalog.json")
    params = dataclasses.replace(site.preprocess, image_size=cfg.image_size)
    data = load_site(
        site.data_dir, catalog=catalog, params=params, label_map=site.label_map,
        cache_dir=site.cache_dir, val_fraction=cfg.val_fraction,
        workers=1,  # inside a ClientApp (a SuperExec or Ray worker): no process pool; `preprocess` fills the cache
    )
    return catalog, data


def _model(cfg: RunConfig, num_classes: int, arrays: ArrayRecord):  # noqa: ANN202
    model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size)
    load_record(model, arrays)
    return model


def train(site: SiteConfig, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    """Train the received global model locally; reply with weights and metrics, or a refusal."""
    try:
        return _train(site, arrays, config, run_id=run_id)
    except ImplantFLError as e:
        logger.error("training refused: %s", e)
        return RecordDict({"metrics": _metrics(TRAIN_METRICS, {}), "site": _status(site.name, "error", str(e))})
    except Exception as e:  # noqa: BLE001 - never let a raw exception text leave the site
        logger.exception("training failed at this site")
        return RecordDict({"metrics": _metrics(TRAIN_METRICS, {}), "site": _status(site.name, "error", type(e).__name__)})


def _train(site: SiteConfig, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    from client.training.privacy import PrivacyLedger, PrivacyPolicy, check

    cfg, server_round, fingerprint = _parse(config)
    catalog, data = _load_data(site, cfg, fingerprint)
    job = _plan(site, arrays, cfg, server_round, catalog, data, proximal_mu=float(config.get("proximal-mu", 0.0)))
    policy = PrivacyPolicy.from_dict(site.policy or {})
    ledger = PrivacyLedger(site.ledger_path, accountant=cfg.accountant)
    decision = check(policy, job.request, ledger)
    if not decision.allowed:
        logger.warning("round %d refused (%s): %s", server_round, decision.code, decision.reason)
        spent = ledger.cumulative_epsilon(policy.delta) if ledger.rows() else 0.0
        return RecordDict({
            "metrics": _metrics(TRAIN_METRICS, {"epsilon": spent, "max-epsilon": policy.max_epsilon}),
            "site": _status(site.name, str(decision.code), str(decision.reason)),
        })
    out = job.execute()
    eps_cum = eps_run = 0.0
    if cfg.dp:
        row = ledger.record_round(
            run_id=str(run_id), round=server_round, noise_multiplier=out.noise_multiplier,
            sample_rate=out.sample_rate, steps=out.steps, delta=cfg.delta,
        )
        eps_cum, eps_run = row.epsilon_cumulative, row.epsilon_run
    logger.info("round %d: %s from %d images, epsilon %.2f", server_round, out.payload, out.metrics["num-examples"],
                eps_cum)
    metrics = {**out.metrics, "epsilon": eps_cum, "epsilon-run": eps_run, "dp-steps": out.steps,
               "noise-multiplier": out.noise_multiplier if cfg.dp else 0.0, "sample-rate": out.sample_rate,
               "max-epsilon": policy.max_epsilon}
    status = _status(site.name, "ok")
    if out.payload == STATS_KIND:
        status["payload"] = STATS_KIND
        return RecordDict({"arrays": out.arrays, "metrics": _metrics(TRAIN_METRICS, metrics), "site": status})
    status[REPLY_KEY] = cfg.update_compression
    return RecordDict({"arrays": _compressed(out.arrays, arrays, cfg.update_compression),
                       "metrics": _metrics(TRAIN_METRICS, metrics), "site": status})


def _plan(site: SiteConfig, arrays: ArrayRecord, cfg: RunConfig, server_round: int, catalog: Any, data: Any,
          *, proximal_mu: float) -> Job:
    """The round's job for this run's route (images, head on features, or the dp-stats release)."""
    x, y = data.train()
    if len(y) == 0:
        raise ConfigError("this site has no accepted training images")
    if not cfg.uses_encoder:
        return sgd_job(site, cfg, server_round, _model(cfg, len(catalog), arrays), x, y,
                       proximal_mu=proximal_mu, augment=True)
    if cfg.head == "finetune":
        return sgd_job(site, cfg, server_round, finetune_model(site, cfg, len(catalog), arrays), x, y,
                       proximal_mu=proximal_mu, augment=True, grad_sample_mode="hooks")
    from client.training.encoder_features import feature_splits

    feats = feature_splits(site, cfg, data, device=pick_device(site.device))
    if cfg.stats_round(server_round):
        return stats_job(site, cfg, server_round, feats.train_x, feats.train_y, len(catalog))
    model = head_model(cfg, feats.dim, len(catalog), arrays)
    return sgd_job(site, cfg, server_round, model, feats.train_x, feats.train_y, proximal_mu=proximal_mu,
                   augment=False, grad_sample_mode="hooks")


def _compressed(new: ArrayRecord, received: ArrayRecord, mode: str) -> ArrayRecord:
    """The trained weights as the run sends them: themselves, or their update at lower precision."""
    try:
        return arrays_record(compress_update(record_arrays(new), record_arrays(received), mode))
    except ValueError as e:  # a non-finite update cannot be quantised; the server would reject it anyway
        raise ImplantFLError(f"the trained update cannot be sent as {mode}: {e}") from e


def evaluate(site: SiteConfig, arrays: ArrayRecord, config: Mapping[str, Any], *, run_id: int) -> RecordDict:
    """Evaluate the received global model on the site's validation split."""
    try:
        from client.training.privacy import PrivacyLedger
        from client.training.train import evaluate as evaluate_model

        cfg, _, fingerprint = _parse(config)
        catalog, data = _load_data(site, cfg, fingerprint)
        x, y = data.val()
        device = pick_device(site.device)
        if cfg.head == "finetune":
            model = finetune_model(site, cfg, len(catalog), arrays)
        elif cfg.uses_encoder:  # the head on the validation split's (cached) features
            from client.training.encoder_features import feature_splits

            feats = feature_splits(site, cfg, data, device=device)
            model, x, y = eval_head(cfg, feats.dim, len(catalog), arrays), feats.val_x, feats.val_y
        else:
            model = _model(cfg, len(catalog), arrays)
        res = evaluate_model(model, x, y, device=device)
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
