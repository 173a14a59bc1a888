"""Write a synthetic radiograph as DICOM (CR / DX, MONOCHROME1/2, 12-16 bit) or PNG.

DICOM files carry a fake patient name containing ``CANARY`` and a fake patient ID, so
that PHI handling can be tested. UIDs are derived from the generation seed and every
date is a fixed fake date, so the files are byte-identical for a (preset, seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
_GIVEN = ("Jane", "John", "Alex", "Maria", "Omar", "Yuki", "Ines", "Piet")


@dataclass(frozen=True)
class Export:
    """How a site exports its images."""

    formats: tuple[str, ...]  # cycled per image: "dicom-cr", "dicom-dx", "png"
    monochrome1: float = 0.0  # fraction of DICOMs stored as MONOCHROME1 (inverted)
    bits: int = 12  # DICOM BitsStored, 12-16
    png_bits: int = 16  # 8 or 16
    rle: float = 0.0  # fraction of DICOMs RLE-compressed
    slope: float = 1.0  # DICOM RescaleSlope
    intercept: float = 0.0  # DICOM RescaleIntercept


@dataclass(frozen=True)
class DicomIdentity:
    """The fake, deterministic identity fields of one DICOM file."""

    uid_seed: tuple[str, ...]  # entropy for the study/series/instance UIDs
    patient_no: int  # makes the fake name and ID
    study_date: str  # YYYYMMDD, fake and fixed for the seed
    institution: str  # the site's name
    burned_in: bool  # whether text was burned into the pixels


def write_png(path: Path, img: np.ndarray, *, bits: int) -> None:
    """Write ``img`` (float in ``[0, 1]``, high = dense) as a grayscale PNG: 8-bit, or 16-bit holding
    ``bits`` (9-16) significant bits, as many PACS exports write 10-14-bit detectors."""
    data = (np.round(img * 255).astype(np.uint8) if bits == 8
            else np.round(img * ((1 << bits) - 1)).astype(np.uint16))
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError("PNG encoding failed")
    path.write_bytes(buf.tobytes())


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a uint8 mask (255 = implant metal) as PNG."""
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise OSError("PNG encoding failed")
    path.write_bytes(buf.tobytes())


def write_dicom(path: Path, img: np.ndarray, *, modality: str, export: Export, monochrome1: bool,
                mm_per_px: float, who: DicomIdentity, rle: bool = False) -> None:
    """Write ``img`` (float in ``[0, 1]``, high = dense) as a single-frame CR or DX DICOM.

    Parameters
    ----------
    path
        Output file.
    img
        float32 HxW image, high = dense.
    modality
        ``"CR"`` or ``"DX"``; DX files carry ImagerPixelSpacing, CR files PixelSpacing.
    export
        The site's export settings (bits, rescale).
    monochrome1
        Store inverted (high stored value = dark).
    mm_per_px
        Pixel spacing, mm.
    who
        Fake identity fields and UID entropy.
    rle
        Compress with RLE Lossless instead of explicit VR little endian.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    maxval = (1 << export.bits) - 1
    dense = np.round(np.clip(img, 0.0, 1.0) * maxval).astype(np.uint16)
    raw = (maxval - dense).astype(np.uint16) if monochrome1 else dense
    sop_class = CR_STORAGE if modality == "CR" else DX_STORAGE
    sop_uid = generate_uid(entropy_srcs=[*who.uid_seed, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*who.uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*who.uid_seed, "series"])
    ds.PatientName = f"CANARY^{_GIVEN[who.patient_no % len(_GIVEN)]}{who.patient_no}"
    ds.PatientID = f"SYN{who.patient_no:07d}"
    ds.PatientBirthDate = f"19{40 + who.patient_no % 40:02d}0101"
    ds.PatientSex = "F" if who.patient_no % 2 else "M"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = who.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{who.patient_no:08d}"
    ds.InstitutionName = f"Synthetic {who.institution}"
    ds.Modality = modality
    ds.BodyPartExamined = "HIP"
    ds.ViewPosition = "AP"
    ds.Manufacturer = "SynthScan"
    ds.Rows, ds.Columns = (int(n) for n in img.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = export.bits
    ds.HighBit = export.bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{export.slope:g}"
    ds.RescaleIntercept = f"{export.intercept:g}"
    ds.RescaleType = "US"
    low, high = export.intercept, export.intercept + export.slope * maxval
    ds.WindowCenter = f"{(low + high) / 2:.1f}"
    ds.WindowWidth = f"{(high - low) * 1.02:.1f}"
    spacing = [f"{mm_per_px:.4f}", f"{mm_per_px:.4f}"]
    if modality == "DX":
        ds.ImagerPixelSpacing = spacing
    else:
        ds.PixelSpacing = spacing
    ds.BurnedInAnnotation = "YES" if who.burned_in else "NO"
    ds.PixelData = raw.tobytes()
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
