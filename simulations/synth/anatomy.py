"""Radiograph-like background: soft tissue, a femur around the stem, pelvis and acetabulum."""

from __future__ import annotations

import cv2
import numpy as np

from simulations.synth.catalog_spec import StemDesign
from simulations.synth.geometry import SHIFT, Pose
from simulations.synth.implant import head_centre


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    small = rng.normal(size=(max(2, shape[0] // 16), max(2, shape[1] // 16))).astype(np.float32)
    return cv2.GaussianBlur(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), (0, 0), sigma)


def draw_anatomy(d: StemDesign, pose: Pose, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Attenuation map in [0, ~0.65] (metal is added on top by the caller)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Soft tissue: a broad body outline with a lateral-medial gradient and mottling.
    body = 0.16 + 0.10 * np.exp(-(((xx - w * rng.uniform(0.4, 0.6)) / (w * 0.7)) ** 2))
    body += 0.02 * _smooth_noise(shape, rng, 6.0)
    img = body.astype(np.float32)

    # Femur: a band along the shaft, wider than the stem, with brighter cortical walls.
    bone = np.zeros(shape, np.uint8)
    cortex = np.zeros(shape, np.uint8)
    half = max(d.prox_width, 0.10) * 1.25
    length = d.length + 0.6
    femur = np.array([[half + 0.05, -0.08], [half * 0.85, length], [-half * 0.85, length], [-half - 0.08, 0.05],
                      [-half - 0.03, -0.12], [0.0, -0.16]])
    cv2.fillPoly(bone, [pose.poly(femur)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    cv2.polylines(cortex, [pose.poly(femur)], True, 255, thickness=max(2, int(pose.scale * 0.03)), lineType=cv2.LINE_AA, shift=SHIFT)
    trochanter = np.array([[half + 0.02, -0.02], [half + 0.14, -0.12], [half + 0.10, 0.10], [half, 0.16]])
    cv2.fillPoly(bone, [pose.poly(trochanter)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    img += 0.22 * cv2.GaussianBlur(bone.astype(np.float32) / 255, (0, 0), 1.5)
    img += 0.15 * cv2.GaussianBlur(cortex.astype(np.float32) / 255, (0, 0), 1.0)

    # Pelvis: a large bony plate above and medial to the head, with the acetabular rim.
    head = head_centre(d)
    pelvis = np.zeros(shape, np.uint8)
    cx, cy = pose.to_px(np.array([[head[0] - 0.25, head[1] - 0.30]]))[0]
    axes = (int(pose.scale * rng.uniform(0.45, 0.6)), int(pose.scale * rng.uniform(0.3, 0.42)))
    cv2.ellipse(pelvis, (int(cx), int(cy)), axes, pose.angle + rng.uniform(-20, 20), 0, 360, 255, -1, lineType=cv2.LINE_AA)
    img += 0.18 * cv2.GaussianBlur(pelvis.astype(np.float32) / 255, (0, 0), 3.0)
    hx, hy = pose.to_px(head[None])[0]
    rim_r = int(d.head / 2 * pose.scale * 1.45)
    rim = np.zeros(shape, np.uint8)
    cv2.ellipse(rim, (int(hx), int(hy)), (rim_r, rim_r), pose.angle + (45 if not pose.flip else 135), 0, 200, 255,
                max(2, int(pose.scale * 0.02)), lineType=cv2.LINE_AA)
    img += 0.12 * cv2.GaussianBlur(rim.astype(np.float32) / 255, (0, 0), 1.2)
    # Trabecular texture inside bone.
    img += 0.03 * _smooth_noise(shape, rng, 1.2) * (bone > 0)
    return np.clip(img, 0, 0.75)
