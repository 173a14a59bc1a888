"""Transforms: checked parameters, named failures, one shared core, seeded augmentation, balancing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import draw_radiograph, write_dicom

from client.data.ingest import read_image
from client.data.qc import Rejected
from client.data.transforms import (
    CLAHE,
    Compose,
    CropROI,
    MaskBackground,
    RandAffine,
    RandFlip,
    RandGamma,
    RandGaussianNoise,
    Resize,
    Sample,
    TransformError,
    augment_array,
    balance_by_augmentation,
    build_eval_pipeline,
    build_train_pipeline,
    crop_padded,
    roi_box,
)
from common.preprocess_params import PreprocessParams

PARAMS = PreprocessParams(image_size=48)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CropROI(-0.1),
        lambda: Resize(4),
        lambda: CLAHE(-1.0),
        lambda: CLAHE(2.0, tiles=0),
        lambda: MaskBackground(grow=0.9),
        lambda: RandAffine(rotate=200.0),
        lambda: RandFlip(prob=1.5),
        lambda: RandGamma(log_range=-0.1),
        lambda: RandGaussianNoise(std=2.0),
    ],
    ids=["crop", "resize", "clahe-clip", "clahe-tiles", "mask", "affine", "flip", "gamma", "noise"],
)
def test_parameters_are_checked_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_compose_names_the_transform_that_failed():
    # Prepare
    class Broken:
        def __call__(self, s: Sample) -> Sample:
            raise ZeroDivisionError("secret detail")

    pipe = Compose([Resize(16), Broken()])
    # Execute
    with pytest.raises(TransformError) as info:
        pipe(Sample(np.zeros((20, 20), np.float32)))
    # Assert
    assert "Broken" in str(info.value) and "secret" not in str(info.value)


def test_eval_pipeline_output_and_qc_rejection():
    # Prepare
    good, empty = draw_radiograph(1), draw_radiograph(2, implant=False)
    pipe = build_eval_pipeline(PARAMS)
    # Execute
    out = pipe(Sample(good.image))
    # Assert
    assert out.image.shape == (48, 48) and out.image.dtype == np.float32
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert out.seg is not None and out.seg.box is not None
    with pytest.raises(Rejected) as info:
        pipe(Sample(empty.image))
    assert info.value.reason == "no-implant"


def test_train_pipeline_is_the_eval_core_plus_augmentation():
    # Prepare
    for params in (PARAMS, PreprocessParams(invert=True, mask_background=False)):
        # Execute
        ev, tr = build_eval_pipeline(params), build_train_pipeline(params, seed=0)
        # Assert
        assert tr.names[: len(ev.names)] == ev.names
        assert all(n.startswith("Rand") for n in tr.names[len(ev.names):])


def test_monochrome1_and_monochrome2_preprocess_identically(tmp_path):
    # Prepare: the same picture stored both ways
    img = draw_radiograph(3).image
    m1 = write_dicom(tmp_path / "m1.dcm", img, bits=12, monochrome1=True)
    m2 = write_dicom(tmp_path / "m2.dcm", img, bits=12, monochrome1=False)
    pipe = build_eval_pipeline(PreprocessParams())
    # Execute
    a = pipe(Sample(read_image(m1, PreprocessParams()).pixels)).image
    b = pipe(Sample(read_image(m2, PreprocessParams()).pixels)).image
    # Assert
    assert np.allclose(a, b, atol=1e-6)


def test_invert_flips_the_output():
    img = draw_radiograph(4).image
    plain = build_eval_pipeline(PARAMS)(Sample(img)).image
    inverted = build_eval_pipeline(PreprocessParams(image_size=48, invert=True))(Sample(img)).image
    assert np.allclose(inverted, 1.0 - plain, atol=1e-6)


def test_mask_background_blanks_what_is_far_from_the_implant():
    # Prepare
    img = draw_radiograph(5).image
    # Execute
    masked = build_eval_pipeline(PreprocessParams(image_size=48, mask_background=True))(Sample(img))
    kept = build_eval_pipeline(PreprocessParams(image_size=48, mask_background=False))(Sample(img))
    # Assert: the corners of the ROI hold bone in one, nothing in the other
    corners = (slice(0, 4), slice(0, 4))
    assert masked.image[corners].max() < 0.05 < kept.image[corners].mean()


@pytest.mark.parametrize(
    ("box", "margin", "expected"),
    [((10, 20, 30, 60), 0.0, (0, 20, 40, 60)), ((10, 20, 30, 60), 0.25, (-10, 10, 50, 70))],
)
def test_roi_box_is_square_with_margin(box, margin, expected):
    assert roi_box(box, margin) == expected


def test_crop_padded_pads_with_zero_outside_the_image():
    img = np.ones((4, 4), np.float32)
    out = crop_padded(img, (-2, -2, 2, 2))
    assert out.shape == (4, 4) and out[:2].sum() == 0 and out[2:, 2:].sum() == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: RandAffine(seed=seed),
        lambda seed: RandFlip(prob=0.5, seed=seed),
        lambda seed: RandGamma(seed=seed),
        lambda seed: RandGaussianNoise(seed=seed),
    ],
    ids=["affine", "flip", "gamma", "noise"],
)
def test_random_transforms_are_seeded(make):
    # Prepare
    img = np.ascontiguousarray(build_eval_pipeline(PARAMS)(Sample(draw_radiograph(6).image)).image)

    def run(seed):
        t = make(seed)
        return np.stack([t(Sample(img)).image for _ in range(6)])

    # Execute / Assert
    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    assert np.array_equal(run(np.random.default_rng(7)), run(np.random.default_rng(7)))


def test_augment_array_keeps_shape_and_range():
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    out = augment_array(x, seed=3)
    assert out.shape == x.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.array_equal(out, augment_array(x, seed=3)) and not np.array_equal(out, x)


def test_balance_by_augmentation_tops_up_small_classes_only():
    # Prepare: class 0 has 5, class 2 has 1, class 1 has 12
    rng = np.random.default_rng(0)
    y = np.array([0] * 5 + [2] + [1] * 12, np.int64)
    x = rng.random((len(y), 1, 16, 16), dtype=np.float32)
    # Execute
    xb, yb = balance_by_augmentation(x, y, 8, seed=1)
    # Assert
    assert dict(zip(*np.unique(yb, return_counts=True), strict=True)) == {0: 8, 1: 12, 2: 8}
    assert np.array_equal(xb[: len(x)], x) and np.array_equal(yb[: len(y)], y)
    assert yb.dtype == y.dtype and xb.dtype == np.float32
    again = balance_by_augmentation(x, y, 8, seed=1)
    assert np.array_equal(again[0], xb) and np.array_equal(again[1], yb)


def test_balance_rejects_bad_arguments():
    with pytest.raises(ValueError):
        balance_by_augmentation(np.zeros((2, 1, 4, 4)), np.zeros(3), 4)
    with pytest.raises(ValueError):
        balance_by_augmentation(np.zeros((2, 1, 4, 4)), np.zeros(2), -1)
