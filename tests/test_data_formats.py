"""Every input form and every bad input the data layer promises to handle (issue 5's gauntlet).

Images are real: skimage's sample photos and Fashion-MNIST items, saved in the awkward forms people's
folders really contain.
"""

from __future__ import annotations

import csv
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import v2

from transferlab.config import DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import ArraySource, FolderSource, Pools, UnreadableImage, make_splits, open_image, open_pools
from transferlab.data.decode import decode_images

VIEW = v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True)])


def chelsea() -> Image.Image:
    return Image.fromarray(skdata.chelsea())  # 451 wide × 300 high, a cat


def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())


@pytest.fixture(scope="module")
def gauntlet(tmp_path_factory, fashion_pools):
    """root/cat (awkward but valid files and broken ones), root/item (Fashion-MNIST), root/empty (no images)."""
    root = tmp_path_factory.mktemp("gauntlet")
    cat, item = root / "cat", root / "item"
    cat.mkdir()
    item.mkdir()
    (root / "empty").mkdir()
    chelsea().save(cat / "plain.jpg", quality=90)
    chelsea().convert("CMYK").save(cat / "cmyk.jpg", quality=95)
    chelsea().convert("P").save(cat / "palette.gif")
    rgba = coffee().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(rgba.width) < rgba.width // 2, 0, 255).astype(np.uint8)[None]
                                  .repeat(rgba.height, 0)))
    rgba.save(cat / "left-half-transparent.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was held sideways; viewers rotate 90° clockwise
    chelsea().save(cat / "rotated.jpg", exif=exif, quality=90)
    chelsea().resize((1, 1)).save(cat / "one-pixel.png")
    chelsea().save(cat / "chélsea_猫.png")
    fashion = np.asarray(fashion_pools.train.load(0).convert("L"))
    Image.fromarray(fashion.astype(np.uint16) * 257).save(item / "sixteen-bit.png")
    for i in range(1, 4):
        fashion_pools.train.load(i).save(item / f"{i}.png")
    # the broken ones
    full = (cat / "plain.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (cat / "zero-bytes.jpg").write_bytes(b"")
    (cat / "text.jpg").write_text("this is not an image\n")
    Image.new("L", (20_000, 20_000)).save(cat / "bomb.png", compress_level=1)
    return root


VALID = {"plain.jpg", "cmyk.jpg", "palette.gif", "left-half-transparent.png", "rotated.jpg", "one-pixel.png",
         "chélsea_猫.png", "sixteen-bit.png", "1.png", "2.png", "3.png"}
BROKEN = {"truncated.jpg": "truncated", "zero-bytes.jpg": "not an image file", "text.jpg": "not an image file",
          "bomb.png": "decompression-bomb limit"}


def test_awkward_but_valid_images_become_the_rgb_picture_a_viewer_shows(gauntlet, fashion_pools):
    cat, item = gauntlet / "cat", gauntlet / "item"
    plain = np.asarray(open_image(cat / "plain.jpg"), dtype=float)
    assert np.abs(np.asarray(open_image(cat / "cmyk.jpg"), dtype=float) - plain).mean() < 8
    assert np.abs(np.asarray(open_image(cat / "palette.gif"), dtype=float) - plain).mean() < 20
    rotated = open_image(cat / "rotated.jpg")
    assert rotated.size == (300, 451)  # EXIF orientation applied: now portrait
    assert np.abs(np.asarray(rotated, dtype=float) - np.rot90(plain, k=-1)).mean() < 8
    transparent = np.asarray(open_image(cat / "left-half-transparent.png"))
    assert (transparent[:, : transparent.shape[1] // 2 - 1] == 255).all()  # composited on white, not black
    assert np.array_equal(transparent[:, -5:], np.asarray(coffee())[:, -5:])
    sixteen = np.asarray(open_image(item / "sixteen-bit.png"))
    original = np.asarray(fashion_pools.train.load(0))
    assert sixteen.shape == original.shape and np.abs(sixteen.astype(int) - original).max() <= 1  # scaled, not clipped
    assert open_image(cat / "one-pixel.png").size == (1, 1)
    assert open_image(cat / "chélsea_猫.png").mode == "RGB"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_file_is_one_line_naming_it(gauntlet, name):
    with pytest.raises(UnreadableImage, match=BROKEN[name]) as caught:
        open_image(gauntlet / "cat" / name)
    assert str(gauntlet / "cat" / name) in str(caught.value) and "\n" not in str(caught.value)


def test_the_bomb_limit_can_be_raised_for_a_genuine_image(gauntlet):
    """Raised for one call: PIL's own process-wide guard is untouched before and after."""
    from PIL import Image

    guard = Image.MAX_IMAGE_PIXELS
    assert guard is not None
    assert open_image(gauntlet / "cat" / "bomb.png", max_pixels=400_000_000).size == (20_000, 20_000)
    assert Image.MAX_IMAGE_PIXELS == guard
    with pytest.raises(UnreadableImage, match="is over the decompression-bomb limit of 1,000,000"):
        open_image(gauntlet / "cat" / "bomb.png", max_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == guard


def test_formats_restrict_the_decoders_tried(gauntlet, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.ppm")  # a format PIL reads that no web upload needs
    assert open_image(tmp_path / "x.ppm").size == (8, 8)
    with pytest.raises(UnreadableImage, match=r"JPEG, PNG accepted"):
        open_image(tmp_path / "x.ppm", formats=("JPEG", "PNG"))


def test_gauntlet_folder_errors_by_default_and_with_skip_bad_keeps_every_valid_image(gauntlet):
    with pytest.raises(TransferlabError, match=r"empty: class folder has no images.*--skip-bad"):
        FolderSource(gauntlet)
    source = FolderSource(gauntlet, skip_empty=True)
    assert source.classes == ["cat", "empty", "item"] and source.notes == [f"{gauntlet / 'empty'}: empty class "
                                                                             "folder (no images)"]
    everything = np.arange(len(source))
    with pytest.raises(TransferlabError, match=r"cannot read image .*--skip-bad"):
        decode_images(source, everything, VIEW)
    x, kept, bad = decode_images(source, everything, VIEW, skip_bad=True)
    assert {source.paths[i].name for i in kept} == VALID  # no valid image lost
    assert {Path(source.paths[i]).name for i in bad} == set(BROKEN)
    assert x.shape == (len(VALID), 3, 32, 32) and x.dtype == torch.uint8


# ---------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def items(tmp_path_factory, fashion_pools):
    """30 Fashion-MNIST PNGs (3 classes × 10) in images/, their labels, and the dataset root."""
    root = tmp_path_factory.mktemp("manifest")
    (root / "images").mkdir()
    names, labels = [], []
    for cls in (0, 1, 7):
        for index in np.flatnonzero(fashion_pools.train.labels == cls)[:10]:
            name = f"images/{index}.png"
            fashion_pools.train.load(int(index)).save(root / name)
            names.append(name)
            labels.append(fashion_pools.train.classes[cls])
    return root, names, labels


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_single_label_csv_and_parquet_manifests_list_the_same_images(items):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, names, labels = items
    manifest = write_csv(root / "train.csv", ["path", "label"], list(zip(names, labels, strict=True)))
    pq.write_table(pa.table({"path": names, "label": labels}), root / "train.parquet")
    from_csv = open_pools(DataSpec(source=str(manifest))).train
    from_parquet = open_pools(DataSpec(source=str(root / "train.parquet"))).train
    assert from_csv.classes == sorted(set(labels)) == from_parquet.classes
    assert [p.name for p in from_csv.paths] == [Path(n).name for n in names] == [p.name for p in from_parquet.paths]
    assert [from_csv.classes[i] for i in from_csv.labels] == labels
    assert not from_csv.multi_label and from_csv.load(0).mode == "RGB"


def test_multi_label_manifests_joined_labels_and_01_columns_agree(items):
    root, names, labels = items
    tags = [[label] + (["dark"] if i % 3 == 0 else []) if i % 5 else [] for i, label in enumerate(labels)]
    joined = write_csv(root / "joined.csv", ["path", "labels"], [[n, " ".join(t)] for n, t in zip(names, tags,
                                                                                                      strict=True)])
    classes = sorted({t for ts in tags for t in ts})
    columns = write_csv(root / "columns.csv", ["path", *classes],
                        [[n, *[int(c in t) for c in classes]] for n, t in zip(names, tags, strict=True)])
    a, b = open_pools(DataSpec(source=str(joined))).train, open_pools(DataSpec(source=str(columns))).train
    assert a.multi_label and b.multi_label and a.classes == b.classes == classes
    assert np.array_equal(a.labels, b.labels)
    assert (a.labels.sum(axis=1) == 0).sum() == sum(not t for t in tags)  # images with no label are kept
    assert np.array_equal(a.label_matrix()[:, classes.index("dark")], [int("dark" in t) for t in tags])


def test_a_labels_column_joined_by_another_separator_is_detected_and_said(items, tmp_path):
    """Tags joined by '|' (no space in any cell) would be one class per combination if split at spaces: the
    separator is detected and said in the source's notes; two candidates stop with one line; an explicit
    data.label_separator is obeyed."""
    root, names, labels = items
    tags = [[label.replace(" ", "-")] + (["dark"] if i % 3 == 0 else []) for i, label in enumerate(labels)]
    rows = [[n, "|".join(t)] for n, t in zip(names, tags, strict=True)]
    piped = open_pools(DataSpec(source=str(write_csv(root / "piped.csv", ["path", "labels"], rows)))).train
    assert piped.classes == sorted({t for ts in tags for t in ts})  # tags, not combinations
    assert any("labels split at '|'" in note for note in piped.notes)
    mixed = write_csv(root / "mixed.csv", ["path", "labels"], [*rows[:-1], [names[-1], "a;b"]])
    with pytest.raises(TransferlabError, match=r"mixed.csv: the labels column joins labels with '\|' and ';'; set "
                                               "data.label_separator"):
        open_pools(DataSpec(source=str(mixed)))
    from transferlab import api

    summary = api.inspect(str(root / "piped.csv"), out=tmp_path / "inspect", augment=())
    assert summary["findings"][0].startswith(f"{root / 'piped.csv'}: labels split at '|'")
    assert {tuple(s["labels"]) for s in summary["label_sets"]} <= {tuple(sorted(t)) for t in tags}
    assert "Label sets as read" in (tmp_path / "inspect" / "inspect.html").read_text()
    whole = open_pools(DataSpec(source=str(root / "piped.csv"), label_separator=";")).train
    assert len(whole.classes) == len({"|".join(t) for t in tags})  # as told: one class per combination


def test_bad_manifest_rows_error_by_default_and_are_skipped_and_reported_when_asked(items, tmp_path):
    root, names, labels = items
    good = [[n, label] for n, label in zip(names, labels, strict=True)]
    classes = sorted(set(labels))
    shutil.copy(root / names[0], root / "images" / "extra.png")
    cases = {"missing": ([["images/nope.png", labels[0]]], r"row 32: 'images/nope.png': no such file"),
             "unknown": ([["images/extra.png", "Sneakers"]],
                         r"row 32: label 'Sneakers' is not a known class"),
             "conflict": ([[names[0], labels[-1]]], r"row 32: .* listed again \(row 2\) with other labels")}
    for name, (extra, message) in cases.items():
        manifest = write_csv(root / f"{name}.csv", ["path", "label"], good + extra)
        with pytest.raises(TransferlabError, match=message):
            open_pools(DataSpec(source=str(manifest), classes=classes))
    outside = shutil.copy(root / names[0], tmp_path / "outside.png")
    manifest = write_csv(root / "outside.csv", ["path", "label"], good + [[str(outside), labels[0]]])
    with pytest.raises(TransferlabError, match=r"row 32: .* is outside the dataset folder"):
        open_pools(DataSpec(source=str(manifest), classes=classes, skip_bad=True))  # never skipped: an error

    messy = write_csv(root / "messy.csv", ["path", "label"],
                      good + [["images/nope.png", labels[0]], ["images/extra.png", "Sneakers"], good[2], good[3]])
    source = open_pools(DataSpec(source=str(messy), classes=classes, skip_bad=True)).train
    assert len(source) == len(good)  # every valid image, each once
    assert [note.split(": ", 1)[1] for note in source.notes] == [
        "'images/nope.png': no such file (row skipped)", "duplicate of row 4 ('images/" + Path(names[2]).name + "'), "
        "dropped", "duplicate of row 5 ('images/" + Path(names[3]).name + "'), dropped",
        "label 'Sneakers' is not a known class (Sneaker, T-shirt/top, Trouser) (row skipped)"]


def test_manifest_quirks_spaced_header_symlinks_and_encoding(items, tmp_path):
    root, names, labels = items
    spaced = root / "spaced.csv"
    spaced.write_text("path, label\n" + "".join(f"{n}, {lab}\n" for n, lab in zip(names, labels, strict=True)))
    assert [s.classes[i] for s in [open_pools(DataSpec(source=str(spaced))).train] for i in s.labels] == labels
    annex = tmp_path / "annex.png"  # git-annex / DVC: the image is a symlink to a store outside the folder
    shutil.copy(root / names[0], annex)
    (root / "images" / "linked.png").symlink_to(annex)
    linked = write_csv(root / "linked.csv", ["path", "label"], [["images/linked.png", labels[0]], *[
        [n, lab] for n, lab in zip(names, labels, strict=True)]])
    assert len(open_pools(DataSpec(source=str(linked))).train) == len(names) + 1
    latin = root / "latin.csv"
    latin.write_bytes("path,label\nimages/x.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(TransferlabError, match="latin.csv: not a readable UTF-8 CSV"):
        open_pools(DataSpec(source=str(latin)))


def test_folder_notes_non_images_and_refuses_a_declared_class_without_folder(image_folder, tmp_path):
    root = shutil.copytree(image_folder[0], tmp_path / "train")
    (root / "Trouser" / "notes.txt").write_text("not an image")
    source = open_pools(DataSpec(source=str(root))).train
    assert len(source) == 120 and source.notes == [f"{root / 'Trouser'}: 1 non-image files ignored (.txt)"]
    with pytest.raises(TransferlabError, match="data.classes names 'Bag' but there is no such class folder"):
        open_pools(DataSpec(source=str(root), classes=[*source.classes, "Bag"]))


def test_float_images_in_0_1_are_scaled_not_blackened(tmp_path, fashion_pools):
    original = np.asarray(fashion_pools.train.load(0).convert("L"))
    Image.fromarray(original.astype(np.float32) / 255, mode="F").save(tmp_path / "depth.tiff")
    loaded = np.asarray(open_image(tmp_path / "depth.tiff"))[..., 0]
    assert np.abs(loaded.astype(int) - original).max() <= 1


def test_split_files_define_the_pools_and_must_not_overlap(image_folder, tmp_path):
    train_root, _ = image_folder
    source = FolderSource(train_root)
    rel = [str(p.relative_to(train_root)) for p in source.paths]
    (tmp_path / "train.txt").write_text("\n".join(rel[0::3] + rel[1::3]) + "\n")
    (tmp_path / "test.txt").write_text("# held out\n" + "\n".join(rel[2::3]) + "\n")
    spec = DataSpec(source=str(train_root), splits={"train": str(tmp_path / "train.txt"),
                                                    "test": str(tmp_path / "test.txt")})
    pools = open_pools(spec)
    assert len(pools.train) == 80 and len(pools.test) == 40 and pools.val is None
    assert {p.name for p in pools.test.paths} == {Path(r).name for r in rel[2::3]}
    splits = make_splits(pools, spec, seed=0)
    assert splits["test"].source is pools.test and len(splits["train"]) + len(splits["val"]) == 80
    (tmp_path / "test.txt").write_text(rel[0] + "\n")
    with pytest.raises(TransferlabError, match="in both train and test"):
        open_pools(spec)
    (tmp_path / "test.txt").write_text("Trouser/missing.png\n")
    with pytest.raises(TransferlabError, match=r"test.txt:1: 'Trouser/missing.png' is not an image"):
        open_pools(spec)


# ---------------------------------------------------------------- splits


def test_ratios_and_k_fold_partition_the_pool():
    spec = DataSpec(source="digits", ratios=[50, 20, 30])
    pools = open_pools(spec)
    sizes = {k: len(v) for k, v in make_splits(pools, spec, 0).items()}
    assert sizes["test"] == pytest.approx(0.3 * 1797, abs=2) and sizes["val"] == pytest.approx(0.2 * 1797, abs=2)
    folds = DataSpec(source="digits", folds=5)
    held_out = [make_splits(pools, folds, seed)["val"].indices for seed in range(5)]
    tests = {tuple(make_splits(pools, folds, seed)["test"].indices) for seed in range(5)}
    assert len(tests) == 1  # test fixed; folds partition the rest
    union = np.concatenate(held_out)
    assert len(union) == len(np.unique(union)) == 1797 - len(next(iter(tests)))
    per_fold = np.bincount(pools.train.labels[held_out[0]], minlength=10)
    assert np.abs(per_fold - np.bincount(pools.train.labels[union], minlength=10) / 5).max() <= 1  # stratified
    with pytest.raises(ValueError, match="ratios or val_size/test_size, not both"):
        DataSpec(source="digits", ratios=[5, 2, 3], test_size=0.1)


def test_multi_label_splits_keep_every_labels_frequency(fashion_pools):
    """2×2 mosaics of Fashion-MNIST items, some tiles empty: labels = the classes present (many rare pairs)."""
    rng = np.random.default_rng(0)
    n = 1200
    tiles = rng.integers(0, 10, size=(n, 4))
    empty = rng.random((n, 4)) < 0.4
    items = fashion_pools.train.images[rng.integers(0, 60000, size=(n, 4))]
    items[empty] = 0
    mosaics = np.block([[items[:, 0], items[:, 1]], [items[:, 2], items[:, 3]]])
    labels = np.zeros((n, 10), dtype=np.uint8)
    for i in range(n):
        labels[i, tiles[i][~empty[i]]] = 1
    source = ArraySource("mosaics", mosaics, labels, fashion_pools.train.classes)
    spec = DataSpec(source="mosaics", test_size=0.25, val_size=0.2)
    splits = make_splits(Pools(train=source), spec, seed=0)
    overall = labels.mean(axis=0)
    for split in splits.values():
        assert np.abs(split.source.label_matrix(split.indices).mean(axis=0) - overall).max() < 0.02
    assert sum(len(s) for s in splits.values()) == n
    assert len(np.unique(np.concatenate([s.indices for s in splits.values()]))) == n


# ---------------------------------------------------------------- builtin datasets


@pytest.mark.parametrize("name", ["flowers102", "caltech101", "oxford-iiit-pet", "dtd", "cifar10", "cifar100"])
def test_torchvision_builtins_offline_give_one_line(name, monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(TransferlabError, match=rf"^{name}: not in .* and the download failed; go online once"):
        open_pools(DataSpec(source=name))


def test_fashion_mnist_without_debian_files_or_internet_says_both_ways(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    monkeypatch.setattr("transferlab.data.builtins.FASHION_MNIST_DIRS", ())
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("x")))
    with pytest.raises(TransferlabError, match=r"^fashion-mnist: .*download failed.*apt-get install dataset-fashion"):
        open_pools(DataSpec(source="fashion-mnist"))
