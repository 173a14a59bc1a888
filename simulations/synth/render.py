"""One synthetic radiograph: a sized implant in a random pose, anatomy, scanner, overlays."""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from simulations.synth.acquisition import SiteStyle, acquire
from simulations.synth.anatomy import draw_anatomy, random_patient
from simulations.synth.catalog_spec import CUPS, MM_PER_UNIT, StemDesign
from simulations.synth.geometry import Pose
from simulations.synth.implant import draw_implant, extent_points
from simulations.synth.overlays import burn_markers, collimate

MIN_MASK_PX = 60  # a rendered implant keeps at least this many metal pixels in frame


@dataclass(frozen=True)
class Rendered:
    """One rendered image and its ground truth."""

    image: np.ndarray  # float32 HxW in [0, 1], high = dense
    mask: np.ndarray  # uint8 HxW, 255 = implant metal in frame
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the mask, x1/y1 exclusive
    cropped: bool  # the implant was placed partly out of frame
    marked: bool  # text markers were burned into the pixels


def sized(d: StemDesign, rng: np.random.Generator, difficulty: float) -> StemDesign:
    """The design in a random catalogue size: overall scale, plus slight length/width change."""
    s = rng.uniform(0.88, 1.12)
    a = rng.uniform(-0.04, 0.04) * difficulty
    return replace(
        d, length=d.length * s * (1 + a), prox_width=d.prox_width * s * (1 - a),
        dist_width=d.dist_width * s * (1 - a), neck_length=d.neck_length * s, shoulder=d.shoulder * s, bow=d.bow * s,
        head=d.head * float(rng.choice([0.9, 1.0, 1.1])),
    )


def random_pose(d: StemDesign, style: SiteStyle, rng: np.random.Generator, *, difficulty: float,
                cropped: bool, cup_radius_pts: np.ndarray) -> Pose:
    """A pose that keeps the implant in frame (or, if ``cropped``, 12-35 % of it out of frame)."""
    h, w = style.rows, style.cols
    scale = MM_PER_UNIT * rng.uniform(1.08, 1.2) / style.mm_per_px
    pose = Pose(0.0, 0.0, scale, angle=float(rng.uniform(-7, 7) * difficulty), flip=bool(rng.random() < 0.5),
                twist=float(rng.uniform(-12, 12) * difficulty))
    pts = pose.to_px(cup_radius_pts)
    lo, hi = pts.min(0), pts.max(0)
    fit = min(0.92 * h / (hi[1] - lo[1]), 0.92 * w / (hi[0] - lo[0]), 1.0)
    if fit < 1.0:  # a long stem at high magnification: position the patient closer to the detector
        pose = replace(pose, scale=pose.scale * fit)
        lo, hi = lo * fit, hi * fit
    bw, bh = hi - lo
    margin = 0.03 * np.array([w, h])
    x = rng.uniform(margin[0], max(margin[0], w - margin[0] - bw))
    y = rng.uniform(margin[1], max(margin[1], 0.45 * (h - margin[1] - bh) + margin[1]))
    if cropped:
        out = rng.uniform(0.12, 0.35)
        side = int(rng.integers(0, 3))
        if side == 0:  # the tip runs off the bottom
            y = h - bh * (1 - out)
        elif side == 1:  # the head is cut at the top
            y = -bh * out
        else:  # lateral or medial edge cut
            x = -bw * out if rng.random() < 0.5 else w - bw * (1 - out)
    return replace(pose, cx=float(x - lo[0]), cy=float(y - lo[1]))


def render(design: StemDesign, style: SiteStyle, rng: np.random.Generator, *, difficulty: float,
           crop_fraction: float) -> Rendered:
    """Render one radiograph of ``design`` as acquired at a site of ``style``.

    Parameters
    ----------
    design
        The catalog design (resized per image by :func:`sized`).
    style
        The acquiring site's style.
    rng
        Per-image random generator: the image is a pure function of it.
    difficulty
        Nuisance strength (pose, twist, size, exposure, noise).
    crop_fraction
        Probability that the implant is placed partly out of frame.

    Returns
    -------
    Rendered
    """
    shape = (style.rows, style.cols)
    d = sized(design, rng, difficulty)
    cup = CUPS[int(rng.integers(len(CUPS)))] if rng.random() < style.cups else None
    cemented = rng.random() < style.cement
    cropped = bool(rng.random() < crop_fraction)
    patient = random_patient(rng, d)
    for _ in range(8):
        pose = random_pose(d, style, rng, difficulty=difficulty, cropped=cropped,
                           cup_radius_pts=extent_points(d, cup))
        drawn = draw_implant(d, pose, shape, rng, cup=cup, cup_tilt=float(rng.uniform(35, 55)))
        if np.count_nonzero(drawn.mask) >= MIN_MASK_PX:
            break
        cropped = False
    att = draw_anatomy(d, pose, shape, rng, patient)
    if cemented:
        r = max(1, int(round(pose.length_px(0.025))))
        mantle = cv2.dilate(drawn.body, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        att += 0.3 * cv2.GaussianBlur(mantle.astype(np.float32) / 255.0, (0, 0), 0.8)
    att += drawn.density
    img = acquire(att, style, rng, difficulty=difficulty)
    cover = collimate(img, rng, style)
    marked = burn_markers(img, rng, style, left=pose.flip)
    mask = np.where(cover < 0.5, drawn.mask, 0).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:  # a band hid the whole implant: drop the band rather than lose the label
        return render(design, replace(style, collimation=0.0), rng, difficulty=difficulty, crop_fraction=0.0)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Rendered(img, mask, box, cropped, marked)
