"""Study-level, per-body-part evaluation (the MURA study's table)."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.studies import ALL, by_body_part

IDS = ["negative", "positive"]


def test_views_of_a_study_are_averaged_and_scored_per_body_part():
    # Prepare: a wrist study with two views (one wrong on its own), an elbow study, a file without a study
    files = ["images/1.png", "images/2.png", "images/3.png", "images/4.png"]
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]])
    labels = np.array([1, 1, 0, 1])
    studies = {"images/1.png": ("s1", "wrist"), "images/2.png": ("s1", "wrist"), "images/3.png": ("s2", "elbow")}
    # Execute
    table = by_body_part(files, probs, labels, studies, IDS)
    # Assert
    assert list(table) == ["elbow", "unknown", "wrist", ALL]
    wrist = table["wrist"]
    assert (wrist["images"], wrist["studies"]) == (2, 1)
    assert wrist["image_accuracy"] == pytest.approx(0.5) and wrist["study_accuracy"] == pytest.approx(1.0)
    everything = table[ALL]
    assert (everything["images"], everything["studies"]) == (4, 3)
    assert everything["image_accuracy"] == pytest.approx(0.75) and everything["study_accuracy"] == pytest.approx(1.0)
    assert everything["study_auc"] == pytest.approx(1.0)  # mean probabilities 0.6, 0.1, 0.7 for labels 1, 0, 1


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one file name"):
        by_body_part(["a.png"], np.zeros((2, 2)), np.zeros(2), {}, IDS)

