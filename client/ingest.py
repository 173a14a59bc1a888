"""Read a radiograph (DICOM, PNG, JPEG) into a float image in [0, 1], high = dense.

DICOM: pydicom with its pixel-data plugins (every transfer syntax they decode), modality
LUT / rescale, VOI LUT or window, MONOCHROME1 inversion, pixel spacing and optional
resampling; multi-frame keeps the first frame or is rejected. Only an allow-list of
technical fields survives: no patient field leaves this module. Errors name the file
by a salted token, never by its path.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.errors import UnreadableImageError
from common.preprocess_params import PreprocessParams
from common.redact import file_token

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# Technical DICOM fields kept after ingest (values are not patient data).
ALLOWED_FIELDS = ("Modality", "PhotometricInterpretation", "BitsStored", "Rows", "Columns", "NumberOfFrames",
                  "BurnedInAnnotation", "SamplesPerPixel")


class TooLargeError(UnreadableImageError):
    """The image's declared size exceeds the configured maximum (rejected before decoding)."""


class MultiFrameError(UnreadableImageError):
    """A multi-frame image while the configuration rejects them."""


@dataclass
class IngestedImage:
    pixels: np.ndarray  # float32 HxW in [0, 1], high = dense (metal bright)
    fields: dict[str, Any] = field(default_factory=dict)  # allow-listed technical fields only
    notes: list[str] = field(default_factory=list)  # e.g. "converted from colour"
    phi: dict[str, bool] = field(default_factory=dict)  # which PHI kinds were present (never values)


def is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_image(path: Path, params: PreprocessParams) -> IngestedImage:
    """Decode ``path``; raise UnreadableImageError (naming the file by token) on failure."""
    token = file_token(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(f"{token}: empty file")
        if is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom"):
            img = _read_dicom(path, params, token)
        else:
            img = _read_raster(path, params, token)
    except UnreadableImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable file
        raise UnreadableImageError(f"{token}: cannot decode ({type(e).__name__})") from None
    if not np.all(np.isfinite(img.pixels)):
        raise UnreadableImageError(f"{token}: non-finite pixel values")
    return _resample(img, params)


def _check_size(rows: int, cols: int, params: PreprocessParams, token: str) -> None:
    if max(rows, cols) > params.max_side_px:
        raise TooLargeError(f"{token}: {rows}x{cols} pixels exceeds the maximum side {params.max_side_px}")


def _read_dicom(path: Path, params: PreprocessParams, token: str) -> IngestedImage:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # noqa: BLE001
        raise UnreadableImageError(f"{token}: not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableImageError(f"{token}: DICOM object has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(rows, cols, params, token)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and params.multiframe == "reject":
        raise MultiFrameError(f"{token}: multi-frame image ({frames} frames)")
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on vendor quirks it can read around
        arr = ds.pixel_array if frames == 1 else ds.pixel_array[0]
    if frames > 1:
        notes.append("multi-frame: first frame used")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3:  # colour
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = cv2.cvtColor(arr.astype(np.float32), cv2.COLOR_RGB2GRAY)
        notes.append("colour converted to grayscale")
        values = arr.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 0:
        pixels = np.zeros(values.shape, np.float32)
    else:
        pixels = ((values - lo) / (hi - lo)).astype(np.float32)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    fields = {k: _plain(ds.get(k)) for k in ALLOWED_FIELDS if k in ds}
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:
        fields["mm_per_px"] = float(spacing[0])
    fields["transfer_syntax"] = str(getattr(ds.file_meta, "TransferSyntaxUID", "unknown").name) if hasattr(ds, "file_meta") else "unknown"
    phi = {"patient-name": bool(ds.get("PatientName")), "patient-id": bool(ds.get("PatientID")),
           "burned-in-annotation": str(ds.get("BurnedInAnnotation", "")).upper() == "YES"}
    return IngestedImage(pixels, fields, notes, phi)


def _plain(value: Any) -> Any:
    if isinstance(value, int | float | str):
        return value
    return str(value)


def _read_raster(path: Path, params: PreprocessParams, token: str) -> IngestedImage:
    data = np.frombuffer(path.read_bytes(), np.uint8)
    header = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8) if len(data) > 2_000_000 else None
    if header is not None:
        _check_size(header.shape[0] * 8, header.shape[1] * 8, params, token)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UnreadableImageError(f"{token}: not a readable image file")
    _check_size(arr.shape[0], arr.shape[1], params, token)
    notes = []
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
            notes.append("alpha channel dropped")
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        notes.append("colour converted to grayscale")
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else float(max(arr.max(), 1))
    pixels = arr.astype(np.float32) / scale
    return IngestedImage(pixels, {"Rows": int(arr.shape[0]), "Columns": int(arr.shape[1]), "format": path.suffix.lower().lstrip(".")},
                         notes, {})


def _resample(img: IngestedImage, params: PreprocessParams) -> IngestedImage:
    spacing = img.fields.get("mm_per_px")
    if params.target_mm_per_px <= 0 or not spacing:
        return img
    factor = float(spacing) / params.target_mm_per_px
    if abs(factor - 1) < 1e-3:
        return img
    h, w = img.pixels.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    img.pixels = cv2.resize(img.pixels, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    img.fields["mm_per_px"] = params.target_mm_per_px
    img.notes.append(f"resampled to {params.target_mm_per_px} mm/px")
    return img
