"""``implantfl-client predict`` and ``implantfl-client calibrate``.

Mounted into ``client.cli`` with ``predict_cli.add_parsers(sub)``. ``predict`` exits 0
when at least one file was answered (``unknown`` counts as an answer), 1 when none was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.errors import ConfigError


def add_parsers(sub: Any) -> None:
    """Add ``predict`` and ``calibrate`` to the ``implantfl-client`` subcommands."""
    p = sub.add_parser("predict", help="identify the implant on X-rays (top-k, unknown flag, Grad-CAM)",
                       description="Identify the implant on each FILE with a model release. Files go through the "
                                   "same ingest and preprocessing as training images.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM, PNG or JPEG radiographs")
    p.add_argument("--model", type=Path, required=True, metavar="RELEASE", help="model release folder")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes to list per file (default 3)")
    p.add_argument("--cam", type=Path, metavar="DIR", help="write a Grad-CAM overlay PNG per file into DIR")
    p.add_argument("--set", dest="set_level", metavar="LEVEL",
                   help="also give the smallest candidate set holding the true implant with this probability "
                        "(a level the release offers: 0.8, 0.9, 0.95, 0.99)")
    p.add_argument("--allow-unfit", action="store_true",
                   help="answer with a release its gate judged not fit for clinical use (every answer is marked)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads for the model (default 1: fastest for single images on a shared machine)")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("calibrate", help="fit the release's confidence calibration on this site's validation split",
                       description="Fit temperature scaling and the unknown threshold on the site's validation "
                                   "split and write calibration.json into the release.")
    c.add_argument("--model", type=Path, required=True, metavar="RELEASE", help="model release folder (updated in place)")
    c.add_argument("--data", type=Path, required=True, metavar="SITE_DIR", help="the site's labelled data folder")
    c.add_argument("--config", type=Path, help="site.toml (label map, cache dir)")
    c.add_argument("--cache", type=Path, help="preprocessing cache folder (default: none)")
    c.add_argument("--val-fraction", type=float, default=0.2, help="validation share, as in training (default 0.2)")
    c.add_argument("--quantile", type=float, default=0.05,
                   help="share of correctly classified validation images that may be flagged unknown (default 0.05; "
                        "a release on a public encoder flags by feature distance instead, a fixed 2.5%%)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate)


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from client.bedside.predict import predict_files

    if args.top_k < 1:
        raise ConfigError("--top-k must be at least 1")
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    show_bar = not args.json and len(args.files) > 1
    with _progress(len(args.files), show_bar) as advance:
        answers = predict_files(args.files, args.model, top_k=args.top_k, cam_dir=args.cam, on_file=lambda _a: advance(),
                                set_level=_level(args.set_level), allow_unfit=args.allow_unfit)
    if args.json:
        print(json.dumps([a.to_dict() for a in answers], indent=2))
    else:
        if answers and answers[0].gate is not None:
            print(format_gate(answers[0].gate))
        for a in answers:
            print(format_answer(a))
    return 0 if any(a.answered for a in answers) else 1


def _level(text: str | None) -> str | None:
    """``--set 0.95`` as the release's level key ("0.95")."""
    if text is None:
        return None
    try:
        return f"{float(text):g}"
    except ValueError:
        raise ConfigError(f"--set takes a coverage level such as 0.95, not {text!r}") from None


def format_gate(gate: dict[str, Any]) -> str:
    """One line: the release gate's verdict."""
    if gate.get("fit_for_use"):
        return (f"release: fit for use (top-1 {gate['accuracy']:.3f} on {gate['examples']} images of "
                f"{gate['evaluated_on']})")
    return f"release: NOT FIT FOR CLINICAL USE ({gate.get('reason', '')})"


def format_answer(a: Any) -> str:
    """Plain-text block for one answer."""
    lines = [a.file]
    if a.warning:
        lines.append(f"  WARNING: {a.warning}")
    if a.error is not None:
        return "\n".join(lines + [f"  not answered: {a.error}" + (f" ({a.detail})" if a.detail else "")])
    for i, t in enumerate(a.top_k, 1):
        name = f"{t['manufacturer']} {t['model']}"
        lines.append(f"  {i}. {name:<32} {t['id']:<16} {100 * t['probability']:5.1f}%")
    if a.unknown:
        lines.append(f"  UNKNOWN ({a.reason}): {a.detail}")
    if a.candidates:
        c = a.candidates
        measured = f", {100 * c['coverage_measured']:.1f}% on the release's test set" \
            if c.get("coverage_measured") is not None else ""
        lines.append(f"  candidate set at {100 * c['level']:g}% ({len(c['ids'])}): {', '.join(c['ids'])}"
                     f" (holds a catalog implant with probability >= {c['level']:g}{measured})")
        if c["several_manufacturers"]:
            lines.append(f"  the set spans {len(c['manufacturers'])} manufacturers ({', '.join(c['manufacturers'])}): "
                         "check which before ordering parts")
    if a.cam:
        lines.append(f"  Grad-CAM: {a.cam}")
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from client.data.site_data import load_site
    from common.calibration import MIN_IMAGES, fit_calibration, predict_logits, save_calibration
    from common.metrics import expected_calibration_error
    from common.release_files import load_release

    release = load_release(args.model)
    labels = cache = None
    if args.config is not None:
        from client.site.config import SiteConfig

        cfg = SiteConfig.load(args.config)
        labels, cache = cfg.label_map, cfg.cache_dir
    data = load_site(args.data, catalog=release.catalog, params=release.preprocess, label_map=labels,
                     cache_dir=args.cache or cache, val_fraction=args.val_fraction, progress=not args.json)
    x_val, y_val = data.val()
    if len(y_val) < MIN_IMAGES:
        raise ConfigError(f"the site has {len(y_val)} validation image(s) and calibration needs at least {MIN_IMAGES}; "
                          "raise --val-fraction (use the fraction training used, so no training image is reused)")
    logits = predict_logits(release.model, x_val)
    # a release on a public encoder: the unknown flag in feature space, as the researcher's calibration fits it
    from common.open_set import RAY_DISTANCE, head_directions, projected_features, ray_distance

    directions = head_directions(release.model)
    scores = ray_distance(projected_features(release.model.encoder, x_val), directions) \
        if directions is not None else None
    cal = fit_calibration(logits, y_val, quantile=args.quantile, feature_scores=scores, feature_metric=RAY_DISTANCE)
    save_calibration(args.model, cal)
    before = release.calibration.probabilities(logits)
    after = cal.probabilities(logits)
    out = {**cal.to_dict(), "ece_before": expected_calibration_error(y_val, before),
           "ece_after": expected_calibration_error(y_val, after),
           "val_accuracy": float((after.argmax(1) == y_val).mean()),
           "flagged_unknown": float(cal.is_unknown(after, scores).mean())}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        flag = (f"unknown beyond feature distance {cal.feature_threshold:.3f}" if cal.uses_features
                else f"unknown below {cal.unknown_threshold:.3f}")
        print(f"calibration written: temperature {cal.temperature:.3f}, {flag} "
              f"(fitted on {cal.fitted_on} validation images; ECE {out['ece_before']:.3f} -> {out['ece_after']:.3f}; "
              f"{100 * out['flagged_unknown']:.1f}% of them would be flagged unknown)")
    return 0


def _progress(total: int, show: bool):  # noqa: ANN202
    from contextlib import contextmanager, nullcontext

    if not show:
        return nullcontext(lambda: None)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def ctx():  # noqa: ANN202
        with Progress(TextColumn("[bold]identifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True, console=Console(stderr=True)) as prog:
            task = prog.add_task("predict", total=total)
            yield lambda: prog.advance(task)

    return ctx()

