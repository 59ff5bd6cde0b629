"""Sources and splits: stratified, deterministic, honest; bad folders fail with one line naming the path."""

from __future__ import annotations

import os

import numpy as np
import pytest

from transferlab.config import DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import FolderSource, make_splits, open_pools

from .conftest import needs_fashion_mnist


def digits_splits(seed, **spec):
    return make_splits(open_pools(DataSpec(source="digits")), DataSpec(source="digits", **spec), seed)


def test_digits_splits_are_disjoint_stratified_and_cover_the_pool():
    splits = digits_splits(0)
    sets = [set(s.indices.tolist()) for s in splits.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 1797
    test_share = np.bincount(splits["test"].labels, minlength=10) / len(splits["test"])
    pool_share = np.bincount(open_pools(DataSpec(source="digits")).train.labels) / 1797
    assert np.abs(test_share - pool_share).max() < 0.01  # class proportions kept


def test_same_seed_same_splits_other_seed_other_train_but_same_test():
    a, b, c = digits_splits(0, train_size=300), digits_splits(0, train_size=300), digits_splits(1, train_size=300)
    assert all(np.array_equal(a[k].indices, b[k].indices) for k in a)
    assert not np.array_equal(a["train"].indices, c["train"].indices)
    assert np.array_equal(a["test"].indices, c["test"].indices)  # test is fixed across run seeds


def test_few_shot_train_size_and_limit_per_class():
    splits = digits_splits(0, train_size=200, val_size=100)
    assert len(splits["train"]) == 200 and len(splits["val"]) == 100
    assert np.bincount(splits["train"].labels).min() >= 18  # stratified: ~20 per class
    limited = digits_splits(0, limit_per_class=7)
    assert np.bincount(limited["train"].labels).max() == 7


def test_train_size_larger_than_the_pool_is_one_line():
    with pytest.raises(TransferlabError, match=r"data\.train_size=5000 but only \d+ images"):
        digits_splits(0, train_size=5000)


@needs_fashion_mnist
def test_fashion_mnist_uses_the_official_test_set_or_a_fixed_subset(fashion_pools):
    spec = DataSpec(source="fashion-mnist", train_size=100, val_size=100)
    full = make_splits(fashion_pools, spec, seed=0)
    assert len(full["test"]) == 10_000 and full["test"].source is fashion_pools.test
    sub = DataSpec(source="fashion-mnist", train_size=100, val_size=100, test_size=2000)
    a, b = make_splits(fashion_pools, sub, 0), make_splits(fashion_pools, sub, 1)
    assert len(a["test"]) == 2000 and np.array_equal(a["test"].indices, b["test"].indices)
    assert np.bincount(a["test"].labels).tolist() == [200] * 10


def test_image_folder_classes_labels_and_explicit_test_folder(image_folder):
    train, test = image_folder
    pools = open_pools(DataSpec(source=str(train), test=str(test)))
    assert pools.train.classes == ["Sneaker", "T-shirt-top", "Trouser"]
    assert len(pools.train) == 120 and len(pools.test) == 60
    assert pools.test.classes == pools.train.classes
    assert pools.train.load(0).mode == "RGB" and pools.train.load(0).size == (28, 28)
    splits = make_splits(pools, DataSpec(source=str(train), test=str(test)), 0)
    assert len(splits["test"]) == 60 and len(splits["train"]) + len(splits["val"]) == 120


def test_fingerprint_changes_when_a_file_changes(copy_folder):
    before = FolderSource(copy_folder).fingerprint
    assert FolderSource(copy_folder).fingerprint == before
    victim = next(copy_folder.glob("Trouser/*.png"))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert FolderSource(copy_folder).fingerprint != before


@pytest.mark.parametrize("case, message", [
    ("missing", "no such dataset folder or manifest, and not a builtin"),
    ("empty", "no class folders inside"),
    ("empty_class", "class folder has no images"),
    ("test_extra_class", "is not a training class"),
])
def test_bad_folders_fail_with_one_line_naming_the_path(tmp_path, copy_folder, case, message):
    source, test = str(copy_folder), None
    if case == "missing":
        source = str(tmp_path / "nowhere")
    elif case == "empty":
        source = str(tmp_path / "empty")
        os.mkdir(source)
    elif case == "empty_class":
        (copy_folder / "Bag").mkdir()
    else:
        test = tmp_path / "test"
        (test / "Bag").mkdir(parents=True)
    with pytest.raises(TransferlabError, match=message) as err:
        open_pools(DataSpec(source=source, test=str(test) if test else None))
    assert "\n" not in str(err.value)


def test_file_and_class_names_that_are_not_utf8_run_end_to_end(copy_folder, tmp_path):
    """Latin-1 names (bytes that are not UTF-8, as old archives hold them) are images like any other: the
    fingerprint, a run, its record and report, and inspect all work; pages show such bytes as \\xNN."""

    import transferlab
    from transferlab import api

    root = os.fsencode(copy_folder)
    victim = next(copy_folder.glob("Trouser/*.png"))
    latin = os.path.join(root, b"Trouser", b"caf\xe9-" + os.fsencode(victim.name))
    os.rename(os.fsencode(victim), latin)
    os.rename(os.path.join(root, b"Sneaker"), os.path.join(root, b"Sneaker-\xe9t\xe9"))
    source = FolderSource(copy_folder)
    assert "Sneaker-\\xe9t\\xe9" in source.classes  # shown as the escapes of its bytes
    assert latin in [os.fsencode(p) for p in source.paths] and len(source.fingerprint) == 20
    records = transferlab.study({"name": "latin1", "datasets": [{"source": str(copy_folder), "name": "latin1"}],
                                 "paradigms": ["pixels"], "seeds": [0], "references": False}, tmp_path / "out")
    assert len(records) == 1 and (tmp_path / "out" / "report.html").is_file()
    with open(os.path.join(root, b"Trouser", b"broken-\xe9.png"), "wb") as f:  # listed by name as unreadable
        f.write(b"not a png")
    summary = api.inspect(str(copy_folder), out=tmp_path / "inspect", augment=())
    assert sum(s["unreadable"] for s in summary["splits"].values()) == 1
    assert "broken-\\xe9.png" in (tmp_path / "inspect" / "inspect.html").read_text()


def test_atomic_write_keeps_the_old_file_and_no_temporary_when_the_write_fails(tmp_path):
    from transferlab.core.paths import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "leaderboard.csv", "old\n")

    def half_then_fail(tmp):
        tmp.write_text("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"]
