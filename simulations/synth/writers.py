"""Write a synthetic radiograph as DICOM (CR / DX, MONOCHROME1/2, 12-16 bit) or PNG.

DICOM files carry a fake patient name containing ``CANARY`` and a fake patient ID so
that PHI handling can be tested; UIDs are derived from the generation seed and dates
are fixed, so the files are byte-identical for a seed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def write_png(path: Path, img: np.ndarray, *, bits: int) -> None:
    """``img`` in [0, 1], high = dense; 8- or 16-bit grayscale PNG."""
    if bits == 16:
        data = np.round(img * 65535).astype(np.uint16)
    else:
        data = np.round(img * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError("PNG encoding failed")
    path.write_bytes(buf.tobytes())


def write_dicom(
    path: Path,
    img: np.ndarray,
    *,
    modality: str,
    bits: int,
    monochrome1: bool,
    mm_per_px: float,
    uid_seed: list[str],
    patient_no: int,
    rle: bool = False,
) -> None:
    """Write ``img`` (in [0, 1], high = dense) as a single-frame DICOM."""
    maxval = (1 << bits) - 1
    dense = np.round(img * maxval).astype(np.int64)
    raw = (maxval - dense) if monochrome1 else dense
    intercept = -1024.0 if patient_no % 3 == 0 else 0.0
    sop_class = CR_STORAGE if modality == "CR" else DX_STORAGE
    sop_uid = generate_uid(entropy_srcs=[*uid_seed, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*uid_seed, "series"])
    ds.PatientName = f"CANARY^Patient{patient_no:05d}"
    ds.PatientID = f"CANARY-ID-{patient_no:06d}"
    ds.PatientBirthDate = "19500101"
    ds.StudyDate = "20250101"
    ds.Modality = modality
    ds.BodyPartExamined = "HIP"
    ds.Manufacturer = "SynthScan"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{intercept + maxval / 2:.1f}"
    ds.WindowWidth = f"{maxval:.1f}"
    spacing = [f"{mm_per_px:.4f}", f"{mm_per_px:.4f}"]
    if modality == "DX":
        ds.ImagerPixelSpacing = spacing
    else:
        ds.PixelSpacing = spacing
    ds.BurnedInAnnotation = "YES" if patient_no % 4 == 0 else "NO"
    ds.PixelData = raw.astype(np.uint16).tobytes()
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
