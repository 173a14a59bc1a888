"""Rasters as PACS exports write them: 16-bit PNGs holding 10-14-bit values, sBIT, dark exports.

Each case is checked against an 8-bit copy of the same radiograph: the model input must
be the 8-bit copy's, within the quantisation of the coarser file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.data.raster import png_sbit, significant_bits
from client.data.site_data import process_file
from common.preprocess_params import PreprocessParams
from tests.unit.client.conftest import draw_radiograph

PARAMS = PreprocessParams(image_size=64)
TOLERANCE = 0.02  # 8-bit quantisation and the implant's crop at a one-pixel boundary


def _png(path: Path, data: np.ndarray, *, sbit: int | None = None) -> Path:
    ok, buf = cv2.imencode(".png", data)
    assert ok
    raw = buf.tobytes()
    if sbit is not None:  # insert an sBIT chunk after IHDR, as some PACS exports carry it
        chunk = b"sBIT" + bytes([sbit])
        raw = raw[:33] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]
    path.write_bytes(raw)
    return path


@pytest.fixture(scope="module")
def radiograph():
    return draw_radiograph(21).image


@pytest.fixture(scope="module")
def eight_bit(tmp_path_factory, radiograph):
    path = _png(tmp_path_factory.mktemp("ref") / "ref.png", np.round(radiograph * 255).astype(np.uint8))
    result = process_file(path, PARAMS)
    assert result.reason is None
    return result.image


@pytest.mark.parametrize("bits", [10, 12, 14])
@pytest.mark.parametrize("declared", [False, True], ids=["by-maximum", "by-sBIT"])
def test_a_16_bit_png_of_n_bit_values_reads_as_its_8_bit_copy(tmp_path, radiograph, eight_bit, bits, declared):
    # Prepare: the detector's n-bit values stored in a 16-bit PNG (with or without an sBIT chunk)
    data = np.round(radiograph * (2**bits - 1)).astype(np.uint16)
    path = _png(tmp_path / "x.png", data, sbit=bits if declared else None)
    # Execute
    result = process_file(path, PARAMS)
    # Assert: accepted, and the same model input as the 8-bit copy
    assert result.reason is None
    assert np.abs(result.image - eight_bit).max() < TOLERANCE


def test_a_full_range_16_bit_png_keeps_its_exact_model_input(tmp_path, radiograph):
    # What passed before (scaled by 65535) passes byte-identically
    data = np.round(radiograph * 65535).astype(np.uint16)
    result = process_file(_png(tmp_path / "x.png", data), PARAMS)
    from client.data.transforms import Sample, build_eval_pipeline

    expected = build_eval_pipeline(PARAMS)(Sample(data.astype(np.float32) / 65535.0)).image
    assert result.reason is None and np.array_equal(result.image, np.asarray(expected, np.float32))


def test_a_dark_export_is_windowed_by_its_percentiles_not_rejected(tmp_path, radiograph, eight_bit):
    # Prepare: an 8-bit export that uses only the bottom sixth of its range
    dark = np.round(radiograph * 40 + 2).astype(np.uint8)
    # Execute
    result = process_file(_png(tmp_path / "dark.png", dark), PARAMS)
    # Assert: accepted; the implant is where the full-range copy has it
    assert result.reason is None
    assert np.corrcoef(result.image.ravel(), eight_bit.ravel())[0, 1] > 0.9


def test_a_blank_raster_stays_blank(tmp_path):
    result = process_file(_png(tmp_path / "blank.png", np.full((300, 300), 7, np.uint8)), PARAMS)
    assert result.reason == "blank-or-saturated"


def test_a_raster_without_an_implant_stays_without_one_even_windowed(tmp_path):
    img = draw_radiograph(5, implant=False).image
    result = process_file(_png(tmp_path / "no.png", np.round(img * 255).astype(np.uint8)), PARAMS)
    assert result.reason == "no-implant"


@pytest.mark.parametrize(("top", "declared", "bits"), [(1023, None, 10), (1024, None, 12), (4095, None, 12),
                                                       (4096, None, 14), (65535, None, 16), (900, 12, 12),
                                                       (5000, 12, 14)])
def test_significant_bits(top, declared, bits):
    assert significant_bits(np.array([0, top], np.uint16), declared) == bits


def test_png_sbit_is_read_from_the_chunk_before_the_image_data(tmp_path):
    data = np.zeros((4, 4), np.uint16)
    assert png_sbit(_png(tmp_path / "a.png", data, sbit=12).read_bytes()) == 12
    assert png_sbit(_png(tmp_path / "b.png", data).read_bytes()) is None


def test_a_dark_export_without_an_implant_is_not_windowed_into_one(tmp_path):
    img = draw_radiograph(5, implant=False).image
    result = process_file(_png(tmp_path / "dark-no.png", np.round(img * 40 + 2).astype(np.uint8)), PARAMS)
    assert result.reason in ("no-implant", "blank-or-saturated")
