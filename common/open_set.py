"""How far an image is from every implant the model knows, in the public encoder's feature space.

A release on a public encoder keeps, in its head, one direction per catalog class (the
cosine head's class-sum directions, or a linear head's weight rows). An implant design
the catalog does not hold still gets *some* class as its most probable one; what tells it
apart is that its features point away from every class direction. The score is the
largest cosine similarity between an image's unit-norm features and the class
directions; the release's threshold is fitted on validation images only (the low
quantile of the score among correctly identified ones), and is used beside the
calibrated-probability threshold: an image is ``unknown`` when either says so.
"""

from __future__ import annotations

import numpy as np


def class_directions(weight: np.ndarray) -> np.ndarray:
    """Unit-norm rows of a head's weight matrix (C, d)."""
    w = np.asarray(weight, np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def feature_score(features: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(N,) largest cosine similarity of each (unit-norm) feature vector to a class direction."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return (f @ directions.T).max(axis=1)
