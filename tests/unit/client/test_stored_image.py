"""Lazy pixels: the pipeline reads a reduced copy and the implant's region, and gives the array path's inputs.

Tolerance stated here: with a LUT that is not a straight line (a window the image crosses)
the model input is bit-identical to the one computed from the whole float image. With a
straight-line LUT (rescale, n-bit scaling) stored values are averaged before they are
mapped: the image before the final 8-bit CLAHE is within 1e-6 of the array path's, and
the model input differs on at most 0.1% of its pixels, by at most 2/255 (a value at a
rounding edge of the 8-bit CLAHE), with the same implant box and mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.data.ingest import read_image
from client.data.stored_image import StoredImage, StoredRegion
from client.data.transforms import Compose, Sample, core_transforms
from common.preprocess_params import PreprocessParams
from tests.unit.client.conftest import draw_radiograph, write_dicom, write_png


def _both_paths(path: Path, params: PreprocessParams) -> tuple[list[Sample], list[Sample], object]:
    """(lazy, array): the sample before the final CLAHE and the model input, each way."""
    img = read_image(path, params)
    steps = core_transforms(params)
    assert type(steps[-1]).__name__ == "CLAHE"
    out = []
    for start in (img.image, img.pixels):
        before = Compose(steps[:-1])(Sample(start))
        out.append([before, steps[-1](before)])
    return out[0], out[1], img.image


CASES = {
    "12-bit DICOM, rescale only": dict(kind="dicom", bits=12),
    "16-bit DICOM, MONOCHROME1": dict(kind="dicom", bits=16, monochrome1=True),
    "12-bit DICOM, slope and intercept": dict(kind="dicom", bits=12, slope=2.0, intercept=-1024.0),
    "12-bit DICOM, a window the image crosses": dict(kind="dicom", bits=12, window=(1500.0, 2400.0)),
    "8-bit PNG": dict(kind="png", bits=8),
    "16-bit PNG": dict(kind="png", bits=16),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("size", [32, 64, 100])
def test_stored_values_give_the_array_paths_model_input(tmp_path, case, size):
    # Prepare: radiographs large enough to be reduced for segmentation, some with the
    # implant near an edge so the region leaves the image
    spec = dict(CASES[case])
    kind = spec.pop("kind")
    params = PreprocessParams(image_size=size)
    for seed in range(3):
        shape = (1100, 900) if seed != 2 else (700, 1300)
        image = draw_radiograph(seed, shape=shape).image
        path = (write_dicom(tmp_path / f"{seed}.dcm", image, **spec) if kind == "dicom"
                else write_png(tmp_path / f"{seed}.png", image, **spec))
        # Execute
        lazy, array, source = _both_paths(path, params)
        # Assert: integer pixels stay stored values; the model input and its mask match the array path
        assert isinstance(source, StoredImage)
        assert lazy[0].seg.box == array[0].seg.box
        assert np.array_equal(lazy[0].roi_mask, array[0].roi_mask)
        assert float(np.abs(lazy[0].image - array[0].image).max()) <= 1e-6
        diff = np.abs(lazy[1].image - array[1].image)
        assert float(diff.max()) <= 2 / 255 + 1e-6 and float((diff > 0).mean()) <= 0.001, case
        if source.affine is None:
            assert np.array_equal(lazy[1].image, array[1].image)


def test_a_window_the_image_crosses_is_not_mistaken_for_a_straight_line(tmp_path):
    image = draw_radiograph(0, shape=(600, 500)).image
    windowed = read_image(write_dicom(tmp_path / "w.dcm", image, bits=12, window=(1500.0, 2400.0)),
                          PreprocessParams()).image
    plain = read_image(write_dicom(tmp_path / "p.dcm", image, bits=12), PreprocessParams()).image
    assert isinstance(windowed, StoredImage) and windowed.affine is None
    assert isinstance(plain, StoredImage) and plain.affine is not None


def test_slices_and_reductions_equal_those_of_the_whole_float_image():
    rng = np.random.default_rng(0)
    index = rng.integers(100, 4000, (250, 203)).astype(np.uint16)
    curved = np.zeros(4096, np.float32)
    curved[100:4000] = np.linspace(0, 1, 3900, dtype=np.float32) ** 2
    straight = np.zeros(4096, np.float32)
    straight[100:4000] = np.linspace(0, 1, 3900, dtype=np.float32)
    for lut in (curved, straight):
        img = StoredImage(index, lut)
        full = lut[index]
        assert np.array_equal(img.full, full) and np.array_equal(img[10:20, ::3], full[10:20, ::3])
        assert img.shape == full.shape and img.size == full.size
        import cv2

        expect = cv2.resize(full[:250, :200], (40, 50), interpolation=cv2.INTER_AREA)
        assert np.allclose(img.reduced(5), expect, atol=1e-6)
        # a region reaching past the image's corner is 0 there
        region = StoredRegion(img, (-20, -30, 180, 170))
        padded = np.zeros((200, 200), np.float32)
        padded[30:, 20:] = full[:170, :180]
        assert np.array_equal(region.full, padded)
        assert np.allclose(region.area_shrink((0, 0, 200, 200), 40),
                           cv2.resize(padded, (40, 40), interpolation=cv2.INTER_AREA), atol=1e-6)


def test_stored_images_refuse_what_they_cannot_represent():
    with pytest.raises(ValueError, match="index"):
        StoredImage(np.zeros((4, 4), np.int32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="beyond"):
        StoredImage(np.full((4, 4), 9, np.uint8), np.zeros(4, np.float32))
