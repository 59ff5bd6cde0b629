"""Cut pools into train / val / test index splits: stratified, deterministic by seed.

The honest protocol: test is fixed across run seeds (official test set, or carved with `split_seed`), so
every seed and every paradigm is scored on the same images; validation and the few-shot training subset
are drawn with the run's seed, so the mean ± std over seeds covers the sampling of the training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from ..config import DataSpec
from ..errors import TransferlabError
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
    train_pool = np.arange(len(pools.train))
    labels = pools.train.labels

    if pools.test is not None:
        test_idx = np.arange(len(pools.test))
        if spec.test_size is not None:
            test_idx = _stratified_take(test_idx, pools.test.labels, spec.test_size, spec.split_seed, "data.test_size")
        test = Split(pools.test, test_idx)
    else:
        fraction = spec.test_size if spec.test_size is not None else DEFAULT_TEST_FRACTION
        test_idx = _stratified_take(train_pool, labels, fraction, spec.split_seed, "data.test_size")
        train_pool = np.setdiff1d(train_pool, test_idx)
        test = Split(pools.train, test_idx)

    if pools.val is not None:
        val = Split(pools.val, np.arange(len(pools.val)))
    else:
        val_idx = _stratified_take(train_pool, labels, spec.val_size, seed, "data.val_size")
        train_pool = np.setdiff1d(train_pool, val_idx)
        val = Split(pools.train, val_idx)

    if spec.train_size is not None:
        train_pool = _stratified_take(train_pool, labels, spec.train_size, seed, "data.train_size")
    if spec.limit_per_class is not None:
        train_pool = _limit_per_class(train_pool, labels, spec.limit_per_class, seed)
    splits = {"train": Split(pools.train, np.sort(train_pool)), "val": val, "test": test}
    for name, split in splits.items():
        if len(split) == 0:
            raise TransferlabError(f"data: the {name} split is empty ({len(pools.train)} images in the pool); "
                                   "lower val_size / test_size or add images")
    return splits


def _stratified_take(pool: np.ndarray, labels: np.ndarray, size: int | float, seed: int, field: str) -> np.ndarray:
    """`size` indices of `pool` (a count, or a fraction when < 1), with class proportions kept."""
    if isinstance(size, float) and size >= 1:
        size = int(size)
    if isinstance(size, int) and size >= len(pool):
        if size == len(pool):
            return np.sort(pool)
        raise TransferlabError(f"{field}={size} but only {len(pool)} images are left to draw from; lower it")
    try:
        taken, _ = train_test_split(pool, train_size=size, stratify=labels[pool], random_state=seed)
    except ValueError as exc:  # too few images of some class to stratify
        raise TransferlabError(f"{field}={size}: cannot draw a stratified subset ({exc}); "
                               "change the size or add images") from None
    return np.sort(taken)


def _limit_per_class(pool: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(pool)
    kept = [shuffled[labels[shuffled] == c][:limit] for c in np.unique(labels[pool])]
    return np.sort(np.concatenate(kept))


def split_sizes(splits: dict[str, Split]) -> dict[str, int]:
    return {name: len(split) for name, split in splits.items()}
