"""Class imbalance: loss weights, per-epoch balanced sampling, offline oversampling, multi-label weights.

Three independent levers, each a small function the training loop (or a paradigm) calls:
- **loss weights** (`class_weights`): scikit-learn's "balanced" (n / (C · n_c)), or the effective number of
  samples (Cui et al. 2019): w_c ∝ (1 − β) / (1 − β^n_c), normalised to sum to the number of classes;
- **sampling per epoch** (`sampled_order`): "weighted" draws as many images as there are, with
  replacement, each with probability ∝ 1 / its class's count (multi-label: the mean inverse frequency of
  its labels, `label_frequency_sample_weights`); "undersample" draws the smallest class's
  count from every class, without replacement. Both are reproducible from (seed, epoch);
- **offline oversampling**: augmented copies until every class has at least N images (`oversample`), or of
  the named classes only, `factor` − 1 copies of each of their images (`oversample_classes`; study 002
  doubled its two short species).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler

from ..config import Spec
from ..core.errors import TransferlabError
from ..core.registry import did_you_mean
from ..core.seeding import derived_seed
from .augment import Augment, augmented_copies

ClassWeights = Literal["none", "balanced", "effective"]
Sampler = Literal["none", "weighted", "undersample"]


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=n_classes).tolist()


# ---------------------------------------------------------------- loss weights


def class_weights(labels: np.ndarray, n_classes: int, kind: ClassWeights, beta: float = 0.999) -> np.ndarray | None:
    """Per-class loss weights (float32, length n_classes), or None for "none".

    Classes absent from `labels` get weight 1: no training example carries them, so the value never acts.
    """
    if kind == "none":
        return None
    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.ones(n_classes, dtype=np.float32)
    if kind == "balanced":
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    else:
        weights[present] = effective_number_weights(np.bincount(labels, minlength=n_classes)[present], beta)
    return weights


def effective_number_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples": E_n = (1 − β^n) / (1 − β),
    w ∝ 1 / E_n, scaled so the weights sum to the number of classes (the paper's normalisation).

    scikit-learn has no such weighting, hence these three lines. β → 0 gives equal weights, β → 1 inverse
    frequency ("balanced").
    """
    effective = (1.0 - np.power(beta, np.asarray(counts, dtype=np.float64))) / (1.0 - beta)
    weights = 1.0 / effective
    return weights * len(weights) / weights.sum()


# ---------------------------------------------------------------- sampling per epoch


def epoch_length(labels: np.ndarray, sampler: Sampler) -> int:
    """Images drawn per epoch (before sharding across ranks)."""
    labels = np.asarray(labels)
    if sampler == "undersample":
        counts = np.bincount(labels)
        present = counts[counts > 0]
        return int(present.min()) * len(present)
    return len(labels)


def sampled_order(labels: np.ndarray, sampler: Sampler, seed: int, epoch: int) -> torch.Tensor:
    """The whole epoch's order of training indices for a balancing sampler, reproducible from (seed, epoch).

    Under torchrun every rank computes the same full order and takes its own shard of it.
    """
    labels = np.asarray(labels)
    generator = torch.Generator().manual_seed(derived_seed(seed, "sampler", epoch))
    if labels.ndim == 2:  # a 0/1 label matrix: each image weighs the mean inverse frequency of its labels
        if sampler != "weighted":
            raise ValueError(f"sampler '{sampler}' needs one label per image; multi-label data take 'weighted'")
        weights = torch.as_tensor(label_frequency_sample_weights(labels), dtype=torch.float64)
        return _weighted_order(weights, generator)
    counts = np.bincount(labels)
    if sampler == "weighted":
        return _weighted_order(torch.as_tensor(1.0 / counts[labels], dtype=torch.float64), generator)
    if sampler == "undersample":
        # torch and scikit-learn have no per-class sampler without replacement (imbalanced-learn's
        # RandomUnderSampler would be one more dependency for four lines).
        keep = int(counts[counts > 0].min())
        picks = [members[torch.randperm(len(members), generator=generator)[:keep].numpy()]
                 for members in (np.flatnonzero(labels == c) for c in np.flatnonzero(counts))]
        chosen = torch.as_tensor(np.concatenate(picks))
        return chosen[torch.randperm(len(chosen), generator=generator)]
    raise ValueError(f"sampler '{sampler}' draws no balanced order")


def _weighted_order(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """As many draws as images, with replacement, each ∝ its weight."""
    return torch.tensor(list(WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)))


# ---------------------------------------------------------------- offline oversampling


def oversample_plan(labels: np.ndarray, target: int) -> np.ndarray:
    """Indices of the images to copy so every class below `target` reaches it.

    Each short class's images are taken in turn, cycling, so copies spread evenly over the originals (each
    copied ⌊k⌋ or ⌈k⌉ times) instead of piling onto a few by chance. Classes at or above `target` get none.
    """
    labels = np.asarray(labels)
    plan = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        short = target - len(members)
        if short > 0:
            plan.append(members[np.arange(short) % len(members)])
    return np.concatenate(plan) if plan else np.empty(0, dtype=np.int64)


def oversample(x: torch.Tensor, labels: torch.Tensor, target: int, augment: Augment,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, labels) with augmented copies appended until every class has at least `target` images (seeded)."""
    return _with_copies(x, labels, oversample_plan(labels.numpy(), target), augment, seed)


class OversampleClasses(Spec):
    """`oversample_classes: {classes: [...], factor: 2}`: every image of these classes, `factor` times."""

    classes: list[str] = Field(min_length=1, description="the classes to top up, by name")
    factor: int = Field(2, ge=2, description="each of their images appears this many times (the original and "
                        "factor − 1 augmented copies)")


def oversample_named(x: torch.Tensor, labels: torch.Tensor, spec: OversampleClasses, classes: list[str],
                     augment: Augment, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, labels) with `spec.factor` − 1 augmented copies of every image of the named classes (seeded)."""
    for name in spec.classes:
        if name not in classes:
            raise TransferlabError(f"oversample_classes: '{name}' is not a class of these data"
                                   f"{did_you_mean(name, classes)}; name classes of the training set")
    members = np.flatnonzero(np.isin(labels.numpy(), [classes.index(name) for name in spec.classes]))
    return _with_copies(x, labels, np.tile(members, spec.factor - 1), augment, seed)


def _with_copies(x: torch.Tensor, labels: torch.Tensor, plan: np.ndarray, augment: Augment,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not len(plan):
        return x, labels
    (copies,) = augmented_copies(x[plan], augment, 1, derived_seed(seed, "oversample"))
    return torch.cat([x, copies]), torch.cat([labels, labels[plan]])


# ---------------------------------------------------------------- multi-label (N × C 0/1 matrices)


def pos_weight(label_matrix: np.ndarray) -> np.ndarray:
    """BCEWithLogitsLoss's `pos_weight`: negatives / positives per class (float32).

    A class without positives, or without negatives, gets 1: nothing can be weighted against the other side
    (an infinite weight would turn into NaNs, a zero one would stop the class from learning at all).
    """
    Y = np.asarray(label_matrix, dtype=np.float64)
    positives = Y.sum(axis=0)
    negatives = len(Y) - positives
    both = (positives > 0) & (negatives > 0)
    return np.where(both, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)


def label_frequency_sample_weights(label_matrix: np.ndarray) -> np.ndarray:
    """Per-image weights from inverse label frequency (float32, mean 1).

    Each label gets scikit-learn's "balanced" weight over all positive labels (n_pos / (C · n_c)); an image
    weighs the mean of its labels' weights; images with no label weigh 1 before the final scaling.
    """
    Y = np.asarray(label_matrix).astype(bool)
    _, cols = np.nonzero(Y)
    per_label = np.ones(Y.shape[1])
    if len(cols):
        present = np.unique(cols)
        per_label[present] = compute_class_weight("balanced", classes=present, y=cols)
    n_labels = Y.sum(axis=1)
    weights = np.ones(len(Y))
    labelled = n_labels > 0
    weights[labelled] = (Y[labelled] * per_label).sum(axis=1) / n_labels[labelled]
    return (weights / weights.mean()).astype(np.float32)
