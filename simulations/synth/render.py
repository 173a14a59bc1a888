"""One synthetic radiograph: anatomy + implant in a random pose, through a site's scanner."""

from __future__ import annotations

import numpy as np

from simulations.synth.acquisition import SiteStyle, acquire
from simulations.synth.anatomy import draw_anatomy
from simulations.synth.catalog_spec import StemDesign
from simulations.synth.geometry import Pose
from simulations.synth.implant import draw_stem


def random_pose(style: SiteStyle, rng: np.random.Generator, *, strength: float, cropped: bool) -> Pose:
    h, w = style.height, style.width
    scale = h * 0.40 * (1 + rng.uniform(-0.1, 0.1) * strength)
    cy = h * (rng.uniform(0.55, 0.62) if cropped else rng.uniform(0.24, 0.32))
    return Pose(
        cx=w * rng.uniform(0.42, 0.58),
        cy=cy,
        scale=scale,
        angle=float(rng.uniform(-8, 8) * strength),
        flip=bool(rng.random() < 0.5),
    )


def render(design: StemDesign, style: SiteStyle, rng: np.random.Generator, *, strength: float, crop_fraction: float
           ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Return (image in [0,1] high = dense, mask uint8, box (x0, y0, x1, y1) exclusive)."""
    shape = (style.height, style.width)
    for _ in range(10):
        pose = random_pose(style, rng, strength=strength, cropped=rng.random() < crop_fraction)
        density, mask = draw_stem(design, pose, shape, rng)
        ys, xs = np.nonzero(mask)
        if len(xs) > 50:
            break
    attenuation = draw_anatomy(design, pose, shape, rng) + density
    img = acquire(attenuation, style, rng, strength)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return img, mask, box
