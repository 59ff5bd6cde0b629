"""`open_pools(spec)`: the pools a `DataSpec` names (train, and official val / test where it has them), from a
builtin dataset, an image-folder root or a manifest, split files, or a Hugging Face dataset (`hf.py`)."""

from __future__ import annotations

from pathlib import Path

from ..config import DataSpec
from ..core.errors import TransferlabError
from ..core.names import unknown_dataset_message
from ..core.registry import did_you_mean
from .builtins import BUILTINS
from .hf import HUB_PREFIX, hf_pools, hf_source, hub_pools, is_hf_data
from .manifests import pools_from_split_files, read_manifest
from .sources import MANIFEST_EXTENSIONS, FolderSource, ImageSource, PooledSource, Pools, subset_classes
from .tag_files import read_tag_files


def open_pools(spec: DataSpec) -> Pools:
    """The pools of `spec.source`: a builtin name, an image-folder root, a manifest or a Hugging Face dataset
    (plus optional val / test folders or manifests, or split files listing each split's images); with
    `data.select_classes`, only those classes, in that order, in every pool."""
    pools = _listed_pools(spec)
    if not spec.official_split:
        pools = _pooled(pools, spec.source)
    kept = spec.select_classes or _all_but(pools.train, spec.exclude_classes)
    if kept is None:
        return pools
    return Pools(*(None if pool is None else subset_classes(pool, kept)
                   for pool in (pools.train, pools.val, pools.test)))


def _all_but(source: ImageSource, excluded: list[str] | None) -> list[str] | None:
    """The classes left after `data.exclude_classes`, in their order (None: nothing excluded)."""
    if excluded is None:
        return None
    for name in excluded:
        if name not in source.classes:
            raise TransferlabError(f"data.exclude_classes: '{name}' is not a class of {source.name}"
                                   f"{did_you_mean(name, source.classes)}; check the name")
    return [name for name in source.classes if name not in excluded]


def _pooled(pools: Pools, source: str) -> Pools:
    """Every image of the official splits in one training pool, for the spec's own split to cut."""
    parts = [pool for pool in (pools.train, pools.val, pools.test) if pool is not None]
    if len(parts) == 1:
        raise TransferlabError(f"data.official_split: false, but {source} has no official validation or test set "
                               "to pool; drop official_split")
    return Pools(train=PooledSource(f"{pools.train.name}+official", parts))


def _listed_pools(spec: DataSpec) -> Pools:
    if spec.source in BUILTINS:
        if spec.val or spec.test or spec.splits:
            raise TransferlabError(f"data.source '{spec.source}' is a builtin dataset with its own splits; "
                                   "drop data.val / data.test / data.splits")
        return BUILTINS.create(spec.source)
    if spec.tag_files is not None:
        if spec.val or spec.test or spec.splits:
            raise TransferlabError("data.tag_files: the tags cover one image folder; drop data.val / data.test / "
                                   "data.splits (validation and test are carved from it)")
        return Pools(train=read_tag_files(spec))
    if spec.source.startswith(HUB_PREFIX):
        _refuse_given_splits(spec, "a Hugging Face Hub dataset with its own splits")
        return hub_pools(spec)
    problem = unknown_dataset_message(spec.source, list(BUILTINS))
    if problem:
        raise TransferlabError(problem)
    path = Path(spec.source)
    if is_hf_data(path):
        pools = hf_pools(path, spec)
        if not (spec.val or spec.test or spec.splits):
            return pools  # with the official splits its file names or DatasetDict gave, if any
        if pools.val is not None or pools.test is not None or spec.splits:
            _refuse_given_splits(spec, "a Hugging Face dataset with its own splits")
        train = pools.train
    elif spec.splits:
        return pools_from_split_files(spec)
    else:
        train = _open_one(spec.source, spec, spec.classes, training=True)
    val = _open_one(spec.val, spec, train.classes) if spec.val else None
    test = _open_one(spec.test, spec, train.classes) if spec.test else None
    for pool in (val, test):
        if pool is not None and pool.multi_label != train.multi_label:
            raise TransferlabError(f"{pool.root}: {'multi' if pool.multi_label else 'single'}-label, but the "
                                   "training data are not; give every split the same kind of labels")
    return Pools(train=train, val=val, test=test)


def _open_one(where: str, spec: DataSpec, classes: list[str] | None, training: bool = False) -> ImageSource:
    if is_hf_data(Path(where)):  # decided by the schema: a Parquet file may be Hub data or a manifest
        return hf_source(Path(where), spec, classes)
    if Path(where).suffix.lower() in MANIFEST_EXTENSIONS:
        return read_manifest(Path(where), spec, classes)
    return FolderSource(where, classes, skip_empty=spec.skip_bad, max_pixels=spec.max_pixels,
                        imposed_by_training=not training)


def _refuse_given_splits(spec: DataSpec, what: str) -> None:
    if spec.val or spec.test or spec.splits:
        raise TransferlabError(f"data.source '{spec.source}' is {what}; drop data.val / data.test / data.splits")
