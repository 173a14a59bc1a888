"""Ingest: every storage variant decodes to the same picture; bad files are rejected with a reason."""

from __future__ import annotations

import logging
import warnings

import cv2
import numpy as np
import pytest
from conftest import CANARY, draw_radiograph, huge_png_header, palette_png, write_dicom, write_png
from pydicom.uid import JPEG2000Lossless, RLELossless

from client.data.ingest import (
    ALLOWED_FIELDS,
    IngestError,
    MultiFrameError,
    TooLargeError,
    raster_size,
    read_image,
)
from client.data.qc import MULTIFRAME, TOO_LARGE, UNREADABLE
from common.preprocess_params import PreprocessParams
from common.redact import file_token

PARAMS = PreprocessParams()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 12},
        {"bits": 16},
        {"bits": 8},
        {"bits": 12, "monochrome1": True},
        {"bits": 16, "monochrome1": True, "window": (32768, 65536)},
        {"bits": 12, "slope": 2.0, "intercept": -1024},
        {"bits": 12, "window": (2048, 4096)},
        {"bits": 12, "syntax": RLELossless},
        {"bits": 16, "syntax": JPEG2000Lossless, "monochrome1": True},
        {"bits": 12, "frames": 3},
        {"bits": 12, "spacing": None, "modality": "CR"},
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_dicom_variants_decode_to_the_drawn_image(tmp_path, kwargs):
    # Prepare
    r = draw_radiograph(1, shape=(160, 128))
    path = write_dicom(tmp_path / "x.dcm", r.image, **kwargs)
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (160, 128)
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    assert _corr(img.pixels, r.image) > 0.99  # high = dense, whatever the storage
    assert img.fields["source"] == "dicom" and img.fields["stored_shape"] == [160, 128]


def test_fields_are_an_allow_list_and_phi_is_reported_by_kind_only(tmp_path):
    # Prepare
    path = write_dicom(tmp_path / "x.dcm", draw_radiograph(2).image, burned_in=True, syntax=RLELossless)
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    allowed = set(ALLOWED_FIELDS) | {"source", "stored_shape", "spacing_mm", "transfer_syntax"}
    assert set(img.fields) <= allowed
    assert img.fields["Modality"] == "DX" and img.fields["BitsStored"] == 12
    assert img.fields["transfer_syntax"] == "RLE Lossless"
    assert img.fields["spacing_mm"] == [0.15, 0.15]
    assert {"patient-name-present", "patient-id-present", "burned-in-annotation"} <= set(img.phi)
    assert "CANARY" not in repr(img.fields) + repr(img.notes) + repr(img.phi)


def test_free_text_in_a_coded_field_does_not_survive(tmp_path):
    # Prepare: a vendor put a name into Modality
    path = write_dicom(tmp_path / "x.dcm", draw_radiograph(2).image, modality="Jane Doe's hip")
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    assert "Modality" not in img.fields


@pytest.mark.parametrize(
    ("mode", "bits", "note"),
    [
        ("gray", 8, None),
        ("gray", 16, None),
        ("bgr", 8, "grayscale stored as colour"),
        ("bgra", 16, "alpha channel dropped"),
        ("palette", 8, "grayscale stored as colour"),
    ],
)
def test_png_variants_become_grayscale(tmp_path, mode, bits, note):
    # Prepare
    r = draw_radiograph(3, shape=(160, 128))
    path = write_png(tmp_path / "x.png", r.image, bits=bits, mode=mode)
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    assert img.pixels.shape == (160, 128) and img.pixels.dtype == np.float32
    assert np.abs(img.pixels - r.image).max() < 1.5 / 255
    assert note is None or note in img.notes


def test_colour_jpeg_is_converted_with_a_note(tmp_path):
    # Prepare
    r = draw_radiograph(4, shape=(160, 128))
    bgr = np.dstack([r.image * 0.9, r.image, r.image * 0.8])
    ok, buf = cv2.imencode(".jpg", np.round(bgr * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "x.jpg").write_bytes(buf.tobytes())
    # Execute
    img = read_image(tmp_path / "x.jpg", PARAMS)
    # Assert
    assert "colour converted to grayscale" in img.notes
    assert _corr(img.pixels, r.image) > 0.98


def test_content_decides_the_decoder_not_the_extension(tmp_path):
    # Prepare: a PNG named .dcm
    path = write_png(tmp_path / "really_png.dcm", draw_radiograph(5).image)
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    assert img.fields["source"] == "png" and "file extension does not match its content" in img.notes


def test_resampling_to_target_spacing(tmp_path):
    # Prepare: 0.15 mm/px stored, 0.3 mm/px wanted
    path = write_dicom(tmp_path / "x.dcm", draw_radiograph(6, shape=(200, 160)).image, spacing=0.15)
    # Execute
    img = read_image(path, PreprocessParams(target_mm_per_px=0.3))
    # Assert
    assert img.pixels.shape == (100, 80) and img.fields["spacing_mm"] == [0.3, 0.3]
    assert img.fields["stored_shape"] == [200, 160]


def _sr_like(path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.Modality = CANARY, "SR"
    ds.save_as(path, enforce_file_format=True)


def _truncated_file(path):
    write_dicom(path, draw_radiograph(7).image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = [
    ("zero-byte", "a.dcm", lambda p: p.write_bytes(b""), UNREADABLE),
    ("truncated-file", "b.dcm", _truncated_file, UNREADABLE),
    ("pixel-data-short", "c.dcm", lambda p: write_dicom(p, draw_radiograph(8).image, truncate=1000), UNREADABLE),
    ("no-pixels", "d.dcm", _sr_like, UNREADABLE),
    ("text-as-png", "e.png", lambda p: p.write_text("hello " + CANARY), UNREADABLE),
    ("corrupt-png", "f.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200), UNREADABLE),
    ("corrupt-jpeg", "g.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 300), UNREADABLE),
    ("huge-png-header", "h.png", lambda p: p.write_bytes(huge_png_header(20_000)), TOO_LARGE),
    ("huge-dicom-rows", "i.dcm", lambda p: write_dicom(p, draw_radiograph(9).image, rows_override=20_000), TOO_LARGE),
    ("multiframe-rejected", "j.dcm", lambda p: write_dicom(p, draw_radiograph(10).image, frames=2), MULTIFRAME),
]


@pytest.mark.parametrize(("case", "name", "make", "reason"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_with_reason_and_token_only(tmp_path, case, name, make, reason):
    # Prepare
    path = tmp_path / f"{CANARY}_{name}"
    make(path)
    params = PreprocessParams(multiframe="reject")
    # Execute
    with pytest.raises(IngestError) as info:
        read_image(path, params)
    # Assert
    err = info.value
    assert err.reason == reason
    assert str(err).startswith(file_token(path) + ":")
    assert "CANARY" not in str(err) and str(tmp_path) not in str(err) and name not in str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no decoder text


def test_too_large_is_rejected_before_decoding(tmp_path, monkeypatch):
    # Prepare: decoders that must not be reached
    import pydicom.pixels

    def boom(*a, **k):
        raise AssertionError("decoded a too-large image")

    monkeypatch.setattr(cv2, "imdecode", boom)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)
    (tmp_path / "h.png").write_bytes(huge_png_header(20_000))
    write_dicom(tmp_path / "h.dcm", np.zeros((8, 8), np.float32), rows_override=20_000)
    # Execute / Assert
    for name in ("h.png", "h.dcm"):
        with pytest.raises(TooLargeError):
            read_image(tmp_path / name, PARAMS)


def test_multiframe_first_frame_is_the_default(tmp_path):
    # Prepare
    path = write_dicom(tmp_path / "m.dcm", draw_radiograph(11).image, frames=3)
    # Execute
    img = read_image(path, PARAMS)
    # Assert
    assert img.pixels.ndim == 2 and any("first of 3 frames" in n for n in img.notes)
    with pytest.raises(MultiFrameError):
        read_image(path, PreprocessParams(multiframe="reject"))


def test_decoder_warnings_with_tag_values_never_reach_logs(tmp_path, caplog):
    # Prepare: an invalid NumberOfFrames holding the canary; plain pydicom warns and logs it on read
    import pydicom

    path = write_dicom(tmp_path / "w.dcm", draw_radiograph(12).image)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = "12345678901"
    ds.save_as(path)
    data = path.read_bytes()
    assert data.count(b"12345678901 ") == 1
    path.write_bytes(data.replace(b"12345678901 ", CANARY.encode() + b" "))
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    # Execute
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(IngestError) as info:
            read_image(path, PARAMS)
    # Assert
    assert info.value.reason == UNREADABLE and "CANARY" not in str(info.value)
    assert not any("CANARY" in r.getMessage() for r in caplog.records)
    assert not any("CANARY" in str(w.message) for w in seen)
    assert logging.getLogger("pydicom").level < logging.CRITICAL  # restored after the file


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (huge_png_header(12_345), (12_345, 12_345)),
        (palette_png(np.zeros((7, 9), np.uint8)), (7, 9)),
        (cv2.imencode(".jpg", np.zeros((33, 44), np.uint8))[1].tobytes(), (33, 44)),
        (cv2.imencode(".bmp", np.zeros((5, 6), np.uint8))[1].tobytes(), (5, 6)),
        (b"not an image", None),
    ],
)
def test_raster_size_reads_headers(head, size):
    assert raster_size(head) == size
