"""Quasi-SVM: random Fourier features approximating an RBF kernel, then a linear classifier.

scikit-learn's RBFSampler draws the features (Rahimi & Recht); logistic regression on top gives
probabilities. gamma is searched relative to 1/n_features (SVC's 'scale' heuristic on standardised
inputs), and C with it, on validation.
"""

from __future__ import annotations

from pydantic import Field
from sklearn.kernel_approximation import RBFSampler
from sklearn.preprocessing import StandardScaler

from .base import FloatChoice, SklearnParadigm, as_list, pick_best, register
from .linear import ClassWeight, logistic_path
from .resample import FeatureParams


class RffParams(FeatureParams):
    gamma_scale: FloatChoice = Field(default_factory=lambda: [0.5, 1.0, 2.0],
                                             description="gamma = gamma_scale / n_features")
    C: FloatChoice = Field(default_factory=lambda: [0.1, 1.0, 10.0])
    n_components: int = Field(2048, gt=0, description="random Fourier features")
    max_iter: int = Field(300, gt=0)
    class_weight: ClassWeight = Field("none", description="balanced: loss weights n / (C·n_c) (scikit-learn's)")


@register
class Rff(SklearnParadigm):
    name = "rff"
    Params = RffParams

    def fit(self, X, y, X_val, y_val):
        X, y = self.resampled_training_rows(X, y)
        candidates = []
        for scale in as_list(self.params.gamma_scale):
            sampler = RBFSampler(gamma=scale / X.shape[1], n_components=self.params.n_components,
                                 random_state=self.seed)
            candidates += logistic_path(X, y, X_val, y_val, self.params.C, self.params.max_iter,
                                        transformers=[StandardScaler(), sampler], tag={"gamma_scale": scale},
                                        class_weight=self.params.class_weight, n_classes=self.n_classes,
                                        multi_label=self.multi_label)
        chosen, self.model_ = pick_best(candidates)
        self.selected_.update(chosen)
        return self
