"""Site preprocessing throughput: ingest + QC + preprocessing of 2048x2500 16-bit DICOMs on one core.

Generates a handful of radiograph-like DICOMs (uncompressed and RLE) in a temporary
folder, then times, on one thread and best of a few rounds:

- bare decoding (``pydicom.dcmread(f).pixel_array``), the floor any pipeline pays;
- ingest only (``client.data.ingest.read_image``: decode, LUTs, normalisation);
- the whole per-file pipeline (``client.data.site_data.process_file``: ingest, QC,
  segmentation, ROI, resize, CLAHE), as ``load_site`` runs it;
- ``load_site`` of a folder of these files (no cache), on one process and with its default
  (every available core for 32 or more files): the parallel figure.

Target: the per-file pipeline within 11x bare decoding (``preprocess_over_decode_ratio``).

Writes ``benchmarks/results/preprocess.json``. ``--quick`` uses fewer files and rounds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._util import bench_main, best_of, single_thread  # noqa: E402

ROWS, COLS, BITS = 2500, 2048, 16


def radiograph(seed: int) -> np.ndarray:
    """A (ROWS, COLS) float image in [0, 1]: tissue, femur, a metal stem with its head."""
    rng = np.random.default_rng(seed)
    h, w = ROWS // 4, COLS // 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.05 + 0.1 * xx / w
    layer = np.zeros((h, w), np.float32)
    cv2.ellipse(layer, (w // 2, int(h * 0.65)), (int(w * 0.46), int(h * 0.62)), 0, 0, 360, 1.0, -1)
    cx, top = w * rng.uniform(0.42, 0.58), h * rng.uniform(0.24, 0.3)
    cv2.line(layer, (int(cx), int(top)), (int(cx), h), 2.0, int(w * 0.2))
    img += 0.12 * cv2.GaussianBlur(layer, (0, 0), 4)
    stem = np.zeros((h, w), np.uint8)
    poly = np.array([(cx - 25, top), (cx + 25, top), (cx + 9, top + h * 0.5), (cx - 9, top + h * 0.5)], np.int32)
    cv2.fillPoly(stem, [poly], 255)
    head = (int(cx - w * 0.12), int(top - h * 0.06))
    cv2.line(stem, (int(cx - 5), int(top + 10)), head, 255, 14)
    cv2.circle(stem, head, int(w * 0.055), 255, -1)
    img = np.where(stem > 0, 0.9, img)
    big = cv2.resize(img.astype(np.float32), (COLS, ROWS), interpolation=cv2.INTER_LINEAR)
    return np.clip(big + rng.normal(0, 0.01, big.shape).astype(np.float32), 0, 1)


def write_dicom(path: Path, img: np.ndarray, *, rle: bool, monochrome1: bool) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    maxval = (1 << BITS) - 1
    raw = np.round(img * maxval).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", ROWS, COLS, 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.WindowCenter, ds.WindowWidth = str(maxval // 2), str(maxval)
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.PixelData = (maxval - raw if monochrome1 else raw).tobytes()
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def run(quick: bool) -> tuple[dict[str, float], dict[str, str], dict[str, object]]:
    import pydicom

    from client.data.ingest import read_image
    from client.data.site_data import process_file
    from common.preprocess_params import PreprocessParams

    single_thread()
    n, n_rle, rounds = (3, 2, 3) if quick else (8, 4, 5)
    params = PreprocessParams()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sets = {
            "": [write_dicom(folder / f"u{k}.dcm", radiograph(k), rle=False, monochrome1=k % 2 == 1) for k in range(n)],
            "rle_": [write_dicom(folder / f"r{k}.dcm", radiograph(100 + k), rle=True, monochrome1=False)
                     for k in range(n_rle)],
        }
        for prefix, files in sets.items():
            results = [process_file(f, params) for f in files]  # warm-up; every file must pass QC
            if any(r.reason for r in results):
                raise SystemExit(f"benchmark images were rejected: {[r.reason for r in results]}")
            # per file: the least disturbed of `rounds` runs; then the mean over files
            decode = float(np.mean([best_of(lambda f=f: pydicom.dcmread(f).pixel_array, rounds) for f in files]))
            ingest = float(np.mean([best_of(lambda f=f: read_image(f, params), rounds) for f in files]))
            full = float(np.mean([best_of(lambda f=f: process_file(f, params), rounds) for f in files]))
            figures[f"{prefix}decode_images_per_s"] = round(1 / decode, 3)
            figures[f"{prefix}ingest_images_per_s"] = round(1 / ingest, 3)
            figures[f"{prefix}preprocess_images_per_s"] = round(1 / full, 3)
            figures[f"{prefix}preprocess_ms_per_image"] = round(1000 * full, 2)
            figures[f"{prefix}preprocess_over_decode_ratio"] = round(full / decode, 3)
            figures[f"{prefix}ingest_over_decode_ratio"] = round(ingest / decode, 3)
        figures.update(_segmenters(sets[""], params, rounds, figures["preprocess_ms_per_image"],
                                   1000 / figures["decode_images_per_s"]))
        figures.update(_parallel(folder, sets[""] + sets["rle_"], params, 2 if quick else 4))
    units = {k: "images/s" if k.endswith("per_s") else "ms" if k.endswith("ms_per_image") else "x" for k in figures}
    from common.parallel import available_cores

    return figures, units, {"images": n, "rle_images": n_rle, "rounds": rounds, "rows": ROWS, "columns": COLS,
                            "bits": BITS, "threads": 1, "quick": quick, "image_size": params.image_size,
                            "cores": available_cores(), "parallel_files": PARALLEL_FILES}


def _segmenters(files: list[Path], params: object, rounds: int, full_ms: float, decode_ms: float) -> dict[str, float]:
    """The segmentation step alone, threshold vs the learned U-Net (the default one, trained on first use)."""
    from client.data.ingest import read_image
    from client.data.learned_segmentation import LearnedSegmenter
    from client.data.segmentation import segment_implant
    from simulations.segmenter_training import ensure_default_segmenter

    unet = LearnedSegmenter(ensure_default_segmenter())
    images = [read_image(f, params).image for f in files]
    thr = float(np.mean([best_of(lambda i=i: segment_implant(i), rounds) for i in images])) * 1000
    learned = float(np.mean([best_of(lambda i=i: unet.segment(i), rounds) for i in images])) * 1000
    return {"segment_threshold_ms_per_image": round(thr, 2), "segment_unet_ms_per_image": round(learned, 2),
            "segment_unet_over_threshold_ratio": round(learned / thr, 3),
            "preprocess_with_unet_over_decode_ratio": round((full_ms - thr + learned) / decode_ms, 3)}


PARALLEL_FILES = 32  # files in the load_site folder: the default turns to all cores from 32


def _parallel(folder: Path, files: list[Path], params: object, repeat: int) -> dict[str, float]:
    """``load_site`` throughput on one process and with its default worker count (same files, no cache)."""
    import shutil
    import time

    from client.data.site_data import load_site
    from common.catalog import Catalog, ImplantClass

    site = folder / "site"
    (site / "stem-a").mkdir(parents=True)
    for k in range(PARALLEL_FILES):
        shutil.copy(files[k % len(files)], site / "stem-a" / f"f{k:03d}.dcm")
    catalog = Catalog("bench", "1", (ImplantClass("stem-a", "Maker", "Stem A"),))
    rates = {}
    for name, workers in (("serial", 1), ("parallel", None)):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            data = load_site(site, catalog=catalog, params=params, val_fraction=0.0, workers=workers)
            best = min(best, time.perf_counter() - t0)
            if len(data.y) != PARALLEL_FILES:
                raise SystemExit("benchmark images were rejected by load_site")
        rates[name] = PARALLEL_FILES / best
    return {"load_site_serial_images_per_s": round(rates["serial"], 3),
            "load_site_parallel_images_per_s": round(rates["parallel"], 3),
            "load_site_parallel_over_serial_speed_ratio": round(rates["parallel"] / rates["serial"], 3)}


def main(argv: list[str] | None = None) -> int:
    return bench_main("preprocess", __doc__, run, argv, quick_help="fewer files and rounds (< 2 min)")


if __name__ == "__main__":
    sys.exit(main())
