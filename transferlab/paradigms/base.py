"""The interface every paradigm implements, and the registry that finds them by name.

A paradigm is a scikit-learn-style estimator over encoded images: `__init__` stores validated
hyper-parameters, `fit(train, val)` learns (choosing its own hyper-parameters on validation only) and
returns self, `predict_proba(X)` gives an N × n_classes probability matrix. What it chose goes in
`selected_`, which the run record keeps. Adding a paradigm is one module with one `@register` class.

Multi-label data (`multi_label=True`): y is an N × n_classes 0/1 matrix and `predict_proba` gives each
class's own probability (independent sigmoids, rows need not sum to 1); the runner tunes the decision
thresholds on validation.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from ..config import Spec, describe_validation_error
from ..errors import TransferlabError


class Paradigm(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[Spec]]  # the hyper-parameters, with their defaults
    needs_backbone: ClassVar[bool] = True  # False: the paradigm brings its own `encoder(source)` / `view()`
    input: ClassVar[str] = "features"  # "features": X is N × D vectors; "images": X is N×3×H×W uint8 images

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


class SklearnParadigm(Paradigm):
    """A paradigm whose fitted `model_` is a scikit-learn classifier (or pipeline ending in one)."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = self.model_.predict_proba(X)
        return full_proba(proba, self.model_.classes_, self.n_classes).astype(np.float64)


PARADIGMS: dict[str, type[Paradigm]] = {}


def register(cls: type[Paradigm]) -> type[Paradigm]:
    PARADIGMS[cls.name] = cls
    return cls


def get_paradigm_class(name: str) -> type[Paradigm]:
    if name not in PARADIGMS:
        close = difflib.get_close_matches(name, list(PARADIGMS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TransferlabError(f"unknown paradigm '{name}'{hint}; available: {', '.join(sorted(PARADIGMS))}")
    return PARADIGMS[name]


def validate_params(name: str, params: dict[str, Any]) -> Spec:
    from pydantic import ValidationError

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
