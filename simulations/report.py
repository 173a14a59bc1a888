"""Run directory outputs: results.json, plots/*.png and report.md, from one results dict."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_results(out: Path, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    """Accuracy per round, per-site validation accuracy, epsilon per round, confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    rounds = results.get("rounds", [])
    written = []
    xs = [r["round"] for r in rounds]

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("test-accuracy", "global test (federated)"), ("val-accuracy", "site validation (mean)")):
        ys = [r["aggregate"].get(key, math.nan) for r in rounds]
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, marker="o", label=label)
    base = results.get("baseline", {}).get("centralized", {}).get("final", {}).get("accuracy")
    if base is not None:
        ax.axhline(base, color="grey", linestyle="--", label="centralised baseline (test)")
    ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    written.append(_save(fig, plots / "accuracy.png"))

    sites = sorted({s for r in rounds for s in r["sites"]})
    for key, name, title in (("val-accuracy", "site_accuracy.png", "Validation accuracy per site"),
                             ("epsilon", "epsilon.png", "Cumulative epsilon per site")):
        series = {s: [(r["round"], r["sites"][s][key]) for r in rounds if key in r["sites"].get(s, {})] for s in sites}
        if not any(series.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for s, pts in series.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=s)
        ax.set(xlabel="round", ylabel=key, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        written.append(_save(fig, plots / name))

    confusion = results.get("final", {}).get("confusion")
    if confusion:
        ids = list(results["final"]["per_class"])
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        im = ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=6)
        ax.set_yticks(range(len(ids)), ids, fontsize=6)
        ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (global test set)")
        fig.colorbar(im, ax=ax)
        written.append(_save(fig, plots / "confusion.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, results: dict[str, Any]) -> Path:
    final = results.get("final", {})
    base = results.get("baseline", {}).get("centralized", {}).get("final", {})
    lines = [f"# ImplantFL run report: {results['config'].get('preset', '')}", ""]
    lines += ["| | top-1 accuracy | top-3 accuracy | macro F1 |", "|---|---|---|---|"]
    lines.append(f"| federated | {final.get('accuracy', math.nan):.4f} | {final.get('top3_accuracy', math.nan):.4f} | {final.get('macro_f1', math.nan):.4f} |")
    if base:
        lines.append(f"| centralised baseline | {base['accuracy']:.4f} | {base['top3_accuracy']:.4f} | {base['macro_f1']:.4f} |")
    privacy = results.get("privacy", {})
    if privacy:
        lines += ["", "## Privacy spent", "", "| site | epsilon | delta | noise multiplier | sample rate | steps | rounds refused |", "|---|---|---|---|---|---|---|"]
        for site, p in privacy.items():
            lines.append(f"| {site} | {p['epsilon']:.2f} | {p['delta']:g} | {p['noise_multiplier']:.3f} | {p['sample_rate']:.4f} | {p['steps']} | {p['rounds_refused']} |")
    lines += ["", "## Plots", ""]
    for png in sorted((out / "plots").glob("*.png")):
        lines.append(f"![{png.stem}](plots/{png.name})")
    lines += ["", f"Wall time: {results.get('timing', {}).get('wall_s', 0):.1f} s", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
