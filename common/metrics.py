"""Classification metrics shared by clients, simulations and releases (scikit-learn).

:func:`classification_summary` is the one entry point: it returns plain JSON-ready values
(results.json ``final``, the model card). Classes absent from the labels are kept in the
per-class table with ``support`` 0 and left out of every macro average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
ROC_POINTS = 64  # most points kept per stored ROC curve (results.json stays small)


def classification_summary(
    labels: np.ndarray, probs: np.ndarray, class_ids: Sequence[str], *, roc: bool = True
) -> dict[str, Any]:
    """Every test-set metric of a classifier's probabilities.

    Parameters
    ----------
    labels
        (N,) true class indices.
    probs
        (N, C) class probabilities, C = len(class_ids).
    class_ids
        Catalog ids naming the C outputs.
    roc
        Also return down-sampled one-vs-rest ROC curves (for plots).

    Returns
    -------
    dict
        ``accuracy``, ``top3_accuracy``, ``macro_f1``, ``macro_auc``, ``ece``, ``examples``,
        ``per_class`` {id: precision, sensitivity, specificity, f1, auc, support},
        ``confusion`` (C x C, rows = true), optionally ``roc`` {id: {fpr, tpr, auc}}; for a
        two-class task also ``binary``: {auc, kappa, pr_threshold}.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(class_ids)
    if len(labels) == 0:
        nan = float("nan")
        return {"accuracy": nan, "top3_accuracy": nan, "macro_f1": nan, "macro_auc": nan, "ece": nan,
                "per_class": {}, "confusion": [], "examples": 0}
    preds = probs.argmax(1)
    all_labels = list(range(n_classes))
    present = sorted(set(labels.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(labels, preds, labels=all_labels, zero_division=0)
    spec = specificity(labels, preds, n_classes)
    aucs = one_vs_rest_auc(labels, probs)
    per_class = {
        class_ids[i]: {"precision": float(prec[i]), "sensitivity": float(rec[i]), "specificity": spec[i],
                       "f1": float(f1[i]), "auc": aucs[i], "support": int(support[i])}
        for i in all_labels
    }
    finite_aucs = [a for a in aucs if not math.isnan(a)]
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, preds)),
        "top3_accuracy": top_k_accuracy(labels, probs, 3),
        "macro_f1": float(f1_score(labels, preds, labels=present, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(finite_aucs)) if finite_aucs else float("nan"),
        "ece": expected_calibration_error(labels, probs),
        "per_class": per_class,
        "confusion": confusion_matrix(labels, preds, labels=all_labels).tolist(),
        "examples": int(len(labels)),
    }
    if n_classes == 2:
        out["binary"] = binary_summary(labels, probs[:, 1])
    if roc:
        out["roc"] = roc_curves(labels, probs, class_ids)
    return out


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of images whose true class is among the ``k`` most probable (k capped at C)."""
    n_classes = probs.shape[1]
    if k >= n_classes:
        return 1.0
    if n_classes == 2:  # sklearn reads two columns as a binary score; k = 1 here
        return float(accuracy_score(labels, probs.argmax(1)))
    return float(top_k_accuracy_score(labels, probs, k=k, labels=list(range(n_classes))))


def specificity(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[float]:
    """Per-class true-negative rate TN / (TN + FP) (one-vs-rest); NaN without negatives."""
    mcm = multilabel_confusion_matrix(labels, preds, labels=list(range(n_classes)))
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    return [float(t / (t + f)) if t + f else float("nan") for t, f in zip(tn, fp, strict=True)]


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """ROC AUC of each class against the rest; NaN for a class with no positives or no negatives."""
    out = []
    for c in range(probs.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            out.append(float("nan"))
        else:
            out.append(float(roc_auc_score(positive, probs[:, c])))
    return out


def roc_curves(labels: np.ndarray, probs: np.ndarray, class_ids: Sequence[str],
               *, max_points: int = ROC_POINTS) -> dict[str, dict[str, Any]]:
    """One-vs-rest ROC curves of the classes that have both positives and negatives."""
    curves = {}
    for c, cid in enumerate(class_ids):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        if len(fpr) > max_points:
            keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
            fpr, tpr = fpr[keep], tpr[keep]
        curves[cid] = {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr],
                       "auc": float(roc_auc_score(positive, probs[:, c]))}
    return curves


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: sum over equal-width bins of |accuracy - confidence| x weight.

    Neither scikit-learn nor torch ships a multi-class ECE; this is the usual definition
    (Guo et al., 2017) over ``bins`` bins of the max probability.
    """
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    which = np.clip(np.digitize(conf, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=correct, minlength=bins) - np.bincount(which, weights=conf, minlength=bins))
    return float(gap.sum() / len(labels)) if count.sum() else float("nan")


def binary_summary(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC, Cohen's kappa (at 0.5) and the threshold where precision equals recall."""
    if len(np.unique(labels)) < 2:
        nan = float("nan")
        return {"auc": nan, "kappa": nan, "pr_threshold": nan}
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # precision/recall have one more entry than thresholds (the (1, 0) end point).
    cross = int(np.argmin(np.abs(precision[:-1] - recall[:-1])))
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "kappa": float(cohen_kappa_score(labels, (scores >= 0.5).astype(np.int64))),
        "pr_threshold": float(thresholds[cross]),
    }
