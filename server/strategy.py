"""Build the aggregation strategy named in the run config from Flower's own strategies.

With ``client-dp`` set, the strategy averages with equal weights and is wrapped in one of
Flower's DP wrappers (:mod:`server.client_dp`).
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from common.config import RunConfig
from server.client_dp import EQUAL_WEIGHT_KEY, wrap


def build_strategy(cfg: RunConfig) -> Strategy:
    """Return a Flower strategy configured from ``cfg`` (sampling, minimums, method, client-level DP)."""
    inner = _base_strategy(cfg)
    return wrap(cfg, inner) if cfg.client_dp != "none" else inner


def _base_strategy(cfg: RunConfig) -> Strategy:
    common = dict(
        fraction_train=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_fit_sites,
        min_evaluate_nodes=min(cfg.min_fit_sites, cfg.min_available_sites) if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_available_sites,
    )
    if cfg.client_dp != "none":  # RunConfig allows it only with the averaging strategies
        common["weighted_by_key"] = EQUAL_WEIGHT_KEY
    if cfg.strategy == "fedavg":
        return FedAvg(**common)
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_learning_rate, eta_l=cfg.learning_rate, **common)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(beta=cfg.trimmed_beta, **common)
    if cfg.strategy == "krum":
        return Krum(num_malicious_nodes=1, **common)
    raise AssertionError(f"unhandled strategy {cfg.strategy}")  # RunConfig validated it
