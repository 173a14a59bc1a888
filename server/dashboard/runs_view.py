"""What the operator's page shows, read from files the server already holds (never images).

A *run folder* is either a simulation's run directory (``results.json`` when finished,
``checkpoint/state.json`` while it runs, ``release/``) or a deployed run's checkpoint
directory (``state.json`` each round; ``results.json`` and a release once exported).
A deployment's runs are the checkpoint directories of the runs its server submitted
(``<state-dir>/runs/run-config-*.toml``), newest first.

Everything here is per site and per round: metrics the sites chose to send (examples,
accuracies, epsilon spent, the site's own epsilon budget) and refusal reasons. No path
of a site's data, no file name, no per-image value.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.history import run_outcome

RUNNING_GRACE_S = 600.0  # a run with no results.json whose checkpoint changed within this is "running"


@dataclass(frozen=True)
class RunSource:
    """One run the page can show: an id (URL-safe) and its folder."""

    run_id: str
    folder: Path
    kind: str  # "simulation" or "deployment"


def simulation_source(run_dir: Path) -> list[RunSource]:
    """The run of a simulation's run directory."""
    return [RunSource(_slug(run_dir.resolve().name), run_dir.resolve(), "simulation")]


def deployment_sources(state_dir: Path) -> list[RunSource]:
    """The runs a deployment's server submitted (their checkpoint directories), newest first."""
    seen: dict[Path, float] = {}
    for path in sorted((state_dir / "runs").glob("run-config-*.toml")):
        try:
            ckpt = Path(str(tomllib.loads(path.read_text(encoding="utf-8"))["checkpoint-dir"])).resolve()
        except (OSError, ValueError, KeyError):
            continue
        seen[ckpt] = max(seen.get(ckpt, 0.0), path.stat().st_mtime)
    ordered = sorted(seen, key=lambda p: -seen[p])
    return [RunSource(_slug(p.name), p, "deployment") for p in ordered]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _state(src: RunSource) -> tuple[dict[str, Any] | None, float]:
    """(checkpoint state.json, its modification time)."""
    folder = src.folder / "checkpoint" if src.kind == "simulation" else src.folder  # a deployed run's folder is its checkpoint
    path = folder / "state.json"
    state = _read_json(path)
    return state, path.stat().st_mtime if state is not None else 0.0


def summary(src: RunSource) -> dict[str, Any]:
    """The run's line in the list of runs."""
    view = run_view(src)
    return {k: view[k] for k in ("id", "kind", "state", "rounds_done", "rounds_planned", "wall_s", "updated",
                                 "release")}


def run_view(src: RunSource) -> dict[str, Any]:
    """Everything the page shows of one run, JSON-ready."""
    results = _read_json(src.folder / "results.json")
    state, mtime = _state(src)
    rounds: list[dict[str, Any]] = list((results or {}).get("rounds") or (state or {}).get("history") or [])
    config = dict((results or {}).get("config") or ((state or {}).get("meta") or {}).get("config") or {})
    planned = config.get("num-server-rounds")
    outcome = (results or {}).get("outcome") or ((state or {}).get("meta") or {}).get("outcome")
    if outcome is None and results is None and state is None:
        outcome = {"status": "waiting", "reason": "no round has finished yet"}
    elif outcome is None:
        outcome = run_outcome(rounds, int(planned) if planned else None)
    status = str(outcome.get("status", "unknown"))
    updated = max(mtime, (src.folder / "results.json").stat().st_mtime if results is not None else 0.0)
    if results is None and status == "running" and updated and time.time() - updated > RUNNING_GRACE_S:
        status = "stalled"  # no checkpoint for a while and no result: the operator should look
    release = _release(src, results)
    return {
        "id": src.run_id,
        "kind": src.kind,
        "state": status,
        "reason": str(outcome.get("reason", "")),
        "rounds_done": len(rounds),
        "rounds_planned": int(planned) if planned else None,
        "wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in rounds), 1),
        "updated": updated,
        "accuracy": [_round_accuracy(r) for r in rounds],
        "sites": _sites(rounds),
        "release": release,
        "final": _final(results),
        "config": {k: v for k, v in config.items() if isinstance(v, str | int | float | bool)},
    }


def _round_accuracy(r: dict[str, Any]) -> dict[str, Any]:
    agg = r.get("aggregate") or {}
    return {"round": int(r.get("round", 0)), "test": agg.get("test-accuracy"), "val": agg.get("val-accuracy"),
            "sites_used": int(agg.get("sites-used", 0) or 0), "failed": r.get("failed") or ""}


def _sites(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per site: last round seen and how it went, examples, accuracy, epsilon (and its budget) over rounds."""
    sites: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for name, m in (r.get("sites") or {}).items():
            site = sites.setdefault(name, {"name": name, "epsilon_by_round": [], "refusals": []})
            status = str(m.get("status", "ok"))
            site.update(last_round=int(r.get("round", 0)), status=status, reason=str(m.get("reason", "")))
            if status == "ok":
                site["examples"] = int(m.get("train-examples", m.get("num-examples", 0)) or 0)
                if m.get("train-accuracy"):  # local: on its own training data (a dp-stats round trains nothing)
                    site["local_accuracy"] = float(m["train-accuracy"])
                if m.get("val-accuracy") is not None:  # federated: the global model on the site's validation split
                    site["federated_accuracy"] = float(m["val-accuracy"])
            elif m.get("reason"):
                site["refusals"].append({"round": int(r.get("round", 0)), "status": status, "reason": str(m["reason"])})
            if m.get("epsilon") is not None:
                eps = float(m["epsilon"])
                site["epsilon"] = max(site.get("epsilon", 0.0), eps)
                site["epsilon_by_round"].append({"round": int(r.get("round", 0)), "epsilon": eps})
            if m.get("max-epsilon"):
                site["budget"] = float(m["max-epsilon"])
    for site in sites.values():
        site["epsilon"] = float(site.get("epsilon", 0.0))  # the page shows two decimals
        site["refusals"] = site["refusals"][-5:]
    return sorted(sites.values(), key=lambda s: s["name"])


def _release_folder(src: RunSource) -> Path:
    """A simulation's ``release/``; for a deployed run, the newest release exported from its checkpoint."""
    if src.kind == "deployment":
        entries = _read_json_list(src.folder / "releases.json")
        for entry in reversed(entries):
            folder = Path(str(entry.get("path", "")))
            if (folder / "model.json").is_file():
                return folder
    return src.folder / "release"


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        return [e for e in json.loads(path.read_text(encoding="utf-8")) if isinstance(e, dict)]
    except (OSError, ValueError, TypeError):
        return []


def _release(src: RunSource, results: dict[str, Any] | None) -> dict[str, Any] | None:
    folder = _release_folder(src)
    model = _read_json(folder / "model.json") or {}
    gate = model.get("release") or (results or {}).get("release")
    if not gate:
        return None
    out = {"fit_for_use": bool(gate.get("fit_for_use")), "reason": str(gate.get("reason", "")),
           "accuracy": gate.get("accuracy"), "min_accuracy": gate.get("min_accuracy"),
           "evaluated_on": str(gate.get("evaluated_on", ""))}
    out["model_card"] = f"/runs/{src.run_id}/model-card" if (folder / "model_card.md").is_file() else None
    return out


def _final(results: dict[str, Any] | None) -> dict[str, Any] | None:
    final = (results or {}).get("final")
    if not isinstance(final, dict):
        return None
    return {k: final[k] for k in ("accuracy", "top3_accuracy", "macro_f1") if isinstance(final.get(k), int | float)}


def model_card(src: RunSource) -> str | None:
    """The release's model card (Markdown), if the run has one."""
    try:
        return (_release_folder(src) / "model_card.md").read_text(encoding="utf-8")
    except OSError:
        return None
