"""What the operator sees: a run's progress read from its checkpoint's ``state.json``.

The ServerApp (``server.checkpoint``) rewrites ``state.json`` after every round, so this
works while the run is going, after it ended, and without a SuperLink.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import InvalidInputError
from server.checkpoint import STATE

# Per-site values worth showing (training and validation metrics the ClientApp reports).
SITE_KEYS = ("status", "reason", "val-status", "val-reason", "train-examples", "train-loss", "train-accuracy",
             "val-examples", "val-loss", "val-accuracy", "epsilon", "noise-multiplier")


def read_state(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The raw ``state.json`` of a checkpoint folder, or None if no round finished yet."""
    path = checkpoint_dir / STATE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path} cannot be read: {type(e).__name__}") from e
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a checkpoint state")
    return data


def summarize(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rounds done, sites seen, each site's latest metrics and cumulative epsilon.

    Returns the ``status --json`` payload: ``rounds_done``, ``num_server_rounds``,
    ``finished``, ``outcome`` (``completed`` / ``running`` / ``failed`` with the reason,
    rounds trained and failed), ``sites`` (name -> ``rounds`` asked, ``rounds_trained``,
    ``last_round``, ``status`` of its last training reply and metrics, ``last_error``
    (round, status, reason) when one of its replies was not used, ``epsilon``,
    ``epsilon_on_rejected`` when it spent epsilon on an update the server rejected),
    ``aggregate`` (last round's weighted means), ``epsilon`` (site -> cumulative epsilon)
    and ``rounds`` (per-round aggregate, wall time, failure).
    """
    from server.history import run_outcome

    if not state:
        return {"rounds_done": 0, "num_server_rounds": None, "finished": False, "sites": {}, "aggregate": {},
                "epsilon": {}, "rounds": [], "outcome": run_outcome([], None)}
    history = list(state.get("history", []))
    config = dict(state.get("meta", {}).get("config", {}))
    total = config.get("num-server-rounds")
    sites: dict[str, dict[str, Any]] = {}
    for record in history:
        for name, entry in record.get("sites", {}).items():
            site = sites.setdefault(name, {"rounds": 0, "rounds_trained": 0})
            site["rounds"] += 1
            site["last_round"] = int(record["round"])
            for key in SITE_KEYS:
                site.pop(key, None)  # the latest round's values only
                if key in entry:
                    site[key] = entry[key]
            if entry.get("status", "ok") == "ok":
                site["rounds_trained"] += 1
            else:
                site["last_error"] = {"round": int(record["round"]), "status": entry.get("status"),
                                      "reason": entry.get("reason", "")}
                if entry.get("status") == "rejected" and float(entry.get("epsilon-run", 0.0)) > 0:
                    site["epsilon_on_rejected"] = float(entry.get("epsilon", 0.0))
            if entry.get("val-status"):
                site["last_error"] = {"round": int(record["round"]), "status": f"validation {entry['val-status']}",
                                      "reason": entry.get("val-reason", "")}
    epsilon = {name: float(s["epsilon"]) for name, s in sites.items() if "epsilon" in s}
    rounds_done = int(state.get("round", len(history)))
    outcome = dict(state.get("meta", {}).get("outcome") or run_outcome(history, total))
    return {
        "outcome": outcome,
        "rounds_done": rounds_done,
        "num_server_rounds": total,
        "finished": total is not None and rounds_done >= int(total),
        "strategy": state.get("meta", {}).get("strategy"),
        "catalog_fingerprint": state.get("meta", {}).get("catalog-fingerprint"),
        "sites": sites,
        "aggregate": dict(history[-1].get("aggregate", {})) if history else {},
        "epsilon": epsilon,
        "rounds": [{"round": r["round"], "wall_s": r.get("wall_s", 0.0), **r.get("aggregate", {}),
                    **({"failed": r["failed"]} if r.get("failed") else {})} for r in history],
    }


def privacy_by_site(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-site privacy spent (:func:`server.history.privacy_by_site`), empty for a run without DP."""
    from server.history import privacy_by_site as from_history

    config = state.get("meta", {}).get("config", {})
    if not config.get("dp", False):
        return {}
    return from_history(state.get("history", []), delta=float(config.get("delta", 0.0)),
                        accountant=str(config.get("accountant", "rdp")))


def format_text(summary: Mapping[str, Any]) -> str:
    """A short human-readable report of :func:`summarize`."""
    total = summary.get("num_server_rounds")
    lines = [f"rounds done: {summary['rounds_done']}/{total if total is not None else '?'}"
             + ("  (finished)" if summary.get("finished") else "")]
    agg = summary.get("aggregate", {})
    if agg:
        lines.append("last round: " + ", ".join(f"{k}={v:.4g}" for k, v in agg.items() if isinstance(v, int | float)))
    outcome = summary.get("outcome", {})
    if outcome.get("status") == "failed":
        lines.append(f"run FAILED: {outcome.get('reason', '')}")
    elif outcome.get("rounds_failed"):
        lines.append(f"rounds failed: {outcome['rounds_failed']} (no update accepted)")
    sites = summary.get("sites", {})
    lines.append(f"sites seen: {len(sites)}")
    planned = total if total is not None else "?"
    for name, s in sorted(sites.items()):
        parts = [f"status={s.get('status', '?')}", f"trained={s.get('rounds_trained', 0)}/{planned} rounds"]
        for key in ("train-accuracy", "val-accuracy", "epsilon"):
            if key in s:
                parts.append(f"{key}={float(s[key]):.3f}")
        if s.get("reason"):
            parts.append(f"reason={s['reason']}")
        lines.append(f"  {name}: " + " ".join(parts))
        error = s.get("last_error")
        if error and not (error["status"] == s.get("status") and error["reason"] == s.get("reason")):
            lines.append(f"    last error (round {error['round']}, {error['status']}): {error['reason']}")
        if "epsilon_on_rejected" in s:
            lines.append(f"    spent epsilon on an update the server rejected (cumulative {s['epsilon_on_rejected']:.2f})")
    return "\n".join(lines)
