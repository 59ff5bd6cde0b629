"""Reference rows that look at no image: what a model scores by knowing only the training labels.

`majority` is scikit-learn's DummyClassifier with the `prior` strategy: on single-label data it predicts
the most frequent training class (its probabilities are the class frequencies, so log-loss is the
label entropy, not infinity); on multi-label data each class's probability is its training frequency
(the most-frequent baseline: the tuned threshold keeps the labels common enough to pay off).
`all-negative` (multi-label only) predicts no label for any image.
"""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier

from ..config import Spec
from ..core.errors import TransferlabError
from .base import Paradigm, full_proba, register


class NoParams(Spec):
    pass


class LabelsOnly(Paradigm):
    """A paradigm that needs only the labels: the runner passes an N × 0 array for X (no decoding)."""

    Params = NoParams
    needs_backbone = False
    input = "labels"


@register
class Majority(LabelsOnly):
    name = "majority"

    def fit(self, X, y, X_val, y_val):
        y = np.asarray(y)
        if self.multi_label:
            self.prior_ = y.mean(axis=0).astype(np.float64)
        else:
            model = DummyClassifier(strategy="prior").fit(np.zeros((len(y), 1)), y)
            self.prior_ = full_proba(model.class_prior_[None, :], model.classes_, self.n_classes)[0]
            self.selected_ = {"predicts": int(self.prior_.argmax())}
        return self

    def predict_proba(self, X):
        return np.tile(self.prior_, (len(X), 1))


@register
class AllNegative(LabelsOnly):
    name = "all-negative"

    def fit(self, X, y, X_val, y_val):
        if not self.multi_label:
            raise TransferlabError("paradigm 'all-negative' is a multi-label baseline (no label for any image); "
                                   "for single-label data use 'majority'")
        return self

    def predict_proba(self, X):
        return np.zeros((len(X), self.n_classes))
