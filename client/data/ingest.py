"""Read a radiograph (DICOM, PNG, JPEG) into a float image in [0, 1], high = dense.

DICOM goes through pydicom and its pixel-data plugins (every transfer syntax they can
decode): modality LUT / rescale, VOI LUT or window, MONOCHROME1 inversion, pixel spacing
and optional resampling to ``params.target_mm_per_px``. A multi-frame object keeps its
first frame (only that frame is decoded) or is rejected, per ``params.multiframe``.
Raster exports (PNG, JPEG, BMP, TIFF) are decoded with OpenCV from bytes.

Privacy: only an allow-list of technical fields survives (:data:`ALLOWED_FIELDS`); which
kinds of patient data were *present* is recorded as finding names, never values. Every
error is an :class:`IngestError` naming the file by :func:`common.redact.file_token`
only. Decoder messages are dropped (``from None``) because they may quote tag values.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from client.data.qc import MULTIFRAME, TOO_LARGE, UNREADABLE
from client.data.raster import png_sbit, raster_size, significant_bits
from client.data.stored_image import StoredImage, as_array
from common.errors import UnreadableImageError
from common.preprocess_params import PreprocessParams
from common.redact import file_token

# OpenCV's native log of a broken PNG/JPEG stays silent: the file's QC reason is reported per file already.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

logger = logging.getLogger(__name__)

# Technical DICOM attributes kept after ingest. Coded strings are kept only if they look
# like codes (see _CODE_RE), so a vendor cannot smuggle free text through them.
ALLOWED_FIELDS = ("Modality", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
                  "SamplesPerPixel", "Rows", "Columns", "NumberOfFrames", "BurnedInAnnotation")
# DICOM keyword -> PHI finding name (reported as counts of files, never values).
PHI_KEYWORDS = {
    "PatientName": "patient-name-present",
    "PatientID": "patient-id-present",
    "PatientBirthDate": "patient-birth-date-present",
    "OtherPatientIDs": "other-patient-ids-present",
    "OtherPatientIDsSequence": "other-patient-ids-present",
    "PatientAddress": "patient-address-present",
    "AccessionNumber": "accession-number-present",
    "ReferringPhysicianName": "physician-name-present",
    "InstitutionName": "institution-present",
}
BURNED_IN = "burned-in-annotation"
_CODE_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_HEADER_BYTES = 1 << 20  # enough to find a JPEG SOF marker after a large EXIF block
# Decoder loggers silenced while a file is read: their messages quote tag values.
_DECODER_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle")


class IngestError(UnreadableImageError):
    """A file could not be ingested; ``reason`` is the QC reason it is counted under."""

    reason = UNREADABLE

    def __init__(self, token: str, detail: str) -> None:
        super().__init__(f"{token}: {detail}")
        self.token = token
        self.detail = detail


class TooLargeError(IngestError):
    """The declared size exceeds ``params.max_side_px``; rejected before decoding."""

    reason = TOO_LARGE


class MultiFrameError(IngestError):
    """A multi-frame object while ``params.multiframe == "reject"``."""

    reason = MULTIFRAME


@dataclass
class IngestedImage:
    """A decoded image with nothing identifying left.

    Attributes
    ----------
    image
        HxW in [0, 1], high = dense (metal bright): float32, or, for integer pixels read
        through a LUT, a :class:`~client.data.stored_image.StoredImage` that computes only
        the pixels a step asks for (:attr:`pixels` gives the whole float32 image).
    fields
        Allow-listed technical fields only (see :data:`ALLOWED_FIELDS`), plus
        ``source``, ``stored_shape``, ``spacing_mm`` and ``transfer_syntax``.
    notes
        What ingest did that a reviewer may want to know, e.g. "colour converted to grayscale".
    phi
        Names of the kinds of patient data that were present in the file (never values).
    """

    image: np.ndarray | StoredImage
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    phi: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> np.ndarray:
        """The whole image as float32 HxW."""
        return as_array(self.image)


def read_image(path: Path, params: PreprocessParams) -> IngestedImage:
    """Decode ``path`` into an :class:`IngestedImage`.

    Parameters
    ----------
    path
        A DICOM, PNG, JPEG, BMP or TIFF file. The content decides the decoder; the
        extension is only a fallback.
    params
        Preprocessing parameters (size limits, multi-frame policy, target spacing).

    Returns
    -------
    IngestedImage

    Raises
    ------
    IngestError
        (an :class:`~common.errors.UnreadableImageError`) with a reason; the file is named
        by its token only.
    """
    path = Path(path)
    token = file_token(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_BYTES)
    except OSError as e:
        raise IngestError(token, f"file cannot be opened ({type(e).__name__})") from None
    if not head:
        raise IngestError(token, "empty file")
    kind = _sniff(head)
    suffix = path.suffix.lower()
    try:
        if kind == "dicom" or (kind is None and suffix in ("", ".dcm", ".dicom", ".dic")):
            img = _read_dicom(path, params, token)
        else:
            img = _read_raster(path, head, params, token)
    except IngestError:
        raise
    except (Exception, MemoryError) as e:  # noqa: BLE001 - any decoder failure is an unreadable file
        raise IngestError(token, f"cannot decode ({type(e).__name__})") from None
    if kind == "dicom" and suffix in (".png", ".jpg", ".jpeg") or kind in ("png", "jpeg") and suffix in (".dcm", ".dicom"):
        img.notes.append("file extension does not match its content")
    if img.image.ndim != 2 or img.image.size == 0:
        raise IngestError(token, "no two-dimensional image")
    return _resample(img, params, token)


def _sniff(head: bytes) -> str | None:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIG):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM") or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "raster"
    return None


def _check_size(rows: int, cols: int, params: PreprocessParams, token: str) -> None:
    if max(rows, cols) > params.max_side_px:
        raise TooLargeError(token, f"declared size exceeds the maximum side of {params.max_side_px} pixels")


# ---------------------------------------------------------------------------- DICOM
def _read_dicom(path: Path, params: PreprocessParams, token: str) -> IngestedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _decoders_silenced():
        try:
            ds = pydicom.dcmread(path, force=True, defer_size="1 MB")
        except (InvalidDicomError, Exception) as e:  # noqa: BLE001
            raise IngestError(token, f"not a readable DICOM file ({type(e).__name__})") from None
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise IngestError(token, "DICOM object has no pixel data")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if rows <= 0 or cols <= 0:
            raise IngestError(token, "DICOM object declares no image size")
        _check_size(rows, cols, params, token)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 and params.multiframe == "reject":
            raise MultiFrameError(token, f"multi-frame object ({frames} frames)")
        pixels, notes = _dicom_pixels(ds, frames)
    return IngestedImage(pixels, _dicom_fields(ds, rows, cols), notes, _phi_findings(ds))


def _dicom_pixels(ds: Any, frames: int) -> tuple[np.ndarray | StoredImage, list[str]]:
    from pydicom.pixels import apply_color_lut, pixel_array

    notes: list[str] = []
    # view_only: uncompressed pixels are read in place (read-only; nothing here writes to them)
    arr = pixel_array(ds, index=0 if frames > 1 else None, view_only=True)
    if frames > 1:
        notes.append(f"multi-frame object: first of {frames} frames used")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("palette colour expanded")
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1 and frames <= 1:
        arr = arr[0]  # a single frame reported with a leading frame axis
    if arr.ndim == 3:  # colour (YBR is converted to RGB by pydicom)
        pixels = _unit_range(_to_gray(arr.astype(np.float32), notes, bgr=False))
    elif arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        return _gray_via_lut(arr, ds, notes, invert=photometric == "MONOCHROME1"), notes
    else:
        pixels = _unit_range(_value_transforms(arr, ds, notes))
    if photometric == "MONOCHROME1":
        pixels = np.subtract(1.0, pixels, out=pixels)
        notes.append("MONOCHROME1 inverted")
    return pixels, notes


def _value_transforms(arr: np.ndarray, ds: Any, notes: list[str] | None) -> np.ndarray:
    """Modality LUT / rescale, then VOI LUT or window (pydicom's own functions)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(arr, ds), np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), np.float64)
        if notes is not None:
            notes.append("VOI LUT / window applied")
    return values


def _gray_via_lut(arr: np.ndarray, ds: Any, notes: list[str], *, invert: bool) -> np.ndarray | StoredImage:
    """Integer pixels (<= 16 bit): run the value transforms once per possible stored value.

    The LUTs are functions of the stored value, so transforming ``arange(min, max + 1)``
    gives exactly the per-pixel result; the image is kept as stored values plus that
    table (a :class:`StoredImage`), and pixels are looked up only where a step needs them.
    """
    lo_stored, hi_stored = int(arr.min()), int(arr.max())
    lut = _value_transforms(np.arange(lo_stored, hi_stored + 1).astype(arr.dtype), ds, notes)
    if not np.all(np.isfinite(lut)):
        raise ValueError("non-finite pixel values")
    if np.all(np.diff(lut) >= 0):  # monotonic: the extremes of the image are at its extreme values
        lo, hi = float(lut[0]), float(lut[-1])
    else:
        present = np.bincount((arr.astype(np.int32) - lo_stored).ravel(), minlength=lut.size) > 0
        lo, hi = float(lut[present].min()), float(lut[present].max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)  # blank; QC rejects it
    lut = (lut - lo) / (hi - lo)
    if invert:  # folded in at float64: MONOCHROME1 and MONOCHROME2 of one picture give equal bits
        lut = 1.0 - lut
        notes.append("MONOCHROME1 inverted")
    lut = lut.astype(np.float32)
    if arr.dtype in (np.uint8, np.uint16):  # the stored values index the table as they are
        table = np.zeros(hi_stored + 1, np.float32)
        table[lo_stored:] = lut
        return StoredImage(arr, table, index_range=(lo_stored, hi_stored))
    return StoredImage((arr.astype(np.int32) - lo_stored).astype(np.uint16), lut,
                       index_range=(0, hi_stored - lo_stored))


def _dicom_fields(ds: Any, rows: int, cols: int) -> dict[str, Any]:
    out: dict[str, Any] = {"source": "dicom", "stored_shape": [rows, cols]}
    for key in ALLOWED_FIELDS:
        value = ds.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = int(value) if float(value).is_integer() else float(value)
        elif isinstance(value, str) and _CODE_RE.match(value.strip().upper()):
            out[key] = value.strip().upper()
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        if spacing is not None and len(spacing) == 2 and all(float(s) > 0 for s in spacing):
            out["spacing_mm"] = [float(spacing[0]), float(spacing[1])]
    except (TypeError, ValueError):
        pass  # malformed spacing: treated as unknown
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    out["transfer_syntax"] = str(uid.name) if uid is not None and getattr(uid, "is_transfer_syntax", False) else "unknown"
    return out


def _phi_findings(ds: Any) -> list[str]:
    found = {name for key, name in PHI_KEYWORDS.items() if key in ds and str(ds.get(key) or "").strip()}
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        found.add(BURNED_IN)
    return sorted(found)


@contextmanager
def _decoders_silenced() -> Iterator[None]:
    """Drop decoder warnings and log records for the duration of one file.

    pydicom warns (and logs) about vendor quirks it reads around, quoting the offending
    tag values, which may be patient data. Scoped to one file, not a blanket filter.
    """
    loggers = [logging.getLogger(name) for name in _DECODER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


# ---------------------------------------------------------------------------- raster
def _read_raster(path: Path, head: bytes, params: PreprocessParams, token: str) -> IngestedImage:
    size = raster_size(head)
    if size is not None:
        _check_size(size[0], size[1], params, token)
    data = np.frombuffer(path.read_bytes(), np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise IngestError(token, "not a readable image file")
    _check_size(arr.shape[0], arr.shape[1], params, token)
    notes: list[str] = []
    bits = int(arr.dtype.itemsize * 8)
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:  # by its significant bits: a 12-bit detector stored in 16 bits is not 1/16 bright
        bits = significant_bits(arr, png_sbit(data.tobytes()) if head.startswith(_PNG_SIG) else None)
        scale = float(2**bits - 1)
    else:
        scale = 0.0  # float / other integer types: min-max below
    fields = {"source": "png" if head.startswith(_PNG_SIG) else "raster", "stored_shape": [int(arr.shape[0]), int(arr.shape[1])],
              "BitsStored": bits}
    if arr.ndim == 2 and scale:  # gray integers: looked up where needed (the same float32 arithmetic per value)
        levels = np.arange(256 if arr.dtype == np.uint8 else 65536, dtype=np.float32)
        return IngestedImage(StoredImage(arr, np.clip(levels / scale, 0.0, 1.0).astype(np.float32)), fields, notes, [])
    gray = _to_gray(arr.astype(np.float32), notes, bgr=True) if arr.ndim == 3 else arr.astype(np.float32)
    pixels = gray / scale if scale else _unit_range(gray.astype(np.float64)).astype(np.float32)
    return IngestedImage(np.clip(pixels, 0.0, 1.0).astype(np.float32), fields, notes, [])


# ---------------------------------------------------------------------------- shared
def _to_gray(arr: np.ndarray, notes: list[str], *, bgr: bool) -> np.ndarray:
    """Colour (H, W, 3|4) float32 -> gray, noting what was done."""
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
        notes.append("alpha channel dropped")
    elif arr.shape[2] == 2:  # gray + alpha
        notes.append("alpha channel dropped")
        return np.ascontiguousarray(arr[:, :, 0])
    if arr.shape[2] != 3:
        raise ValueError("unsupported channel count")
    if np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]):
        notes.append("grayscale stored as colour")
        return np.ascontiguousarray(arr[:, :, 0])
    notes.append("colour converted to grayscale")
    return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] as float32; raises on non-finite values (NaN / inf reach min or max)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("non-finite pixel values")
    if hi - lo <= 0:
        return np.zeros(values.shape, np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def _resample(img: IngestedImage, params: PreprocessParams, token: str) -> IngestedImage:
    spacing = img.fields.get("spacing_mm")
    if params.target_mm_per_px <= 0 or not spacing:
        return img
    fy, fx = spacing[0] / params.target_mm_per_px, spacing[1] / params.target_mm_per_px
    if abs(fy - 1) < 1e-3 and abs(fx - 1) < 1e-3:
        return img
    h, w = img.image.shape
    size = (max(1, round(w * fx)), max(1, round(h * fy)))
    if max(size) > params.max_side_px:
        raise TooLargeError(token, "resampled size exceeds the maximum side")
    interp = cv2.INTER_AREA if fx * fy < 1 else cv2.INTER_LINEAR
    img.image = np.clip(cv2.resize(img.pixels, size, interpolation=interp), 0.0, 1.0)
    img.fields["spacing_mm"] = [params.target_mm_per_px, params.target_mm_per_px]
    img.notes.append("resampled to the target pixel spacing")
    return img
