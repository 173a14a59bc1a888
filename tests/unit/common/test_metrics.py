"""Metrics against small cases computed by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest

from common.metrics import (
    binary_summary,
    classification_summary,
    expected_calibration_error,
    top_k_accuracy,
)

IDS = ["a", "b", "c"]
# true:  0    0    1    1    2    2
# pred:  0    1    1    1    2    0
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.4, 0.5, 0.1],
    [0.1, 0.8, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.1, 0.8],
    [0.6, 0.3, 0.1],
])


@pytest.fixture(scope="module")
def summary():
    return classification_summary(LABELS, PROBS, IDS)


def test_accuracy_and_confusion(summary):
    assert summary["accuracy"] == pytest.approx(4 / 6)
    assert summary["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert summary["examples"] == 6


@pytest.mark.parametrize(
    ("cls", "precision", "sensitivity", "specificity", "f1", "auc"),
    [
        # a: TP 1, FP 1 (row c), FN 1; 4 negatives, 1 FP -> spec 3/4; AUC: (4 + 3) / 8 pairs
        ("a", 1 / 2, 1 / 2, 3 / 4, 1 / 2, 7 / 8),
        # b: TP 2, FP 1, FN 0 -> F1 2*(2/3)/(5/3) = 0.8; both positives outscore all negatives
        ("b", 2 / 3, 1.0, 3 / 4, 0.8, 1.0),
        # c: TP 1, FP 0, FN 1; AUC: 0.8 beats 4, 0.1 ties 4 -> (4 + 2) / 8
        ("c", 1.0, 1 / 2, 1.0, 2 / 3, 6 / 8),
    ],
)
def test_per_class_table(summary, cls, precision, sensitivity, specificity, f1, auc):
    m = summary["per_class"][cls]
    assert (m["precision"], m["sensitivity"], m["specificity"], m["f1"], m["auc"]) == pytest.approx(
        (precision, sensitivity, specificity, f1, auc))
    assert m["support"] == 2


def test_macro_averages(summary):
    assert summary["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert summary["macro_auc"] == pytest.approx((7 / 8 + 1 + 6 / 8) / 3)


@pytest.mark.parametrize(("k", "expected"), [(1, 4 / 6), (2, 5 / 6), (3, 1.0), (5, 1.0)])
def test_top_k(k, expected):
    # row 5 (true c) ranks c third; every other true class is within the top 2
    assert top_k_accuracy(LABELS, PROBS, k) == pytest.approx(expected)


def test_expected_calibration_error_by_hand():
    # 15 bins; (conf, correct): .5 wrong | .6 right, .6 wrong | .7 right | .8 right x2
    # gaps: |0 - .5| + |1 - 1.2| + |1 - .7| + |2 - 1.6| = 1.4 over 6 images
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(1.4 / 6)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert expected_calibration_error(np.array([0, 1, 0, 1]), probs) == pytest.approx(0.0)


def test_absent_class_is_kept_but_left_out_of_macro_averages():
    # Prepare: class "d" never appears in the labels and is never predicted
    probs = np.hstack([PROBS * 0.9, np.full((6, 1), 0.1)])
    # Execute
    s = classification_summary(LABELS, probs, IDS + ["d"])
    # Assert
    assert s["per_class"]["d"]["support"] == 0
    assert math.isnan(s["per_class"]["d"]["auc"])
    assert s["macro_auc"] == pytest.approx((7 / 8 + 1 + 6 / 8) / 3)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert "d" not in s["roc"] and set(s["roc"]) == set(IDS)


def test_roc_curves_run_from_origin_to_one_and_match_auc(summary):
    curve = summary["roc"]["b"]
    assert (curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert curve["auc"] == pytest.approx(1.0)


def test_binary_auc_kappa_and_precision_recall_crossover():
    # scores .1 .4 | .35 .8 for labels 0 0 | 1 1
    # AUC: .35 beats .1; .8 beats both -> 3/4
    # kappa at 0.5: preds 0 0 0 1; po = 3/4, pe = .5*.25 + .5*.75 = .5 -> (.75 - .5) / .5
    # threshold .4: predicted positives {.4, .8}: precision 1/2, recall 1/2
    b = binary_summary(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (b["auc"], b["kappa"], b["pr_threshold"]) == pytest.approx((0.75, 0.5, 0.4))


def test_two_class_summary_has_the_binary_block():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    s = classification_summary(labels, probs, ["normal", "abnormal"])
    assert s["binary"]["auc"] == pytest.approx(0.75)
    assert s["top3_accuracy"] == 1.0


def test_empty_labels_give_nan_not_an_error():
    s = classification_summary(np.array([], dtype=int), np.zeros((0, 3)), IDS)
    assert math.isnan(s["accuracy"]) and s["examples"] == 0
