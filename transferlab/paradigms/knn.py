"""k-nearest neighbours on frozen features: the cheapest probe of what a backbone already separates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sklearn.neighbors import KNeighborsClassifier

from ..models.modules import from_knn
from .base import IntChoice, SklearnParadigm, as_list, pick_best, register, sklearn_proba, validation_score
from .resample import FeatureParams


class KnnParams(FeatureParams):
    k: IntChoice = Field(5, description="neighbours; a list is searched on validation")
    metric: Literal["cosine", "euclidean"] = "cosine"
    weights: Literal["uniform", "distance"] = "uniform"


@register
class Knn(SklearnParadigm):
    name = "knn"
    Params = KnnParams

    def fit(self, X, y, X_val, y_val):
        X, y = self.resampled_training_rows(X, y)
        candidates = []
        for k in as_list(self.params.k):
            model = KNeighborsClassifier(n_neighbors=min(k, len(X)), metric=self.params.metric,
                                         weights=self.params.weights, algorithm="brute").fit(X, y)
            proba = sklearn_proba(model, X_val, self.n_classes, self.multi_label)  # k-NN takes 0/1 matrices too
            candidates.append(({"k": k}, model, validation_score(y_val, proba, self.multi_label)))
        chosen, self.model_ = pick_best(candidates)
        self.selected_.update(chosen)
        return self

    scores = "probabilities"  # a vote share, no logits

    def deploy_steps(self):
        return [from_knn(self.model_, self.n_classes, self.multi_label)], True
