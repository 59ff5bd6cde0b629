"""Metrics of one scored split, as plain JSON-ready values (undefined → None, never NaN).

Everything comes from scikit-learn except the expected calibration error, which scikit-learn does not have.
Single-label: `classification_metrics`. Multi-label: `multilabel_metrics`, with thresholds chosen on
validation by `tune_thresholds` (the trivial baselines are paradigms: paradigms/baselines.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

SINGLE_LABEL_HEADLINE = ("accuracy", "top3_accuracy", "macro_f1", "log_loss")  # the leaderboard's columns (log loss:
# lower is better; it sees the confidence that accuracy ignores)
MULTI_LABEL_HEADLINE = ("micro_f1", "macro_f1", "mAP")
PRIMARY = {False: "accuracy", True: "micro_f1"}  # what leaderboards sort by

# The scalar metrics `score` gives for each task (what a search may optimise; tests/test_search.py checks the
# lists against score's output).
SCALAR_METRICS = {
    False: ("accuracy", "top3_accuracy", "top5_accuracy", "balanced_accuracy", "macro_precision", "macro_recall",
            "macro_f1", "weighted_precision", "weighted_recall", "weighted_f1", "roc_auc_ovr", "ece", "log_loss"),
    True: ("micro_f1", "macro_f1", "samples_f1", "micro_precision", "micro_recall", "subset_accuracy",
           "hamming_loss", "mAP", "log_loss"),
}

ECE_BINS = 15
THRESHOLD_CANDIDATES = tuple(sorted({*np.round(np.linspace(0.05, 0.95, 19), 2).tolist(), 0.5}))


def headline_metrics(multi_label: bool) -> tuple[str, ...]:
    """The leaderboard's metric columns, in order, for a single- or multi-label study."""
    return MULTI_LABEL_HEADLINE if multi_label else SINGLE_LABEL_HEADLINE


def primary_metric(multi_label: bool) -> str:
    """The one metric leaderboards sort by (higher is better)."""
    return PRIMARY[bool(multi_label)]


# ---------------------------------------------------------------------------------------------- single-label

def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                           *, detailed: bool = True) -> dict[str, Any]:
    """Single-label metrics of `proba` (N × C) against integer labels `y_true`.

    Macro precision / recall / F1 average over all `classes` (a class absent from `y_true` and never
    predicted counts as 0), while `balanced_accuracy` is scikit-learn's mean recall over the classes
    present in `y_true`. With `detailed`: the per-class table, the confusion matrix (counts and
    row-normalised) and the most confused pairs.
    """
    y_true = np.asarray(y_true)
    labels = np.arange(len(classes))
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 rounding would trip sklearn's sum check
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    w_precision, w_recall, w_f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, and handled
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    class_auc = per_class_auc(y_true, proba)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top3_accuracy": _top_k(y_true, proba, 3),
        "top5_accuracy": _top_k(y_true, proba, 5),
        "balanced_accuracy": float(balanced),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_precision": float(w_precision),
        "weighted_recall": float(w_recall),
        "weighted_f1": float(w_f1),
        "roc_auc_ovr": _roc_auc_ovr(y_true, proba, class_auc),
        "ece": expected_calibration_error(y_true, proba),
        "log_loss": log_loss_of(y_true, proba, len(classes)),
    }
    if detailed:
        metrics["per_class"] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s), "auc": a}
            for name, p, r, f, s, a in zip(classes, precision, recall, f1, support, class_auc, strict=True)]
        counts = confusion_matrix(y_true, y_pred, labels=labels)
        metrics["confusion_matrix"] = counts.tolist()
        metrics["reliability"] = reliability_bins(y_true, proba)
        # sklearn turns the 0/0 rows of classes absent from y_true into rows of 0.
        metrics["confusion_normalized"] = confusion_matrix(
            y_true, y_pred, labels=labels, normalize="true").astype(float).tolist()
        metrics["most_confused"] = most_confused_pairs(counts, classes, n=10)
    return metrics


def log_loss_of(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """scikit-learn's log-loss of rows renormalised in float64: a float32 softmax sums to 1 within 1e-7 only,
    which scikit-learn >= 1.5 warns about instead of renormalising as it used to."""
    proba = np.asarray(proba, dtype=np.float64)
    return float(log_loss(y_true, proba / proba.sum(axis=1, keepdims=True), labels=np.arange(n_classes)))


def _top_k(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    # With k classes or fewer the true class is always in the top k.
    n_classes = proba.shape[1]
    if n_classes <= k:
        return 1.0
    return float(top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(n_classes)))


def per_class_auc(y_true: np.ndarray, proba: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC of each class's own probability column; None for a class whose AUC is undefined
    (no positive or no negative image in `y_true`)."""
    y_true = np.asarray(y_true)
    out: list[float | None] = []
    for c in range(proba.shape[1]):
        positive = y_true == c
        out.append(float(roc_auc_score(positive, proba[:, c])) if 0 < positive.sum() < len(y_true) else None)
    return out


def _roc_auc_ovr(y_true: np.ndarray, proba: np.ndarray, class_auc: list[float | None]) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes present in `y_true`; None with fewer than two present.

    When every class is present this is exactly `roc_auc_score(y, proba, multi_class="ovr")` (the macro
    mean of the binarised per-class AUCs). That call refuses a y_true that lacks some of proba's columns;
    the binarised AUC of a present class needs no renormalisation, so we average the defined ones instead.
    With two classes it is the AUC of the positive column (class 1's and class 0's AUC are then equal).
    """
    if proba.shape[1] == 2:
        return class_auc[1]
    defined = [a for a in class_auc if a is not None]
    return float(np.mean(defined)) if defined else None


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017): confidences in `n_bins` equal-width bins (lo, hi]; the mean over images
    of |accuracy − mean confidence| of each image's bin. Hand-written: scikit-learn has no ECE and torchmetrics
    is not a dependency; the binning follows torchmetrics' `binary/multiclass_calibration_error` (l1 norm)."""
    bins = reliability_bins(y_true, proba, n_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    gap = count * np.abs(np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64))
                         - np.nan_to_num(np.asarray(bins["confidence"], dtype=np.float64)))
    return float(gap.sum() / max(count.sum(), 1))


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """What a reliability diagram draws: per equal-width confidence bin (lo, hi], its image count, accuracy and
    mean top-label confidence (None for an empty bin). ECE is their count-weighted mean gap."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")  # bin b holds (edges[b], edges[b + 1]]
    count = np.bincount(bins, minlength=n_bins)
    hits = np.bincount(bins, weights=correct, minlength=n_bins)
    sure = np.bincount(bins, weights=confidence, minlength=n_bins)
    share = lambda total: [float(t / c) if c else None for t, c in zip(total, count, strict=True)]  # noqa: E731
    return {"edges": edges.tolist(), "count": count.tolist(), "accuracy": share(hits), "confidence": share(sure)}


def most_confused_pairs(confusion: np.ndarray | list[list[int]], classes: list[str], n: int = 10) -> list[dict]:
    """The `n` largest off-diagonal cells of a count confusion matrix (rows = true class), as fastai's
    `most_confused`: count > 0 only, by count descending, ties by rate (count / images of the true class)."""
    counts = np.asarray(confusion, dtype=np.int64)
    row_total = counts.sum(axis=1)
    pairs = [
        {"true": classes[i], "true_index": int(i), "predicted": classes[j], "predicted_index": int(j),
         "count": int(counts[i, j]), "rate": float(counts[i, j] / row_total[i])}
        for i, j in zip(*np.nonzero(counts), strict=True) if i != j]
    pairs.sort(key=lambda p: (-p["count"], -p["rate"], p["true_index"], p["predicted_index"]))
    return pairs[:n]


# ----------------------------------------------------------------------------------------------- multi-label

def multilabel_metrics(Y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                       thresholds: float | Sequence[float], *, detailed: bool = True) -> dict[str, Any]:
    """Multi-label metrics of independent per-class probabilities `proba` (N × C) against a 0/1 matrix `Y_true`,
    predicting a label where proba ≥ its threshold (`thresholds`: one float, or one per class).

    Micro / macro precision, recall and F1 count 0/0 as 0. `samples_f1` counts an image with no true and no
    predicted label as 1 (sklearn zero_division=1.0; a predicted label on an empty image, or a missed one, is
    still 0): an image whose right answer is "nothing" is answered perfectly by predicting nothing, so the
    all-negative baseline gets credit for exactly the empty images and nothing else.
    `mAP` averages sklearn's average precision over the classes with at least one positive image.
    """
    Y_true = np.asarray(Y_true).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != Y_true.shape or proba.shape[1] != len(classes):
        raise ValueError(f"labels {Y_true.shape} and probabilities {proba.shape} must both be N × {len(classes)}")
    per_class_threshold = _thresholds_per_class(thresholds, len(classes))
    Y_pred = predicted_labels(proba, multi_label=True, thresholds=per_class_threshold)
    micro_p, micro_r, micro_f1, _ = precision_recall_fscore_support(
        Y_true, Y_pred, average="micro", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(Y_true, Y_pred, average=None, zero_division=0)
    ap = [float(average_precision_score(Y_true[:, c], proba[:, c])) if Y_true[:, c].any() else None
          for c in range(len(classes))]
    defined_ap = [a for a in ap if a is not None]
    metrics: dict[str, Any] = {
        "micro_f1": float(micro_f1),
        "macro_f1": float(np.mean(f1)),
        "samples_f1": float(f1_score(Y_true, Y_pred, average="samples", zero_division=1.0)),
        "micro_precision": float(micro_p),
        "micro_recall": float(micro_r),
        "subset_accuracy": float(accuracy_score(Y_true, Y_pred)),  # exact match of the whole label set
        "hamming_loss": float(hamming_loss(Y_true, Y_pred)),
        "mAP": float(np.mean(defined_ap)) if defined_ap else None,
        # Mean binary cross-entropy over all N × C cells; sklearn clips the probabilities away from 0 and 1.
        "log_loss": float(log_loss(Y_true.ravel(), proba.ravel(), labels=[0, 1])),
        "thresholds": float(thresholds) if np.ndim(thresholds) == 0 else [float(t) for t in thresholds],
        "n_images_without_label": int((Y_true.sum(axis=1) == 0).sum()),
    }
    if detailed:
        metrics["per_class"] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "ap": a,
             "support": int(s), "threshold": float(t)}
            for name, p, r, f, a, s, t in zip(classes, precision, recall, f1, ap, support, per_class_threshold,
                                              strict=True)]
    return metrics


def _thresholds_per_class(thresholds: float | Sequence[float], n_classes: int) -> np.ndarray:
    if np.ndim(thresholds) == 0:
        return np.full(n_classes, float(thresholds))
    out = np.asarray(thresholds, dtype=np.float64)
    if out.shape != (n_classes,):
        raise ValueError(f"thresholds must be one float or one per class ({n_classes}); got {len(out)}")
    return out


def tune_thresholds(Y_val: np.ndarray, proba_val: np.ndarray,
                    mode: Literal["global", "per_class"] = "global") -> float | list[float]:
    """Decision thresholds chosen on validation only, among `THRESHOLD_CANDIDATES` (0.05, 0.10, …, 0.95).

    global: the one threshold maximising micro-F1. per_class: for each class the threshold maximising that
    class's F1; a class without a positive in `Y_val` (its F1 is 0 at every threshold) gets the global one.
    Ties go to the candidate closest to 0.5.
    """
    if mode not in ("global", "per_class"):
        raise ValueError(f"threshold mode must be 'global' or 'per_class'; got {mode!r}")
    Y_val = np.asarray(Y_val).astype(np.int64)
    proba_val = np.asarray(proba_val, dtype=np.float64)
    candidates = np.asarray(THRESHOLD_CANDIDATES)
    micro = [f1_score(Y_val, (proba_val >= t).astype(np.int64), average="micro", zero_division=0)
             for t in candidates]
    best_global = _best(candidates, micro)
    if mode == "global":
        return best_global
    out = []
    for c in range(Y_val.shape[1]):
        if not Y_val[:, c].any():
            out.append(best_global)
            continue
        scores = [f1_score(Y_val[:, c], (proba_val[:, c] >= t).astype(np.int64), zero_division=0)
                  for t in candidates]
        out.append(_best(candidates, scores))
    return out


def _best(candidates: np.ndarray, scores: Sequence[float]) -> float:
    scores = np.asarray(scores)
    tied = candidates[np.isclose(scores, scores.max(), rtol=0, atol=1e-12)]
    return float(tied[np.argmin(np.abs(tied - 0.5))])


# ------------------------------------------------------------------------------------------ one scored split

def score(y_true: np.ndarray, proba: np.ndarray, classes: list[str], *, multi_label: bool,
          thresholds: float | Sequence[float] | None = None, detailed: bool = True) -> dict[str, Any]:
    """The metrics of one split for either task (multi-label needs the thresholds tuned on validation)."""
    if multi_label:
        return multilabel_metrics(y_true, proba, classes, 0.5 if thresholds is None else thresholds,
                                  detailed=detailed)
    return classification_metrics(y_true, proba, classes, detailed=detailed)


def predicted_labels(proba: np.ndarray, *, multi_label: bool,
                     thresholds: float | Sequence[float] | None = None) -> np.ndarray:
    """Class indices (single-label) or an N × C 0/1 matrix (multi-label: proba ≥ each class's threshold)."""
    if not multi_label:
        return np.asarray(proba).argmax(axis=1)
    per_class = _thresholds_per_class(0.5 if thresholds is None else thresholds, np.shape(proba)[1])
    return (np.asarray(proba) >= per_class).astype(np.int64)


def image_outcomes(y_true: np.ndarray, y_pred: np.ndarray, *, multi_label: bool) -> dict[str, np.ndarray]:
    """Per-image counts from which the primary metric of any subset of images is recomputed (paired
    bootstrap in `stats.py`): `correct` (single-label accuracy), or true / false positives and false negatives
    per image (multi-label micro-F1 = 2·TP / (2·TP + FP + FN) over the subset)."""
    if not multi_label:
        return {"correct": (np.asarray(y_true) == np.asarray(y_pred)).astype(np.uint8)}
    Y, P = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {"tp": (Y & P).sum(axis=1).astype(np.uint16), "fp": (~Y & P).sum(axis=1).astype(np.uint16),
            "fn": (Y & ~P).sum(axis=1).astype(np.uint16)}


def metric_from_outcomes(outcomes: dict[str, np.ndarray], axis: int = -1) -> np.ndarray:
    """The primary metric from (stacks of) per-image outcomes, summed along `axis` (the images)."""
    if "correct" in outcomes:
        return np.asarray(outcomes["correct"], dtype=np.float64).mean(axis=axis)
    tp, fp, fn = (np.asarray(outcomes[k], dtype=np.float64).sum(axis=axis) for k in ("tp", "fp", "fn"))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)
