"""`transferlab inspect`: counts, unreadable files and cross-split near-duplicates on real Fashion-MNIST folders."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab import TransferlabError, api
from transferlab.config import DataSpec
from transferlab.data import make_splits, open_pools
from transferlab.report import plots

from .test_cli import one_error_line, transferlab


def run_inspect(train: Path, test: Path, out: Path, **options) -> dict:
    return api.inspect(str(train), test=str(test), out=out, augment=(), **options)


def pairs_with(summary: dict, file_name: str) -> list[dict]:
    return [p for p in summary["duplicates"]["pairs"] if file_name in (Path(p["a"]["file"]).name,
                                                                        Path(p["b"]["file"]).name)]


@pytest.mark.parametrize("seed", [0, 3])
def test_counts_per_class_per_split_are_the_splits_counts(image_folder, tmp_path, seed):
    train, test = image_folder
    summary = run_inspect(train, test, tmp_path, seed=seed)
    spec = DataSpec(source=str(train), test=str(test), skip_bad=True)
    splits = make_splits(open_pools(spec), spec, seed)
    written = json.loads((tmp_path / "inspect.json").read_text())
    for name, split in splits.items():
        expected = dict(zip(split.source.classes, np.bincount(split.labels, minlength=3).tolist(), strict=True))
        assert written["splits"][name]["per_class"] == expected == summary["splits"][name]["per_class"]
        assert written["splits"][name]["analysed"] == len(split)
    assert written["splits"]["train"]["sizes"] == {"28x28": len(splits["train"])}
    assert written["duplicates"]["total"] == 0 and written["unreadable"] == []


def test_limit_caps_the_images_analysed_but_not_the_counts(image_folder, tmp_path):
    summary = run_inspect(*image_folder, tmp_path, limit=10)
    for split in summary["splits"].values():
        assert split["analysed"] == 10 and sum(split["per_class"].values()) == split["images"] > 10


def test_copies_of_test_images_in_training_are_near_duplicates_and_unrelated_images_are_not(
        copy_folder, image_folder, fashion_pools, tmp_path):
    test = image_folder[1]
    exact, resized = sorted(test.glob("Sneaker/*.png"))[0], sorted(test.glob("Trouser/*.png"))[5]
    shutil.copy(exact, copy_folder / "Sneaker" / "leak-copy.png")
    # Re-encoded as JPEG at another size: different bytes and pixels, the same picture.
    Image.open(resized).resize((40, 40), Image.Resampling.BICUBIC).save(copy_folder / "Trouser" / "leak.jpg",
                                                                         quality=85)
    fashion_pools.train.load(5000).save(copy_folder / "Trouser" / "unrelated.png")  # not in the test folder
    summary = run_inspect(copy_folder, test, tmp_path / "out")

    (copy_pair,) = pairs_with(summary, "leak-copy.png")
    assert copy_pair["b"] == {"split": "test", "file": str(exact), "label": "Sneaker"}
    assert copy_pair["distance"] == 0 and copy_pair["exact"] and copy_pair["same_label"]
    (resized_pair,) = pairs_with(summary, "leak.jpg")
    assert resized_pair["b"]["file"] == str(resized) and not resized_pair["exact"]
    assert 0 < resized_pair["distance"] <= summary["settings"]["threshold"]
    assert pairs_with(summary, "unrelated.png") == []
    assert summary["duplicates"]["total"] == 2  # and no pair of unrelated garments among the other 180 images
    assert any("2 of 60 analysed test images have a near-duplicate" in f for f in summary["findings"])
    html = (tmp_path / "out" / "inspect.html").read_text()
    assert "leak-copy.png" in html and "leak.jpg" in html


def test_unreadable_files_are_listed_and_the_rest_is_analysed(copy_folder, image_folder, tmp_path):
    truncated = sorted(copy_folder.glob("Trouser/*.png"))[3]
    truncated.write_bytes(truncated.read_bytes()[:200])
    text = copy_folder / "Sneaker" / "notes.png"
    text.write_text("not an image, only named like one\n")
    summary = run_inspect(copy_folder, image_folder[1], tmp_path)

    listed = {u["file"]: u for u in summary["unreadable"]}
    assert set(listed) == {str(truncated), str(text)}
    assert all(u["reason"] and u["split"] in ("train", "val") for u in listed.values())
    splits = summary["splits"]
    assert sum(s["analysed"] for s in splits.values()) == sum(s["images"] for s in splits.values()) - 2
    # both still counted in their class, as the splits hold them
    assert splits["train"]["images"] + splits["val"]["images"] == len(list(copy_folder.rglob("*.png")))
    html = (tmp_path / "inspect.html").read_text()
    assert str(truncated) in html and str(text) in html


def embedded_pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in
            re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_cli_writes_a_self_contained_page_and_the_json(image_folder, tmp_path):
    train, test = image_folder
    result = transferlab("inspect", train, "--test", test, "--out", tmp_path, "--augment", "light",
                         "--augment", "keras-style", "--limit", "50")
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "inspect.html") in result.stdout
    summary = json.loads((tmp_path / "inspect.json").read_text())
    assert summary["splits"]["test"]["analysed"] == 50 and summary["settings"]["limit"] == 50
    html = (tmp_path / "inspect.html").read_text()
    for alt in ("images per class per split", "image sizes", "image modes", "sample images per class",
                "augmentation preview light", "augmentation preview keras-style"):
        assert f'alt="{alt}"' in html
    images = embedded_pngs(html)
    assert len(images) == 6 and all(image.width > 200 and image.height > 100 for image in images)
    assert not re.search(r'src="(?!data:)', html)  # opens offline: nothing to fetch


def test_a_missing_folder_exits_with_one_line_naming_it():
    assert "/no/such/folder" in one_error_line(transferlab("inspect", "/no/such/folder"))


@pytest.mark.parametrize("options, message", [
    ({"augment": "lite"}, "augment 'lite': unknown augmentation 'lite' (did you mean 'light'?)"),
    ({"limit": 0}, "limit=0: give a positive number"),
    ({"threshold": 300}, "threshold=300: give a Hamming distance between 0 and 256"),
])
def test_bad_options_fail_before_the_scan_naming_the_option(options, message, tmp_path):
    with pytest.raises(TransferlabError, match=re.escape(message)):
        api.inspect("digits", out=tmp_path, **options)
    assert not (tmp_path / "inspect.json").exists()


def test_size_plot_switches_to_a_scatter_for_many_sizes():
    rng = np.random.default_rng(0)
    sizes = {"train": rng.integers(100, 600, size=(200, 2)), "test": np.array([[224, 224]] * 5)}
    png = plots.image_sizes(sizes)
    assert Image.open(io.BytesIO(png)).format == "PNG"
