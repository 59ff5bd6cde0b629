"""Miniature stand-ins of reference studies, on real data: `data.select_classes` (some classes, in an order,
from any source), `data.limit_per_class: {class: n}` (an imbalance reproduced by subsampling the training
images) and the `fashion-mnist-mosaics` builtin (multi-label mosaics of real garments)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferlab.config import DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import make_splits, open_pools
from transferlab.data.builtins import FASHION_MNIST_CLASSES, MOSAIC_EMPTY, load_fashion_mnist_mosaics

from .conftest import needs_fashion_mnist


def one_line_error(spec: DataSpec, match: str, seed: int | None = None) -> str:
    with pytest.raises(TransferlabError, match=match) as caught:
        pools = open_pools(spec)
        if seed is not None:
            make_splits(pools, spec, seed)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ---------------------------------------------------------------- select_classes


@needs_fashion_mnist
def test_select_classes_on_a_builtin_keeps_those_images_in_that_order_in_every_pool(fashion_pools):
    spec = DataSpec(source="fashion-mnist", select_classes=["Bag", "Trouser", "Sneaker"])
    pools = open_pools(spec)
    for full, narrowed in ((fashion_pools.train, pools.train), (fashion_pools.test, pools.test)):
        assert narrowed.classes == ["Bag", "Trouser", "Sneaker"]
        originals = [FASHION_MNIST_CLASSES.index(c) for c in narrowed.classes]  # 8, 1, 7
        kept = np.flatnonzero(np.isin(full.labels, originals))
        assert len(narrowed) == len(kept) == 3 * len(full) // 10  # Fashion-MNIST is balanced
        assert np.array_equal(narrowed.images, full.images[kept])  # the same images, in the pool's order
        assert np.array_equal(np.asarray(originals)[narrowed.labels], full.labels[kept])  # re-indexed to the order
        assert narrowed.fingerprint != full.fingerprint  # caches keyed by it cannot mix the two
    splits = make_splits(pools, spec, seed=0)
    assert sorted(np.unique(splits["train"].labels)) == [0, 1, 2] and len(splits["test"]) == 3000


def test_select_classes_on_digits_changes_the_fingerprint_with_the_order():
    a = open_pools(DataSpec(source="digits", select_classes=["7", "3"])).train
    b = open_pools(DataSpec(source="digits", select_classes=["3", "7"])).train
    assert a.classes == ["7", "3"] and b.classes == ["3", "7"]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, 1 - b.labels)
    assert a.fingerprint != b.fingerprint


def test_select_classes_on_an_image_folder_and_its_test_folder(image_folder):
    train, test = image_folder
    spec = DataSpec(source=str(train), test=str(test), select_classes=["Trouser", "Sneaker"])
    pools = open_pools(spec)
    full = open_pools(DataSpec(source=str(train), test=str(test)))
    for pool, per_class in ((pools.train, 40), (pools.test, 20)):
        assert pool.classes == ["Trouser", "Sneaker"]
        assert np.bincount(pool.labels).tolist() == [per_class, per_class]
        assert all(path.parent.name == pool.classes[label] for path, label in zip(pool.paths, pool.labels, strict=True))
        assert pool.load(0).size == (28, 28)
    assert pools.train.fingerprint != full.train.fingerprint
    splits = make_splits(pools, spec, seed=0)
    assert len(splits["test"]) == 40 and len(splits["train"]) + len(splits["val"]) == 80


@needs_fashion_mnist
def test_select_classes_on_a_multi_label_manifest_keeps_every_image_and_those_columns(mosaic_manifest):
    full = open_pools(DataSpec(source=str(mosaic_manifest))).train
    narrowed = open_pools(DataSpec(source=str(mosaic_manifest), select_classes=["bag", "tshirt"])).train
    assert narrowed.multi_label and narrowed.classes == ["bag", "tshirt"]
    # every image stays: one with neither garment is a true negative for both classes
    assert narrowed.paths == full.paths
    columns = [full.classes.index("bag"), full.classes.index("tshirt")]
    assert np.array_equal(narrowed.labels, full.labels[:, columns])
    unlabelled = (narrowed.labels.sum(1) == 0).sum()
    assert unlabelled > (full.labels.sum(1) == 0).sum() > 0
    assert narrowed.fingerprint != full.fingerprint


def test_an_unknown_or_repeated_class_is_one_line_with_the_close_match(image_folder):
    train, _ = image_folder
    message = one_line_error(DataSpec(source=str(train), select_classes=["Trouser", "Sneakers"]),
                             r"data\.select_classes: 'Sneakers' .*did you mean 'Sneaker'")
    assert "Sneaker, T-shirt-top, Trouser" in message  # the classes there are
    one_line_error(DataSpec(source="digits", select_classes=["3", "3"]), r"data\.select_classes: '3' is listed twice")


# ---------------------------------------------------------------- limit_per_class {class: n}


def test_a_dict_limit_caps_only_the_named_classes_in_train_and_leaves_val_test_alone():
    base = DataSpec(source="digits")
    capped = DataSpec(source="digits", limit_per_class={"3": 10, "8": 2})
    pools = open_pools(base)
    full, limited = make_splits(pools, base, seed=0), make_splits(pools, capped, seed=0)
    counts, before = np.bincount(limited["train"].labels), np.bincount(full["train"].labels)
    assert counts[3] == 10 and counts[8] == 2
    others = [c for c in range(10) if c not in (3, 8)]
    assert np.array_equal(counts[others], before[others])  # classes not named keep all their images
    assert set(limited["train"].indices) <= set(full["train"].indices)
    for name in ("val", "test"):
        assert np.array_equal(limited[name].indices, full[name].indices)
    again, other = make_splits(pools, capped, seed=0), make_splits(pools, capped, seed=1)
    assert np.array_equal(again["train"].indices, limited["train"].indices)  # deterministic per seed
    threes = [s["train"].indices[s["train"].labels == 3] for s in (limited, other)]
    assert not np.array_equal(*threes)  # another seed keeps other images of the capped class


@needs_fashion_mnist
def test_a_dict_limit_names_the_selected_classes(fashion_pools):
    spec = DataSpec(source="fashion-mnist", select_classes=["Sneaker", "Bag"], limit_per_class={"Bag": 60},
                    train_size=1000, val_size=200)
    splits = make_splits(open_pools(spec), spec, seed=3)
    assert np.bincount(splits["train"].labels).tolist() == [500, 60]  # train_size first, then the cap
    assert np.bincount(splits["val"].labels).tolist() == [100, 100]
    assert np.bincount(splits["test"].labels).tolist() == [1000, 1000]


def test_a_dict_limit_with_an_unknown_class_is_one_line():
    one_line_error(DataSpec(source="digits", select_classes=["3", "8"], limit_per_class={"3": 5, "9": 2}),
                   r"data\.limit_per_class: '9' is not a class.*3, 8", seed=0)


@needs_fashion_mnist
def test_a_limit_on_multi_label_data_is_still_refused(mosaic_manifest):
    one_line_error(DataSpec(source=str(mosaic_manifest), limit_per_class={"bag": 5}),
                   r"data\.limit_per_class: not defined for multi-label", seed=0)


# ---------------------------------------------------------------- fashion-mnist-mosaics


@pytest.fixture(scope="module")
def mosaic_pools():
    return open_pools(DataSpec(source="fashion-mnist-mosaics"))


def tiles(images: np.ndarray) -> np.ndarray:
    """N × 4 × 784: the 2 × 2 tiles of each 56 × 56 mosaic, row by row."""
    return images.reshape(-1, 2, 28, 2, 28).transpose(0, 1, 3, 2, 4).reshape(-1, 4, 28 * 28)


@needs_fashion_mnist
def test_mosaics_are_56px_grayscale_with_a_label_matrix(mosaic_pools):
    for pool, n in ((mosaic_pools.train, 3000), (mosaic_pools.test, 1000)):
        assert pool.images.shape == (n, 56, 56) and pool.images.dtype == np.uint8
        assert pool.labels.shape == (n, 10) and pool.labels.dtype == np.uint8 and pool.multi_label
        assert pool.classes == FASHION_MNIST_CLASSES
        per_image = pool.labels.sum(1)
        assert (per_image == 0).any() and (per_image >= 2).any() and per_image.max() <= 4
        assert pool.labels.mean(0).min() > 0.12  # every garment class appears
        assert pool.load(0).mode == "RGB" and pool.load(0).size == (56, 56)
    black = (tiles(mosaic_pools.train.images).max(-1) == 0).mean()
    assert abs(black - MOSAIC_EMPTY) < 0.03


@needs_fashion_mnist
def test_mosaic_labels_are_the_classes_of_the_garments_shown_and_pools_share_no_garment(mosaic_pools, fashion_pools):
    seen = {}
    for part, garments in (("train", fashion_pools.train), ("test", fashion_pools.test)):
        label_of = {image.tobytes(): int(label) for image, label in zip(garments.images, garments.labels, strict=True)}
        pool = getattr(mosaic_pools, part)
        seen[part] = set()
        for tile_row, labels in zip(tiles(pool.images), pool.labels, strict=True):
            shown = set()
            for tile in tile_row:
                if tile.any():  # no Fashion-MNIST garment is all black
                    shown.add(label_of[tile.tobytes()])  # KeyError: a garment from the other pool
                    seen[part].add(tile.tobytes())
            assert set(np.flatnonzero(labels).tolist()) == shown  # an all-black mosaic: no label
    assert not seen["train"] & seen["test"]


@needs_fashion_mnist
def test_mosaics_are_the_same_every_time_and_split_by_iterative_stratification(mosaic_pools):
    again = load_fashion_mnist_mosaics()
    assert again.train.fingerprint == mosaic_pools.train.fingerprint
    assert again.test.fingerprint == mosaic_pools.test.fingerprint
    spec = DataSpec(source="fashion-mnist-mosaics", val_size=0.2)
    splits = make_splits(mosaic_pools, spec, seed=0)
    assert splits["test"].source is mosaic_pools.test and len(splits["test"]) == 1000
    assert len(splits["val"]) == 600 and len(splits["train"]) == 2400
    assert np.abs(splits["val"].labels.mean(0) - splits["train"].labels.mean(0)).max() < 0.01  # each label's share
    assert np.array_equal(make_splits(mosaic_pools, spec, seed=0)["val"].indices, splits["val"].indices)
    narrowed = open_pools(DataSpec(source="fashion-mnist-mosaics", select_classes=["Bag", "Sandal"]))
    assert len(narrowed.train) == 3000 and narrowed.train.labels.shape == (3000, 2)


# ---------------------------------------------------------------- official splits


@needs_fashion_mnist
def test_ratios_cannot_cut_an_official_test_set_unless_the_official_split_is_pooled(fashion_pools):
    message = one_line_error(DataSpec(source="fashion-mnist", ratios=[50, 20, 30]),
                             "data.ratios: fashion-mnist has its own test set, which ratios would not cut; set "
                             "official_split: false", seed=0)
    assert "drop ratios" in message
    spec = DataSpec(source="fashion-mnist", ratios=[50, 20, 30], official_split=False)
    pools = open_pools(spec)
    assert pools.test is None and len(pools.train) == 70_000
    splits = make_splits(pools, spec, seed=0)
    assert {name: len(split) for name, split in splits.items()} == {"train": 35_000, "val": 14_000, "test": 21_000}
    official_test = splits["test"].indices >= 60_000  # both official sets feed every split, stratified
    assert 0.1 < official_test.mean() < 0.2 and (splits["train"].indices >= 60_000).any()
    image = pools.train.load(60_000 + 123)  # the pooled source reads the official test set's images
    assert np.array_equal(np.asarray(image), np.asarray(fashion_pools.test.load(123)))
    assert pools.train.labels[60_123] == fashion_pools.test.labels[123]
    narrowed = open_pools(spec.model_copy(update={"select_classes": ["Bag", "Sneaker"]})).train
    assert len(narrowed) == 14_000 and sorted(np.unique(narrowed.labels)) == [0, 1]
    assert narrowed.fingerprint != pools.train.fingerprint


def test_a_split_option_an_official_validation_set_would_ignore_is_one_line(image_folder):
    train, test = image_folder
    for option in ({"val_size": 0.3}, {"folds": 5}, {"ratios": [6, 2, 2]}):
        spec = DataSpec(source=str(train), val=str(test), **option)
        one_line_error(spec, f"data.{next(iter(option))}: .* has its own validation set", seed=0)
    pooled = DataSpec(source=str(train), val=str(test), test=str(test), official_split=False)
    assert len(open_pools(pooled).train) == 120 + 60 + 60


def test_official_split_false_on_a_single_pool_does_nothing_and_is_refused():
    one_line_error(DataSpec(source="digits", official_split=False), "data.official_split: false, but digits has "
                   "no official validation or test set to pool; drop official_split")


# ---------------------------------------------------------------- one text file per tag (study 004's layout)


@pytest.fixture
def tagged_folder(mosaic_pools, tmp_path):
    """80 real multi-label mosaics as grayscale PNGs im1.png … im80.png, and a tags folder written three ways."""
    pool, shown = mosaic_pools.train, np.arange(80)
    images, tags = tmp_path / "images", tmp_path / "annotations"
    images.mkdir(), tags.mkdir()
    for number, index in enumerate(shown, start=1):
        Image.fromarray(pool.images[index]).save(images / f"im{number}.png")  # mode L: grayscale on disk
    names = [name.replace("/", "-") for name in pool.classes]  # T-shirt/top cannot name a file
    for column, name in enumerate(names):
        carriers = np.flatnonzero(pool.labels[shown, column]) + 1
        # by number (the course's files), by name without extension, or by relative path
        style = (lambda n: f"{n}", lambda n: f"im{n}", lambda n: f"im{n}.png")[column % 3]
        (tags / f"{name}.txt").write_text("".join(f"{style(n)}\n" for n in carriers))
    return images, tags, pool.labels[shown], names


def test_tag_files_give_each_image_the_tags_whose_file_lists_it_and_none_when_unlisted(tagged_folder):
    images, tags, truth, classes = tagged_folder
    spec = DataSpec(source=str(images), tag_files=str(tags))
    source = open_pools(spec).train
    assert source.multi_label and source.classes == sorted(classes)
    order = [int(p.stem[2:]) - 1 for p in source.paths]  # the folder's order: im1, im10, im11, ...
    expected = truth[order][:, [classes.index(c) for c in source.classes]]
    assert np.array_equal(source.labels, expected)
    assert (source.labels.sum(1) == 0).any()  # empty mosaics: listed nowhere, so no tag at all
    assert source.load(0).mode == "RGB"  # grayscale files become 3-channel
    splits = make_splits(open_pools(spec), spec.model_copy(update={"test_size": 0.25}), seed=0)
    assert sum(len(split) for split in splits.values()) == 80
    ordered = DataSpec(source=str(images), tag_files=str(tags), classes=classes[::-1])
    assert open_pools(ordered).train.classes == classes[::-1]


def test_a_tag_line_that_names_no_image_is_one_line_or_skipped_and_reported(tagged_folder):
    images, tags, _, classes = tagged_folder
    with (tags / f"{classes[0]}.txt").open("a") as file:
        file.write("im999\n")
    spec = DataSpec(source=str(images), tag_files=str(tags))
    message = one_line_error(spec, rf"{classes[0]}.txt, line \d+: 'im999' names no image under .*images; fix the "
                                   "line, or pass --skip-bad")
    assert "annotations" in message
    skipped = open_pools(spec.model_copy(update={"skip_bad": True})).train
    assert len(skipped) == 80 and any("'im999' names no image" in note for note in skipped.notes)
    one_line_error(DataSpec(source=str(images), tag_files=str(tags / "missing")), "holds no <tag>.txt files")
    one_line_error(DataSpec(source=str(images), tag_files=str(tags), classes=["Bag", "Hat"]),
                   "data.classes: no Hat.txt in")


def test_exclude_classes_drops_those_images_from_every_pool_and_keeps_the_order_of_the_rest(image_folder):
    train, test = image_folder
    full = open_pools(DataSpec(source=str(train), test=str(test)))
    dropped = full.train.classes[1]
    pools = open_pools(DataSpec(source=str(train), test=str(test), exclude_classes=[dropped]))
    rest = [name for name in full.train.classes if name != dropped]
    for pool, per_class in ((pools.train, 40), (pools.test, 20)):
        assert pool.classes == rest and len(pool) == 2 * per_class
        assert np.bincount(pool.labels).tolist() == [per_class, per_class]
    assert all(dropped not in str(path.parent.name) for path in pools.train.paths)
    one_line_error(DataSpec(source=str(train), exclude_classes=[dropped.lower() + "x"]),
                   "data.exclude_classes: '.*' is not a class of")
    with pytest.raises(ValueError, match="select_classes or exclude_classes, not both"):
        DataSpec(source=str(train), select_classes=rest, exclude_classes=[dropped])
