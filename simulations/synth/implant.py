"""Draw a femoral stem (body, neck, head) and an optional acetabular cup as metal.

Everything is drawn from a :class:`~simulations.synth.catalog_spec.StemDesign` in local
coordinates (see :mod:`simulations.synth.geometry`) and mapped to pixels by a
:class:`~simulations.synth.geometry.Pose`. The result is a metal-density map (a projected
thickness profile, brightest in the middle of the stem) and a binary mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulations.synth.catalog_spec import CupDesign, StemDesign
from simulations.synth.geometry import SHIFT, Pose

METAL = 1.8  # attenuation of solid stem metal; bone plus soft tissue stays below ~1.2
POROUS = 0.72  # density of the porous-coated band relative to solid metal
NECK_BASE_WIDTH = 0.085  # neck width at the body, reference units
TRUNNION_WIDTH = 0.06  # neck width under the head
COLLAR_THICKNESS = 0.035
_AA = cv2.LINE_AA


@dataclass(frozen=True)
class ImplantDrawing:
    """The drawn implant."""

    density: np.ndarray  # float32 HxW metal attenuation (0 outside metal)
    mask: np.ndarray  # uint8 HxW, 255 = metal (stem, head and cup)
    body: np.ndarray  # uint8 HxW, 255 = stem body only (where a cement mantle would sit)


def axis_offset(d: StemDesign, y: np.ndarray | float) -> np.ndarray | float:
    """Lateral offset of the stem's axis at depth ``y`` (the anatomic bow)."""
    return d.bow * (np.clip(np.asarray(y) / d.length, 0.0, 1.0)) ** 2


def stem_outline(d: StemDesign, n: int = 28) -> np.ndarray:
    """Closed polygon of the stem body in local units: shoulder near ``y=0``, tip at ``y=length``."""
    ys = np.linspace(0.0, d.length, n)
    t = ys / d.length
    half_gap = (d.prox_width - d.dist_width) / 2
    lateral = np.stack([axis_offset(d, ys) + d.dist_width / 2 + half_gap * (1 - t), ys], 1)
    medial = np.stack([axis_offset(d, ys) - (d.dist_width / 2 + half_gap * (1 - t) ** d.flare), ys], 1)
    shoulder = np.array([[d.prox_width * 0.38, -d.shoulder], [d.prox_width * 0.5, -d.shoulder * 0.4]])
    arc = np.linspace(0.0, np.pi, 9)[1:-1]
    reach = d.dist_width * (1.6 if d.tip == "bullet" else 0.5)  # how far the tip extends below the taper
    tip = np.stack([d.bow + d.dist_width / 2 * np.cos(arc), d.length + reach * np.sin(arc) ** 1.5], 1)
    return np.concatenate([shoulder, lateral[1:], tip, medial[::-1]])


def neck_axis(d: StemDesign) -> tuple[np.ndarray, np.ndarray]:
    """Neck base point and unit direction (up and medial at the neck-shaft angle)."""
    a = np.deg2rad(d.neck_angle)
    return np.array([-d.prox_width * 0.18, -d.shoulder * 0.3]), np.array([-np.sin(a), np.cos(a)])


def head_centre(d: StemDesign) -> np.ndarray:
    """Local coordinates of the centre of the femoral head."""
    base, direction = neck_axis(d)
    return base + direction * d.neck_length


def cup_radius(d: StemDesign, cup: CupDesign | None) -> float:
    """Outer radius of the cup around the head (the head's radius without a cup)."""
    return d.head / 2 + (cup.clearance + cup.shell if cup else 0.0)


def extent_points(d: StemDesign, cup: CupDesign | None) -> np.ndarray:
    """Local points whose pixel bounding box contains the whole implant."""
    ring = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    r = cup_radius(d, cup)
    around_head = head_centre(d) + r * np.stack([np.cos(ring), np.sin(ring)], 1)
    return np.concatenate([stem_outline(d, 12), around_head])


def _neck(d: StemDesign) -> np.ndarray:
    base, u = neck_axis(d)
    n = np.array([-u[1], u[0]])
    start, end = base - u * 0.05, base + u * d.neck_length
    return np.array([start + n * NECK_BASE_WIDTH / 2, end + n * TRUNNION_WIDTH / 2,
                     end - n * TRUNNION_WIDTH / 2, start - n * NECK_BASE_WIDTH / 2])


def _collar(d: StemDesign) -> np.ndarray:
    """A plate across the neck base that protrudes beyond the medial calcar."""
    base, u = neck_axis(d)
    down_medial = np.array([u[1], -u[0]])  # perpendicular to the neck, pointing inferomedial
    reach = (d.prox_width * 0.32 + 0.06) / max(abs(down_medial[0]), 0.3)
    p0, p1 = base - down_medial * 0.03, base + down_medial * reach
    half = u * COLLAR_THICKNESS / 2
    return np.array([p0 - half, p1 - half, p1 + half, p0 + half])


def _ellipse(centre: np.ndarray, rx: float, ry: float, n: int = 20) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.stack([rx * np.cos(a), ry * np.sin(a)], 1)


def _porous_edge(d: StemDesign, pose: Pose, canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Beads along the coated band's edges: the rough outline of a porous coating."""
    outline = stem_outline(d, 40)
    band = outline[(outline[:, 1] >= 0) & (outline[:, 1] <= d.length * d.porous)]
    radius = max(1, int(round(pose.length_px(0.012) * (1 << SHIFT))))
    for p in band:
        jitter = rng.normal(0.0, 0.005, 2)
        cv2.circle(canvas, pose.fixed((p + jitter)[None]), radius, 255, -1, _AA, SHIFT)


def _cup(d: StemDesign, cup: CupDesign, pose: Pose, shape: tuple[int, int], tilt: float) -> np.ndarray:
    """A hemispherical shell around the head; ``tilt`` = inclination of its opening, degrees."""
    canvas = np.zeros(shape, np.uint8)
    inner, outer = d.head / 2 + cup.clearance, cup_radius(d, cup)
    axis = np.deg2rad(90.0 - tilt)  # opening faces inferolateral
    arc = axis + np.linspace(np.pi / 2, 3 * np.pi / 2, 25)
    ring = np.concatenate([outer * np.stack([np.cos(arc), np.sin(arc)], 1),
                           inner * np.stack([np.cos(arc[::-1]), np.sin(arc[::-1])], 1)])
    flat = pose.untwisted()
    offset = pose.to_px(head_centre(d)[None])[0] - flat.to_px(np.zeros((1, 2)))[0]
    pts = flat.to_px(ring) + offset
    cv2.fillPoly(canvas, [np.round(pts * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)], 255, _AA, SHIFT)
    for k in range(cup.screws):
        a = axis + np.pi + (k - (cup.screws - 1) / 2) * 0.6
        mid = (inner + outer) / 2 * np.array([[np.cos(a), np.sin(a)]])
        centre = flat.to_px(mid)[0] + offset
        r = int(round(flat.length_px(cup.shell * 0.45) * (1 << SHIFT)))
        cv2.circle(canvas, tuple(np.round(centre * (1 << SHIFT)).astype(int)), r, 0, -1, _AA, SHIFT)
    return canvas


def draw_implant(d: StemDesign, pose: Pose, shape: tuple[int, int], rng: np.random.Generator, *,
                 cup: CupDesign | None = None, cup_tilt: float = 45.0) -> ImplantDrawing:
    """Draw stem, neck, head and optional cup of design ``d`` into an image of ``shape``.

    Parameters
    ----------
    d
        The stem design (possibly resized for this image).
    pose
        Where the implant lies.
    shape
        ``(rows, cols)`` of the image.
    rng
        Source of the porous-coating texture.
    cup
        An acetabular shell to draw around the head, or ``None``.
    cup_tilt
        Inclination of the cup opening, degrees.

    Returns
    -------
    ImplantDrawing
        Metal density, metal mask and stem-body mask.
    """
    body = np.zeros(shape, np.uint8)
    cv2.fillPoly(body, [pose.poly(stem_outline(d))], 255, _AA, SHIFT)
    metal = body.copy()
    cv2.fillPoly(metal, [pose.poly(_neck(d))], 255, _AA, SHIFT)
    head_px = pose.to_px(head_centre(d)[None])[0]
    cv2.circle(metal, tuple(np.round(head_px * (1 << SHIFT)).astype(int)),
               int(round(pose.length_px(d.head / 2) * (1 << SHIFT))), 255, -1, _AA, SHIFT)
    if d.collar:
        cv2.fillPoly(metal, [pose.poly(_collar(d))], 255, _AA, SHIFT)
    if d.porous > 0:
        _porous_edge(d, pose, metal, rng)
    if d.tip == "slot":  # a distal coronal slot: a radiolucent line along the axis
        slot = np.array([[-0.011, d.length * 0.72], [0.011, d.length * 0.72], [0.011, d.length + 0.02],
                         [-0.011, d.length + 0.02]]) + np.array([d.bow * 0.75, 0.0])
        cv2.fillPoly(metal, [pose.poly(slot)], 0, _AA, SHIFT)
    for k in range(d.holes):
        y = 0.13 + 0.1 * k
        half = (d.prox_width - d.dist_width) / 2 * (1 - y / d.length) + d.dist_width / 2
        r = min(half * 0.32, 0.022)
        centre = np.array([float(axis_offset(d, y)), y])
        cv2.fillPoly(metal, [pose.poly(_ellipse(centre, r, r * 1.9))], 0, _AA, SHIFT)
    # Projected thickness: thin at the edges, full in the middle of the stem and head.
    dist = cv2.distanceTransform((metal > 127).astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(dist / max(pose.length_px(0.03), 1.0), 0.0, 1.0)
    density = (metal.astype(np.float32) / 255.0) * METAL * (0.8 + 0.2 * np.sqrt(depth))
    if d.porous > 0:
        _texture(d, pose, density, rng)
    if cup is not None:
        shell = _cup(d, cup, pose, shape, cup_tilt)
        density = np.maximum(density, shell.astype(np.float32) / 255.0 * METAL * cup.density)
    mask = np.where(density > METAL * 0.3, 255, 0).astype(np.uint8)
    return ImplantDrawing(density.astype(np.float32), mask, body)


def _texture(d: StemDesign, pose: Pose, density: np.ndarray, rng: np.random.Generator) -> None:
    """Granular texture inside the porous band (in place)."""
    band = np.zeros(density.shape, np.uint8)
    outline = stem_outline(d, 40)
    keep = outline[:, 1] <= d.length * d.porous
    cv2.fillPoly(band, [pose.poly(outline[keep])], 255, cv2.LINE_8, SHIFT)
    ys, xs = np.nonzero(band)
    if len(xs) == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    grain = rng.uniform(POROUS - 0.12, POROUS + 0.12, size=(y1 - y0, x1 - x0)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 0.7)
    window = density[y0:y1, x0:x1]
    inside = band[y0:y1, x0:x1] > 0
    window[inside] *= grain[inside]
