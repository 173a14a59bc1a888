"""The dp-stats release: exact statistics, stated sensitivity, noise, and the heads solved from them."""

from __future__ import annotations

import numpy as np
import pytest

from common.dp_stats import (
    RELEASED,
    SOLVERS,
    FeatureStats,
    feature_stats,
    noised,
    sensitivity,
    solve_head,
)


def _unit(rng, n, d):  # noqa: ANN001, ANN202
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clusters(seed=0, n=300, d=8, c=4):  # noqa: ANN001, ANN202
    """Unit-norm features around c well-separated directions."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng, c, d)
    y = rng.integers(0, c, n)
    x = centres[y] + 0.3 * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _released(stats: FeatureStats, solver: str) -> np.ndarray:
    return np.concatenate([v.ravel() for v in stats.to_arrays(solver).values()])


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_noise_gives_exactly_the_non_private_solution(solver):
    # Prepare: three sites' exact statistics and the pooled data's
    x, y = _clusters()
    parts = np.array_split(np.arange(len(y)), 3)
    exact = [feature_stats(x[i], y[i], 4) for i in parts]
    # Execute: each site "releases" with noise multiplier 0; the server sums and solves
    rng = np.random.default_rng(1)
    released = [FeatureStats.from_arrays(noised(s, 0.0, rng, solver=solver).to_arrays(solver), num_classes=4, dim=8,
                                         solver=solver) for s in exact]
    total = released[0] + released[1] + released[2]
    pooled = feature_stats(x, y, 4)
    # Assert: identical to solving the pooled statistics directly
    for a, b in zip(solve_head(total, solver=solver), solve_head(pooled, solver=solver), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(5))
def test_one_image_more_or_less_moves_the_release_by_at_most_its_sensitivity(solver, seed):
    # Prepare: a site's features, and the same site with one image removed
    rng = np.random.default_rng(seed)
    x, y = _unit(rng, 40, 6), rng.integers(0, 3, 40)
    full, fewer = feature_stats(x, y, 3), feature_stats(x[1:], y[1:], 3)
    # Execute: the L2 distance of everything the solver releases
    moved = np.linalg.norm(_released(full, solver) - _released(fewer, solver))
    # Assert: within the stated sensitivity (sqrt of the number of statistics released), and tight
    assert moved <= sensitivity(solver) + 1e-9
    assert moved >= sensitivity(solver) * 0.5


def test_only_what_the_solver_needs_is_released():
    x, y = _clusters()
    stats = feature_stats(x, y, 4)
    assert set(stats.to_arrays("cosine")) == {"sums"}
    assert set(stats.to_arrays("means")) == {"sums", "counts"}
    assert set(stats.to_arrays("lda")) == {"sums", "counts", "gram-upper"}
    assert [sensitivity(s) for s in SOLVERS] == [pytest.approx(np.sqrt(len(RELEASED[s]))) for s in SOLVERS]


def test_noise_has_the_stated_standard_deviation_on_every_entry_also_for_absent_classes():
    # Prepare: a site holding class 0 only; zero features, so the release is the noise itself
    x, y = np.zeros((5, 10)), np.zeros(5, np.int64)
    rng = np.random.default_rng(0)
    draws = np.stack([noised(feature_stats(x, y, 3), 2.0, rng, solver="lda").sums for _ in range(400)])
    # Assert: std noise_multiplier x sqrt(3) everywhere, class 1 and 2 included (their zeros are not released)
    assert np.std(draws[:, 1:]) == pytest.approx(2.0 * np.sqrt(3), rel=0.05)
    assert np.all(np.abs(draws[:, 1:]).max(axis=0) > 0)


def test_features_above_unit_norm_are_refused():
    with pytest.raises(ValueError, match="norm"):
        feature_stats(np.full((2, 4), 1.0), np.zeros(2, np.int64), 2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_separates_separable_classes(solver):
    x, y = _clusters(n=400)
    w, b = solve_head(feature_stats(x, y, 4), solver=solver)
    assert ((x @ w.T + b).argmax(1) == y).mean() > 0.95


def test_statistics_of_the_wrong_shape_are_refused():
    x, y = _clusters()
    arrays = feature_stats(x, y, 4).to_arrays("lda")
    arrays["sums"] = arrays["sums"][:3]
    with pytest.raises(ValueError, match="sums"):
        FeatureStats.from_arrays(arrays, num_classes=4, dim=8, solver="lda")
