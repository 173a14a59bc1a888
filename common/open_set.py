"""How far an image is from every implant the model knows, in the public encoder's feature space.

A release on a public encoder keeps, in its head, one direction per catalog class (the
cosine head's class-sum directions, or a linear head's weight rows). An implant design
the catalog does not hold still gets *some* class as its most probable one; what tells it
apart is that its features lie away from every class.

The score (:data:`RAY_DISTANCE`) is measured in the encoder's projected space, before the
unit norm (:meth:`common.encoders.FrozenEncoder.project`). The public projection whitens
the variation *within* a design (pose, scanner, anatomy) on the public pretraining images,
so there a Euclidean distance is a Mahalanobis distance under the public (shrunk)
within-design covariance: the score needs no site statistic and costs no privacy. A
catalog design's images scatter about a point on the ray through its class direction;
where on the ray the head does not say (the cosine head keeps directions only), so the
score is the distance from an image's projected features ``r`` to the nearest class
*ray*, ``sqrt(|r|^2 - max(r . d_c, 0)^2)`` minimised over the class directions ``d_c``.
Larger is further from the catalog. The cosine divides the within-design scatter by the
norm, so the images of a class that lies near the public centre spread over wide angles
and pull its threshold down; the distance to the ray keeps the scatter's own scale.

Chosen on generated data other than the benchmark's: five releases of hip-consortium seeds
1 and 2 (each with its own DP noise), shown unseen designs of seeds 777-781, six pairs.
Against the largest cosine to a class direction (:data:`COSINE`, the score of earlier
releases), that cosine after centring on the class directions' mean, energy scores, and
per-class standardised scores, it had the highest AUC of unseen vs known test images,
0.983 (the cosine 0.966, the best other 0.968); with the threshold fitted as below, 0.939
of unseen designs flagged against the cosine's 0.864, and 0.963 of correctly identified
known images passed against 0.959 (means over the six pairs).

The release's threshold is fitted on validation images only (the high quantile of the score
among correctly identified ones, :func:`common.calibration.fit_calibration`), and is used
beside the calibrated-probability threshold: an image is ``unknown`` when either says so.
A release whose ``calibration.json`` names no metric was fitted on :data:`COSINE` and is
read that way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COSINE = "cosine"  # largest cosine of the unit-norm features to a class direction; unknown *below* the threshold
RAY_DISTANCE = "ray-distance"  # distance of the projected features to the nearest class ray; unknown *above*
METRICS = (COSINE, RAY_DISTANCE)


def class_directions(weight: np.ndarray) -> np.ndarray:
    """Unit-norm rows of a head's weight matrix (C, d)."""
    w = np.asarray(weight, np.float64)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def feature_score(features: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(N,) largest cosine similarity of each (unit-norm) feature vector to a class direction (:data:`COSINE`)."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return (f @ directions.T).max(axis=1)


def ray_distance(projected: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(N,) distance of each projected feature vector (not unit norm) to the nearest class ray (:data:`RAY_DISTANCE`).

    The ray of class ``c`` is ``{t d_c : t >= 0}``; a vector pointing away from ``d_c`` is at
    its full length from it.
    """
    r = np.asarray(projected, np.float64)
    along = np.maximum(r @ np.asarray(directions, np.float64).T, 0.0)  # (N, C)
    sq = (r ** 2).sum(axis=1, keepdims=True) - along ** 2
    return np.sqrt(np.maximum(sq, 0.0)).min(axis=1)


def score(projected: np.ndarray, directions: np.ndarray, metric: str = RAY_DISTANCE) -> np.ndarray:
    """(N,) the unknown score ``metric`` of projected features (the cosine needs only their direction)."""
    if metric == RAY_DISTANCE:
        return ray_distance(projected, directions)
    if metric == COSINE:
        return feature_score(projected, directions)
    raise ValueError(f"unknown feature metric {metric!r}; one of {', '.join(METRICS)}")


def beyond(scores: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """(N,) True where a score says ``unknown``: below the threshold for a cosine, above it for a distance."""
    s = np.asarray(scores, np.float64)
    return s > threshold if metric == RAY_DISTANCE else s < threshold


def projected_features(encoder: Any, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """(N, d) projected features (:meth:`common.encoders.FrozenEncoder.project`) of images (N, 1, S, S)."""
    import torch

    device = next(encoder.parameters()).device
    parts = [np.zeros((0, encoder.dim), np.float64)]
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32)).to(device)
            parts.append(encoder.project(xb).double().cpu().numpy())
    return np.concatenate(parts)


def head_directions(model: Any) -> np.ndarray | None:
    """The class directions of an image model made of a public encoder and a linear head (None otherwise)."""
    import torch

    head = getattr(model, "head", None)
    if getattr(model, "encoder", None) is None or not isinstance(head, torch.nn.Linear):
        return None
    return class_directions(head.weight.detach().cpu().numpy())
