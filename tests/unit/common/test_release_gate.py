"""The release gate, conformal candidate sets and the feature-space unknown score."""

from __future__ import annotations

import numpy as np
import pytest

from common.conformal import coverage, prediction_set, thresholds
from common.open_set import (
    COSINE,
    RAY_DISTANCE,
    beyond,
    class_directions,
    feature_score,
    ray_distance,
    score,
)
from common.release_gate import ALPHA, judge, verdict_for


@pytest.mark.parametrize(("accuracy", "n", "fit", "fragment"), [
    (0.95, 476, True, ""),
    (0.09, 476, False, "not better than chance"),  # chance 1/14 = 0.071: a shuffled-label model
    (0.70, 476, False, "below the consortium minimum"),
    (0.50, 4, False, "not better than chance"),  # too few images to tell
])
def test_the_gate_needs_better_than_chance_and_the_minimum(accuracy, n, fit, fragment):
    v = judge(accuracy, n, chance=1 / 14, min_accuracy=0.8, evaluated_on="test")
    assert v.fit_for_use is fit and fragment in v.reason
    assert (v.p_value < ALPHA) == (fragment != "not better than chance")


def test_chance_is_the_largest_class_share_when_known_and_no_evaluation_is_unfit():
    final = {"accuracy": 0.6, "examples": 100, "per_class": {"a": {"support": 60}, "b": {"support": 40}}}
    v = verdict_for(final, num_classes=2, min_accuracy=0.5)
    assert v.chance == pytest.approx(0.6) and not v.fit_for_use and "chance" in v.reason
    assert not verdict_for({}, num_classes=3).fit_for_use


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_conformal_sets_reach_their_coverage_on_exchangeable_data(level):
    # Prepare: calibration and test images from one distribution (noisy probabilities over 6 classes)
    rng = np.random.default_rng(0)

    def draw(n):  # noqa: ANN001, ANN202
        y = rng.integers(0, 6, n)
        logits = rng.normal(0, 1, (n, 6))
        logits[np.arange(n), y] += 1.5
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True), y

    # Execute: many calibration draws (the guarantee is over them), each used on fresh test images
    covered, sizes = [], []
    for _ in range(60):
        cal_p, cal_y = draw(200)
        test_p, test_y = draw(500)
        q = thresholds(cal_p, cal_y, levels=(level,))[f"{level:g}"]
        c, size = coverage(test_p, test_y, q)
        covered.append(c)
        sizes.append(size)
    # Assert: at least the level on average, within sampling error (a calibration draw moves a set's coverage by
    # about sqrt(a (1 - a) / 200) ~ 0.02; over 60 draws the mean's error is ~0.003, plus the test images')
    assert np.mean(covered) >= level - 0.012
    assert np.mean(sizes) < 6


def test_a_set_holds_the_top_class_and_lists_it_first():
    assert list(prediction_set(np.array([0.1, 0.7, 0.2]), q=0.0)) == [1]
    assert list(prediction_set(np.array([0.1, 0.5, 0.4]), q=0.65)) == [1, 2]


def test_a_level_needing_more_images_than_there_are_is_not_offered():
    p, y = np.full((10, 2), 0.5), np.zeros(10, np.int64)
    assert "0.99" not in thresholds(p, y) and "0.8" in thresholds(p, y)


def test_feature_score_is_the_cosine_to_the_nearest_class_direction():
    directions = class_directions(np.array([[2.0, 0.0], [0.0, 3.0]]))
    scores = feature_score(np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), directions)
    np.testing.assert_allclose(scores, [1.0, np.sqrt(0.5), 0.0], atol=1e-12)


def test_ray_distance_is_the_distance_to_the_nearest_class_ray():
    directions = class_directions(np.array([[2.0, 0.0], [0.0, 3.0]]))
    r = np.array([[5.0, 0.0], [3.0, 1.0], [1.0, 4.0], [-2.0, 0.0], [-3.0, -4.0]])
    # on a ray: 0; beside the first ray: its offset; nearer the second: the offset from that one;
    # pointing away from both (the rays start at the origin): the full length, 2 and 5
    np.testing.assert_allclose(ray_distance(r, directions), [0.0, 1.0, 1.0, 2.0, 5.0], atol=1e-12)
    # the distance keeps the scale the cosine drops: twice as far from the catalog, the same angle
    np.testing.assert_allclose(ray_distance(2 * r[1:2], directions), [2.0])
    np.testing.assert_allclose(feature_score(2 * r[1:2], directions), feature_score(r[1:2], directions))


def test_each_metric_says_unknown_on_its_own_side_of_the_threshold():
    directions = class_directions(np.eye(2))
    r = np.array([[4.0, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(score(r, directions, RAY_DISTANCE), ray_distance(r, directions))
    np.testing.assert_allclose(score(r, directions, COSINE), feature_score(r, directions))
    assert list(beyond(np.array([0.3, 0.9]), 0.5, RAY_DISTANCE)) == [False, True]  # a distance: above is unknown
    assert list(beyond(np.array([0.3, 0.9]), 0.5, COSINE)) == [True, False]  # a similarity: below is unknown
    with pytest.raises(ValueError, match="feature metric"):
        score(r, directions, "euclid")
