"""Shared helpers for benchmarks: one result format, machine description, single-thread timing.

Every benchmark writes ``benchmarks/results/<name>.json``::

    {"benchmark": name, "figures": {name: value}, "units": {name: unit}, "machine": {...}}

Ratios carry ``ratio`` in their figure name (unit ``"x"``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU count, platform, Python and library versions of this machine."""
    versions = {}
    for dist in ("torch", "numpy", "opencv-python-headless", "pydicom", "flwr", "opacus"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pass
    return info


def write_result(name: str, figures: Mapping[str, float], units: Mapping[str, str], *,
                 params: Mapping[str, Any] | None = None, results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` and return its path.

    Parameters
    ----------
    name
        Benchmark name (the module name under ``benchmarks``).
    figures
        Figure name -> finite number.
    units
        Figure name -> unit; every figure needs one.
    params
        How the benchmark ran (image count, quick mode...), stored under ``machine.params``.
    results_dir
        Defaults to ``benchmarks/results``.
    """
    missing = sorted(set(figures) - set(units))
    if missing:
        raise ValueError(f"figures without a unit: {', '.join(missing)}")
    bad = sorted(k for k, v in figures.items() if not isinstance(v, int | float) or not math.isfinite(v))
    if bad:
        raise ValueError(f"figures that are not finite numbers: {', '.join(bad)}")
    machine = machine_info()
    if params:
        machine["params"] = dict(params)
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    doc = {"benchmark": name, "figures": dict(figures), "units": {k: units[k] for k in figures}, "machine": machine}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def single_thread() -> None:
    """Make torch and OpenCV use one thread (numpy's BLAS is set by the environment)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Shortest wall time (s) of ``repeat`` calls of ``fn``: the least disturbed run."""
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


Run = Callable[[bool], tuple[Mapping[str, float], Mapping[str, str], dict[str, Any]]]


def bench_main(name: str, doc: str, run: Run, argv: list[str] | None = None, *, quick_help: str,
               check: Callable[[], str | None] | None = None,
               after: Callable[[Mapping[str, float], dict[str, Any]], None] | None = None) -> int:
    """The one ``main()`` of every benchmark: ``[--quick]``, run, print the figures, write the JSON.

    ``run(quick)`` returns ``(figures, units, params)``; ``check()`` may return why the
    benchmark cannot run on this machine (exit 1 with that message); ``after`` prints
    whatever else a benchmark wants to say about its figures.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    problem = check() if check is not None else None
    if problem:
        print(problem, file=sys.stderr)
        return 1
    t0 = time.monotonic()
    figures, units, params = run(args.quick)
    params = {**params, "quick": args.quick, "benchmark_wall_s": round(time.monotonic() - t0, 1)}
    width = max((len(k) for k in figures), default=10)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value:12.4f} {units[key]}")
    if after is not None:
        after(figures, params)
    print(f"wrote {write_result(name, figures, units, params=params)}")
    return 0
