"""Honest baselines of a run with a head, on the same public-encoder features and the same test set.

- ``pooled``: the same encoder and head, all sites' training features in one place, no DP
  (for ``dp-stats``: the same solver on the exact pooled statistics);
- ``pooled_dp``: the same, as if the pool were one DP site at the run's epsilon (what
  federation costs beyond DP);
- ``single_site``: each site alone, DP at the same epsilon, on the same test set (what
  joining the consortium buys it);
- ``pooled_cnn`` (in :mod:`simulations.runner`): the study CNN end to end, no DP.

Each is ``{final: {...}, dp: bool, epsilon}``; ``single_site`` is ``{site: {accuracy, epsilon}}``.
They cost seconds once the features are cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from common.config import RunConfig
from common.metrics import classification_summary
from common.privacy_plan import epsilon_for, history_epsilon, sample_rate

Split = tuple[np.ndarray, np.ndarray]


def _linear_from_stats(x: np.ndarray, y: np.ndarray, cfg: RunConfig, num_classes: int, *, dp: bool,
                       seed: int) -> tuple[torch.nn.Module, float]:
    """The dp-stats head of one (pooled or single) holder of ``(x, y)``; returns (head, epsilon)."""
    from client.training.jobs import stats_noise
    from client.training.privacy.randomness import numpy_generator
    from common.dp_stats import feature_stats, noised, solve_head

    stats = feature_stats(x, y, num_classes)
    eps = 0.0
    if dp:
        z = stats_noise(cfg.replace(head="dp-stats", num_server_rounds=1))
        stats = noised(stats, z, numpy_generator(seed=seed if cfg.reproducible_noise else None),
                       solver=cfg.dp_stats_solver)
        eps = epsilon_for(z, 1.0, steps=1, delta=cfg.delta, accountant=cfg.accountant)
    weight, bias = solve_head(stats, solver=cfg.dp_stats_solver, ridge=cfg.dp_stats_ridge)
    head = torch.nn.Linear(x.shape[1], num_classes)
    head.weight.data = torch.from_numpy(weight)
    head.bias.data = torch.from_numpy(bias)
    return head, eps


def _trained_head(x: np.ndarray, y: np.ndarray, cfg: RunConfig, num_classes: int, *, dp: bool) -> tuple[torch.nn.Module, float]:
    """A linear/MLP head trained as one holder for the run's rounds x local epochs (DP-SGD when ``dp``)."""
    from client.training.settings import train_settings
    from client.training.train import train_local
    from common.models.heads import HeadConfig, build_head
    from common.privacy_plan import run_noise

    kind = "mlp" if cfg.head == "mlp" else "linear"
    head = build_head(HeadConfig(kind, x.shape[1], num_classes))
    batch = min(cfg.batch_size, len(y))
    epochs = cfg.num_server_rounds * cfg.local_epochs
    one = cfg.replace(head="linear", local_epochs=epochs, num_server_rounds=1, dp=dp)
    noise = run_noise(one, rounds=1, epochs=epochs, batch_size=batch, examples=len(y)) if dp else 0.0
    settings = replace(train_settings(one, len(y), 1, noise=noise, proximal_mu=0.0, site="pooled"),
                       augment=False, grad_sample_mode="hooks")
    result = train_local(head, x, y, settings, device=torch.device("cpu"))
    eps = 0.0
    if dp:
        eps = history_epsilon([(noise, sample_rate(len(y), batch), result.steps)], delta=cfg.delta,
                              accountant=cfg.accountant)
    return head, eps


def _fit(x: np.ndarray, y: np.ndarray, cfg: RunConfig, num_classes: int, *, dp: bool, seed: int = 0
         ) -> tuple[torch.nn.Module, float]:
    if cfg.head == "dp-stats":
        return _linear_from_stats(x, y, cfg, num_classes, dp=dp, seed=seed)
    return _trained_head(x, y, cfg, num_classes, dp=dp)


@torch.no_grad()
def _probs(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    head.eval()
    return torch.softmax(head(torch.from_numpy(np.ascontiguousarray(x, np.float32))), dim=1).numpy()


def head_baselines(train: Mapping[str, Split], test: Split, cfg: RunConfig, class_ids: Sequence[str]) -> dict:
    """``pooled``, ``pooled_dp`` and ``single_site`` for a run with a head (``train``: site -> features, labels)."""
    c = len(class_ids)
    x = np.concatenate([t[0] for t in train.values()])
    y = np.concatenate([t[1] for t in train.values()])
    out: dict = {}
    head, _ = _fit(x, y, cfg, c, dp=False)
    out["pooled"] = {"final": classification_summary(test[1], _probs(head, test[0]), class_ids), "dp": False,
                     "epsilon": 0.0, "train_examples": int(len(y)), "head": cfg.head}
    if cfg.dp:
        head, eps = _fit(x, y, cfg, c, dp=True, seed=1)
        out["pooled_dp"] = {"final": classification_summary(test[1], _probs(head, test[0]), class_ids), "dp": True,
                            "epsilon": round(eps, 4), "train_examples": int(len(y)), "head": cfg.head}
    singles = {}
    for k, (site, (xs, ys)) in enumerate(sorted(train.items())):
        if len(ys) == 0:
            continue
        head, eps = _fit(xs, ys, cfg, c, dp=cfg.dp, seed=100 + k)
        acc = float((_probs(head, test[0]).argmax(1) == test[1]).mean())
        singles[site] = {"accuracy": round(acc, 4), "epsilon": round(eps, 4), "train_examples": int(len(ys))}
    out["single_site"] = singles
    return out


def cnn_baseline_config(cfg: RunConfig) -> RunConfig:
    """The study CNN's pooled recipe (Adam, 20 passes, batch 32): the end-to-end non-private reference."""
    return cfg.replace(head="none", encoder="", model="cnn", num_server_rounds=10, local_epochs=2, optimizer="adam",
                       learning_rate=0.002, batch_size=32, dp=False)
