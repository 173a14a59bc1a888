"""Run directory outputs: results.json, plots/*.png and report.md, from one results dict.

Plots (each written only when the results hold its data):

=====================  ==========================================================
``accuracy.png``       global test and mean site validation accuracy per round
``site_accuracy.png``  each site's validation accuracy per round
``epsilon.png``        each site's cumulative epsilon per round
``confusion.png``      confusion matrix of the final model on the global test set
``roc.png``            one-vs-rest ROC curves of the final model (results ``final.roc``)
``per_site.png``       each site's last validation accuracy (bar chart)
``baselines.png``      federated top-1 beside every baseline of the run (bar chart)
=====================  ==========================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PLOTS: dict[str, str] = {  # file -> caption in report.md, in report order
    "baselines.png": "Federated model and baselines (global test set)",
    "accuracy.png": "Accuracy per round",
    "site_accuracy.png": "Validation accuracy per site and round",
    "per_site.png": "Per-site validation accuracy (last round)",
    "epsilon.png": "Cumulative epsilon per site and round",
    "confusion.png": "Confusion matrix (global test set)",
    "roc.png": "One-vs-rest ROC curves (global test set)",
}
ROC_LEGEND_MAX = 12  # more classes than this: the legend lists only the macro AUC


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
    """Every plot the results have data for (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    for draw in (_baselines, _accuracy, _site_series, _per_site, _confusion, _roc):
        written += draw(plots, results)
    return written


def _accuracy(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    rounds = results.get("rounds", [])
    if not rounds:
        return []
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("test-accuracy", "global test (federated)"), ("val-accuracy", "site validation (mean)")):
        ys = [r["aggregate"].get(key, math.nan) for r in rounds]
        if any(not math.isnan(y) for y in ys):
            ax.plot(xs, ys, marker="o", label=label)
    name, base = best_pooled(results.get("baseline", {}))
    if name:
        ax.axhline(base, color="grey", linestyle="--", label=f"best pooled, no DP ({name})")
    ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return [_save(fig, plots / "accuracy.png")]


def _baselines(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    rows = [r for r in baseline_rows(results) if r["accuracy"] is not None]
    if len(rows) < 2:
        return []
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.2))
    labels = [r["label"] + (f" (eps {r['epsilon']:.1f})" if r["dp"] else "") for r in rows]
    colors = ["tab:blue" if r["name"] == "federated" else "tab:orange" if r["dp"] else "tab:grey" for r in rows]
    ax.barh(range(len(rows)), [r["accuracy"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(min(r["accuracy"] + 0.01, 0.9), i, f"{r['accuracy']:.3f}", va="center")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="top-1 accuracy, global test set", title="Federated model and baselines")
    ax.grid(axis="x", alpha=0.3)
    return [_save(fig, plots / "baselines.png")]


def _site_series(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    rounds = results.get("rounds", [])
    sites = sorted({s for r in rounds for s in r["sites"]})
    written = []
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
    return written


def last_site_accuracy(results: dict[str, Any]) -> dict[str, float]:
    """Each site's validation accuracy in the last round it reported one."""
    out: dict[str, float] = {}
    for r in results.get("rounds", []):
        for site, m in r["sites"].items():
            if "val-accuracy" in m and m.get("status", "ok") == "ok":
                out[site] = float(m["val-accuracy"])
    return dict(sorted(out.items()))


def _per_site(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    acc = last_site_accuracy(results)
    if not acc:
        return []
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(acc) + 2), 4))
    ax.bar(list(acc), list(acc.values()), color="tab:blue")
    final = results.get("final", {}).get("accuracy")
    if final is not None and not math.isnan(final):
        ax.axhline(final, color="tab:red", linestyle="--", label="global model on the test set")
        ax.legend(loc="lower right", fontsize=7)
    ax.set(ylabel="validation accuracy", ylim=(0, 1), title="Per-site validation accuracy (last round)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.grid(alpha=0.3, axis="y")
    return [_save(fig, plots / "per_site.png")]


def _confusion(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    final = results.get("final", {})
    confusion = final.get("confusion")
    if not confusion:
        return []
    ids = list(final["per_class"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=6)
    ax.set_yticks(range(len(ids)), ids, fontsize=6)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (global test set)")
    fig.colorbar(im, ax=ax)
    return [_save(fig, plots / "confusion.png")]


def _roc(plots: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib.pyplot as plt

    final = results.get("final", {})
    curves = final.get("roc") or {}
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 5))
    few = len(curves) <= ROC_LEGEND_MAX
    for cid, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], lw=1, alpha=0.8, label=f"{cid} (AUC {c['auc']:.3f})" if few else None)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", lw=1, label="chance")
    macro = final.get("macro_auc", math.nan)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, one-vs-rest (macro AUC {macro:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    return [_save(fig, plots / "roc.png")]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not math.isnan(value) else "n/a"


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """report.md: headline metrics, per-site and per-class tables, privacy, every plot."""
    final = results.get("final", {})
    lines = [f"# ImplantFL run report: {results['config'].get('preset', '')}", ""]
    lines += ["| | top-1 accuracy | top-3 accuracy | macro F1 | macro AUC | ECE | epsilon |", "|---|---|---|---|---|---|---|"]
    for r in baseline_rows(results):
        m = r["final"] or {}
        eps = f"{r['epsilon']:.2f}" if r["dp"] else "no DP"
        lines.append(f"| {r['label']} | {_f(r['accuracy'])} | {_f(m.get('top3_accuracy'))} | {_f(m.get('macro_f1'))} | "
                     f"{_f(m.get('macro_auc'))} | {_f(m.get('ece'))} | {eps} |")
    singles = results.get("baseline", {}).get("single_site", {})
    if singles:
        lines += ["", "Each site alone (DP at the same epsilon, same test set): " + ", ".join(
            f"{site} {_f(v.get('accuracy'), 3)}" for site, v in sorted(singles.items())) + "."]
    binary = final.get("binary")
    if binary:
        lines += ["", f"Binary task: AUC {_f(binary['auc'])}, Cohen's kappa {_f(binary['kappa'])}, "
                      f"precision = recall at threshold {_f(binary['pr_threshold'], 3)}."]
    lines += _site_table(results)
    per_class = final.get("per_class", {})
    if per_class:
        lines += ["", "## Per class (global test set)", "",
                  "| class | precision | sensitivity | specificity | F1 | AUC | test images |", "|---|---|---|---|---|---|---|"]
        for cid, m in per_class.items():
            lines.append(f"| {cid} | {_f(m.get('precision'), 3)} | {_f(m.get('sensitivity'), 3)} | {_f(m.get('specificity'), 3)} | "
                         f"{_f(m.get('f1'), 3)} | {_f(m.get('auc'), 3)} | {m.get('support', 0)} |")
    privacy = results.get("privacy", {})
    if privacy:
        lines += ["", "## Privacy spent", "", "| site | epsilon | delta | noise multiplier | sample rate | steps | rounds refused |", "|---|---|---|---|---|---|---|"]
        for site, p in privacy.items():
            lines.append(f"| {site} | {p['epsilon']:.2f} | {p['delta']:g} | {p['noise_multiplier']:.3f} | {p['sample_rate']:.4f} | {p['steps']} | {p.get('rounds_refused', 0)} |")
    lines += ["", "## Plots", ""]
    plots = out / "plots"
    for name, caption in PLOTS.items():
        if (plots / name).exists():
            lines += [f"### {caption}", "", f"![{caption}](plots/{name})", ""]
    for png in sorted(plots.glob("*.png")) if plots.is_dir() else []:
        if png.name not in PLOTS:
            lines += [f"![{png.stem}](plots/{png.name})", ""]
    lines += [f"Wall time: {results.get('timing', {}).get('wall_s', 0):.1f} s", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _site_table(results: dict[str, Any]) -> list[str]:
    sites = results.get("sites", {})
    acc = last_site_accuracy(results)
    if not sites and not acc:
        return []
    lines = ["", "## Sites", "", "| site | kind | training images | validation images | validation accuracy (last round) |",
             "|---|---|---|---|---|"]
    for name in sorted(set(sites) | set(acc)):
        s = sites.get(name, {})
        lines.append(f"| {name} | {s.get('kind', '')} | {s.get('train', '')} | {s.get('val', '')} | {_f(acc.get(name, math.nan), 3)} |")
    return lines


def best_pooled(baseline: Mapping[str, object]) -> tuple[str, float]:
    """The best non-private pooled baseline: (name, top-1); ("", -inf) when there is none."""
    best = ("", -math.inf)
    for name, b in (baseline or {}).items():
        if isinstance(b, dict) and "final" in b and not b.get("dp") and name != "single_site":
            acc = float(b["final"]["accuracy"])
            if acc > best[1]:
                best = (name, acc)
    return best


BASELINE_LABELS = {
    "pooled": "pooled, same encoder and head, no DP",
    "pooled_cnn": "pooled, study CNN end to end, no DP",
    "pooled_dp": "pooled as one DP site, same epsilon",
}


def baseline_rows(results: Mapping[str, object]) -> list[dict]:
    """Federated and baseline rows for summaries: ``{name, label, final (or None), accuracy, dp, epsilon}``.

    The best single site is one row (``single_site``: its accuracy only). A run without a head
    has one baseline, ``pooled`` (the same model pooled, no DP).
    """
    rows = [{"name": "federated", "label": "federated", "final": results.get("final", {}),
             "accuracy": results.get("final", {}).get("accuracy"), "dp": bool(results.get("config", {}).get("dp")),
             "epsilon": max((p.get("epsilon", 0.0) for p in results.get("privacy", {}).values()), default=0.0)}]
    baseline = results.get("baseline", {}) or {}
    for name in ("pooled", "pooled_cnn", "pooled_dp", "centralized"):
        b = baseline.get(name)
        if isinstance(b, dict) and "final" in b:
            rows.append({"name": name, "label": BASELINE_LABELS.get(name, "pooled, no DP"), "final": b["final"],
                         "accuracy": b["final"].get("accuracy"), "dp": bool(b.get("dp")), "epsilon": b.get("epsilon", 0.0)})
    singles = baseline.get("single_site") or {}
    if singles:
        site, best = max(singles.items(), key=lambda kv: kv[1].get("accuracy", 0.0))
        rows.append({"name": "single_site", "label": f"best single site alone ({site}), DP", "final": None,
                     "accuracy": best.get("accuracy"), "dp": True, "epsilon": best.get("epsilon", 0.0)})
    return rows
