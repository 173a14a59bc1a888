"""Candidate sets with guaranteed coverage: split conformal prediction on calibration data.

After Angelopoulos & Bates ("A gentle introduction to conformal prediction", 2021): the
nonconformity of a validation image is ``1 - p(true class)`` (calibrated probabilities);
for a coverage level ``a`` the threshold ``q_a`` is their ``ceil((n + 1) a) / n`` empirical
quantile; the candidate set of a new image holds every class with ``1 - p(c) <= q_a``.
If validation and new images are exchangeable, the set holds the true implant with
probability at least ``a`` (marginally, over images). The top class is always in the set.
"""

from __future__ import annotations

import math

import numpy as np

LEVELS = (0.80, 0.90, 0.95, 0.99)  # the coverage levels a release offers (predict --set)


def thresholds(probs: np.ndarray, labels: np.ndarray, levels: tuple[float, ...] = LEVELS) -> dict[str, float]:
    """``{level: q}`` from calibrated validation probabilities (N, C) and labels; a level needing more images is left out."""
    scores = 1.0 - np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels, np.int64)]
    n = len(scores)
    out = {}
    for a in levels:
        rank = math.ceil((n + 1) * a)
        if rank <= n:  # with fewer images the level cannot be guaranteed
            out[f"{a:g}"] = float(np.sort(scores)[rank - 1])
    return out


def prediction_set(probs: np.ndarray, q: float) -> np.ndarray:
    """Class indices of the set for one image's calibrated probabilities (C,), most probable first."""
    probs = np.asarray(probs, np.float64)
    members = np.flatnonzero(1.0 - probs <= q + 1e-12)
    top = int(np.argmax(probs))
    if top not in members:
        members = np.append(members, top)
    return members[np.argsort(-probs[members], kind="stable")]


def coverage(probs: np.ndarray, labels: np.ndarray, q: float) -> tuple[float, float]:
    """(share of images whose set holds the true class, mean set size) on labelled data."""
    hits, sizes = 0, 0
    for p, y in zip(np.asarray(probs), np.asarray(labels), strict=True):
        s = prediction_set(p, q)
        hits += int(y in s)
        sizes += len(s)
    n = max(len(labels), 1)
    return hits / n, sizes / n
