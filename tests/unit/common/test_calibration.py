"""Temperature scaling, the unknown threshold and calibration.json."""

import json

import numpy as np
import pytest
import torch

from common.calibration import (
    Calibration,
    fit_calibration,
    fit_from_splits,
    fit_temperature,
    load_calibration,
    save_calibration,
    unknown_threshold,
)
from common.errors import InvalidInputError


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
                      feature_threshold=0.31, conformal={"0.9": 0.12}, conformal_coverage={"0.9": 0.93})
    save_calibration(tmp_path, cal)
    assert set(json.loads((tmp_path / "calibration.json").read_text())) == {
        "temperature", "unknown_threshold", "fitted_on", "method", "feature_threshold", "conformal", "conformal_coverage"}
    assert load_calibration(tmp_path) == cal
    assert load_calibration(tmp_path / "nowhere") == Calibration(temperature=1.0, unknown_threshold=0.0)


@pytest.mark.parametrize("bad", [{"temperature": 0, "unknown_threshold": 0.5}, {"temperature": 1.0, "unknown_threshold": 2},
                                 {"unknown_threshold": 0.5}, {"temperature": "x", "unknown_threshold": 0.5}])
def test_bad_calibration_values_are_refused(bad):
    with pytest.raises(InvalidInputError):
        Calibration.from_dict(bad)
