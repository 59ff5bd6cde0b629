"""Metrics of one scored split, all from scikit-learn, as plain JSON-ready values."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

HEADLINE = ("accuracy", "top3_accuracy", "macro_f1")  # the leaderboard's columns, in order


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                           *, detailed: bool = True) -> dict[str, Any]:
    """accuracy, top-3 accuracy, macro-F1, log-loss; with `detailed`, the per-class table and confusion."""
    labels = np.arange(len(classes))
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 rounding would trip sklearn's sum check
    y_pred = proba.argmax(axis=1)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # With 3 classes or fewer the true class is always in the top 3.
        "top3_accuracy": float(top_k_accuracy_score(y_true, proba, k=3, labels=labels)) if len(classes) > 3 else 1.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y_true, proba, labels=labels)),
    }
    if detailed:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0)
        metrics["per_class"] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)]
        metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return metrics
