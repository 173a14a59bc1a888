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

    def add(self, verdicts: Iterable[ReplyVerdict], phase: str) -> None:
        """Merge a phase's replies (``train`` or ``val``) into the per-site table."""
        for v in verdicts:
            entry = self.sites.setdefault(v.site, {"status": "ok", "reason": ""})
            if v.status != "ok":
                entry["status"], entry["reason"] = v.status, v.reason
            for key, value in v.metrics.items():
                name = f"{phase}-examples" if key == "num-examples" else key
                entry[name] = value
            if v.update_bytes:
                entry["update-bytes"] = v.update_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "sites": self.sites, "aggregate": self.aggregate, "wall_s": self.wall_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundRecord:
        return cls(round=int(d["round"]), sites=dict(d["sites"]), aggregate=dict(d["aggregate"]), wall_s=float(d.get("wall_s", 0)))


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
