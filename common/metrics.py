"""Classification metrics shared by clients, simulations and releases (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


def classification_summary(labels: np.ndarray, probs: np.ndarray, class_ids: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-3 accuracy, macro F1, per-class precision/sensitivity/F1 and the confusion matrix.

    ``probs`` is (N, C) with C = len(class_ids); classes absent from ``labels`` get
    support 0 and are left out of the macro average.
    """
    n_classes = len(class_ids)
    if len(labels) == 0:
        return {"accuracy": float("nan"), "top3_accuracy": float("nan"), "macro_f1": float("nan"), "per_class": {}, "confusion": []}
    preds = probs.argmax(1)
    all_labels = list(range(n_classes))
    present = sorted(set(labels.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(labels, preds, labels=all_labels, zero_division=0)
    per_class = {
        class_ids[i]: {"precision": float(prec[i]), "sensitivity": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i in all_labels
    }
    k = min(3, n_classes - 1) if n_classes > 2 else 1
    top3 = float(top_k_accuracy_score(labels, probs, k=k, labels=all_labels)) if n_classes > 2 else float(accuracy_score(labels, preds))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "top3_accuracy": top3,
        "macro_f1": float(f1_score(labels, preds, labels=present, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion": confusion_matrix(labels, preds, labels=all_labels).tolist(),
        "examples": int(len(labels)),
    }
