"""Human-readable summaries of runs: the end-of-run summary and ``compare``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.errors import InvalidInputError


def print_summary(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    from server.report import baseline_rows, best_pooled

    rows = baseline_rows(results)
    table = Table(title="ImplantFL run summary", show_header=True)
    for col in ("", "top-1 accuracy", "top-3 accuracy", "macro F1", "epsilon"):
        table.add_column(col, justify="right" if col else "left")
    config = results["config"]
    route = f"{config.get('head')} head on a public encoder" if config.get("head", "none") != "none" else config.get("model", "")
    for r in rows:
        final = r["final"] or {}
        label = (f"federated ({route}, {'DP' if r['dp'] else 'no DP'}, {len(config.get('sites', []))} sites)"
                 if r["name"] == "federated" else r["label"])
        eps = f"{r['epsilon']:.2f}" if r["dp"] else "-"
        table.add_row(label, _fmt(r["accuracy"]), _fmt(final.get("top3_accuracy")), _fmt(final.get("macro_f1")), eps)
    console.print(table)
    name, best = best_pooled(results.get("baseline", {}))
    fed = results["final"]["accuracy"]
    if name and best > 0:
        console.print(f"federated / best pooled non-private ({name}): [bold]{fed / best:.3f}[/bold]")
    singles = [r for r in rows if r["name"] == "single_site"]
    if singles:
        verdict = "beats" if fed > singles[0]["accuracy"] else "does not beat"
        console.print(f"the federation {verdict} the best single site ({singles[0]['accuracy']:.4f})")
    parts = results.get("final_by_body_part")
    if parts:
        bt = Table(title="Federated model per body part (study = mean of its views)")
        for col in ("body part", "images", "studies", "image accuracy", "study accuracy", "study AUC", "study kappa"):
            bt.add_column(col, justify="right" if col != "body part" else "left")
        for part, r in parts.items():
            kappa = "" if r.get("study_kappa") is None else f"{r['study_kappa']:.4f}"
            bt.add_row(part, str(r["images"]), str(r["studies"]), f"{r['image_accuracy']:.4f}",
                       f"{r['study_accuracy']:.4f}", f"{r['study_auc']:.4f}", kappa)
        console.print(bt)
    privacy = results.get("privacy")
    if privacy:
        pt = Table(title="Privacy spent per site (cumulative at the site)")
        for col in ("site", "epsilon", "delta", "noise multiplier", "steps", "rounds refused"):
            pt.add_column(col, justify="right" if col != "site" else "left")
        for site, p in sorted(privacy.items()):
            pt.add_row(site, f"{p['epsilon']:.2f}", f"{p['delta']:g}", f"{p['noise_multiplier']:.3f}", str(p["steps"]),
                       str(p["rounds_refused"]))
        console.print(pt)
    timing = results.get("timing", {})
    extra = "".join(f", {label} {timing[key]:.0f} s" for key, label in (
        ("pretrain_s", "encoder pretraining"), ("features_s", "features"), ("baseline_cnn_s", "CNN baseline"))
        if key in timing)
    console.print(f"wall time {timing.get('wall_s', math.nan):.1f} s "
                  f"(federation {timing.get('federation_s', math.nan):.1f} s{extra}); results in [bold]{results.get('out', '')}[/bold]"
                  " (results.json, report.md, plots/, release/)")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not math.isnan(value) else "-"


def compare_runs(runs: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        path = run / "results.json" if run.is_dir() else run
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidInputError(f"{run.name}: no readable results.json ({type(e).__name__})") from e
        cfg = res.get("config", {})
        privacy = res.get("privacy", {})
        rows.append({
            "run": run.name,
            "preset": cfg.get("preset", ""),
            "mode": cfg.get("mode", "federated"),
            "model": cfg.get("model", ""),
            "strategy": cfg.get("strategy", ""),
            "local_loss": cfg.get("local-loss", "ce"),
            "dp": bool(cfg.get("dp", False)),
            "sites": len(res.get("sites", {})) or None,
            "rounds": cfg.get("num-server-rounds"),
            "accuracy": res.get("final", {}).get("accuracy"),
            "macro_f1": res.get("final", {}).get("macro_f1"),
            "macro_auc": res.get("final", {}).get("macro_auc"),
            "baseline_accuracy": _best_baseline(res),
            "max_epsilon": max((p["epsilon"] for p in privacy.values()), default=None),
            "wall_s": res.get("timing", {}).get("wall_s"),
        })
    return rows


def _best_baseline(res: dict[str, Any]) -> float | None:
    from server.report import best_pooled

    name, acc = best_pooled(res.get("baseline", {}))
    return acc if name else None


COMPARE_COLUMNS = ["run", "preset", "mode", "model", "strategy", "local_loss", "dp", "sites", "rounds", "accuracy",
                   "macro_f1", "macro_auc", "baseline_accuracy", "max_epsilon", "wall_s"]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_compare(rows: list[dict[str, Any]]) -> str:
    """The compare table as Markdown, same columns as the terminal table."""
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COMPARE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def print_compare(rows: list[dict[str, Any]], console: Any = None) -> None:
    """The compare table on the terminal: one row per run, or one column per run when that is too wide.

    Fifteen columns do not fit an 80-column terminal; squeezed, rich cuts every cell to
    one character. Turned around (a row per field, a column per run) the values stay whole.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    cells = [[_cell(r[c]) for c in COMPARE_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COMPARE_COLUMNS)]
    wide_enough = sum(widths) + 3 * len(widths) + 1 <= console.width
    table = Table(title="Runs side by side")
    if wide_enough:
        for c in COMPARE_COLUMNS:
            table.add_column(c)
        for row in cells:
            table.add_row(*row)
    else:
        table.add_column("")
        for row in cells:
            table.add_column(row[0], overflow="fold")  # the run's name heads its column
        for i, c in enumerate(COMPARE_COLUMNS[1:], start=1):
            table.add_row(c, *[row[i] for row in cells])
    console.print(table)
