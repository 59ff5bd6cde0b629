"""Cut pools into train / val / test index splits: stratified, deterministic by seed.

The honest protocol: test is fixed across run seeds (official test set, or carved with `split_seed`), so
every seed and every paradigm is scored on the same images; validation and the few-shot training subset
are drawn with the run's seed, so the mean ± std over seeds covers the sampling of the training data.
With `folds: k` the folds are cut once (by `split_seed`) and the run seed picks the validation fold.
`limit_per_class` then caps the training images of every class, or of the named ones only (an imbalance
reproduced by subsampling); validation and test keep theirs.

Single-label data are stratified by scikit-learn; multi-label data (a 0/1 label matrix) by iterative
stratification (Sechidis et al. 2011, the `iterative-stratification` package), which keeps every label's
frequency in each split as far as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..config import DataSpec
from ..core.errors import TransferlabError
from ..core.registry import did_you_mean
from .sources import ImageSource, Pools

DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """A subset of one source, by index."""

    source: ImageSource
    indices: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)


def make_splits(pools: Pools, spec: DataSpec, seed: int) -> dict[str, Split]:
    """train / val / test splits of `pools` following `spec`; the same inputs give the same indices."""
    _check_nothing_ignored(pools, spec)
    train_pool = np.arange(len(pools.train))
    labels = pools.train.labels
    test_size, val_size = spec.test_size, spec.val_size
    if spec.ratios is not None:
        train_share, val_share, test_share = (r / sum(spec.ratios) for r in spec.ratios)
        test_size, val_size = test_share, val_share / (train_share + val_share)

    if pools.test is not None:
        test_idx = np.arange(len(pools.test))
        if spec.test_size is not None:
            test_idx = _stratified_take(test_idx, pools.test.labels, spec.test_size, spec.split_seed, "data.test_size")
        test = Split(pools.test, test_idx)
    else:
        fraction = test_size if test_size is not None else DEFAULT_TEST_FRACTION
        test_idx = _stratified_take(train_pool, labels, fraction, spec.split_seed, "data.test_size")
        train_pool = np.setdiff1d(train_pool, test_idx)
        test = Split(pools.train, test_idx)

    if pools.val is not None:
        val = Split(pools.val, np.arange(len(pools.val)))
    elif spec.folds is not None:
        val_idx = _fold(train_pool, labels, spec.folds, seed % spec.folds, spec.split_seed)
        train_pool = np.setdiff1d(train_pool, val_idx)
        val = Split(pools.train, val_idx)
    else:
        val_idx = _stratified_take(train_pool, labels, val_size, seed, "data.val_size")
        train_pool = np.setdiff1d(train_pool, val_idx)
        val = Split(pools.train, val_idx)

    if spec.train_size is not None:
        train_pool = _stratified_take(train_pool, labels, spec.train_size, seed, "data.train_size")
    if spec.limit_per_class is not None:
        if labels.ndim == 2:
            raise TransferlabError("data.limit_per_class: not defined for multi-label data (an image has several "
                                   "classes); use data.train_size")
        train_pool = _limit_per_class(train_pool, labels, _limits(spec.limit_per_class, pools.train.classes), seed)
    splits = {"train": Split(pools.train, np.sort(train_pool)), "val": val, "test": test}
    for name, split in splits.items():
        if len(split) == 0:
            raise TransferlabError(f"data: the {name} split is empty ({len(pools.train)} images in the pool); "
                                   "lower val_size / test_size or add images")
    return splits


def _check_nothing_ignored(pools: Pools, spec: DataSpec) -> None:
    """An official (or given) validation / test set is used as it is: a split option that would cut one
    is refused, pointing at official_split: false, rather than silently not applied."""
    given = spec.model_fields_set
    for pool, name, options in ((pools.test, "test", ("ratios",)), (pools.val, "validation", ("ratios", "val_size",
                                                                                             "folds"))):
        used = [option for option in options if option in given and getattr(spec, option) is not None]
        if pool is not None and used:
            raise TransferlabError(f"data.{used[0]}: {spec.source} has its own {name} set, which {used[0]} would "
                                   "not cut; set official_split: false to pool all its images and cut them, or "
                                   f"drop {used[0]}")


def _stratified_take(pool: np.ndarray, labels: np.ndarray, size: int | float, seed: int, field: str) -> np.ndarray:
    """`size` indices of `pool` (a count, or a fraction when < 1), with class (or label) proportions kept."""
    if isinstance(size, float) and size >= 1:
        size = int(size)
    if isinstance(size, int) and size >= len(pool):
        if size == len(pool):
            return np.sort(pool)
        raise TransferlabError(f"{field}={size} but only {len(pool)} images are left to draw from; lower it")
    try:  # a ValueError from either splitter: too few images, or (multi-label) fewer than two labels in use
        if labels.ndim == 2:
            splitter = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=size, test_size=None,
                                                        random_state=seed)
            taken, _ = next(splitter.split(pool, labels[pool]))
            return np.sort(pool[taken])
        taken, _ = train_test_split(pool, train_size=size, stratify=labels[pool], random_state=seed)
    except ValueError as exc:
        what = (f"{len(pool)} images, {labels.shape[1]} labels" if labels.ndim == 2 else f"{len(pool)} images")
        raise TransferlabError(f"{field}={size}: cannot draw a stratified subset of {what} ({exc}); "
                               "change the size or add images") from None
    return np.sort(taken)


def _fold(pool: np.ndarray, labels: np.ndarray, k: int, fold: int, split_seed: int) -> np.ndarray:
    """Fold `fold` of a stratified k-fold partition of `pool` (the partition depends on split_seed only)."""
    if labels.ndim == 2:
        folds = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=split_seed)
    else:
        counts = np.bincount(labels[pool])
        smallest = int(counts[counts > 0].min())
        if smallest < k:
            raise TransferlabError(f"data.folds={k}: a class has only {smallest} images left for training and "
                                   "validation; lower folds or add images")
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=split_seed)
    _, held_out = list(folds.split(pool, labels[pool]))[fold]
    return np.sort(pool[held_out])


def _limits(limit: int | dict[str, int], classes: list[str]) -> list[int | None]:
    """The cap of each class index (None: keep all): one number for every class, or {class name: cap}."""
    if not isinstance(limit, dict):
        return [limit] * len(classes)
    for name in limit:
        if name not in classes:
            hint = did_you_mean(name, classes)
            raise TransferlabError(f"data.limit_per_class: '{name}' is not a class{hint}; the classes are "
                                   f"{', '.join(classes[:30])}{', ...' if len(classes) > 30 else ''}")
    return [limit.get(name) for name in classes]


def _limit_per_class(pool: np.ndarray, labels: np.ndarray, limits: list[int | None], seed: int) -> np.ndarray:
    """At most `limits[c]` images of each class c of `pool`, the first ones of one seeded shuffle."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(pool)
    kept = [shuffled[labels[shuffled] == c][:limits[c]] for c in np.unique(labels[pool])]
    return np.sort(np.concatenate(kept))


def split_sizes(splits: dict[str, Split]) -> dict[str, int]:
    return {name: len(split) for name, split in splits.items()}


def split_indices(splits: dict[str, Split]) -> dict[str, dict]:
    """Which images each split holds, for the run record (a run can be reproduced from it)."""
    return {name: {"source": split.source.name, "indices": split.indices.tolist()} for name, split in splits.items()}
