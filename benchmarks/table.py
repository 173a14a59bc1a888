"""Markdown table of every benchmark result, with the project's targets.

``python -m benchmarks.table`` reads ``benchmarks/results/*.json`` and prints one line per
target saying whether it is met, by its headline figure, then one row per figure:
benchmark, figure, value, unit, target, met?. ``--write-readme`` writes the whole of it as
``benchmarks/README.md`` and puts the target verdicts between ``<!-- benchmarks:start -->``
and ``<!-- benchmarks:end -->`` in the project README (exit 1 with a message when the
markers are missing). A benchmark whose last run was ``--quick`` is marked "(quick)".
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR

README = Path(__file__).resolve().parent.parent / "README.md"
BENCH_README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Target:
    benchmark: str
    pattern: str  # regular expression a figure name must match in full
    op: str  # "<=" or "<"
    bound: float
    why: str  # the requirement, in words
    headline: str = ""  # the figure that decides whether the target is met ("" = none)

    def applies(self, benchmark: str, figure: str) -> bool:
        return benchmark == self.benchmark and re.fullmatch(self.pattern, figure) is not None

    def met(self, value: float) -> bool:
        return OPS[self.op](value, self.bound)

    @property
    def text(self) -> str:
        return f"{self.op} {self.bound:g}"


OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}

TARGETS: tuple[Target, ...] = (
    Target("dp_overhead", r"cnn_dp_\w+_over_plain_ratio", "<=", 1.5, "DP-SGD at most 1.5x the plain time (CNN)",
           headline="cnn_dp_default_over_plain_ratio"),  # the mode a default run uses (the fastest valid)
    Target("fl_overhead", r"fl_steady_rounds_over_local_ratio", "<=", 1.2,
           "federated at most 1.2x local, Ray start-up excluded", headline="fl_steady_rounds_over_local_ratio"),
    Target("scale", r"cnn_100_sites_5_rounds_wall_s", "<", 600.0, "100 sites x 5 rounds under 10 min on 2 cores",
           headline="cnn_100_sites_5_rounds_wall_s"),
    Target("dp_overhead", r"head_\w+_dp_over_plain_ratio", "<=", 1.05,
           "DP training of the default head at most 1.05x its plain training", headline="head_dp_stats_dp_over_plain_ratio"),
    Target("privacy_utility", r"generated_dp-stats_eps8_accuracy", ">=", 0.85,
           "the default route (generated encoder, dp-stats head) at least 0.85 top-1 at epsilon 8",
           headline="generated_dp-stats_eps8_accuracy"),
    Target("open_set", r"unseen_flagged_unknown_share", ">=", 0.90,
           "designs outside the catalog flagged unknown (main job's release)", headline="unseen_flagged_unknown_share"),
    Target("open_set", r"known_correct_passed_share", ">=", 0.95,
           "correctly identified catalog images not flagged unknown", headline="known_correct_passed_share"),
    Target("preprocess", r"preprocess_over_decode_ratio", "<=", 11.0,
           "a site's per-file preprocessing within 11x bare decoding (one core)", headline="preprocess_over_decode_ratio"),
)


@dataclass(frozen=True)
class Row:
    benchmark: str
    figure: str
    value: float
    unit: str
    target: str
    met: bool | None  # None: no target


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` result in ``folder``, sorted by benchmark name."""
    docs = []
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("figures"), dict):
            raise ValueError(f"{path.name} is not a benchmark result (no 'figures' object)")
        doc.setdefault("benchmark", path.stem)
        docs.append(doc)
    return sorted(docs, key=lambda d: str(d["benchmark"]))


def is_quick(doc: Mapping[str, Any]) -> bool:
    machine = doc.get("machine") or {}
    params = machine.get("params") or {}
    return bool(params.get("quick", machine.get("quick", False)))


def rows(docs: Iterable[Mapping[str, Any]], targets: Iterable[Target] = TARGETS) -> list[Row]:
    targets = list(targets)
    out = []
    for doc in docs:
        name = str(doc["benchmark"])
        units = doc.get("units") or {}
        for figure, value in doc["figures"].items():
            target = next((t for t in targets if t.applies(name, figure)), None)
            out.append(Row(name, figure, float(value), str(units.get(figure, "")),
                           target.text if target else "", target.met(float(value)) if target else None))
    return out


def naming_problems(doc: Mapping[str, Any]) -> list[str]:
    """Figures that break the naming rule: a ratio (unit ``x``) has ``ratio`` in its name, and only ratios do."""
    units = doc.get("units") or {}
    problems = []
    for figure in doc.get("figures", {}):
        unit = units.get(figure)
        if unit is None:
            problems.append(f"{figure}: no unit")
        elif (unit == "x") != ("ratio" in figure):
            problems.append(f"{figure}: unit {unit!r} but {'no ' if 'ratio' not in figure else ''}'ratio' in the name")
    return problems


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def markdown(table: Iterable[Row], quick: Iterable[str] = ()) -> str:
    """The table as GitHub markdown."""
    quick = set(quick)
    lines = ["| benchmark | figure | value | unit | target | met? |", "|---|---|---:|---|---|---|"]
    for r in table:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        bench = f"{r.benchmark} (quick)" if r.benchmark in quick else r.benchmark
        lines.append(f"| {bench} | `{r.figure}` | {_fmt(r.value)} | {r.unit} | {r.target} | {met} |")
    return "\n".join(lines)


def verdicts(docs: Iterable[Mapping[str, Any]], targets: Iterable[Target] = TARGETS) -> list[str]:
    """One markdown line per target: met or not, with its headline figure from the results."""
    by_name = {str(d["benchmark"]): d for d in docs}
    lines = []
    for t in targets:
        doc = by_name.get(t.benchmark)
        if doc is None or t.headline not in doc["figures"]:
            lines.append(f"- {t.why}: no result yet (`python -m benchmarks.{t.benchmark}`)")
            continue
        value = float(doc["figures"][t.headline])
        unit = str((doc.get("units") or {}).get(t.headline, ""))
        verdict = "**met**" if t.met(value) else "**not met**"
        quick = " (quick run)" if is_quick(doc) else ""
        lines.append(f"- {t.why}: {verdict}, `{t.benchmark}.{t.headline}` = {_fmt(value)} {unit}"
                     f" (target {t.text}){quick}")
    return lines


def render(folder: Path) -> str:
    docs = load_results(folder)
    text = markdown(rows(docs), quick=[str(d["benchmark"]) for d in docs if is_quick(d)])
    return "Targets:\n" + "\n".join(verdicts(docs)) + "\n\n" + text


def bench_readme(folder: Path) -> str:
    """benchmarks/README.md: how to run them, the verdicts and every figure (generated; do not edit)."""
    return ("# Benchmarks\n\n<!-- generated by `python -m benchmarks.table --write-readme`; do not edit -->\n\n"
            "`python -m benchmarks.<name> [--quick]` writes `benchmarks/results/<name>.json` "
            "(2 CPU cores, one torch thread per training unless a benchmark says otherwise). Each module's "
            "docstring says what it measures and how.\n\n" + render(folder) + "\n")


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the benchmark markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"README has no '{START}' ... '{END}' block")
    return text[: start + len(START)] + "\n" + block.strip("\n") + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of <benchmark>.json results")
    parser.add_argument("--write-readme", action="store_true", help="replace the benchmarks block in README.md")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    docs = load_results(args.results)
    if not docs:
        print(f"no results in {args.results}; run python -m benchmarks.<name> first", file=sys.stderr)
        return 1
    for doc in docs:
        for problem in naming_problems(doc):
            print(f"warning: {doc['benchmark']}: {problem}", file=sys.stderr)
    text = render(args.results)
    print(text)
    if args.write_readme:
        try:
            block = "\n".join(verdicts(docs)) + "\n\nEvery figure: [benchmarks/README.md](benchmarks/README.md)."
            new = replace_block(args.readme.read_text(encoding="utf-8"), block)
        except (OSError, ValueError) as e:
            print(f"cannot update {args.readme.name}: {e}; add the two marker lines where the table belongs",
                  file=sys.stderr)
            return 1
        args.readme.write_text(new, encoding="utf-8")
        if args.readme == README:
            BENCH_README.write_text(bench_readme(args.results), encoding="utf-8")
        print(f"updated {args.readme} and benchmarks/README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
