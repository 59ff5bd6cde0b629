"""Property-based tests (hypothesis) of manifests and split files: whatever a user writes in them (labels with
unicode, separators, empty cells and whitespace; paths with `..`, absolute paths, duplicates, missing files),
reading them never ends in a traceback, and when it succeeds the splits are disjoint and every listed image is
in exactly one split or reported as skipped."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from transferlab.config import DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import make_splits, open_pools

N_IMAGES = 12
# derandomize: the same 80 examples on every run, so CI cannot fail on a draw no one has seen here (raise
# max_examples locally to hunt further; a NUL byte in a split file was found that way)
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> Path:
    """A folder of 12 real 8 × 8 digit images, 3 class folders (for split files) of 4 each."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i in range(N_IMAGES):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def images(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


labels = st.one_of(st.sampled_from(["cat", "dog", "bird"]), st.sampled_from(["cat", "dog", "bird"]),
                   st.sampled_from(["cat dog", "dog bird", "cat"]), st.text(max_size=12),
                   st.sampled_from(["", " ", "cat dog", "cat|dog", "cat;dog", "cat,dog", "  cat  ", "ünï cödé", "🐱"]))


def paths(existing: list[str]):
    valid = st.sampled_from(existing)  # drawn most often, so that most examples get as far as the splits
    return st.one_of(valid, valid, valid, valid, st.sampled_from(existing).map(lambda p: "../" + p),
                     st.sampled_from(existing).map(lambda p: "/" + p), st.just("missing.png"), st.just(""),
                     st.sampled_from(existing).map(lambda p: "./" + p), st.text(max_size=8))


def check_read(spec: DataSpec, listed: int) -> None:
    """Reading never raises anything but a one-line TransferlabError; when it works, the splits are disjoint
    and cover the pool, and every listed row is in the pool or reported as skipped."""
    try:
        pools = open_pools(spec)
        splits = make_splits(pools, spec, seed=0)
    except TransferlabError as exc:
        assert "\n" not in str(exc)
        event("refused in one line")
        return
    event("read and split")
    parts = [set(np.asarray(splits[name].indices).tolist()) for name in ("train", "val", "test")
             if splits.get(name) is not None and splits[name].source is pools.train]
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # disjoint
    if pools.val is None and pools.test is None:
        assert set().union(*parts) == set(range(len(pools.train)))  # every kept image in exactly one split
    skipped = [n for n in pools.train.notes if "labels split at" not in n]
    assert len(pools.train) + len(skipped) >= listed if spec.skip_bad else len(pools.train) <= listed


@SETTINGS
@given(data=st.data(), skip_bad=st.booleans(), multi=st.booleans())
def test_any_manifest_reads_or_fails_in_one_line(digit_pngs, data, skip_bad, multi):
    rows = data.draw(st.lists(st.tuples(paths(images(digit_pngs)), labels), min_size=1, max_size=16))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(digit_pngs, root)
        manifest = root / "labels.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels" if multi else "label"])
            writer.writerows(rows)
        check_read(DataSpec(source=str(manifest), skip_bad=skip_bad, ratios=[50, 25, 25]), len(rows))


@SETTINGS
@given(data=st.data())
def test_any_split_files_read_or_fail_in_one_line(digit_pngs, data):
    existing = images(digit_pngs)
    listed = {name: data.draw(st.lists(paths(existing), max_size=8)) for name in ("train", "val", "test")}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, lines in listed.items():
            files[name] = Path(tmp) / f"{name}.txt"
            files[name].write_text("\n".join(lines), encoding="utf-8")
        check_read(DataSpec(source=str(digit_pngs), splits={k: str(v) for k, v in files.items()}), 0)
