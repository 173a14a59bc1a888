"""Implant segmentation quality: IoU of the pipeline's segmenter against exact masks.

The synthetic generator writes, beside every radiograph, the exact mask of the implant metal
in frame (``masks/``, from the same drawing). This benchmark generates a federation of a
seed the tests and the main job do not use, segments every site image exactly as
``implantfl-client segment`` does (same ingest, same segmenter, full resolution) and
reports, over images whose implant is in frame:

- ``iou_threshold``: mean IoU of the threshold segmenter's mask with the exact mask;
- ``box_iou_threshold``: mean IoU of the implant boxes;
- ``found_share_threshold``: share of images where it found an implant the quality gate passes.

The same three figures with the suffix ``_xray`` come from radiographs of another kind: the
catalog designs written as meshes (``synth --write-meshes``) and simulated with gVirtualXray
(``synth --meshes``, smoke preset, same seed), whose masks are exact ray-metal intersections
(stem, neck, head and cup). They are skipped, with a note, where gVirtualXray is not installed.

The same figures named ``..._unet`` are the learned segmenter's (``implantfl-sim
train-segmenter``: a MONAI U-Net trained on public generated designs, disjoint from the
catalog, with their exact masks; the default one is trained on first use and cached).
Writes ``benchmarks/results/segmentation.json``; ``--quick`` uses the smoke preset.
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


def _score(folder: Path, segment=None) -> tuple[list[float], list[float], list[bool]]:  # noqa: ANN001
    """(mask IoUs, box IoUs, found flags) of every site image of a federation with its implant in frame."""
    from client.data.ingest import IngestError, read_image
    from client.data.qc import check_segmentation
    from client.data.segmentation import box_iou, segment_implant
    from common.preprocess_params import PreprocessParams

    params = PreprocessParams()
    ious, box_ious, found = [], [], []
    for notes in sorted(folder.glob("sites/*/annotations.csv")):
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
                seg = (segment or segment_implant)(img.image)
                ok = seg.box is not None and check_segmentation(seg) is None
                found.append(ok)
                mask = seg.mask if seg.box is not None else np.zeros_like(truth)
                if mask.shape != truth.shape:
                    mask = cv2.resize(mask, truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
                a, b = mask > 0, truth > 0
                ious.append(float((a & b).sum() / max(1, (a | b).sum())))
                exact = (int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"]))
                box_ious.append(box_iou(seg.box, exact) if seg.box is not None else 0.0)
    return ious, box_ious, found


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    from simulations.synth import generate

    single_thread()
    preset = "smoke" if quick else "hip-consortium"
    figures: dict[str, float] = {}
    params: dict[str, object] = {"preset": preset, "seed": SEED}
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "drawn", preset=preset, seed=SEED)
        ious, box_ious, found = _score(Path(tmp) / "drawn")
        figures.update(_figures(ious, box_ious, found, ""))
        params["images"] = len(ious)
        unet = _unet()
        params["unet"] = unet.sha256
        figures.update(_figures(*_score(Path(tmp) / "drawn", unet.segment), "", "unet"))
        try:
            from simulations.xray.runtime import check_available

            check_available()
        except Exception as e:  # noqa: BLE001 - no renderer here: the drawn figures stand alone
            params["xray"] = f"skipped: {e}"
        else:
            from simulations.synth.catalog_spec import DESIGNS
            from simulations.xray.stem_mesh import write_design_meshes

            meshes = write_design_meshes(Path(tmp) / "meshes", DESIGNS)
            generate(Path(tmp) / "xray", preset="smoke", seed=SEED, meshes=meshes)
            ious, box_ious, found = _score(Path(tmp) / "xray")
            figures.update(_figures(ious, box_ious, found, "_xray"))
            figures.update(_figures(*_score(Path(tmp) / "xray", unet.segment), "_xray", "unet"))
            params["xray_images"] = len(ious)
    units = {k: "share" if k.startswith("found") else "IoU" for k in figures}
    return figures, units, params


def _unet():  # noqa: ANN202 - LearnedSegmenter
    """The default U-Net segmenter (trained on public renders on first use, then cached)."""
    from client.data.learned_segmentation import LearnedSegmenter
    from simulations.segmenter_training import ensure_default_segmenter

    return LearnedSegmenter(ensure_default_segmenter())


def _figures(ious: list[float], box_ious: list[float], found: list[bool], suffix: str,
             name: str = "threshold") -> dict[str, float]:
    return {f"iou_{name}{suffix}": round(float(np.mean(ious)), 4),
            f"box_iou_{name}{suffix}": round(float(np.mean(box_ious)), 4),
            f"found_share_{name}{suffix}": round(float(np.mean(found)), 4)}


def main(argv: list[str] | None = None) -> int:
    return bench_main("segmentation", __doc__, run, argv, quick_help="the smoke preset's images (< 1 min)")


if __name__ == "__main__":
    sys.exit(main())
