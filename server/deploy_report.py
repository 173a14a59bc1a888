"""A deployed run's ``results.json`` and ``report.md``, written into its checkpoint directory.

The simulation's schema where a deployment knows the values: ``config``, ``rounds``
(per-round, per-site metrics), ``sites`` (examples each site reported), ``privacy`` (each
site's spend), the guarantees, the outcome, timing. ``final`` is the **federated
evaluation**: the sites' own held-out validation splits, example-weighted, in the last
round that trained. What a deployment cannot know is absent and named under
``not_available``: a central test set (there is none: the server holds no image) and
per-class figures (a site's per-class counts would be a label list leaving the site).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import RunConfig

NOT_AVAILABLE = {
    "central_test_set": "a deployment has no central test set: the server holds no image; 'final' is the sites' "
                        "federated evaluation on their own validation splits",
    "per_class": "per-class figures would need each site's per-class counts, a label list that never leaves a site",
    "baseline": "pooled baselines need the images in one place; run a simulation for them",
}


def federated_final(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last trained round's example-weighted validation metrics across the sites."""
    for r in reversed(rounds):
        if r.get("failed"):
            continue
        agg = r.get("aggregate", {})
        examples = sum(int(m.get("val-examples", 0)) for m in r.get("sites", {}).values()
                       if m.get("val-status", "ok") == "ok")
        if "val-accuracy" in agg:
            return {"accuracy": float(agg["val-accuracy"]), "loss": float(agg.get("val-loss", float("nan"))),
                    "examples": examples, "round": int(r["round"]),
                    "source": "federated evaluation: the sites' own held-out validation splits, example-weighted"}
    return {}


def deployment_results(cfg: RunConfig, rounds: Sequence[Mapping[str, Any]], *, outcome: Mapping[str, Any],
                       started: float, checkpoint_dir: Path) -> dict[str, Any]:
    """results.json of a deployed run (see the module docstring)."""
    from server.guarantees import guarantees
    from server.history import privacy_by_site

    sites: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for name, m in r.get("sites", {}).items():
            s = sites.setdefault(name, {"train": 0, "val": 0})
            s["train"] = max(s["train"], int(m.get("train-examples", 0)))
            s["val"] = max(s["val"], int(m.get("val-examples", 0)))
    results: dict[str, Any] = {
        "out": str(checkpoint_dir),
        "config": {**cfg.to_flower(), "mode": "deployment", "sites": sorted(sites)},
        "sites": sites,
        "rounds": list(rounds),
        "final": federated_final(rounds),
        "outcome": dict(outcome),
        "not_available": NOT_AVAILABLE,
        "timing": {"wall_s": round(time.monotonic() - started, 1)},
    }
    if cfg.dp:
        results["privacy"] = privacy_by_site(rounds, delta=cfg.delta, accountant=cfg.accountant)
    results.update(guarantees(cfg, rounds, num_sites=len(sites)))
    return results


def write_deployment_report(checkpoint_dir: Path, results: dict[str, Any]) -> None:
    """results.json, report.md and plots/ in the checkpoint directory."""
    from server.report import write_plots, write_report, write_results

    write_results(checkpoint_dir, results)
    write_plots(checkpoint_dir, results)
    write_report(checkpoint_dir, results)
