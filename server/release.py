"""A model release: what a surgeon's ``predict`` loads, and what a consortium publishes.

Directory layout::

    release/
      model.pt          plain PyTorch state_dict (no Opacus prefixes)
      model.json        registry name, input size, number of classes, run config
      catalog.json      the label space the outputs index
      preprocess.json   preprocessing parameters (common.preprocess_params)
      model_card.md     intended use, data, metrics, privacy spent

The server writes releases from weights and JSON only: it never touches images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

import common
from common.catalog import Catalog
from common.config import RunConfig
from common.errors import InvalidInputError
from common.models import build_model
from common.preprocess_params import PreprocessParams


@dataclass(frozen=True)
class Release:
    model: torch.nn.Module
    catalog: Catalog
    preprocess: PreprocessParams
    info: dict[str, Any]


def write_release(
    out: Path,
    *,
    arrays: ArrayRecord,
    config: RunConfig,
    catalog: Catalog,
    preprocess: PreprocessParams,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write a release directory; ``summary`` (results.json content) feeds the model card."""
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(config.model, num_classes=len(catalog), image_size=config.image_size)
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    torch.save(model.state_dict(), out / "model.pt")
    info = {
        "model": config.model,
        "image_size": config.image_size,
        "num_classes": len(catalog),
        "catalog_fingerprint": catalog.fingerprint(),
        "implantfl_version": common.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_flower(),
    }
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    catalog.save(out / "catalog.json")
    (out / "preprocess.json").write_text(json.dumps(preprocess.to_dict(), indent=2) + "\n")
    (out / "model_card.md").write_text(model_card(info, catalog, summary or {}))
    return out


def load_release(path: Path) -> Release:
    """Load a release directory into a ready-to-use (eval mode) model."""
    try:
        info = json.loads((path / "model.json").read_text())
        catalog = Catalog.load(path / "catalog.json")
        preprocess = PreprocessParams.from_dict(json.loads((path / "preprocess.json").read_text()))
        model = build_model(info["model"], num_classes=len(catalog), image_size=int(info["image_size"]))
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True), strict=True)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise InvalidInputError(f"release cannot be loaded: {type(e).__name__}") from e
    if info.get("catalog_fingerprint") != catalog.fingerprint():
        raise InvalidInputError("release catalog does not match the catalog the model was trained on")
    return Release(model.eval(), catalog, preprocess, info)


def model_card(info: Mapping[str, Any], catalog: Catalog, summary: Mapping[str, Any]) -> str:
    cfg = info["config"]
    final = summary.get("final", {})
    lines = [
        f"# ImplantFL model card: {catalog.name} v{catalog.version}",
        "",
        "## Intended use",
        "Decision support for identifying the manufacturer and model of a hip implant on a",
        "pre-operative radiograph, for revision planning. Not a diagnostic device: confirm with",
        "operative records. Outputs only the catalog's classes; an implant outside the catalog",
        "cannot be named.",
        "",
        "## Model",
        f"- architecture: `{info['model']}`, input {info['image_size']}x{info['image_size']} (1 channel)",
        f"- catalog: {catalog.name} v{catalog.version} ({len(catalog)} classes, fingerprint {info['catalog_fingerprint']})",
        f"- training: {cfg['num-server-rounds']} rounds of `{cfg['strategy']}`, {cfg['local-epochs']} local epoch(s) per round",
        f"- created {info['created']} with ImplantFL {info['implantfl_version']}",
    ]
    if final:
        lines += ["", "## Global test metrics", f"- top-1 accuracy {final.get('accuracy', float('nan')):.4f}",
                  f"- top-3 accuracy {final.get('top3_accuracy', float('nan')):.4f}",
                  f"- macro F1 {final.get('macro_f1', float('nan')):.4f} on {final.get('examples', 0)} images"]
    sites = summary.get("sites", {})
    if sites:
        lines += ["", "## Sites", "| site | training images | validation images | last validation accuracy |", "|---|---|---|---|"]
        last = summary.get("rounds", [{}])[-1].get("sites", {}) if summary.get("rounds") else {}
        for name, s in sites.items():
            acc = last.get(name, {}).get("val-accuracy")
            lines.append(f"| {name} | {s.get('train', '')} | {s.get('val', '')} | {'' if acc is None else f'{acc:.3f}'} |")
    privacy = summary.get("privacy", {})
    lines += ["", "## Privacy"]
    if privacy:
        lines += ["Sample-level DP-SGD (Opacus) at every site.", "", "| site | epsilon | delta | noise multiplier | steps |", "|---|---|---|---|---|"]
        for name, p in privacy.items():
            lines.append(f"| {name} | {p['epsilon']:.2f} | {p['delta']:g} | {p['noise_multiplier']:.3f} | {p['steps']} |")
    else:
        lines.append("Trained without differential privacy.")
    return "\n".join(lines) + "\n"
