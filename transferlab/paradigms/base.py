"""The interface every paradigm implements, and the registry that finds them by name.

A paradigm is a scikit-learn-style estimator over encoded images: `__init__` stores validated
hyper-parameters, `fit(X, y, X_val, y_val)` learns (choosing its own hyper-parameters on validation only) and
returns self, `predict_proba(X)` gives an N × n_classes probability matrix. What it chose goes in
`selected_`, which the run record keeps. Adding a paradigm is one module with one `@register` class.

Multi-label data (`multi_label=True`): y is an N × n_classes 0/1 matrix and `predict_proba` gives each
class's own probability (independent sigmoids, rows need not sum to 1); the runner tunes the decision
thresholds on validation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, ValidationError
from sklearn.metrics import average_precision_score

from ..config import Spec, describe_validation_error
from ..core.errors import TransferlabError
from ..core.registry import Registry
from ..models.modules import from_sklearn_pipeline
from .resample import resampled


class Paradigm(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[Spec]]  # the hyper-parameters, with their defaults
    needs_backbone: ClassVar[bool] = True  # False: the paradigm brings its own `encoder(source)` / `view()`
    input: ClassVar[str] = "features"  # "features": X is N × D vectors; "images": X is N×3×H×W uint8 images
    trains_backbone: ClassVar[bool] = False  # its saved model is the whole trained backbone (features_from can use it)
    epoch_fields: ClassVar[tuple[str, ...]] = ()  # the params that count training epochs (what a cap caps)

    def __init__(self, params: Spec, *, n_classes: int, seed: int, multi_label: bool = False):
        self.params, self.n_classes, self.seed, self.multi_label = params, n_classes, seed, multi_label
        self.selected_: dict[str, Any] = {}

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> Paradigm:
        """Learn from (X, y); (X_val, y_val) is for choosing hyper-parameters and early stopping only."""

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """N × n_classes class probabilities (rows sum to 1; multi-label: each class's own probability)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def resampled_training_rows(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) after the params' `resample:` (paradigms on cached features), what it did noted in
        `selected_["resampled"]`; unchanged when the params ask for none."""
        X, y, done = resampled(X, y, getattr(self.params, "resample", None), self.seed, self.multi_label,
                               self.n_classes)
        if done is not None:
            self.selected_["resampled"] = done
        return X, y

    # ---- deployment: the fitted paradigm as torch modules (transferlab/deploy saves them with the run)
    scores: ClassVar[str] = "logits"  # what the torch form outputs: logits, or "probabilities" (knn's vote)

    def deploy_steps(self) -> tuple[list[Any], bool]:
        """(torch modules from models/modules.py, frozen_features). frozen_features=True: the steps map the
        frozen backbone's features to scores (the backbone's own weights complete the model); False: the
        steps are the whole uint8 image → scores model."""
        raise NotDeployable(f"paradigm '{self.name}' has no deployable model (a reference row); pick a model row")

    def deploy_view(self, backbone) -> dict[str, Any]:
        """The preprocessing its inputs had, as data: timm's eval transform for the backbone's config."""
        return {"timm": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()}}

    def used_params(self):
        """The params as the fit used them (what the record keeps): `params`, unless fitting resolved one of them
        (a training paradigm's lr: find)."""
        return self.params

    def final_params(self) -> dict[str, Any]:
        """Hyper-parameters for the `final` retraining on train + val, every choice made on validation fixed.

        The default replaces each parameter that `selected_` names (a chosen k, C, gamma_scale) with the
        chosen value; paradigms that stop early on validation fix their epoch count instead (override).
        The refit still receives the validation split, but with nothing left to choose it cannot select on it.
        """
        params = self.params.model_dump(mode="json", exclude_unset=True)
        chosen = {k: v for k, v in self.selected_.items() if k in type(self.params).model_fields}
        return {**params, **chosen}


class NotDeployable(TransferlabError):
    """The paradigm learned nothing a model file could hold (reference rows)."""


class SklearnParadigm(Paradigm):
    """A paradigm whose fitted `model_` is a scikit-learn classifier (or pipeline ending in one)."""

    def deploy_steps(self):
        return from_sklearn_pipeline(self.model_, self.n_classes, self.multi_label), True

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return sklearn_proba(self.model_, X, self.n_classes, self.multi_label)


def sklearn_proba(model, X: np.ndarray, n_classes: int, multi_label: bool) -> np.ndarray:
    """N × n_classes probabilities from a fitted scikit-learn classifier, single- or multi-label."""
    proba = model.predict_proba(X)
    if not multi_label:
        return full_proba(proba, model.classes_, n_classes).astype(np.float64)
    if isinstance(proba, list):  # multi-output estimators (k-NN): one N × (classes seen) array per label
        return np.column_stack([p[:, list(seen).index(1)] if 1 in seen else np.zeros(len(X))
                                for p, seen in zip(proba, model.classes_, strict=True)]).astype(np.float64)
    return np.asarray(proba, dtype=np.float64)  # one-vs-rest: already one column per label


def validation_score(y_val: np.ndarray, proba: np.ndarray, multi_label: bool) -> float:
    """What candidates are compared by on validation: accuracy, or for multi-label the mean average
    precision over labels with a positive (threshold-free, since thresholds are tuned afterwards)."""
    if not multi_label:
        return float((proba.argmax(axis=1) == y_val).mean())

    present = np.asarray(y_val).sum(axis=0) > 0
    if not present.any():
        return 0.0
    return float(average_precision_score(np.asarray(y_val)[:, present], proba[:, present], average="macro"))


PARADIGMS: Registry[type[Paradigm]] = Registry("paradigm")


def register(cls: type[Paradigm]) -> type[Paradigm]:
    """Class decorator: the paradigm joins `PARADIGMS` under its `name`."""
    return PARADIGMS.register(cls.name, cls)


def get_paradigm_class(name: str) -> type[Paradigm]:
    """The registered class; an unknown name is one line with the closest one and all of them."""
    return PARADIGMS.get(name)


def validate_params(name: str, params: dict[str, Any]) -> Spec:
    cls = get_paradigm_class(name)
    try:
        return cls.Params.model_validate(params)
    except ValidationError as exc:
        raise ValueError(f"paradigm '{name}': {describe_validation_error(exc)}") from None


def create_paradigm(name: str, params: dict[str, Any], *, n_classes: int, seed: int,
                    multi_label: bool = False) -> Paradigm:
    cls = get_paradigm_class(name)
    return cls(validate_params(name, params), n_classes=n_classes, seed=seed, multi_label=multi_label)


def full_proba(proba: np.ndarray, seen_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Widen a classifier's probabilities to every class (a few-shot train split may miss some)."""
    if proba.shape[1] == n_classes:
        return proba
    out = np.zeros((len(proba), n_classes), dtype=proba.dtype)
    out[:, seen_classes] = proba
    return out


def pick_best(candidates: list[tuple[dict[str, Any], Any, float]]) -> tuple[dict[str, Any], Any]:
    """The (params, model) with the highest validation score; the first one wins ties (simplest first)."""
    best = max(range(len(candidates)), key=lambda i: (candidates[i][2], -i))
    return candidates[best][0], candidates[best][1]


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A value, or a non-empty list of values to choose from on validation.
IntChoice = PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)]
FloatChoice = PositiveFloat | Annotated[list[PositiveFloat], Field(min_length=1)]


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
