"""Tiny synthetic radiographs for the site data pipeline tests.

A radiograph here is a gradient background, a soft-tissue ellipse, pelvis and femur
(bone) and, optionally, a bright femoral stem (metal: tapered stem, neck, ball head),
slightly rotated, blurred and noisy. Writers store it as DICOM (MONOCHROME1/2, 8-16 bit,
rescale, window, compressed, multi-frame) or PNG (8/16-bit, colour, RGBA, palette).
Every DICOM carries the planted patient name ``CANARY^Jane``.
"""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

CANARY = "CANARY^Jane"


@dataclass(frozen=True)
class Radiograph:
    image: np.ndarray  # float32 HxW in [0, 1], high = dense
    mask: np.ndarray  # uint8 HxW, 255 = implant (all zero when none)
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1), exclusive


def draw_radiograph(seed: int, *, shape: tuple[int, int] = (320, 256), implant: bool = True,
                    foreign: bool = False, second_stem: bool = False) -> Radiograph:
    """Draw one synthetic hip radiograph (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.04 + rng.uniform(0.04, 0.1) * xx / w + rng.uniform(0.0, 0.06) * yy / h
    layer = np.zeros((h, w), np.float32)
    cv2.ellipse(layer, (int(w * 0.5), int(h * 0.65)), (int(w * 0.46), int(h * 0.62)), 0, 0, 360, 1.0, -1)
    img += 0.14 * cv2.GaussianBlur(layer, (0, 0), 6)
    cx = w * rng.uniform(0.42, 0.58)
    top = h * rng.uniform(0.24, 0.32)
    bone = np.zeros((h, w), np.float32)
    cv2.ellipse(bone, (int(cx - w * 0.12), int(h * 0.08)), (int(w * 0.4), int(h * 0.11)), 0, 0, 360, 1.0, -1)
    cv2.line(bone, (int(cx), int(top - h * 0.05)), (int(cx + rng.uniform(-8, 8)), h + 10), 1.0, int(w * 0.2))
    img += rng.uniform(0.15, 0.24) * cv2.GaussianBlur(bone, (0, 0), 3)
    mask = np.zeros((h, w), np.uint8)
    if implant:
        mask = _stem_mask(rng, (h, w), cx, top)
        if second_stem:
            mask |= _stem_mask(rng, (h, w), w - cx + (w * 0.35 if cx < w / 2 else -w * 0.35), top)
    metal = float(rng.uniform(0.8, 0.95))
    texture = rng.normal(0.0, 0.01, (h, w)).astype(np.float32)
    img = np.where(mask > 0, metal + texture, img)
    if foreign:  # a coin-sized metal disc far from the stem
        fx = int(w * 0.15) if cx > w / 2 else int(w * 0.85)
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, (fx, int(h * 0.85)), int(w * 0.1), 255, -1)
        img = np.where(disc > 0, metal, img)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8) + rng.normal(0.0, 0.01, (h, w))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None
    return Radiograph(img, mask, box)


def _stem_mask(rng: np.random.Generator, shape: tuple[int, int], cx: float, top: float) -> np.ndarray:
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    length = h * rng.uniform(0.42, 0.55)
    wt, wb = w * rng.uniform(0.08, 0.11), w * rng.uniform(0.03, 0.045)
    poly = np.array([(cx - wt / 2, top), (cx + wt / 2, top), (cx + wb / 2, top + length), (cx - wb / 2, top + length)])
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    cv2.circle(mask, (round(cx), round(top + length)), round(wb / 2), 255, -1)
    head = (round(cx - w * rng.uniform(0.1, 0.14)), round(top - h * rng.uniform(0.05, 0.08)))
    cv2.line(mask, (round(cx - wt * 0.2), round(top + wt * 0.3)), head, 255, max(2, round(w * 0.035)))
    cv2.circle(mask, head, round(w * rng.uniform(0.05, 0.06)), 255, -1)
    angle = float(rng.uniform(-8, 8))
    m = cv2.getRotationMatrix2D((cx, top + length / 2), angle, 1.0)
    return np.where(cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST) > 0, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------- writers
def write_dicom(path: Path, img: np.ndarray, *, bits: int = 12, monochrome1: bool = False, slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, syntax: str | None = None,
                frames: int = 1, modality: str = "DX", spacing: float | None = 0.15, burned_in: bool = False,
                patient_name: str = CANARY, rows_override: int | None = None, truncate: int = 0) -> Path:
    """Store ``img`` (float, high = dense) as a DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    maxval = (1 << bits) - 1
    dense = np.round(np.clip(img, 0, 1) * maxval).astype(np.uint16 if bits > 8 else np.uint8)
    raw = (maxval - dense).astype(dense.dtype) if monochrome1 else dense
    if frames > 1:
        raw = np.stack([raw] * frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "CANARY-0001"
    ds.PatientBirthDate = "19400101"
    ds.InstitutionName = "CANARY General"
    ds.Modality = modality
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if spacing is not None:
        ds.ImagerPixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    ds.PixelData = raw.tobytes()
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    if rows_override is not None:
        ds.Rows = ds.Columns = rows_override
    if truncate:
        ds.PixelData = ds.PixelData[:-truncate]
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, img: np.ndarray, *, bits: int = 8, mode: str = "gray") -> Path:
    """Store ``img`` as PNG: mode gray | bgr | bgra | palette."""
    if mode == "palette":
        path.write_bytes(palette_png(np.round(img * 255).astype(np.uint8)))
        return path
    data = np.round(img * 65535).astype(np.uint16) if bits == 16 else np.round(img * 255).astype(np.uint8)
    if mode == "bgr":
        data = np.dstack([data, data, data])
    elif mode == "bgra":
        data = np.dstack([data, data, data, np.full_like(data, data.max())])
    ok, buf = cv2.imencode(".png", data)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def palette_png(gray: np.ndarray) -> bytes:
    """An 8-bit palette PNG (colour type 3) whose palette is a gray ramp."""
    h, w = gray.shape
    raw = b"".join(b"\x00" + gray[r].tobytes() for r in range(h))
    palette = bytes(v for i in range(256) for v in (i, i, i))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _chunk(b"PLTE", palette) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def huge_png_header(side: int = 20_000) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels but holds almost no data."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def write_labels(site: Path, rows: list[tuple[str, str]]) -> None:
    with open(site / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "label"), *rows])


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def radiograph() -> Callable[..., Radiograph]:
    return draw_radiograph


@pytest.fixture
def catalog():
    from common.catalog import Catalog, ImplantClass

    return Catalog("test", "1", tuple(ImplantClass(f"stem-{k}", "Maker", f"Stem {k}") for k in "abc"))


@pytest.fixture
def small_site(tmp_path: Path) -> Path:
    """A site with labels.csv: 6 good images of 2 classes (DICOM + PNG) and a site.toml."""
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    rows = []
    for k in range(6):
        r = draw_radiograph(100 + k)
        name = f"images/img{k}.dcm" if k % 2 == 0 else f"images/img{k}.png"
        if k % 2 == 0:
            write_dicom(site / name, r.image, monochrome1=k == 2, bits=12 if k < 4 else 16)
        else:
            write_png(site / name, r.image, bits=16 if k == 3 else 8)
        rows.append((name, "Local A" if k < 3 else "Local B"))
    write_labels(site, rows)
    (site / "site.toml").write_text('[site]\nname = "t"\n\n[labels]\n"Local A" = "stem-a"\n"Local B" = "stem-b"\n')
    return site


@pytest.fixture(scope="session")
def synth_smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic generator's smoke federation (generated once per test session)."""
    from simulations.synth import generate

    out = tmp_path_factory.mktemp("synth-smoke")
    generate(out, preset="smoke", seed=0)
    return out
