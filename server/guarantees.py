"""What a run's privacy protected, stated once for ``results.json`` and the model card.

``dp_noise`` (where the sites' noise came from), ``client_level_privacy`` (Flower's
client-level DP, when on) and ``secure_aggregation`` (what SecAgg+ hid, when on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.config import RunConfig
from common.privacy_plan import noise_statement


def guarantees(cfg: RunConfig, rounds: Sequence[Mapping[str, Any]], *, num_sites: int) -> dict[str, Any]:
    """The guarantee statements a run had (keys present only when they apply)."""
    out: dict[str, Any] = {"dp_noise": noise_statement(dp=cfg.dp, reproducible_noise=cfg.reproducible_noise)}
    if cfg.client_dp != "none":  # the guarantee for a whole site, on the released model
        from server.client_dp import client_dp_guarantee

        out["client_level_privacy"] = client_dp_guarantee(cfg, rounds, num_sites=num_sites)
    if cfg.secure_aggregation:  # what the server could and could not see of the sites' updates
        from server.secure_agg import guarantee

        out["secure_aggregation"] = guarantee(cfg)
    return out
