"""Build the aggregation strategy named in the run config from Flower's own strategies.

With ``client-dp`` set, the strategy averages with equal weights and is wrapped in one of
Flower's DP wrappers (:mod:`server.client_dp`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt

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


def strategy_state(strategy: Strategy) -> dict[str, float]:
    """What a strategy learns during a run that a resumed run must start from (checkpointed).

    Today: the clipping bound of client-level DP with adaptive clipping, which moves every
    round (a restart would otherwise fall back to ``client-dp-clip``).
    """
    adaptive = _adaptive_clipping(strategy)
    return {"adaptive-clipping-norm": float(adaptive.clipping_norm)} if adaptive is not None else {}


def restore_strategy_state(strategy: Strategy, state: dict[str, float]) -> None:
    """Put back what :func:`strategy_state` saved; keys a strategy does not have are ignored."""
    adaptive = _adaptive_clipping(strategy)
    if adaptive is not None and "adaptive-clipping-norm" in state:
        adaptive.clipping_norm = float(state["adaptive-clipping-norm"])


MOMENTS = ("m_t", "v_t")  # FedOpt's (FedAdam's) first and second server-optimizer moments


def strategy_arrays(strategy: Strategy) -> dict[str, np.ndarray]:
    """A strategy's model-sized state that a resumed run must start from (checkpointed next to the weights).

    Today: FedAdam's moments. Without them a restarted FedAdam run would start its server
    optimizer from zero moments and take a different path than the run it continues.
    Keys are ``<moment>.<weight name>``.
    """
    opt = _find(strategy, lambda s: isinstance(s, FedOpt))
    if opt is None:
        return {}
    return {f"{moment}.{k}": np.asarray(v) for moment in MOMENTS for k, v in (getattr(opt, moment) or {}).items()}


def restore_strategy_arrays(strategy: Strategy, arrays: Mapping[str, np.ndarray]) -> None:
    """Put back what :func:`strategy_arrays` saved; nothing happens for a strategy without such state."""
    opt = _find(strategy, lambda s: isinstance(s, FedOpt))
    if opt is None:
        return
    saved: dict[str, dict[str, np.ndarray]] = {moment: {} for moment in MOMENTS}
    for key, value in arrays.items():
        moment, _, name = key.partition(".")
        if moment in saved:
            saved[moment][name] = np.asarray(value)
    for moment, values in saved.items():
        setattr(opt, moment, values or None)


def _adaptive_clipping(strategy: object) -> Any:
    """Flower's adaptive-clipping DP wrapper inside our guards (:mod:`server.client_dp`), if any."""
    return _find(strategy, lambda s: "AdaptiveClipping" in type(s).__name__ and hasattr(s, "clipping_norm"))


def _find(strategy: object, wanted: Callable[[object], bool]) -> Any:
    """The first strategy in the wrapper chain (our guards, Flower's DP wrappers) for which ``wanted`` holds."""
    seen = 0
    while strategy is not None and seen < 8:
        if wanted(strategy):
            return strategy
        # our guards keep what they wrap in ``dp`` / ``inner``; Flower's DP wrappers in ``strategy``
        strategy = getattr(strategy, "dp", None) or getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
        seen += 1
    return None
