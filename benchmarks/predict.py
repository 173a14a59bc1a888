"""Bedside latency: one radiograph through ``predict``, per model, on CPU.

``python -m benchmarks.predict [--quick]`` writes ``benchmarks/results/predict.json``.

For every model in the registry (``--quick``: cnn and dnn) a release is written with
untrained weights (latency does not depend on the weights), and each generated test
image of the ``smoke`` federation is answered in turn, timing the whole call:

- ``<model>_predict_p50_ms`` / ``_p95_ms``: ingest + QC + eval preprocessing + model +
  calibration + top-k (``Predictor.predict_file``);
- ``<model>_predict_cam_p50_ms`` / ``_p95_ms``: the same plus Grad-CAM and writing the
  overlay PNG (``--cam``);
- ``<model>_model_p50_ms``: the forward pass alone;
- ``preprocess_p50_ms`` / ``_p95_ms``: ingest + QC + preprocessing alone (model-independent).

One intra-op thread (what ``predict`` uses by default); the image size is the presets' 64.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

QUICK_MODELS = ("cnn", "dnn")
IMAGE_SIZE = 64


def _times_ms(fn: Callable[[Any], Any], items: list[Any], *, rounds: int, warmup: int = 2) -> list[float]:
    for item in items[:warmup]:
        fn(item)
    out = []
    for _ in range(rounds):
        for item in items:
            t0 = time.perf_counter()
            fn(item)
            out.append(1000 * (time.perf_counter() - t0))
    return out


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def _images(n: int) -> list[Path]:
    from simulations.federation import ensure_synthetic

    root = ensure_synthetic("smoke", 0)
    return sorted((root / "test" / "images").iterdir())[:n]


def _release(model_name: str, out: Path) -> Path:
    from flwr.app import ArrayRecord

    from common.catalog import Catalog
    from common.config import RunConfig
    from common.models import build_model
    from common.preprocess_params import PreprocessParams
    from server.release import write_release
    from simulations.federation import ensure_synthetic

    catalog = Catalog.load(ensure_synthetic("smoke", 0) / "catalog.json")
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=len(catalog), image_size=IMAGE_SIZE)
    return write_release(out, arrays=ArrayRecord(model.state_dict()), config=RunConfig(model=model_name, image_size=IMAGE_SIZE),
                         catalog=catalog, preprocess=PreprocessParams(image_size=IMAGE_SIZE), onnx=False)


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    from client.bedside.predict import Predictor
    from common.models import MODELS

    torch.set_num_threads(1)
    models = QUICK_MODELS if quick else tuple(MODELS)
    files = _images(12 if quick else 30)
    rounds = 2 if quick else 3
    figures: dict[str, float] = {}
    units: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for i, name in enumerate(models):
            pred = Predictor(_release(name, tmp_path / name), allow_unfit=True)  # an untrained model: latency only
            if i == 0:
                pre = _times_ms(pred.prepare, files, rounds=rounds)
                figures |= {"preprocess_p50_ms": _pct(pre, 50), "preprocess_p95_ms": _pct(pre, 95)}
            prepared = [p.image for p in map(pred.prepare, files) if p.image is not None]
            plain = _times_ms(pred.predict_file, files, rounds=rounds)
            cams = _times_ms(lambda f, p=pred: p.predict_file(f, cam_path=tmp_path / "cam.png"), files, rounds=rounds)  # noqa: B023
            forward = _times_ms(pred.probabilities, prepared, rounds=rounds)
            figures |= {f"{name}_predict_p50_ms": _pct(plain, 50), f"{name}_predict_p95_ms": _pct(plain, 95),
                        f"{name}_predict_cam_p50_ms": _pct(cams, 50), f"{name}_predict_cam_p95_ms": _pct(cams, 95),
                        f"{name}_model_p50_ms": _pct(forward, 50)}
            print(f"{name:>14}: predict p50 {figures[f'{name}_predict_p50_ms']:8.2f} ms  p95 {figures[f'{name}_predict_p95_ms']:8.2f} ms"
                  f"  | with Grad-CAM p50 {figures[f'{name}_predict_cam_p50_ms']:8.2f} ms  p95 {figures[f'{name}_predict_cam_p95_ms']:8.2f} ms"
                  f"  | model {figures[f'{name}_model_p50_ms']:7.2f} ms", flush=True)
    units = {k: "ms" for k in figures}
    return figures, units, {"image_size": IMAGE_SIZE, "images": len(files), "rounds": rounds, "threads": 1}


def main(argv: list[str] | None = None) -> int:
    from benchmarks._util import bench_main

    return bench_main("predict", __doc__, run, argv, quick_help="cnn and dnn only, fewer images")


if __name__ == "__main__":
    raise SystemExit(main())
