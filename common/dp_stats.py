"""One-shot DP sufficient statistics of unit-norm features, and the heads solved from their sum.

A site releases, once, with the Gaussian mechanism (Mehta et al., TMLR 2023; the
federated sum as in Fed3R, ICML 2024):

- ``sums``: per-class sums of its features, (C, d);
- ``counts``: per-class counts, (C,);
- ``gram``: the Gram matrix of its features, (d, d), released as its upper triangle.

Every feature vector has L2 norm 1 (:class:`common.encoders.FrozenEncoder`), so adding or
removing one image changes ``sums`` by a vector of norm 1 (in one row), ``counts`` by 1 (in
one entry) and ``gram`` by ``x x^T`` (Frobenius norm 1, and at most 1 on its upper
triangle). A site releases only what its solver needs (:data:`RELEASED`): the cosine
solver needs the sums alone (L2 sensitivity 1), class means the sums and counts
(sqrt 2), LDA and ridge all three (sqrt 3). The noise standard deviation is
``noise_multiplier x sensitivity`` on every released entry, also for classes the site
does not hold (zeros left as zeros would tell the server the site's label set).
Accounting: one Gaussian mechanism with that noise multiplier (sample rate 1, one step),
the same row format as a DP-SGD round in the site's ledger.

The server sums the sites' releases (each already private) and solves a linear head:
cosine to the class-sum directions (default: immune to label skew and to class sizes,
and with the encoder's public projection as good as LDA), class means, shared-covariance
LDA, or ridge least squares to one-hot targets. Everything is plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOLVERS = ("cosine", "means", "lda", "ridge")
# What each solver needs released; the joint L2 sensitivity is the square root of how many (unit-norm features).
RELEASED: dict[str, tuple[str, ...]] = {"cosine": ("sums",), "means": ("sums", "counts"),
                                        "lda": ("sums", "counts", "gram"), "ridge": ("sums", "counts", "gram")}
COSINE_SCALE = 16.0  # logits of the cosine head: scaled cosine similarities (calibration refits a temperature)


def sensitivity(solver: str) -> float:
    """L2 sensitivity of what ``solver``'s statistics release, for features of norm <= 1."""
    return float(np.sqrt(len(RELEASED[_check(solver)])))


def _check(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}")
    return solver


@dataclass(frozen=True)
class FeatureStats:
    """Sufficient statistics of labelled unit-norm features (possibly noised, possibly summed over sites)."""

    sums: np.ndarray  # (C, d) float64
    counts: np.ndarray  # (C,) float64
    gram: np.ndarray  # (d, d) float64, symmetric

    @property
    def num_classes(self) -> int:
        return int(self.sums.shape[0])

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    def __add__(self, other: FeatureStats) -> FeatureStats:
        return FeatureStats(self.sums + other.sums, self.counts + other.counts, self.gram + other.gram)

    def to_arrays(self, solver: str) -> dict[str, np.ndarray]:
        """The arrays a site sends for ``solver``: only what it needs (the Gram matrix as its upper triangle)."""
        out = {"sums": self.sums.astype(np.float64)}
        if "counts" in RELEASED[_check(solver)]:
            out["counts"] = self.counts.astype(np.float64)
        if "gram" in RELEASED[solver]:
            out["gram-upper"] = self.gram[np.triu_indices(self.dim)].astype(np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, num_classes: int, dim: int, solver: str) -> FeatureStats:
        """Rebuild released statistics; raises ``ValueError`` on a missing array or a wrong shape."""
        needed = RELEASED[_check(solver)]
        expected = {"sums": (num_classes, dim), "counts": (num_classes,), "gram-upper": (dim * (dim + 1) // 2,)}
        names = {"sums": "sums", "counts": "counts", "gram": "gram-upper"}
        for part in needed:
            key = names[part]
            if key not in arrays or tuple(np.shape(arrays[key])) != expected[key]:
                raise ValueError(f"statistics array {key!r} is missing or has the wrong shape")
        if set(arrays) != {names[p] for p in needed}:
            raise ValueError("unexpected statistics arrays")
        sums = np.asarray(arrays["sums"], np.float64)
        counts = np.asarray(arrays["counts"], np.float64) if "counts" in arrays else np.zeros(num_classes)
        gram = np.zeros((dim, dim))
        if "gram-upper" in arrays:
            gram[np.triu_indices(dim)] = np.asarray(arrays["gram-upper"], np.float64)
            gram = gram + np.triu(gram, 1).T
        return cls(sums, counts, gram)


def feature_stats(x: np.ndarray, y: np.ndarray, num_classes: int) -> FeatureStats:
    """Exact statistics of features ``x`` (N, d), each of norm <= 1, with labels ``y``."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    if len(x) and norms.max() > 1.0 + 1e-5:
        raise ValueError("features must have L2 norm <= 1 (the sensitivity depends on it)")
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, np.asarray(y, np.int64), x)
    counts = np.bincount(np.asarray(y, np.int64), minlength=num_classes).astype(np.float64)
    return FeatureStats(sums, counts, x.T @ x)


def noised(stats: FeatureStats, noise_multiplier: float, rng: np.random.Generator, *, solver: str) -> FeatureStats:
    """The Gaussian mechanism on what ``solver`` releases: std ``noise_multiplier x sensitivity(solver)``.

    ``rng`` must be secret to the site (seeded from its OS entropy). Statistics the solver
    does not need are zeroed (never released); the Gram matrix gets independent noise on
    its upper triangle, mirrored below.
    """
    released = RELEASED[_check(solver)]
    std = float(noise_multiplier) * sensitivity(solver)
    c, d = stats.sums.shape
    sums = stats.sums + rng.normal(0.0, std, (c, d))
    counts = stats.counts + rng.normal(0.0, std, c) if "counts" in released else np.zeros(c)
    gram = np.zeros((d, d))
    if "gram" in released:
        upper = np.triu(rng.normal(0.0, std, (d, d)))
        gram = stats.gram + upper + np.triu(upper, 1).T
    return FeatureStats(sums, counts, gram)


def solve_head(stats: FeatureStats, *, solver: str = "cosine", ridge: float = 1.0,
               min_count: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A linear head ``(weight (C, d), bias (C,))`` from (summed, noised) statistics.

    Parameters
    ----------
    solver
        ``cosine``: the class-sum directions, scaled by :data:`COSINE_SCALE`; ``means``:
        nearest class mean (``-|x - mu|^2 / 2`` up to a constant); ``lda``: shared-covariance
        LDA with equal class priors, the covariance shrunk by ``ridge``; ``ridge``: least
        squares to one-hot targets, ``(G + ridge I)^-1 S^T``.
    ridge
        Regulariser added to the (noised) covariance or Gram matrix; it also keeps a noised
        matrix positive definite.
    min_count
        Noised counts are floored at this before dividing.
    """
    _check(solver)
    if solver == "cosine":
        norms = np.maximum(np.linalg.norm(stats.sums, axis=1, keepdims=True), 1e-12)
        return (COSINE_SCALE * stats.sums / norms).astype(np.float32), np.zeros(stats.num_classes, np.float32)
    counts = np.maximum(stats.counts, min_count)
    means = stats.sums / counts[:, None]
    d = stats.dim
    if solver == "means":
        return means.astype(np.float32), (-0.5 * (means**2).sum(1)).astype(np.float32)
    gram = (stats.gram + stats.gram.T) / 2
    if solver == "ridge":
        w = np.linalg.solve(_psd(gram, ridge), stats.sums.T).T
        return w.astype(np.float32), np.zeros(stats.num_classes, np.float32)
    total = float(np.maximum(stats.counts.sum(), 1.0))
    within = gram - (stats.sums.T / counts) @ stats.sums  # sum over classes of x x^T - n_c mu_c mu_c^T
    cov = within / max(total - stats.num_classes, 1.0)
    prec_means = np.linalg.solve(_psd(cov, ridge / max(total, 1.0) * d), means.T).T  # (C, d)
    bias = -0.5 * np.einsum("cd,cd->c", prec_means, means)
    return prec_means.astype(np.float32), bias.astype(np.float32)


def _psd(m: np.ndarray, ridge: float) -> np.ndarray:
    """``m`` made positive definite: eigenvalues floored at a small positive value, plus ``ridge``."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    floor = max(float(vals.max()) * 1e-6, 1e-9)
    return (vecs * np.maximum(vals, floor)) @ vecs.T + ridge * np.eye(m.shape[0])
