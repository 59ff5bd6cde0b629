"""`calibrate: temperature`: one temperature fitted on validation that makes a single-label model's confidences
mean what they say (Guo et al. 2017), through scikit-learn's own temperature scaling
(`CalibratedClassifierCV(FrozenEstimator(...), method="temperature")`, scikit-learn >= 1.8).

The fitted inverse temperature β rescales log-probabilities: calibrated = softmax(β · log(p + ε)), ε = 1e-12 as in
scikit-learn (a kNN's vote share of 0 stays finite). It never changes
which class ranks first (β > 0), only how sure the model says it is; `models/modules.py`'s `Temperature` is the
same formula as a torch module, so predict, export and serve give what the record scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator

from .core.errors import TransferlabError
from .evaluate import expected_calibration_error, log_loss_of, reliability_bins

EPS = 1e-12  # scikit-learn's own (calibration._convert_to_logits); the torch module uses the same


class _GivenLogits(ClassifierMixin, BaseEstimator):
    """A "classifier" whose decision function is its input: lets scikit-learn calibrate the scores any paradigm
    made (kNN, a trained network, a probe) without refitting anything."""

    def __init__(self, n_classes: int = 2):
        self.n_classes = n_classes

    def fit(self, X, y=None):
        self.classes_ = np.arange(self.n_classes)
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64)

    def predict(self, X):
        return np.asarray(X).argmax(axis=1)


def log_probabilities(proba: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(proba, dtype=np.float64) + EPS)


def fit_temperature(val_proba: np.ndarray, y_val: np.ndarray) -> float:
    """β, the inverse temperature that minimises the log-loss of validation's probabilities."""
    if len(np.unique(y_val)) < 2:
        raise TransferlabError("calibrate: temperature needs validation images of at least two classes; use a larger "
                               "validation split or calibrate: none")
    logits = log_probabilities(val_proba)
    model = _GivenLogits(val_proba.shape[1]).fit(logits)
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method="temperature").fit(logits, y_val)
    return float(calibrated.calibrated_classifiers_[0].calibrators[0].beta_)


def apply_temperature(proba: np.ndarray, beta: float) -> np.ndarray:
    """softmax(β · log(p + ε))."""
    logits = beta * log_probabilities(proba)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def calibration_effect(y: dict[str, np.ndarray], before: dict[str, np.ndarray], after: dict[str, np.ndarray],
                       beta: float, n_classes: int) -> dict[str, Any]:
    """The record's `calibration` entry: the temperature and ECE / log-loss before and after, per split."""
    effect: dict[str, Any] = {"method": "temperature", "temperature": 1.0 / beta, "fitted_on": "val"}
    for split in before:
        effect[split] = {
            "ece_before": expected_calibration_error(y[split], before[split]),
            "ece_after": expected_calibration_error(y[split], after[split]),
            "log_loss_before": log_loss_of(y[split], before[split], n_classes),
            "log_loss_after": log_loss_of(y[split], after[split], n_classes),
            "reliability_before": reliability_bins(y[split], before[split])}  # the report draws it beside after
    return effect
