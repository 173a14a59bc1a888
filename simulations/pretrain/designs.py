"""Random femoral-stem designs for public pretraining, kept away from the consortium catalog.

A public encoder must never see the catalog's own designs, or its accuracy on them would
say nothing about an implant it has not met. :func:`random_designs` draws designs from
the whole space the catalog lives in (every parameter over a range wider than the
catalog's) and keeps one only if it is at least ``min_distance`` from every catalog
design in :func:`design_distance`.

The distance: each continuous parameter divided by the width of its sampling range, each
categorical one (collar, fenestrations, tip) counting 1 when it differs; the Euclidean
norm over all of them. In it the two closest catalog designs (``auralis-a1`` and
``auralis-a2``, a longer stem) are 0.38 apart, ``bexmed-b1`` and ``bexmed-b1v`` (neck angle
135 vs 127 degrees) 0.40, and a collar alone is 1.0. The default minimum,
:data:`MIN_DISTANCE` = 0.25, keeps every pretraining design further from each catalog
design than a quarter of a collar; in practice random designs land further (300 drawn with
seed 0: the closest is 0.44 from its nearest catalog design).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from simulations.synth.catalog_spec import DESIGNS, StemDesign

MIN_DISTANCE = 0.25
TIPS = ("round", "bullet", "slot")
HOLES = (0, 0, 0, 1, 2, 3)  # most stems have no fenestrations
# Sampling range of each continuous parameter (reference units, degrees): the catalog's own range
# widened on both sides, so that the encoder meets every feature the catalog varies and more.
RANGES: dict[str, tuple[float, float]] = {
    "length": (0.55, 1.65),
    "prox_width": (0.12, 0.34),
    "dist_width": (0.035, 0.14),
    "flare": (1.0, 3.3),
    "neck_angle": (123.0, 143.0),
    "neck_length": (0.19, 0.34),
    "head": (0.17, 0.26),
    "porous": (0.0, 0.65),
    "shoulder": (0.0, 0.14),
    "bow": (-0.09, 0.06),
}
CATEGORICAL = ("collar", "holes", "tip")
# What the encoder may learn to read off an image: every design parameter, scaled to [0, 1] by
# its range (categorical ones as 0/1 indicators). Pretraining regresses these beside the design id.
PARAMETER_NAMES: tuple[str, ...] = (*RANGES, "collar", "holes", *(f"tip_{t}" for t in TIPS))


def design_distance(a: StemDesign, b: StemDesign) -> float:
    """Normalised distance between two designs (see the module docstring)."""
    total = 0.0
    for name, (lo, hi) in RANGES.items():
        total += ((getattr(a, name) - getattr(b, name)) / (hi - lo)) ** 2
    for name in CATEGORICAL:
        total += float(getattr(a, name) != getattr(b, name))
    return math.sqrt(total)


def design_vector(d: StemDesign) -> np.ndarray:
    """The design's parameters as float32 in ``[0, 1]`` (order :data:`PARAMETER_NAMES`)."""
    cont = [(getattr(d, n) - lo) / (hi - lo) for n, (lo, hi) in RANGES.items()]
    cat = [float(d.collar), min(d.holes, 3) / 3.0, *(float(d.tip == t) for t in TIPS)]
    return np.clip(np.asarray(cont + cat, np.float32), 0.0, 1.0)


def _draw(rng: np.random.Generator, index: int) -> StemDesign:
    v = {n: float(rng.uniform(lo, hi)) for n, (lo, hi) in RANGES.items()}
    v["dist_width"] = min(v["dist_width"], 0.8 * v["prox_width"])  # a stem tapers towards its tip
    if rng.random() < 0.45:  # a smooth stem is as common as a coated one
        v["porous"] = 0.0
    if rng.random() < 0.5:
        v["bow"] = 0.0  # straight stems are common
    return StemDesign(
        id=f"public-{index:04d}", manufacturer="public", model=f"generated design {index}",
        collar=bool(rng.random() < 0.4), holes=int(rng.choice(HOLES)), tip=str(rng.choice(TIPS)), **v,
    )


def random_designs(n: int, *, seed: int, exclude: Sequence[StemDesign] = DESIGNS,
                   min_distance: float = MIN_DISTANCE) -> list[StemDesign]:
    """``n`` random designs, each at least ``min_distance`` from every design in ``exclude``.

    Deterministic for ``seed``. Raises ``ValueError`` if the space is too crowded to find them.
    """
    if n < 1:
        raise ValueError("at least one design is needed")
    rng = np.random.default_rng([seed, 0x5EED])
    out: list[StemDesign] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"could not draw {n} designs at distance >= {min_distance} from the catalog")
        d = _draw(rng, len(out))
        if all(design_distance(d, e) >= min_distance for e in exclude):
            out.append(d)
    return out


def nearest_excluded(d: StemDesign, exclude: Sequence[StemDesign] = DESIGNS) -> tuple[str, float]:
    """The closest design of ``exclude`` to ``d``, and its distance."""
    best = min(exclude, key=lambda e: design_distance(d, e))
    return best.id, design_distance(d, best)


assert {f.name for f in fields(StemDesign)} >= set(RANGES) | set(CATEGORICAL)  # the space covers the design
