"""Draw a femoral stem (with neck and head) as a metal-density map and its mask."""

from __future__ import annotations

import cv2
import numpy as np

from simulations.synth.catalog_spec import StemDesign
from simulations.synth.geometry import SHIFT, Pose

METAL = 1.0


def stem_outline(d: StemDesign, n: int = 24) -> np.ndarray:
    """Closed polygon of the stem body in local units (shoulder at y=0, tip at y=length)."""
    ys = np.linspace(0.0, d.length, n)
    t = ys / d.length
    lateral = d.dist_width / 2 + (d.prox_width - d.dist_width) / 2 * (1 - t)
    medial = -(d.dist_width / 2 + (d.prox_width - d.dist_width) / 2 * (1 - t) ** 2)
    lateral_pts = np.stack([lateral, ys], 1)
    lateral_pts[0, 1] -= d.shoulder  # the lateral shoulder rises above the medial side
    tip = [(d.dist_width / 2 * np.cos(a), d.length + d.dist_width / 2 * np.sin(a)) for a in np.linspace(0, np.pi, 9)]
    medial_pts = np.stack([medial, ys], 1)[::-1]
    return np.concatenate([lateral_pts, np.array(tip), medial_pts])


def neck_axis(d: StemDesign) -> tuple[np.ndarray, np.ndarray]:
    """Start point and unit direction of the neck (up and medial at the neck-shaft angle)."""
    a = np.deg2rad(d.neck_angle)
    start = np.array([-d.prox_width * 0.15, 0.01])
    return start, np.array([-np.sin(a), np.cos(a)])


def head_centre(d: StemDesign, neck_len: float = 0.2) -> np.ndarray:
    start, direction = neck_axis(d)
    return start + direction * neck_len


def draw_stem(d: StemDesign, pose: Pose, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (density float32 HxW, mask uint8 HxW with 255 = metal)."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pose.poly(stem_outline(d))], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    start, direction = neck_axis(d)
    normal = np.array([-direction[1], direction[0]])
    neck_w, neck_len = 0.055, 0.2
    end = start + direction * neck_len
    neck = np.array([start + normal * neck_w / 2, end + normal * neck_w / 2 * 0.8,
                     end - normal * neck_w / 2 * 0.8, start - normal * neck_w / 2])
    cv2.fillPoly(mask, [pose.poly(neck)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    centre = pose.to_px(end[None])[0]
    cv2.circle(mask, tuple(np.round(centre * 16).astype(int)), int(round(d.head / 2 * pose.scale * 16)), 255,
               -1, lineType=cv2.LINE_AA, shift=SHIFT)
    if d.collar:
        x0 = -d.prox_width / 2
        collar = np.array([[x0 + 0.02, 0.03], [x0 - 0.045, 0.03], [x0 - 0.045, 0.052], [x0 + 0.02, 0.052]])
        cv2.fillPoly(mask, [pose.poly(collar)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    density = (mask.astype(np.float32) / 255.0) * METAL
    if d.holes:
        for k in range(d.holes):
            y = 0.12 + 0.11 * k
            r = max(d.prox_width * 0.18, 0.012)
            c = pose.to_px(np.array([[0.0, y]]))[0]
            cv2.ellipse(density, (tuple(np.round(c * 16).astype(int))), (int(r * pose.scale * 16), int(r * 1.6 * pose.scale * 16)),
                        pose.angle, 0, 360, 0.0, -1, lineType=cv2.LINE_AA, shift=SHIFT)
    if d.porous > 0:
        band = np.zeros((h, w), np.uint8)
        top = stem_outline(d)
        keep = top[:, 1] <= d.length * d.porous
        cv2.fillPoly(band, [pose.poly(top[keep])], 255, shift=SHIFT)
        texture = rng.uniform(0.72, 1.0, size=(h, w)).astype(np.float32)
        texture = cv2.GaussianBlur(texture, (0, 0), 0.6)
        density = np.where(band > 0, density * texture, density)
    mask = np.where(density > 0.35, 255, 0).astype(np.uint8)
    return density, mask
