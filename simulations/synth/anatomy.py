"""Radiograph-like background: soft tissue, the femur around the stem, the hemipelvis.

The result is an *attenuation* map (line integrals, in arbitrary units): soft tissue up
to ~0.45, bone adds up to ~0.5 (brightest along the cortical walls), metal (added by the
caller) ~3. The femur is rendered analytically as a hollow, tapering cylinder, so its
cortical walls come out bright as on a real radiograph; the pelvis is drawn as blurred
plates with cortical rims, the acetabular roof and the obturator foramen.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulations.synth.catalog_spec import StemDesign
from simulations.synth.geometry import SHIFT, Canvas, Pose
from simulations.synth.implant import axis_offset, head_centre


@dataclass(frozen=True)
class Patient:
    """Per-image anatomy variation."""

    thigh: float  # thigh radius, reference units
    bone: float  # bone density factor (osteoporotic < 1)
    cortex: float  # diaphyseal cortical thickness, reference units
    shaft: float  # femoral shaft outer radius, reference units
    pelvis_shift: tuple[float, float]  # acetabulum offset from the head centre, reference units


def random_patient(rng: np.random.Generator, d: StemDesign) -> Patient:
    """Draw a patient whose femoral canal fits the stem ``d``."""
    shaft = max(float(rng.uniform(0.095, 0.125)), d.dist_width / 2 + 0.05)
    return Patient(
        thigh=float(rng.uniform(0.5, 0.8)),
        bone=float(rng.uniform(0.7, 1.15)),
        cortex=float(rng.uniform(0.03, 0.045)),
        shaft=shaft,
        pelvis_shift=(float(rng.normal(0, 0.01)), float(rng.normal(0, 0.01))),
    )


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: int = 12) -> np.ndarray:
    """Zero-mean, unit-ish, low-frequency noise field (``cells`` blobs across the short side)."""
    h, w = shape
    step = max(4, min(h, w) // cells)
    small = rng.standard_normal((h // step + 2, w // step + 2), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def _chord(radius: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Path length through a cylinder of ``radius`` at distance ``offset`` from its axis."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - offset * offset, 0.0))


def _femur(d: StemDesign, p: Patient, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Projected femur (hollow cylinder with metaphyseal flare and trochanters).

    ``u`` is a ``(1, W)`` row of local x, ``v`` a ``(H, 1)`` column of local y.
    """
    t = np.clip(v / d.length, 0.0, 1.0)
    half_gap = (d.prox_width - d.dist_width) / 2
    stem_lat = d.dist_width / 2 + half_gap * (1 - t)
    stem_med = d.dist_width / 2 + half_gap * (1 - t) ** d.flare
    diaphysis = _sigmoid((v - 0.4) / 0.07)
    trochanter = 0.09 * np.exp(-(((v + 0.02) / 0.13) ** 2))
    lesser = 0.05 * np.exp(-(((v - 0.3) / 0.05) ** 2))
    bow = axis_offset(d, v)
    r_lat = np.maximum(p.shaft, bow + stem_lat + 0.045 + trochanter * (1 - diaphysis))
    r_med = np.maximum(p.shaft, stem_med - bow + 0.04) + lesser
    cortex = p.cortex * diaphysis + 0.012 * (1 - diaphysis)
    centre, outer_r = (r_lat - r_med) / 2, (r_lat + r_med) / 2
    inner_r = np.maximum(outer_r - cortex, 0.01)
    marrow = 0.25 + 0.45 * (1 - diaphysis)  # cancellous bone proximally, fatty marrow distally
    offset = u - centre
    outer, inner = _chord(outer_r, offset), _chord(inner_r, offset)
    bone = p.bone * (1.6 * outer + (marrow - 1.6) * inner)
    top = 0.03 - 0.3 * u - 0.12 * np.exp(-(((u - 0.2) / 0.1) ** 2))  # neck cut; trochanter rises laterally
    return (bone * np.clip((v - top) / 0.025 + 0.5, 0.0, 1.0)).astype(np.float32)


def _soft_tissue(p: Patient, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Thigh below the hip widening into the trunk above it; air outside the skin."""
    trunk = _sigmoid((0.05 - v) / 0.15)
    radius = p.thigh + (1.7 - p.thigh) * trunk
    centre = 0.05 - 1.1 * trunk
    return np.minimum(0.22 * _chord(radius, u - centre), 0.42).astype(np.float32)


def _pelvis(head: np.ndarray, d: StemDesign, p: Patient, pose: Pose, shape: tuple[int, int]) -> np.ndarray:
    """Hemipelvis around ``head``: ilium, acetabular roof, pubic ramus, obturator ring, ischium."""
    hx, hy = head + np.array(p.pelvis_shift)
    canvas = np.zeros(shape, np.uint8)

    def at(pts: np.ndarray) -> np.ndarray:
        return pose.poly(pts + np.array([hx, hy]))

    def oval(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)

    ilium = np.concatenate([oval(-0.25, -0.55, 0.55, 0.5)[14:], oval(0.0, 0.0, d.head / 2 + 0.12, d.head / 2 + 0.1)[:14]])
    ilium = np.concatenate([ilium, [[-0.7, 0.05], [-0.8, -0.4]]])
    ramus = np.array([[-0.1, 0.0], [-0.95, 0.06], [-0.95, 0.17], [-0.15, 0.2]])
    plate, rim = 110, 255  # bone plate and its cortical rim, as uint8 levels before scaling
    for poly in (ilium, ramus, oval(-0.3, 0.4, 0.3, 0.26), oval(-0.1, 0.6, 0.13, 0.15)):
        cv2.fillPoly(canvas, [at(poly)], plate, cv2.LINE_AA, SHIFT)
    thick = max(1, int(pose.length_px(0.02)))
    cv2.polylines(canvas, [at(ilium), at(oval(-0.1, 0.6, 0.13, 0.15))], True, rim, thick, cv2.LINE_AA, SHIFT)
    foramen = oval(-0.32, 0.38, 0.2, 0.16)
    cv2.fillPoly(canvas, [at(foramen)], 0, cv2.LINE_AA, SHIFT)
    cv2.polylines(canvas, [at(foramen)], True, rim, thick, cv2.LINE_AA, SHIFT)
    roof = d.head / 2 + 0.05  # acetabular roof (sourcil): a dense arc over the head
    arc = np.deg2rad(np.linspace(170, 350, 19))
    cv2.polylines(canvas, [at(roof * np.stack([np.cos(arc), np.sin(arc)], 1))], False, rim,
                  max(2, int(pose.length_px(0.035))), cv2.LINE_AA, SHIFT)
    blurred = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), max(0.8, pose.length_px(0.01)))
    return blurred * np.float32(p.bone * 0.45 / 255.0)


def draw_anatomy(d: StemDesign, pose: Pose, shape: tuple[int, int], rng: np.random.Generator,
                 patient: Patient) -> np.ndarray:
    """Attenuation map of soft tissue and bone around the implant ``d`` at ``pose``.

    Rendered on an axis-aligned :class:`~simulations.synth.geometry.Canvas` and warped
    into the image once.

    Parameters
    ----------
    d
        The stem design as drawn (the canal and the acetabulum are fitted to it).
    pose
        The implant's pose; the anatomy follows its in-plane pose, not its twist.
    shape
        ``(rows, cols)`` of the image.
    rng
        Source of the trabecular and soft-tissue texture.
    patient
        Per-image anatomy variation.

    Returns
    -------
    numpy.ndarray
        float32 HxW attenuation, 0 (air) to about 1.
    """
    canvas = Canvas.covering(pose, shape)
    u, v = canvas.u, canvas.v
    att = _soft_tissue(patient, u, v)
    att += 0.04 * smooth_noise(canvas.shape, rng, 8)  # muscle / fat mottle
    head = head_centre(d) * np.array([np.cos(np.deg2rad(pose.twist)), 1.0])  # where the twisted head lies
    bone = _pelvis(head, d, patient, canvas.pose, canvas.shape)
    columns = slice(*np.searchsorted(u[0], [-0.5, 0.6]))  # the femur lies within these columns
    bone[:, columns] += _femur(d, patient, u[:, columns], v)
    att += bone * (1.0 + 0.12 * smooth_noise(canvas.shape, rng, 40))  # trabecular texture
    return np.clip(canvas.warp(att), 0.0, None)
