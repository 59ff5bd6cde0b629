"""`resample:` for the paradigms on cached features: imbalanced-learn's samplers over the training vectors.

SMOTE, SVM-SMOTE and ADASYN synthesise new minority vectors between neighbours in feature space; random
over- and under-sampling repeat or drop rows. Only the training split is resampled (validation and test
stay as they are, so every choice and the score see the real class balance), seeded from the run seed,
and the record's `selected.resampled` says how many rows were added or removed per class. Single-label
only: imbalanced-learn's samplers take one label per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from imblearn.over_sampling import ADASYN, SMOTE, SVMSMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from pydantic import Field, model_validator

from ..config import Spec
from ..core.errors import TransferlabError
from ..core.registry import Registry
from ..core.seeding import derived_seed

# spec, seed → an imbalanced-learn sampler (fit_resample)
SAMPLERS: Registry[Callable[[Any, int], Any]] = Registry("resampling method")
NEIGHBOUR_METHODS = ("smote", "svm-smote", "adasyn")


@SAMPLERS.register("smote")
def _smote(spec, seed: int):
    return SMOTE(sampling_strategy=spec.strategy, k_neighbors=spec.k_neighbors, random_state=seed)


@SAMPLERS.register("svm-smote")
def _svm_smote(spec, seed: int):
    return SVMSMOTE(sampling_strategy=spec.strategy, k_neighbors=spec.k_neighbors, random_state=seed)


@SAMPLERS.register("adasyn")
def _adasyn(spec, seed: int):
    return ADASYN(sampling_strategy=spec.strategy, n_neighbors=spec.k_neighbors, random_state=seed)


@SAMPLERS.register("random-over")
def _random_over(spec, seed: int):
    return RandomOverSampler(sampling_strategy=spec.strategy, random_state=seed)


@SAMPLERS.register("random-under")
def _random_under(spec, seed: int):
    return RandomUnderSampler(sampling_strategy=spec.strategy, random_state=seed)


class ResampleSpec(Spec):
    method: Literal[tuple(SAMPLERS)] = Field(description="smote, svm-smote, adasyn (synthetic rows), "
                                             "random-over or random-under")
    k_neighbors: int = Field(5, gt=0, description="smote, svm-smote, adasyn: neighbours a new row is drawn "
                             "between")
    strategy: Literal["auto", "minority", "not minority", "not majority", "all"] = Field(
        "auto", description="which classes are resampled (imbalanced-learn's sampling_strategy)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"method": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _neighbours_only_where_used(self):
        if "k_neighbors" in self.model_fields_set and self.method not in NEIGHBOUR_METHODS:
            raise ValueError(f"k_neighbors applies to {' / '.join(NEIGHBOUR_METHODS)}, not {self.method}; drop it")
        return self


class FeatureParams(Spec):
    """What every paradigm on cached features takes besides its own hyper-parameters."""

    resample: ResampleSpec | None = Field(None, description="resample the training vectors first: smote, "
                                          "svm-smote, adasyn, random-over, random-under, or {method: ..., "
                                          "k_neighbors: 5, strategy: auto} (single-label)")


def resampled(X: np.ndarray, y: np.ndarray, spec: ResampleSpec | None, seed: int, multi_label: bool,
              n_classes: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """(X, y) after `spec`'s sampler (unchanged without one), and what it did, for `selected_`."""
    if spec is None:
        return X, y, None
    if multi_label:
        raise TransferlabError(f"resample: {spec.method} needs one label per image, but these data are "
                               "multi-label; drop resample (class_weights or sampler balance multi-label data)")
    sampler = SAMPLERS.create(spec.method, spec, derived_seed(seed, "resample"))
    try:
        X_new, y_new = sampler.fit_resample(X, y)
    except (ValueError, RuntimeError) as exc:  # e.g. a class with fewer images than k_neighbors + 1
        reason = " ".join(str(exc).split())  # one line, whatever imbalanced-learn wrote
        raise TransferlabError(f"resample: {spec.method} failed on these training data ({reason}); lower "
                               "k_neighbors or choose another method") from None
    before, after = np.bincount(y, minlength=n_classes), np.bincount(y_new, minlength=n_classes)
    return X_new.astype(X.dtype, copy=False), y_new, {
        "method": spec.method, "rows_before": int(len(y)), "rows_after": int(len(y_new)),
        "added_per_class": np.maximum(after - before, 0).tolist(),
        "removed_per_class": np.maximum(before - after, 0).tolist()}
