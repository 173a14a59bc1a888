"""Per-round, per-site record of a federated run: what ``results.json`` ``rounds`` holds.

Besides each site's own metrics, a site's train entry has ``update-bytes`` (bytes of the
arrays it sent, after any ``update-compression``) and the round's aggregate the mean
``update-bytes`` per update received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.validation import ReplyVerdict

_RENAME = {"num-examples": "examples"}


@dataclass
class RoundRecord:
    round: int
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> status + metrics
    aggregate: dict[str, float] = field(default_factory=dict)  # weighted means (+ central test metrics)
    wall_s: float = 0.0
    failed: str = ""  # why the round failed (no update accepted); "" when it trained

    def add(self, verdicts: Iterable[ReplyVerdict], phase: str) -> None:
        """Merge a phase's replies (``train`` or ``val``) into the per-site table.

        A site's ``status`` and ``reason`` are its training's (its own refusal stays its
        reason); an evaluation problem goes to ``val-status`` / ``val-reason`` beside them.
        """
        for v in verdicts:
            entry = self.sites.setdefault(v.site, {"status": "ok", "reason": ""})
            if v.status != "ok" and phase == "val":
                entry["val-status"], entry["val-reason"] = v.status, v.reason
            elif v.status != "ok":
                entry["status"], entry["reason"] = v.status, v.reason
            for key, value in v.metrics.items():
                name = f"{phase}-examples" if key == "num-examples" else key
                entry[name] = value
            if v.update_bytes:
                entry["update-bytes"] = v.update_bytes

    def to_dict(self) -> dict[str, Any]:
        out = {"round": self.round, "sites": self.sites, "aggregate": self.aggregate, "wall_s": self.wall_s}
        if self.failed:
            out["failed"] = self.failed
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundRecord:
        return cls(round=int(d["round"]), sites=dict(d["sites"]), aggregate=dict(d["aggregate"]),
                   wall_s=float(d.get("wall_s", 0)), failed=str(d.get("failed", "")))


def run_outcome(rounds: Iterable[Mapping[str, Any]], planned: int | None) -> dict[str, Any]:
    """``{status, reason, rounds_trained, rounds_failed}``: ``failed`` when no round trained.

    A round in which no update was accepted is a failed round; a run with rounds but not
    one trained failed, with the last round's reason.
    """
    rounds = list(rounds)
    failed = [r for r in rounds if r.get("failed")]
    trained = len(rounds) - len(failed)
    out: dict[str, Any] = {"rounds_trained": trained, "rounds_failed": len(failed), "rounds_planned": planned}
    if rounds and not trained:
        out.update(status="failed", reason=f"every round failed: {failed[-1]['failed']}")
    elif planned is not None and len(rounds) < planned:
        out.update(status="running", reason="")
    else:
        out.update(status="completed", reason="")
    return out


def weighted_means(verdicts: Iterable[ReplyVerdict], keys: Iterable[str]) -> dict[str, float]:
    """Example-weighted means of ``keys`` over the accepted replies."""
    used = [v for v in verdicts if v.status == "ok"]
    total = sum(v.metrics.get("num-examples", 0) for v in used)
    if total <= 0:
        return {}
    return {k: sum(v.metrics.get(k, 0.0) * v.metrics.get("num-examples", 0) for v in used) / total for k in keys}


def mean_update_bytes(verdicts: Iterable[ReplyVerdict]) -> dict[str, float]:
    """``{"update-bytes": mean bytes per update}`` over the replies that carried arrays (empty if none)."""
    sizes = [v.update_bytes for v in verdicts if v.update_bytes]
    return {"update-bytes": sum(sizes) / len(sizes)} if sizes else {}


@dataclass
class RunHistory:
    rounds: list[RoundRecord] = field(default_factory=list)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rounds]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> RunHistory:
        return cls([RoundRecord.from_dict(d) for d in items])

    def epsilon_by_site(self) -> dict[str, list[tuple[int, float]]]:
        """Each site's cumulative epsilon after every round it reported."""
        out: dict[str, list[tuple[int, float]]] = {}
        for r in self.rounds:
            for site, m in r.sites.items():
                if "epsilon" in m:
                    out.setdefault(site, []).append((r.round, float(m["epsilon"])))
        return out


REFUSALS = ("policy-refused", "budget-exhausted")  # a site's own refusals (client.training.privacy)


def privacy_by_site(rounds: Iterable[Mapping[str, Any]], *, delta: float, accountant: str) -> dict[str, dict[str, Any]]:
    """Each site's privacy spend from the per-round history (``results.json`` ``privacy``, the model card, ``status``).

    ``epsilon`` is the site's cumulative epsilon (its ledger's, over every run it took part
    in), ``epsilon_run`` this run's; ``steps`` sums the DP steps it reported; refusals are
    counted with the last reason.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for site, m in r.get("sites", {}).items():
            rejected = m.get("status") == "rejected" and float(m.get("epsilon-run", 0.0)) > 0
            if m.get("status") != "ok" and m.get("status") not in REFUSALS and not rejected:
                continue  # a site error: nothing the site reported spending is known here
            p = out.setdefault(site, {"epsilon": 0.0, "epsilon_run": 0.0, "delta": delta, "noise_multiplier": 0.0,
                                      "sample_rate": 0.0, "steps": 0, "rounds_refused": 0, "rounds_rejected": 0,
                                      "accountant": accountant})
            if m.get("status") in REFUSALS:
                p["rounds_refused"] += 1
                p["refusal"] = m.get("reason", "")
                continue
            if rejected:  # the site trained and spent epsilon, then the server refused its update
                p["rounds_rejected"] += 1
                p["rejection"] = m.get("reason", "")
            p["epsilon"] = max(p["epsilon"], float(m.get("epsilon", 0.0)))
            p["epsilon_run"] = max(p["epsilon_run"], float(m.get("epsilon-run", 0.0)))
            p["noise_multiplier"] = float(m.get("noise-multiplier", p["noise_multiplier"]))
            p["sample_rate"] = float(m.get("sample-rate", p["sample_rate"]))
            p["steps"] += int(m.get("dp-steps", 0))
    return out
