"""Per-body-part, study-level evaluation for datasets with studies (MURA).

MURA labels whole studies (one to several views of one patient's body part), and its
paper reports accuracy and AUC per body part at study level: a study's probability is
the mean over its views. ``test/studies.csv`` (written when a federation is built from
such a dataset, see :mod:`simulations.datasets.materialize`) maps each test file to its
study and body part; this module turns the global model's per-image probabilities into
the study's table: one row per body part plus ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.metrics import classification_summary
from simulations.datasets.index import average_by_key

ALL = "all"


def _row(keys: Sequence[str], probs: np.ndarray, labels: np.ndarray, class_ids: Sequence[str]) -> dict[str, Any]:
    study_keys, study_probs, study_labels = average_by_key(keys, probs, labels)
    image = classification_summary(labels, probs, class_ids, roc=False)
    study = classification_summary(study_labels, study_probs, class_ids, roc=False)
    binary = study.get("binary", {})
    return {
        "images": int(len(labels)),
        "studies": len(study_keys),
        "image_accuracy": image["accuracy"],
        "study_accuracy": study["accuracy"],
        "study_auc": binary.get("auc", study["macro_auc"]),
        "study_kappa": binary.get("kappa"),
    }


def by_body_part(
    files: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    studies: Mapping[str, tuple[str, str]],
    class_ids: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Image- and study-level metrics per body part (and ``all``) of the test set.

    ``files[i]`` is the test file (relative to the test folder) of ``probs[i]`` and
    ``labels[i]``; ``studies`` maps a file to (study, body part). Files without a study
    count as a study of their own, under body part ``unknown``.
    """
    if not len(files) == len(probs) == len(labels):
        raise ValueError("one file name, one probability row and one label per test image")
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=np.int64)
    keys, parts = [], []
    for f in files:
        study, part = studies.get(f, ("", ""))
        parts.append(part or "unknown")
        keys.append(f"{part}/{study}" if study else f"_file/{f}")
    table = {}
    for part in sorted(set(parts)):
        rows = [i for i, p in enumerate(parts) if p == part]
        table[part] = _row([keys[i] for i in rows], probs[rows], labels[rows], class_ids)
    table[ALL] = _row(keys, probs, labels, class_ids)
    return table
