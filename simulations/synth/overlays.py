"""Things drawn on top of the detector image: collimation bands and burned-in text.

Collimation bands cover image borders with a dark (shuttered) or bright (unexposed)
band, optionally slightly tilted; they are never as bright as metal. Burned-in markers
are a side letter ("L"/"R") and a fake study date: bright, but small next to the implant.
"""

from __future__ import annotations

import cv2
import numpy as np

from simulations.synth.acquisition import SiteStyle

BRIGHT_BAND = (0.55, 0.72)  # intensity range of a bright (unexposed) band, below metal
DARK_BAND = (0.0, 0.06)


def collimate(img: np.ndarray, rng: np.random.Generator, style: SiteStyle) -> np.ndarray:
    """Cover 1-3 borders of ``img`` (in place) with collimation bands, with ``style``'s probability.

    Parameters
    ----------
    img
        float32 HxW image in ``[0, 1]``; modified in place.
    rng
        Per-image random generator.
    style
        The site's style (``collimation`` and ``bright_bands`` probabilities).

    Returns
    -------
    numpy.ndarray
        float32 HxW band weight in ``[0, 1]`` (1 = fully covered); all zero if no band.
    """
    h, w = img.shape
    cover = np.zeros((h, w), np.float32)
    if rng.random() >= style.collimation:
        return cover
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    sides = rng.choice(4, size=int(rng.integers(1, 4)), replace=False)
    bright = rng.random() < style.bright_bands
    value = np.float32(rng.uniform(*(BRIGHT_BAND if bright else DARK_BAND)))
    for side in sorted(int(s) for s in sides):
        width = rng.uniform(0.03, 0.1) * (w if side < 2 else h)
        slope = np.float32(np.tan(np.deg2rad(rng.uniform(-2.5, 2.5))))
        if side == 0:
            dist = width + slope * (ys - h / 2) - xs
        elif side == 1:
            dist = xs - (w - width + slope * (ys - h / 2))
        elif side == 2:
            dist = width + slope * (xs - w / 2) - ys
        else:
            dist = ys - (h - width + slope * (xs - w / 2))
        cover = np.maximum(cover, np.clip(dist + 0.5, 0.0, 1.0))
    img[:] = img * (1 - cover) + value * cover
    return cover


def burn_markers(img: np.ndarray, rng: np.random.Generator, style: SiteStyle, *, left: bool) -> bool:
    """Burn a side letter and a fake date into ``img`` (in place), with ``style``'s probability.

    Parameters
    ----------
    img
        float32 HxW image in ``[0, 1]``; modified in place.
    rng
        Per-image random generator.
    style
        The site's style (``markers`` probability).
    left
        Whether the image shows a left hip (letter "L", else "R").

    Returns
    -------
    bool
        Whether anything was burned in.
    """
    if rng.random() >= style.markers:
        return False
    h, w = img.shape
    text = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
    scale = h / 420.0
    corner_x = int(w * rng.uniform(0.04, 0.1)) if rng.random() < 0.5 else int(w * rng.uniform(0.82, 0.88))
    cv2.putText(text, "L" if left else "R", (corner_x, int(h * rng.uniform(0.08, 0.12))),
                cv2.FONT_HERSHEY_SIMPLEX, 1.0 * scale, 255, max(1, int(round(2 * scale))), cv2.LINE_AA)
    date = f"20{int(rng.integers(15, 25))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    cv2.putText(text, date, (int(w * rng.uniform(0.05, 0.5)), int(h * 0.965)),
                cv2.FONT_HERSHEY_PLAIN, 0.8 * scale, 255, 1, cv2.LINE_AA)
    level = np.float32(rng.uniform(0.85, 1.0))
    img[:] = np.maximum(img, text.astype(np.float32) * (level / 255.0))
    return True
