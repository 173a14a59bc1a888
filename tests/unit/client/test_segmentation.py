"""Implant segmentation: the ROI overlaps the true implant box; no-implant / foreign objects are told apart."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from conftest import draw_radiograph, write_dicom, write_png

from client.data.ingest import read_image
from client.data.qc import FOREIGN_OBJECT, NO_IMPLANT, check_segmentation
from client.data.segmentation import box_iou, otsu, segment_implant
from common.preprocess_params import PreprocessParams

HIT_IOU = 0.7
HIT_RATE = 0.95


def _hit_rate(ious: list[float]) -> float:
    return float(np.mean(np.asarray(ious) >= HIT_IOU))


@pytest.mark.parametrize(
    ("store", "suffix"),
    [
        (lambda p, img: write_dicom(p, img, bits=12, monochrome1=True), ".dcm"),
        (lambda p, img: write_dicom(p, img, bits=16, window=(30000, 60000)), ".dcm"),
        (lambda p, img: write_png(p, img, bits=8), ".png"),
    ],
    ids=["dicom-mono1-12bit", "dicom-mono2-16bit-window", "png-8bit"],
)
def test_roi_overlaps_the_true_box_on_fixtures(tmp_path, store, suffix):
    # Prepare
    cases = [draw_radiograph(1000 + k, shape=(320, 256) if k % 2 else (288, 240)) for k in range(20)]
    paths = [store(tmp_path / f"{k}{suffix}", r.image) for k, r in enumerate(cases)]
    # Execute
    segs = [segment_implant(read_image(p, PreprocessParams()).pixels) for p in paths]
    # Assert
    ious = [box_iou(s.box, r.box) if s.box else 0.0 for s, r in zip(segs, cases, strict=True)]
    assert _hit_rate(ious) >= HIT_RATE, sorted(ious)[:5]
    assert all(check_segmentation(s) is None for s in segs)


def test_roi_overlaps_the_true_box_on_the_generated_federation(synth_smoke):
    # Prepare: every image of the generator's smoke preset with its annotated box
    rows = [(ann.parent / r["file"], tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1")))
            for ann in sorted(synth_smoke.glob("**/annotations.csv"))
            for r in csv.DictReader(ann.open(newline=""))]
    assert len(rows) >= 100
    # Execute
    ious = []
    for path, box in rows:
        seg = segment_implant(read_image(path, PreprocessParams()).pixels)
        ious.append(box_iou(seg.box, box) if seg.box else 0.0)
    # Assert
    assert _hit_rate(ious) >= HIT_RATE, f"hit rate {_hit_rate(ious):.3f}"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"implant": False}, NO_IMPLANT),
        ({"foreign": True}, FOREIGN_OBJECT),
        ({"second_stem": True}, FOREIGN_OBJECT),
        ({}, None),
    ],
    ids=["no-implant", "foreign-disc", "second-stem", "one-stem"],
)
def test_qc_reason_from_the_segmentation(kwargs, reason):
    # Prepare
    images = [draw_radiograph(2000 + k, **kwargs).image for k in range(10)]
    # Execute
    reasons = [check_segmentation(segment_implant(img)) for img in images]
    # Assert
    assert reasons == [reason] * 10


@pytest.mark.parametrize(
    "band",
    [np.s_[:, :14], np.s_[:, -14:], np.s_[:10, :], np.s_[-10:, :]],
    ids=["left", "right", "top", "bottom"],
)
def test_a_bright_strip_along_an_edge_is_not_the_implant(band):
    # Prepare: collimation leaves a white band along one edge
    r = draw_radiograph(3000)
    img = r.image.copy()
    img[band] = 1.0
    # Execute
    seg = segment_implant(img)
    # Assert
    assert box_iou(seg.box, r.box) >= HIT_IOU and check_segmentation(seg) is None


def test_an_implant_cut_by_the_frame_is_still_found():
    # Prepare: crop the lower third away, through the stem
    r = draw_radiograph(3001)
    cut = int(r.box[1] + 0.6 * (r.box[3] - r.box[1]))
    img = r.image[:cut]
    true = (r.box[0], r.box[1], r.box[2], cut)
    # Execute
    seg = segment_implant(img)
    # Assert
    assert box_iou(seg.box, true) >= HIT_IOU


def test_large_images_are_segmented_at_working_resolution_and_boxes_scaled_back():
    # Prepare: a 4x upscaled radiograph
    r = draw_radiograph(3002)
    big = cv2.resize(r.image, (r.image.shape[1] * 4, r.image.shape[0] * 4), interpolation=cv2.INTER_LINEAR)
    true = tuple(4 * v for v in r.box)
    # Execute
    seg = segment_implant(big)
    # Assert
    assert seg.mask.shape == big.shape
    assert box_iou(seg.box, true) >= 0.85


def test_mask_crops_match_the_full_mask():
    # Prepare: an image large enough to be segmented at a reduced working resolution
    r = draw_radiograph(3003)
    big = cv2.resize(r.image, (r.image.shape[1] * 3, r.image.shape[0] * 3), interpolation=cv2.INTER_LINEAR)
    seg = segment_implant(big)
    assert seg.factor > 1
    # Execute
    inside = seg.crop_mask((100, 150, 400, 700))
    outside = seg.crop_mask((-20, -10, 50, 40))
    # Assert
    assert np.array_equal(inside, seg.mask[150:700, 100:400])
    assert outside.shape == (50, 70) and not outside[:10].any()
    assert np.array_equal(outside[10:, 20:], seg.mask[:40, :50])


@pytest.mark.parametrize("img", [np.zeros((64, 64), np.float32), np.full((64, 64), 0.5, np.float32)], ids=["black", "gray"])
def test_flat_images_have_no_implant(img):
    seg = segment_implant(img)
    assert seg.box is None and check_segmentation(seg) == NO_IMPLANT and not seg.mask.any()


def test_otsu_splits_two_modes():
    # Prepare
    hist = np.zeros(256)
    hist[40:60] = 100
    hist[180:200] = 50
    # Execute
    t, eta = otsu(hist)
    # Assert
    assert 59 <= t < 180 and eta > 0.9


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (10, 10, 20, 20), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)


def test_a_titanium_stem_under_a_cobalt_chrome_head_and_cup_is_kept_with_them():
    # Prepare: the cup and head (brightest) own the steepest edge; the stem is a lighter metal below it
    rng = np.random.default_rng(0)
    h, w = 420, 340
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.25 + 0.15 * np.exp(-((xx - w / 2) / (w / 2.5)) ** 2)
    img[(np.abs(xx - 190) < 26) & (yy > 120)] += 0.12  # femoral cortex
    img[(np.abs(xx - 190) < 18) & (yy > 120)] -= 0.06  # canal
    stem, cup = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    cv2.fillPoly(stem, [np.array([[170, 120], [215, 120], [198, 380], [188, 380]], np.int32)], 1)
    cv2.line(stem, (180, 125), (140, 95), 1, 9)
    cv2.circle(cup, (132, 88), 22, 1, -1)
    cv2.ellipse(cup, (132, 88), (36, 36), 200, 0, 180, 1, 7)
    img = np.where(cup > 0, 1.0, np.where(stem > 0, 0.70, img))
    img = np.clip(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.2) + rng.normal(0, 0.01, (h, w)), 0, 1)
    truth = (stem > 0) | (cup > 0)
    # Execute
    seg = segment_implant(img.astype(np.float32))
    # Assert: stem, head and cup are one implant (the threshold at the cup's edge alone kept 14% of it)
    mask = seg.mask > 0
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    assert check_segmentation(seg) is None
