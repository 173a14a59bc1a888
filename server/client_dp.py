"""Client-level (user-level) DP: Flower's DP strategy wrappers, and the guarantee they give.

Run-config key ``client-dp`` wraps the aggregation strategy in one of Flower's four
Message-API wrappers (``flwr.serverapp.strategy.DifferentialPrivacy{Server,Client}Side
{Fixed,Adaptive}Clipping``). Each round every accepted site update ``new - global`` is
clipped to L2 norm ``client-dp-clip`` (by the server, or at the site by Flower's
``fixedclipping_mod`` / ``adaptiveclipping_mod``, see ``client.app``), the clipped updates
are averaged with *equal* weights, and Gaussian noise of standard deviation
``client-dp-noise * clip / client-dp-sampled-sites`` is added to the average. The adaptive
variants move the clipping bound each round towards ``client-dp-target-quantile``
(Andrew et al. 2019).

The guarantee covers a whole site (all of its images, every round) and the released
global model; the server itself is trusted (it sees every individual update).
:func:`client_dp_guarantee` states it for ``results.json``, with an epsilon from Opacus'
RDP accountant.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from common.config import RunConfig

logger = logging.getLogger(__name__)

EQUAL_WEIGHT_KEY = "client-dp-weight"  # the inner strategy's ``weighted_by_key`` under client-level DP


class EqualWeights(Strategy):
    """Delegate to ``inner`` (weighted by :data:`EQUAL_WEIGHT_KEY`), giving every reply weight 1.

    The DP wrappers calibrate their noise to the mean of clipped updates; an average
    weighted by ``num-examples`` would let one large site move the model by up to the
    whole clipping bound. The weight is set here, at the server, never taken from a site.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, _with_equal_weights(replies))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, _with_equal_weights(replies))

    def summary(self) -> None:
        self.inner.summary()


class ServerClipGuard(Strategy):
    """Outermost layer when the server clips: keeps an unchanged model from crashing Flower's clipping.

    Flower's server-side clipping divides the bound by each update's norm
    (``flwr.supercore.differential_privacy.clip_inputs_inplace``), so one reply that is
    exactly the global model (a site that did not move, or a hostile one) would stop the
    run with ZeroDivisionError. Such a reply is moved by one unit in the last place (at
    least 1e-15) in one weight: a non-zero update far below any training step.
    """

    def __init__(self, dp: Strategy) -> None:
        self.dp = dp
        self._sent: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = arrays
        return self.dp.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        out = list(replies)
        if self._sent is not None:
            for msg in out:
                _nudge_if_unchanged(msg, self._sent)
        return self.dp.aggregate_train(server_round, out)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.dp.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.dp.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.dp.summary()


def _nudge_if_unchanged(msg: Message, sent: ArrayRecord) -> None:
    if msg.has_error() or len(msg.content.array_records) != 1:
        return
    key, record = next(iter(msg.content.array_records.items()))
    arrays = {k: record[k].numpy() for k in record.keys()}
    if any(k not in sent or not np.array_equal(v, sent[k].numpy()) for k, v in arrays.items()):
        return
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating) and v.size:
            moved = v.copy()
            x = moved.flat[0]
            moved.flat[0] = x + max(np.spacing(abs(x)), 1e-15)  # 1e-15: its square must not underflow to 0
            arrays[k] = moved
            logger.warning("a site sent back the global model unchanged; moved by one ulp for Flower's clipping")
            break
    msg.content[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _with_equal_weights(replies: Iterable[Message]) -> list[Message]:
    out = list(replies)
    for msg in out:
        if not msg.has_error():
            for record in msg.content.metric_records.values():
                record[EQUAL_WEIGHT_KEY] = 1
    return out


def wrap(cfg: RunConfig, inner: Strategy) -> Strategy:
    """``inner`` (built with ``weighted_by_key=EQUAL_WEIGHT_KEY``) inside the wrapper ``cfg.client_dp`` names.

    Server-side clipping comes inside a :class:`ServerClipGuard`; its ``dp`` is Flower's wrapper.
    """
    base = EqualWeights(inner)
    n = cfg.client_dp_sites
    if cfg.client_dp == "fixed-server":
        return ServerClipGuard(DifferentialPrivacyServerSideFixedClipping(base, cfg.client_dp_noise, cfg.client_dp_clip, n))
    if cfg.client_dp == "fixed-client":
        return DifferentialPrivacyClientSideFixedClipping(base, cfg.client_dp_noise, cfg.client_dp_clip, n)
    adaptive = dict(
        initial_clipping_norm=cfg.client_dp_clip, target_clipped_quantile=cfg.client_dp_target_quantile,
        clip_norm_lr=cfg.client_dp_clip_lr, clipped_count_stddev=cfg.client_dp_count_stddev or None,
    )
    if cfg.client_dp == "adaptive-server":
        return ServerClipGuard(DifferentialPrivacyServerSideAdaptiveClipping(base, cfg.client_dp_noise, n, **adaptive))
    if cfg.client_dp == "adaptive-client":
        return DifferentialPrivacyClientSideAdaptiveClipping(base, cfg.client_dp_noise, n, **adaptive)
    raise AssertionError(f"unhandled client-dp {cfg.client_dp}")  # RunConfig validated it


def sampled_per_round(cfg: RunConfig, num_sites: int) -> int:
    """Sites Flower's FedAvg samples per round from ``num_sites`` connected ones (its own formula)."""
    return min(num_sites, max(int(num_sites * cfg.fraction_fit), cfg.min_fit_sites))


def client_dp_guarantee(cfg: RunConfig, rounds: Sequence[Mapping[str, Any]], *, num_sites: int) -> dict[str, Any]:
    """The client-level guarantee of a finished run, for ``results.json`` (``client_level_privacy``).

    ``rounds`` is the run history (``results.json`` ``rounds``); a round's
    ``aggregate["sites-used"]`` is the number of updates that went into the noisy average.
    The noise is calibrated for ``client-dp-sampled-sites`` updates; a round that averaged
    ``k`` fewer is accounted with the smaller effective noise multiplier
    ``noise * k / sampled`` (never the larger one when ``k`` is above it). Epsilon is
    Opacus' RDP accountant over the released rounds, with the sampling rate = sampled
    sites / connected sites (Poisson-subsampling analysis of a fixed-size uniform sample,
    as in McMahan et al. 2018; exact when every site is sampled).
    """
    sampled = sampled_per_round(cfg, num_sites)
    q = sampled / num_sites if num_sites else 1.0
    used = [int(r.get("aggregate", {}).get("sites-used", 0)) for r in rounds]
    released = [k for k in used if k > 0]
    effective = [cfg.client_dp_noise * min(1.0, k / cfg.client_dp_sites) for k in released]
    out: dict[str, Any] = {
        "mechanism": cfg.client_dp,
        "unit": "site (all of a site's images, every round)",
        "noise_multiplier": cfg.client_dp_noise,
        "clipping": "adaptive" if cfg.client_dp.startswith("adaptive") else "fixed",
        "clip_norm": cfg.client_dp_clip,
        "clipped_at": "site" if cfg.client_dp.endswith("-client") else "server",
        "calibrated_sites": cfg.client_dp_sites,
        "sites": num_sites,
        "sampled_sites_per_round": sampled,
        "sample_rate": q,
        "rounds": len(rounds),
        "rounds_released": len(released),
        "sites_used_per_round": used,
        "effective_noise_multipliers": effective,
        "delta": cfg.delta,
        "accountant": "rdp (opacus)",
        "weighting": "equal weight per site",
        "trusted_server": True,
    }
    if cfg.client_dp.startswith("adaptive"):
        out["target_quantile"] = cfg.client_dp_target_quantile
        out["clip_lr"] = cfg.client_dp_clip_lr
        out["count_stddev"] = cfg.client_dp_count_stddev or cfg.client_dp_sites / 20
    if not released:
        out.update(epsilon=0.0, note="no noisy aggregate was released")
    elif min(effective) <= 0:
        out.update(epsilon=None, note="client-dp-noise = 0: clipping only, no differential-privacy guarantee")
    elif cfg.delta <= 0:
        out.update(epsilon=None, note="delta = 0: the RDP accountant needs delta > 0")
    else:
        eps = user_level_epsilon(effective, sample_rate=q, delta=cfg.delta)
        out["epsilon"] = eps if math.isfinite(eps) else None
        if not math.isfinite(eps):
            out["note"] = "the noise is too small for a finite epsilon at this delta"
    return out


def user_level_epsilon(noise_per_round: Sequence[float], *, sample_rate: float, delta: float) -> float:
    """Epsilon at ``delta`` of Gaussian releases with these noise multipliers, subsampled at ``sample_rate``."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for z in noise_per_round:
        accountant.step(noise_multiplier=z, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta=delta))
