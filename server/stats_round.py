"""The dp-stats round at the server: check each site's released statistics, sum them, solve a head.

A site's reply carries, instead of weights, the noised class statistics its run's solver
needs (:mod:`common.dp_stats`). Each is checked before it is used: the site's own status,
``num-examples`` > 0, exactly the expected arrays with the expected shapes, finite values,
and a plausible size (the class sums of ``n`` unit-norm features have Frobenius norm at
most ``n``; the site's stated noise may add a few standard deviations per entry). The
accepted releases are summed in site order (float sums depend on order) and the linear head
solved from the sum becomes the global model. The server never sees a feature, an image
or an unnoised statistic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from common.dp_stats import FeatureStats, sensitivity, solve_head
from server.validation import ReplyVerdict, metrics_of, site_of, update_bytes

logger = logging.getLogger(__name__)

NOISE_ALLOWANCE = 6.0  # standard deviations of noise per entry a release may carry beyond its exact bound


def check_stats(msg: Message, *, num_classes: int, dim: int, solver: str, examples: float,
                noise_multiplier: float) -> tuple[FeatureStats | None, str]:
    """(statistics, "") if a reply's release is usable, else (None, why not)."""
    if len(msg.content.array_records) != 1:
        return None, "expected exactly one ArrayRecord of statistics"
    record = next(iter(msg.content.array_records.values()))
    arrays = {k: record[k].numpy() for k in record.keys()}
    try:
        stats = FeatureStats.from_arrays(arrays, num_classes=num_classes, dim=dim, solver=solver)
    except ValueError as e:
        return None, str(e)
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            return None, f"statistics array {name} holds non-finite values"
    std = max(float(noise_multiplier), 0.0) * sensitivity(solver)
    bound = examples + NOISE_ALLOWANCE * std * np.sqrt(num_classes * dim) + 1e-6
    size = float(np.linalg.norm(stats.sums))
    if size > bound:
        return None, f"class sums of norm {size:.3g} are implausible for {examples:.0f} examples (bound {bound:.3g})"
    return stats, ""


def validate_stats_replies(replies: Iterable[Message], *, num_classes: int, dim: int, solver: str,
                           senders: Mapping[str, str] | None = None) -> tuple[list[ReplyVerdict], dict[str, FeatureStats]]:
    """Judge every statistics reply; returns the verdicts and the accepted statistics by site."""
    verdicts, accepted = [], {}
    for msg in replies:
        site, status, reason = site_of(msg, senders)
        metrics = metrics_of(msg)
        stats = None
        if status == "ok":
            examples = float(metrics.get("num-examples", 0))
            if examples <= 0:
                status, reason = "rejected", "no examples reported"
            else:
                stats, problem = check_stats(msg, num_classes=num_classes, dim=dim, solver=solver, examples=examples,
                                             noise_multiplier=float(metrics.get("noise-multiplier", 0.0)))
                if problem:
                    status, reason = "rejected", problem
        if status != "ok":
            logger.warning("statistics from %s not used (%s): %s", site, status, reason)
        elif stats is not None:
            accepted[site] = stats
        verdicts.append(ReplyVerdict(site, status, reason, metrics, msg if status == "ok" else None, update_bytes(msg)))
    return verdicts, accepted


def solve_global(accepted: Mapping[str, FeatureStats], *, solver: str, ridge: float) -> ArrayRecord | None:
    """The global linear head (``weight``, ``bias``) from the sum of the accepted releases, in site order."""
    if not accepted:
        return None
    total = None
    for site in sorted(accepted):
        total = accepted[site] if total is None else total + accepted[site]
    weight, bias = solve_head(total, solver=solver, ridge=ridge)
    return ArrayRecord({"weight": Array(np.ascontiguousarray(weight)), "bias": Array(np.ascontiguousarray(bias))})
