"""How a site's scanner turns attenuation into a stored image: the per-site style and nuisances."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SiteStyle:
    """A site's acquisition tendencies (drawn once per site from its seed)."""

    height: int  # image rows
    width: int  # image columns
    mm_per_px: float  # pixel spacing written to DICOM
    gamma: float  # display gamma tendency
    blur: float  # detector blur sigma, px
    noise: float  # quantum-noise strength
    contrast: float  # global contrast scaling
    formats: tuple[str, ...]  # file kinds this site exports: dicom-cr, dicom-dx, png
    monochrome1: float  # fraction of DICOMs stored as MONOCHROME1
    bits: int  # BitsStored of its DICOMs
    markers: float  # probability of burned-in text markers
    collimation: float  # probability of visible collimation edges


def random_style(rng: np.random.Generator, *, size: tuple[int, int], formats: tuple[str, ...], strength: float) -> SiteStyle:
    h = int(size[0] * rng.uniform(0.9, 1.15)) // 8 * 8
    w = int(size[1] * rng.uniform(0.9, 1.15)) // 8 * 8
    return SiteStyle(
        height=h, width=w, mm_per_px=float(rng.uniform(0.55, 0.9)),
        gamma=float(rng.uniform(0.75, 1.35)), blur=float(rng.uniform(0.3, 1.3) * strength),
        noise=float(rng.uniform(0.015, 0.04) * strength), contrast=float(rng.uniform(0.8, 1.15)),
        formats=formats, monochrome1=float(rng.choice([0.0, 0.5, 1.0])), bits=int(rng.choice([12, 14, 16])),
        markers=float(rng.uniform(0.3, 0.9)), collimation=float(rng.uniform(0.2, 0.7)),
    )


def acquire(attenuation: np.ndarray, style: SiteStyle, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Attenuation (0..~1.7) -> displayed intensity in [0, 1], high = dense."""
    img = attenuation / 1.7
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), style.blur + 1e-3)
    exposure = rng.uniform(0.85, 1.15) ** strength
    gamma = style.gamma * rng.uniform(0.9, 1.1) ** strength
    img = np.clip(img * exposure * style.contrast, 0, 1) ** gamma
    sigma = style.noise * np.sqrt(np.clip(img, 0.02, 1.0))  # signal-dependent, like quantum noise
    img = img + rng.normal(size=img.shape).astype(np.float32) * sigma
    h, w = img.shape
    if rng.random() < style.collimation:
        side = int(rng.integers(0, 4))
        band = int(rng.uniform(0.04, 0.12) * (w if side < 2 else h))
        value = 0.03
        if side == 0:
            img[:, :band] = value
        elif side == 1:
            img[:, w - band:] = value
        elif side == 2:
            img[:band, :] = value
        else:
            img[h - band:, :] = value
    if rng.random() < style.markers:
        letter = "L" if rng.random() < 0.5 else "R"
        scale = h / 480
        text = np.zeros(img.shape, np.uint8)  # OpenCV draws text on 8-bit images only
        cv2.putText(text, letter, (int(w * 0.06), int(h * 0.1)), cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, 255, 2)
        cv2.putText(text, f"2025-0{int(rng.integers(1, 10))}-1{int(rng.integers(0, 10))}", (int(w * 0.55), int(h * 0.96)),
                    cv2.FONT_HERSHEY_PLAIN, 0.9 * scale, 242, 1)
        img = np.maximum(img, text.astype(np.float32) / 255.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
