"""Temperature scaling, the unknown threshold and calibration.json."""

import json

import numpy as np
import pytest
import torch

from common.calibration import (
    FEATURE_QUANTILE,
    Calibration,
    fit_calibration,
    fit_from_splits,
    fit_temperature,
    load_calibration,
    save_calibration,
    unknown_threshold,
)
from common.errors import InvalidInputError
from common.open_set import COSINE, RAY_DISTANCE, class_directions, ray_distance


def _overconfident(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports z * true_t (too confident by true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 5))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (rng.random(n)[:, None] > p.cumsum(1)).sum(1).clip(max=4)  # one draw per row
    return z * true_t, labels


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    return float(torch.nn.functional.cross_entropy(torch.tensor(logits / t), torch.tensor(labels)))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fitted_temperature_recovers_the_overconfidence(true_t):
    # Prepare
    logits, labels = _overconfident(3000, true_t)
    # Execute
    t = fit_temperature(logits, labels)
    # Assert
    assert t == pytest.approx(true_t, rel=0.12)
    assert _nll(logits, labels, t) <= _nll(logits, labels, 1.0) + 1e-9


def test_temperature_changes_confidence_not_predictions():
    logits, labels = _overconfident(500, 3.0)
    cal = fit_calibration(logits, labels)
    probs = cal.probabilities(logits)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    assert probs.max(1).mean() < Calibration().probabilities(logits).max(1).mean()


def test_unknown_threshold_is_the_quantile_of_correct_top_probabilities():
    # correct rows have top probability .9 .8 .7 .6 .5; the wrong row (.99) is ignored
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.99, 0.01]])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert unknown_threshold(probs, labels, quantile=0.0) == pytest.approx(0.5)
    assert unknown_threshold(probs, labels, quantile=0.5) == pytest.approx(0.7)


def test_about_the_quantile_of_correct_validation_images_is_flagged():
    logits, labels = _overconfident(2000, 2.0, seed=1)
    cal = fit_calibration(logits, labels, quantile=0.05)
    probs = cal.probabilities(logits)
    correct = probs.argmax(1) == labels
    assert cal.is_unknown(probs[correct]).mean() == pytest.approx(0.05, abs=0.01)
    assert cal.fitted_on == 2000 and "temperature" in cal.method


def test_fit_from_splits_pools_every_site_and_skips_empty_ones():
    # Prepare: a fixed linear "model" over 4 pixels
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    splits = [(rng.random((n, 1, 2, 2), dtype=np.float32), rng.integers(0, 3, n)) for n in (17, 0, 5)]
    # Execute
    cal = fit_from_splits(model, splits)
    # Assert
    assert cal.fitted_on == 22
    assert 0.0 <= cal.unknown_threshold <= 1.0


def test_too_few_validation_images_give_the_identity_in_a_simulation_and_an_error_at_a_site(caplog):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    few = [(np.zeros((3, 1, 2, 2), np.float32), np.array([0, 1, 2]))]
    with caplog.at_level("WARNING"):
        cal = fit_from_splits(model, few)
    assert (cal.temperature, cal.unknown_threshold, cal.fitted_on) == (1.0, 0.0, 0) and "not calibrated" in caplog.text
    with pytest.raises(InvalidInputError, match="only 3 validation"):
        fit_calibration(np.zeros((3, 3)), np.array([0, 1, 2]))


def test_calibration_json_round_trips_and_missing_means_identity(tmp_path):
    cal = Calibration(temperature=1.7, unknown_threshold=0.42, fitted_on=30, method="temperature-lbfgs+q0.05-correct",
                      feature_threshold=4.31, feature_metric=RAY_DISTANCE, conformal={"0.9": 0.12},
                      conformal_coverage={"0.9": 0.93})
    save_calibration(tmp_path, cal)
    assert set(json.loads((tmp_path / "calibration.json").read_text())) == {
        "temperature", "unknown_threshold", "fitted_on", "method", "feature_threshold", "feature_metric", "conformal",
        "conformal_coverage"}
    assert load_calibration(tmp_path) == cal
    assert load_calibration(tmp_path / "nowhere") == Calibration(temperature=1.0, unknown_threshold=0.0)


@pytest.mark.parametrize("bad", [{"temperature": 0, "unknown_threshold": 0.5}, {"temperature": 1.0, "unknown_threshold": 2},
                                 {"unknown_threshold": 0.5}, {"temperature": "x", "unknown_threshold": 0.5}])
def test_bad_calibration_values_are_refused(bad):
    with pytest.raises(InvalidInputError):
        Calibration.from_dict(bad)


def test_a_calibration_json_from_before_the_ray_distance_keeps_its_cosine_threshold(tmp_path):
    # Prepare: calibration.json as releases with the cosine score wrote it (no feature_metric)
    old = {"temperature": 0.56, "unknown_threshold": 0.0, "fitted_on": 294,
           "method": "temperature-lbfgs+features-q0.025-correct", "feature_threshold": 0.76,
           "conformal": {"0.9": 0.4}, "conformal_coverage": {"0.9": 0.95}}
    (tmp_path / "calibration.json").write_text(json.dumps(old))
    # Execute
    cal = load_calibration(tmp_path)
    # Assert: read as a similarity, unknown *below* its threshold
    assert cal.feature_metric == COSINE and cal.uses_features
    probs = np.full((3, 2), 0.5)
    assert list(cal.is_unknown(probs, np.array([0.5, 0.75, 0.9]))) == [True, True, False]


def test_a_ray_distance_threshold_flags_the_far_side_and_none_means_no_feature_flag():
    cal = Calibration(feature_threshold=2.0, feature_metric=RAY_DISTANCE, fitted_on=50)
    probs = np.full((3, 2), 0.5)
    assert list(cal.is_unknown(probs, np.array([0.5, 2.0, 3.5]))) == [False, False, True]
    assert not Calibration().is_unknown(probs, np.array([0.5, 2.0, 3.5])).any()  # no feature threshold fitted
    with pytest.raises(InvalidInputError, match="feature_metric"):
        Calibration(feature_metric="euclid")
    with pytest.raises(InvalidInputError, match="bad field"):
        Calibration.from_dict({"temperature": 1.0, "unknown_threshold": 0.0, "feature_metric": "euclid"})


def _far_and_near(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projected features of 3 classes along the axes of 4 dimensions, scattered by 0.5, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    r = 4.0 * np.eye(4)[y] + rng.normal(0, 0.5, (n, 4))
    return r, y, class_directions(np.eye(4)[:3])


def test_the_ray_distance_threshold_flags_the_feature_quantile_of_correct_validation_images():
    # Prepare
    r, y, directions = _far_and_near(2000)
    logits = 8.0 * (r / np.linalg.norm(r, axis=1, keepdims=True)) @ directions.T
    scores = ray_distance(r, directions)
    # Execute
    cal = fit_calibration(logits, y, feature_scores=scores, feature_metric=RAY_DISTANCE)
    # Assert
    correct = cal.probabilities(logits).argmax(1) == y
    assert cal.feature_metric == RAY_DISTANCE and cal.unknown_threshold == 0.0
    assert cal.method == f"temperature-lbfgs+ray-distance-q{FEATURE_QUANTILE:g}-correct"
    assert cal.far_from_catalog(scores[correct]).mean() == pytest.approx(FEATURE_QUANTILE, abs=0.005)
    # an image of a fourth design, along the axis no class holds, is far from every class ray
    assert cal.far_from_catalog(ray_distance(np.array([[0.0, 0.0, 0.0, 4.0]]), directions)).all()


def test_fit_from_splits_measures_the_distance_on_the_projected_features():
    # Prepare: a head on the unit-norm features; the projected features carry the norm the distance needs
    r, y, directions = _far_and_near(300, seed=1)
    head = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(8.0 * directions))
    f = (r / np.linalg.norm(r, axis=1, keepdims=True)).astype(np.float32)
    splits = [(f[:200], y[:200]), (f[200:200], y[200:200]), (f[200:], y[200:])]
    projected = [r[:200], r[200:200], r[200:]]
    # Execute
    cal = fit_from_splits(head, splits, directions=directions, projected=projected)
    on_unit = fit_from_splits(head, splits, directions=directions)
    # Assert: the threshold is the distance's quantile on r, not on the unit-norm features (where it is below 1)
    correct = cal.probabilities(head(torch.from_numpy(f)).detach().numpy()).argmax(1) == y
    expected = np.quantile(ray_distance(r, directions)[correct], 1 - FEATURE_QUANTILE)
    assert cal.fitted_on == 300 and cal.feature_threshold == pytest.approx(expected)
    assert on_unit.feature_threshold < 1.0 < cal.feature_threshold
