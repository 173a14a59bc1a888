"""A model release: what a surgeon's ``predict`` loads, and what a consortium publishes.

Directory layout::

    release/
      model.pt          plain PyTorch state_dict (no Opacus prefixes)
      model.json        registry name, input size, number of classes, run config, ONNX check
      catalog.json      the label space the outputs index
      preprocess.json   preprocessing parameters (common.preprocess_params)
      calibration.json  temperature + unknown threshold (common.calibration); identity if absent
      model.onnx        optional ONNX export, checked against PyTorch (server.onnx_export)
      model_card.md     intended use and limits, data, metrics, privacy spent

The server writes releases from weights and JSON only: it never touches images. Reading
a release is :mod:`common.release_files` (shared with the site's ``predict``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

import common
from common.calibration import Calibration, save_calibration
from common.catalog import Catalog
from common.config import RunConfig
from common.errors import ConfigError
from common.open_set import RAY_DISTANCE
from common.preprocess_params import PreprocessParams
from common.privacy_plan import noise_statement
from common.release_files import ENCODER_MODEL, Release, image_model, load_release
from common.release_gate import verdict_for

__all__ = ["Release", "load_release", "model_card", "write_release"]


def write_release(
    out: Path,
    *,
    arrays: ArrayRecord,
    config: RunConfig,
    catalog: Catalog,
    preprocess: PreprocessParams,
    summary: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    onnx: bool = True,
    encoder_dir: Path | None = None,
) -> Path:
    """Write a release directory.

    ``summary`` (results.json content, or what ``export`` gathers from a checkpoint) feeds
    the model card; ``calibration`` is written as calibration.json (the identity when None);
    ``onnx`` also writes a parity-checked ``model.onnx`` when the onnx packages are installed.
    A run with a head needs ``encoder_dir``: its ``encoder.pt`` and ``encoder.json`` are
    copied in and checked against the run's hash, and ``model.pt`` holds the head.
    """
    out.mkdir(parents=True, exist_ok=True)
    state = arrays.to_torch_state_dict()
    info: dict[str, Any] = {
        "model": ENCODER_MODEL if config.uses_encoder else config.model,
        "image_size": config.image_size,
        "num_classes": len(catalog),
        "catalog_fingerprint": catalog.fingerprint(),
        "implantfl_version": common.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_flower(),
    }
    if config.uses_encoder:
        if encoder_dir is None:
            raise ConfigError(f"a release of a run with head = {config.head} needs the public encoder")
        _copy_encoder(Path(encoder_dir), out, config.encoder)
        info.update({"head": config.head, "encoder_sha256": config.encoder})
    model = image_model(info, len(catalog), state, encoder_dir=out)
    model.eval()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, out / "model.pt")
    if onnx:
        from server.onnx_export import ONNX_FILE, export_onnx

        info["onnx"] = export_onnx(model, out / ONNX_FILE, image_size=config.image_size)
    else:
        (out / "model.onnx").unlink(missing_ok=True)
        info["onnx"] = {"exported": False, "reason": "not requested"}
    cal = calibration or Calibration()
    verdict = verdict_for(dict((summary or {}).get("final") or {}), num_classes=len(catalog),
                          min_accuracy=config.release_min_accuracy)
    info["release"] = verdict.to_dict()
    save_calibration(out, cal)
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    catalog.save(out / "catalog.json")
    (out / "preprocess.json").write_text(json.dumps(preprocess.to_dict(), indent=2) + "\n")
    (out / "model_card.md").write_text(model_card(info, catalog, summary or {}, calibration=cal))
    return out


def _copy_encoder(src: Path, out: Path, sha256: str) -> None:
    import shutil

    from common.encoders import CARD, WEIGHTS, file_sha256

    weights = src / WEIGHTS if src.is_dir() else src
    if file_sha256(weights) != sha256:
        raise ConfigError(f"the encoder file is not the run's encoder {sha256[:12]}")
    if weights.resolve() != (out / WEIGHTS).resolve():
        shutil.copyfile(weights, out / WEIGHTS)
        card = weights.with_name(CARD)
        if card.exists():
            shutil.copyfile(card, out / CARD)


# ------------------------------------------------------------------------ model card
INTENDED_USE = """\
## Intended use
Decision support for identifying the manufacturer and model of a hip implant on a
pre-operative radiograph, for revision planning, by clinicians who confirm the answer with
operative records or implant stickers before ordering parts.

## Limits
- Not a diagnostic device, and not validated for any decision without that confirmation.
- Names only the catalog's classes below: an implant outside the catalog cannot be named and
  is, at best, reported as `unknown` (on a public encoder, its features too far from every
  catalog class; otherwise, calibrated top probability below the threshold; or the image
  rejected by the quality gate). `unknown` is a screen, not a guarantee.
- Where the metrics below come from is stated with them; a hospital whose scanners, views
  or patient mix differ should check the model on its own images (`implantfl-client
  calibrate` refits the confidence on a site's validation split).
- Differential privacy protects each training image at its site; it
  lowers accuracy, most for the classes with the fewest images.
"""


def model_card(info: Mapping[str, Any], catalog: Catalog, summary: Mapping[str, Any],
               *, calibration: Calibration | None = None) -> str:
    """The release's ``model_card.md``."""
    from server.onnx_export import onnx_summary

    cfg = info["config"]
    rounds = list(summary.get("rounds", []))
    done = summary.get("rounds_done", len(rounds) or cfg["num-server-rounds"])
    gate = info.get("release") or {}
    unfit = [f"**NOT FIT FOR CLINICAL USE: {gate.get('reason', 'not judged')}.**", ""] \
        if not gate.get("fit_for_use", False) else []
    lines = [*unfit, f"# ImplantFL model card: {catalog.name} v{catalog.version}", "",
             f"Released {info['created']} with ImplantFL {info['implantfl_version']}.", "", INTENDED_USE]
    lines += ["## Model",
              f"- architecture: {_architecture(info)}, input {info['image_size']}x{info['image_size']} (1 channel)",
              f"- catalog: {catalog.name} v{catalog.version} ({len(catalog)} classes, fingerprint {info['catalog_fingerprint']})",
              f"- training: {done} of {cfg['num-server-rounds']} rounds of `{cfg['strategy']}`, "
              f"{cfg['local-epochs']} local epoch(s) per round, batch {cfg['batch-size']}, learning rate {cfg['learning-rate']}",
              f"- differential privacy: {'on' if cfg.get('dp') else 'off'}",
              f"- release gate: {_gate_line(gate)}",
              f"- export: {onnx_summary(info)}"]
    if calibration is not None:
        lines.append(_calibration_line(calibration))
    lines += ["", "## Catalog", "| id | manufacturer | model | component |", "|---|---|---|---|"]
    lines += [f"| {c.id} | {c.manufacturer} | {c.model} | {c.component} |" for c in catalog]
    lines += _global_metrics(summary.get("final", {}))
    lines += _sites(summary, rounds)
    lines += _privacy(summary.get("privacy", {}), reproducible=bool(cfg.get("reproducible-noise", False)))
    lines += _site_level(summary.get("client_level_privacy"), summary.get("secure_aggregation"))
    lines += _bedside(calibration, summary.get("gradcam") or {})
    return "\n".join(lines) + "\n"


def _architecture(info: Mapping[str, Any]) -> str:
    if info["model"] != ENCODER_MODEL:
        return f"`{info['model']}`"
    how = {"dp-stats": "solved at the server from the sites' DP class statistics",
           "dp-stats+linear": "solved from the sites' DP class statistics, then trained with DP-SGD",
           "finetune": "the encoder and a linear head trained end to end with DP-SGD"}.get(
        str(info.get("head")), "trained with DP-SGD at the sites")
    return (f"public encoder `{str(info.get('encoder_sha256', ''))[:12]}` (frozen, pretrained on public data only; "
            f"`encoder.json`) + `{info.get('head')}` head ({how})")


def _gate_line(gate: Mapping[str, Any]) -> str:
    if not gate:
        return "not judged"
    head = "fit for use" if gate.get("fit_for_use") else "NOT fit for use"
    return (f"{head}: top-1 {_fmt(gate.get('accuracy'), 3)} on {gate.get('examples', 0)} images of "
            f"{gate.get('evaluated_on', '?')} (chance {_fmt(gate.get('chance'), 3)}, one-sided binomial p = "
            f"{gate.get('p_value', float('nan')):.2g}; consortium minimum {gate.get('min_accuracy', 0):.2f})")


def _calibration_line(cal: Calibration) -> str:
    if cal.fitted_on == 0:
        return "- calibration: none (temperature 1, no `unknown` threshold)"
    if cal.uses_features and cal.feature_metric == RAY_DISTANCE:
        flag = (f"`unknown` when its encoder features' distance to the nearest catalog class (to the class's ray "
                f"in the encoder's public whitened space) is above {cal.feature_threshold:.3f} (a design the "
                "catalog does not hold)")
    elif cal.uses_features:
        flag = (f"`unknown` when its encoder features' similarity to the nearest catalog class is below "
                f"{cal.feature_threshold:.3f} (a design the catalog does not hold)")
    else:
        flag = f"`unknown` below top probability {cal.unknown_threshold:.3f}"
    return (f"- calibration: temperature {cal.temperature:.3f}, {flag} ({cal.method}, fitted on {cal.fitted_on} "
            "validation images)")


def _bedside(cal: Calibration | None, gradcam: Mapping[str, Any]) -> list[str]:
    """Candidate sets (coverage) and Grad-CAM (hit rate): what a surgeon can rely on."""
    lines = ["", "## At the bedside"]
    if cal is not None and cal.conformal:
        lines.append("Candidate sets (`predict --set LEVEL`, split conformal on the validation images): " + "; ".join(
            f"level {lvl}: coverage on the test set {_fmt(cal.conformal_coverage.get(lvl), 3)}"
            for lvl in sorted(cal.conformal)) + ". A set that spans several manufacturers says so.")
    else:
        lines.append("No candidate sets: the release was not calibrated.")
    if gradcam.get("images"):
        lines.append(f"Grad-CAM: its peak falls on the implant (mask grown by half a CAM cell, {gradcam['cam_cell_px']} "
                     f"px) in {_fmt(gradcam['hit_rate'], 3)} of {gradcam['images']} test images, against "
                     f"{_fmt(gradcam['chance'], 3)} by chance ({gradcam['ratio']:.2f}x; one-sided binomial p = "
                     f"{gradcam['p_value']:.2g}).")
    else:
        lines.append("Grad-CAM: its localisation was not measured (no implant masks on the evaluation images).")
    return lines


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:.{digits}f}"
    return "n/a"


def _global_metrics(final: Mapping[str, Any]) -> list[str]:
    if not final:
        return ["", "## Global metrics", "None: the run recorded no evaluation (a deployment without validation "
                "images at its sites has no central test set)."]
    if final.get("source"):  # a deployment: the sites' federated evaluation
        return ["", "## Global metrics", f"Source: {final['source']} ({final.get('examples', 0)} images, round "
                f"{final.get('round', '?')}); a deployment has no central test set.", "",
                f"- top-1 accuracy {_fmt(final.get('accuracy'))}", f"- loss {_fmt(final.get('loss'))}"]
    lines = ["", "## Global test metrics",
             f"Source: the central held-out test set of this simulated run ({final.get('examples', 0)} images).", "",
             f"- top-1 accuracy {_fmt(final.get('accuracy'))}", f"- top-3 accuracy {_fmt(final.get('top3_accuracy'))}",
             f"- macro F1 {_fmt(final.get('macro_f1'))}", f"- macro one-vs-rest ROC AUC {_fmt(final.get('macro_auc'))}",
             f"- expected calibration error {_fmt(final.get('ece'))} (before temperature scaling)"]
    binary = final.get("binary")
    if binary:
        lines += [f"- binary AUC {_fmt(binary.get('auc'))}, Cohen's kappa {_fmt(binary.get('kappa'))}, "
                  f"precision = recall at threshold {_fmt(binary.get('pr_threshold'), 3)}"]
    per_class = final.get("per_class", {})
    if per_class:
        lines += ["", "| class | precision | sensitivity | specificity | F1 | AUC | test images |", "|---|---|---|---|---|---|---|"]
        for cid, m in per_class.items():
            lines.append(f"| {cid} | {_fmt(m.get('precision'), 3)} | {_fmt(m.get('sensitivity'), 3)} | "
                         f"{_fmt(m.get('specificity'), 3)} | {_fmt(m.get('f1'), 3)} | {_fmt(m.get('auc'), 3)} | {m.get('support', 0)} |")
    return lines


def _sites(summary: Mapping[str, Any], rounds: list[Mapping[str, Any]]) -> list[str]:
    sites = summary.get("sites", {})
    if not sites:
        return []
    last: dict[str, Mapping[str, Any]] = {}
    for r in rounds:  # each site's latest reported metrics (a site may skip the last round)
        for name, m in r.get("sites", {}).items():
            if m.get("status", "ok") == "ok":
                last[name] = m
    lines = ["", "## Sites", "Example counts and each site's metrics on its own validation split in the last round it took part in.", "",
             "| site | kind | training images | validation images | validation accuracy | validation loss |", "|---|---|---|---|---|---|"]
    for name, s in sites.items():
        m = last.get(name, {})
        lines.append(f"| {name} | {s.get('kind', '')} | {s.get('train', '')} | {s.get('val', '')} | "
                     f"{_fmt(m.get('val-accuracy'), 3)} | {_fmt(m.get('val-loss'), 3)} |")
    return lines


def _privacy(privacy: Mapping[str, Mapping[str, Any]], *, reproducible: bool = False) -> list[str]:
    lines = ["", "## Privacy"]
    if not privacy:
        return lines + ["Trained without differential privacy."]
    source = noise_statement(dp=True, reproducible_noise=reproducible)
    warning = ["**The DP noise was reproducible: it protected nothing against whoever knows the run config.**", ""] \
        if reproducible else []
    lines += [*warning, "Sample-level DP-SGD (Opacus) at every site; epsilon is cumulative over every round the site trained.",
              f"Noise source: {source['note']}.", "",
              "| site | epsilon | delta | noise multiplier | steps |", "|---|---|---|---|---|"]
    for name, p in privacy.items():
        if p.get("steps", 0) > 0:  # sites that trained in this run
            lines.append(f"| {name} | {p['epsilon']:.2f} | {p['delta']:g} | {p['noise_multiplier']:.3f} | {p['steps']} |")
    refused = sorted(name for name, p in privacy.items() if p.get("rounds_refused") and not p.get("steps"))
    if refused:
        lines += ["", "Refused every round they were asked (their own policy or budget): " + ", ".join(refused) + "."]
    return lines


def _site_level(client_dp: Mapping[str, Any] | None, secagg: Mapping[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if client_dp:
        eps = client_dp.get("epsilon")
        eps_text = f"epsilon {eps:.2f} at delta {client_dp.get('delta', 0):g}" if isinstance(eps, int | float) else \
            f"no epsilon ({client_dp.get('note', 'not computed')})"
        lines += ["", f"Client-level DP ({client_dp.get('mechanism')}, {client_dp.get('clipping')} clipping at the "
                      f"{client_dp.get('clipped_at')}, noise multiplier {client_dp.get('noise_multiplier')}): each whole "
                      f"site is protected in this model with {eps_text} over {client_dp.get('rounds')} rounds."]
    if secagg:
        lines += ["", f"Secure aggregation ({secagg.get('protocol')}): the server saw only {secagg.get('server_sees')}; "
                      f"never {secagg.get('server_never_sees')}. Threat model: {secagg.get('threat_model')}"]
    return lines
