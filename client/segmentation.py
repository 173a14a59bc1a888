"""Implant segmentation: the metal is the densest thing on a radiograph.

Two-level Otsu (background/soft tissue vs bone, then bone vs metal) on a lightly blurred
image, morphological opening, connected components; the largest metal component is the
implant. Further large metal components mean a second implant or a foreign object.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_AREA_FRACTION = 0.002  # implant must cover at least this fraction of the image
FOREIGN_RATIO = 0.25  # another component this large (relative to the implant) = foreign object
MIN_CONTRAST = 0.12  # implant must be this much brighter than the median of the image


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # uint8 HxW, 255 = implant
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1), exclusive; None if no implant
    others: int  # number of further large metal components
    contrast: float  # implant mean minus image median


def segment_implant(img: np.ndarray) -> Segmentation:
    """Segment the implant of ``img`` (float HxW in [0, 1], high = dense)."""
    u8 = np.clip(cv2.GaussianBlur(img, (0, 0), 1.0) * 255, 0, 255).astype(np.uint8)
    empty = Segmentation(np.zeros(img.shape, np.uint8), None, 0, 0.0)
    if int(u8.max()) - int(u8.min()) < 8:
        return empty
    t1, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = u8[u8 > t1]
    if bright.size < 16:
        return empty
    t2, _ = cv2.threshold(bright.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    metal = (u8 > max(t1, t2)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    metal = cv2.morphologyEx(metal, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(metal, connectivity=8)
    if n <= 1:
        return empty
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1]
    main = int(order[0]) + 1
    main_area = int(areas[order[0]])
    if main_area < MIN_AREA_FRACTION * img.size:
        return empty
    mask = np.where(labels == main, 255, 0).astype(np.uint8)
    # Parts of a modular implant (a head whose thin neck blurred away) sit right next to the
    # main component: merge what touches its dilation; large metal further away is foreign.
    bw, bh = int(stats[main, cv2.CC_STAT_WIDTH]), int(stats[main, cv2.CC_STAT_HEIGHT])
    reach = max(3, int(0.08 * max(bw, bh)))
    near = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
    others = 0
    for idx in order[1:]:
        comp = int(idx) + 1
        if np.any(near[labels == comp]):
            mask[labels == comp] = 255
        elif areas[idx] > FOREIGN_RATIO * main_area:
            others += 1
    ys, xs = np.nonzero(mask)
    x, y, w, h = int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    contrast = float(img[mask > 0].mean() - np.median(img))
    return Segmentation(mask, (x, y, x + w, y + h), others, contrast)
