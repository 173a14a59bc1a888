"""Implant segmentation quality: IoU of the pipeline's segmenter against exact masks.

The synthetic generator writes, beside every radiograph, the exact mask of the implant metal
in frame (``masks/``, from the same drawing). This benchmark generates a federation of a
seed the tests and the main job do not use, segments every site image exactly as
``implantfl-client segment`` does (same ingest, same segmenter, full resolution) and
reports, over images whose implant is in frame:

- ``iou_threshold``: mean IoU of the threshold segmenter's mask with the exact mask;
- ``box_iou_threshold``: mean IoU of the implant boxes;
- ``found_share_threshold``: share of images where it found an implant the quality gate passes.

The learned (U-Net) segmenter of the radiographs issue is not in the product yet, so there is
no ``iou_unet``. Writes ``benchmarks/results/segmentation.json``; ``--quick`` uses the smoke preset.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._util import bench_main, single_thread  # noqa: E402

SEED = 7  # not the tests' 0 nor the main job's data


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    from client.data.ingest import IngestError, read_image
    from client.data.qc import check_segmentation
    from client.data.segmentation import box_iou, segment_implant
    from common.preprocess_params import PreprocessParams
    from simulations.synth import generate

    single_thread()
    preset = "smoke" if quick else "hip-consortium"
    params = PreprocessParams()
    ious, box_ious, found = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), preset=preset, seed=SEED)
        for notes in sorted(Path(tmp).glob("sites/*/annotations.csv")):
            site = notes.parent
            with open(notes, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    truth = cv2.imread(str(site / row["mask"]), cv2.IMREAD_GRAYSCALE)
                    if truth is None or not truth.any():
                        continue  # implant out of frame: nothing to compare
                    try:
                        img = read_image(site / row["file"], params)
                    except IngestError:
                        found.append(False)
                        continue
                    seg = segment_implant(img.image)
                    ok = seg.box is not None and check_segmentation(seg) is None
                    found.append(ok)
                    mask = seg.mask if seg.box is not None else np.zeros_like(truth)
                    if mask.shape != truth.shape:
                        mask = cv2.resize(mask, truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
                    a, b = mask > 0, truth > 0
                    ious.append(float((a & b).sum() / max(1, (a | b).sum())))
                    exact = (int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"]))
                    box_ious.append(box_iou(seg.box, exact) if seg.box is not None else 0.0)
    figures = {"iou_threshold": round(float(np.mean(ious)), 4),
               "box_iou_threshold": round(float(np.mean(box_ious)), 4),
               "found_share_threshold": round(float(np.mean(found)), 4)}
    units = {"iou_threshold": "IoU", "box_iou_threshold": "IoU", "found_share_threshold": "share"}
    return figures, units, {"preset": preset, "seed": SEED, "images": len(ious)}


def main(argv: list[str] | None = None) -> int:
    return bench_main("segmentation", __doc__, run, argv, quick_help="the smoke preset's images (< 1 min)")


if __name__ == "__main__":
    sys.exit(main())
