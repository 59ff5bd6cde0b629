"""Hugging Face datasets as a source (issue 22 §2), offline: Hub-layout Parquet files and save_to_disk folders
built here from real Fashion-MNIST images, read back through `open_pools`, and the one-line errors."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transferlab.config import DataSpec, RunSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import UnreadableImage, open_pools
from transferlab.data import hf as hf_module
from transferlab.data.hf import HfSource
from transferlab.resolve import resolved
from transferlab.runner import execute_run

from .conftest import SMALL_SIZE, take_per_class
from .mosaics import fashion_mosaics

TRAIN_PER_CLASS, TEST_PER_CLASS = 40, 15


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hub_parquet(path: Path, images: np.ndarray, labels: list, features: dict | None = None,
                      label_column: str = "label") -> Path:
    """The Hub's layout: image {bytes (PNG), path}, labels, and the `datasets` features JSON in the schema metadata
    (what `Dataset.to_parquet` writes)."""
    table = pa.table({"image": [{"bytes": png(image), "path": f"{i:05d}.png"} for i, image in enumerate(images)],
                      label_column: labels})
    if features is not None:
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def class_label(names: list[str]) -> dict:
    return {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}


@pytest.fixture(scope="module")
def picked(fashion_pools):
    """Training and test indices: a few of every class, in class order."""
    classes = range(10)
    return (take_per_class(fashion_pools.train.labels, classes, TRAIN_PER_CLASS),
            take_per_class(fashion_pools.test.labels, classes, TEST_PER_CLASS))


@pytest.fixture(scope="module")
def hub_folder(fashion_pools, picked, tmp_path_factory):
    """data/train-0000{0,1}-of-00002.parquet and data/test-00000-of-00001.parquet, as a Hub repository has them."""
    root = tmp_path_factory.mktemp("hub")
    features = class_label(fashion_pools.train.classes)
    train, test = picked
    for shard, rows in enumerate(np.array_split(train, 2)):
        write_hub_parquet(root / "data" / f"train-{shard:05d}-of-00002.parquet", fashion_pools.train.images[rows],
                          fashion_pools.train.labels[rows].tolist(), features)
    write_hub_parquet(root / "data" / "test-00000-of-00001.parquet", fashion_pools.test.images[test],
                      fashion_pools.test.labels[test].tolist(), features)
    return root


def same_pixels(source, originals, indices) -> bool:
    return all(np.array_equal(np.asarray(source.load(i)), np.asarray(originals.load(int(j))))
               for i, j in enumerate(indices))


def test_split_named_shards_become_the_official_pools_with_classlabel_names(hub_folder, fashion_pools, picked):
    pools = open_pools(DataSpec(source=str(hub_folder)))
    assert isinstance(pools.train, HfSource) and pools.val is None
    assert pools.train.classes == fashion_pools.train.classes  # from the ClassLabel feature, in its order
    assert np.bincount(pools.train.labels).tolist() == [TRAIN_PER_CLASS] * 10
    assert np.bincount(pools.test.labels).tolist() == [TEST_PER_CLASS] * 10
    assert same_pixels(pools.train, fashion_pools.train, picked[0])  # grayscale PNGs back as the RGB originals
    assert same_pixels(pools.test, fashion_pools.test, picked[1])
    assert pools.train.describe(TRAIN_PER_CLASS * 5 + 1) == \
        f"{hub_folder}/data/train-00001-of-00002.parquet, row 1 (00001.png)"  # the second shard's own row
    with ThreadPoolExecutor(8) as threads:  # decoding runs in threads: the same pictures, concurrently
        concurrent = list(threads.map(lambda i: np.asarray(pools.test.load(i)), range(len(pools.test))))
    assert all(np.array_equal(a, np.asarray(pools.test.load(i))) for i, a in enumerate(concurrent))
    assert pools.train.fingerprint == open_pools(DataSpec(source=str(hub_folder))).train.fingerprint
    assert pools.train.fingerprint != pools.test.fingerprint
    chosen = open_pools(DataSpec(source=str(hub_folder), select_classes=["Trouser", "Bag"]))
    assert chosen.test.classes == ["Trouser", "Bag"] and len(chosen.test) == 2 * TEST_PER_CLASS
    assert np.array_equal(np.asarray(chosen.test.load(0)), np.asarray(fashion_pools.test.load(int(
        picked[1][TEST_PER_CLASS]))))  # the first Trouser


def test_one_parquet_file_without_classlabel_names_classes_by_sorted_values(fashion_pools, picked, tmp_path):
    rows = picked[1]
    numbers = (fashion_pools.test.labels[rows] * 5).tolist()  # 0, 5, ..., 45: sorted as numbers, not as text
    pools = open_pools(DataSpec(source=str(write_hub_parquet(tmp_path / "fm.parquet",
                                                             fashion_pools.test.images[rows], numbers))))
    assert pools.train.classes == [str(5 * c) for c in range(10)] and pools.test is None
    assert np.array_equal(pools.train.labels, fashion_pools.test.labels[rows])
    words = [fashion_pools.test.classes[c] for c in fashion_pools.test.labels[rows]]
    named = open_pools(DataSpec(source=str(write_hub_parquet(tmp_path / "named.parquet",
                                                             fashion_pools.test.images[rows], words))))
    assert named.train.classes == sorted(fashion_pools.test.classes)


def test_a_parquet_manifest_of_file_paths_is_still_a_manifest(fashion_pools, tmp_path):
    for i, cls in enumerate("aba"):
        (tmp_path / cls).mkdir(exist_ok=True)
        fashion_pools.test.load(i).save(tmp_path / cls / f"{i}.png")
    manifest = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["a/0.png", "b/1.png", "a/2.png"], "label": ["a", "b", "a"]}), manifest)
    listed = open_pools(DataSpec(source=str(manifest))).train
    assert not isinstance(listed, HfSource) and listed.classes == ["a", "b"] and len(listed) == 3
    folder = open_pools(DataSpec(source=str(tmp_path))).train  # the manifest beside the class folders is no shard
    assert not isinstance(folder, HfSource) and folder.classes == ["a", "b"]


def test_split_words_anywhere_in_shard_names_and_other_splits_left_out_with_a_note(fashion_pools, tmp_path):
    images, labels = fashion_pools.test.images[:30], fashion_pools.test.labels[:30].tolist()
    features = class_label(fashion_pools.test.classes)
    for name, rows in {"fashion_mnist-train": slice(0, 20), "fashion_mnist-validation": slice(20, 25),
                       "unlabeled-00000-of-00001": slice(25, 30)}.items():
        write_hub_parquet(tmp_path / f"{name}.parquet", images[rows], labels[rows], features)
    pools = open_pools(DataSpec(source=str(tmp_path)))
    assert (len(pools.train), len(pools.val), pools.test) == (20, 5, None)
    assert pools.train.notes == [f"{tmp_path}: split 'unlabeled-00000-of-00001.parquet' left out (train, validation "
                                 "and test are used, one of each)"]
    with pytest.raises(TransferlabError, match=r"with its own splits; drop data.val"):
        open_pools(DataSpec(source=str(tmp_path), test=str(tmp_path / "fashion_mnist-validation.parquet")))
    alone = open_pools(DataSpec(source=str(tmp_path / "fashion_mnist-train.parquet"),
                                test=str(tmp_path / "fashion_mnist-validation.parquet")))
    assert len(alone.train) == 20 and isinstance(alone.test, HfSource) and len(alone.test) == 5


def test_a_list_of_labels_is_multi_label(fashion_pools, tmp_path):
    images, matrix, classes = fashion_mosaics(fashion_pools.train, 120, seed=3)
    lists = [np.flatnonzero(row).tolist() for row in matrix]  # some mosaics have no garment: []
    features = {"image": {"_type": "Image"},
                "labels": {"feature": {"names": classes, "_type": "ClassLabel"}, "_type": "List"}}
    path = write_hub_parquet(tmp_path / "mosaics.parquet", images, lists, features, label_column="labels")
    pools = open_pools(DataSpec(source=str(path)))
    assert pools.train.multi_label and pools.train.classes == classes
    assert np.array_equal(pools.train.labels, matrix) and not pools.train.labels[matrix.sum(1) == 0].any()
    assert np.array_equal(np.asarray(pools.train.load(7).convert("L")), images[7])


def test_save_to_disk_dataset_dict_and_datasets_own_parquet_round_trip(fashion_pools, picked, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=fashion_pools.train.classes)})

    def dataset(source, rows):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(source.images[i]) for i in rows],
                                           "label": source.labels[rows].tolist()}, features=features)

    train_rows, test_rows = picked[0][::4], picked[1]
    splits = datasets.DatasetDict({"train": dataset(fashion_pools.train, train_rows),
                                   "validation": dataset(fashion_pools.test, test_rows[::2]),
                                   "test": dataset(fashion_pools.test, test_rows[1::2])})
    splits.save_to_disk(tmp_path / "saved")
    pools = open_pools(DataSpec(source=str(tmp_path / "saved")))
    assert [len(pool) for pool in (pools.train, pools.val, pools.test)] == [len(train_rows), *(len(test_rows[::2]),
                                                                                               len(test_rows[1::2]))]
    assert pools.train.classes == fashion_pools.train.classes
    assert same_pixels(pools.val, fashion_pools.test, test_rows[::2])
    assert pools.test.describe(0).startswith(f"{tmp_path}/saved/test/data-00000-of-")
    splits["train"].save_to_disk(tmp_path / "one")  # a single Dataset: the training pool only
    assert open_pools(DataSpec(source=str(tmp_path / "one"))).test is None
    splits["test"].to_parquet(tmp_path / "own.parquet")
    own = open_pools(DataSpec(source=str(tmp_path / "own.parquet"))).train
    assert own.classes == fashion_pools.train.classes and np.array_equal(own.labels, pools.test.labels)
    # hf:<repo> goes through load_dataset; here it hands back the saved DatasetDict instead of the Hub's
    monkeypatch.setattr(hf_module, "hub_loader",
                        lambda: lambda repo, config: datasets.load_from_disk(tmp_path / "saved"))
    hub = open_pools(DataSpec(source="hf:someone/fashion:default"))
    assert hub.train.name == "fashion/train" and hub.val.labels.tolist() == pools.val.labels.tolist()
    assert same_pixels(hub.test, fashion_pools.test, test_rows[1::2])


def test_hub_source_without_datasets_or_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_module, "hub_loader", lambda: None)
    with pytest.raises(TransferlabError, match=r"^hf:zalando-datasets/fashion_mnist: .*needs the `datasets` "
                                               r"library; pip install 'transferlab\[hf\]'.*point data.source"):
        open_pools(DataSpec(source="hf:zalando-datasets/fashion_mnist"))
    datasets = pytest.importorskip("datasets")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hf_module, "hub_loader", lambda: datasets.load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here: fail at once, not after retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(TransferlabError, match=r"^hf:zalando-datasets/fashion_mnist: could not load it from the "
                                               r"Hugging Face Hub \(.*\); .*save_to_disk") as error:
        open_pools(DataSpec(source="hf:zalando-datasets/fashion_mnist"))
    assert "\n" not in str(error.value)


@pytest.fixture
def few(fashion_pools):
    return fashion_pools.test.images[:6], fashion_pools.test.labels[:6].tolist()


def bad_table(kind: str, images: np.ndarray, labels: list) -> tuple[pa.Table, str]:
    """A Hub-layout table broken in one way, and what its message must say."""
    encoded = [png(image) for image in images]
    metadata = {"huggingface": json.dumps({"info": {"features": class_label([str(c) for c in range(10)])}})}
    if kind == "no image column":
        return pa.table({"picture": encoded, "label": labels}), "no image column"
    if kind == "image without bytes":
        return pa.table({"image": [{"path": "a.png"}] * len(labels), "label": labels}), "has no 'bytes' field"
    if kind == "no label column":
        return pa.table({"image": [{"bytes": b, "path": None} for b in encoded]}), "no label column"
    if kind == "label not a class":
        labels = labels[:-1] + [12]
        table = pa.table({"image": [{"bytes": b, "path": None} for b in encoded], "label": labels})
        return table.replace_schema_metadata(metadata), r"row 5: label 12 is not an index of the ClassLabel names"
    if kind == "empty":
        table = pa.table({"image": pa.array([], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "label": pa.array([], pa.int64())})
        return table, "no rows"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no image column", "image without bytes", "no label column", "label not a class",
                                  "empty"])
def test_bad_hub_data_is_one_line_naming_the_file(kind, few, tmp_path):
    table, said = bad_table(kind, *few)
    path = tmp_path / f"{kind.replace(' ', '-')}.parquet"
    pq.write_table(table, path)
    with pytest.raises(TransferlabError, match=rf"^{path}.*{said}.*; ") as error:
        open_pools(DataSpec(source=str(path)))
    assert "\n" not in str(error.value)


def test_rows_without_bytes_or_known_labels_are_skipped_with_skip_bad_and_broken_bytes_name_the_row(few, tmp_path):
    images, labels = few
    encoded = [png(image) for image in images]
    rows = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)]
    rows[1] = {"bytes": None, "path": "elsewhere.png"}  # a path only: datasets' layout before embedding
    rows[2]["bytes"] = encoded[2][:40]  # truncated PNG
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"image": rows, "label": [str(label) for label in labels[:-1]] + [None]}), path)
    with pytest.raises(TransferlabError, match=rf"^{path}, row 1 \(elsewhere.png\): no image bytes"):
        open_pools(DataSpec(source=str(path)))
    kept = open_pools(DataSpec(source=str(path), skip_bad=True)).train
    assert len(kept) == 4 and len(kept.notes) == 2 and "row 5 (5.png): no label" in kept.notes[1]
    with pytest.raises(UnreadableImage, match=rf"^{path}, row 2 \(2.png\): cannot read image"):
        kept.load(1)
    assert np.array_equal(np.asarray(kept.load(2).convert("L")), images[3])


def test_a_knn_run_on_hub_parquet_shards(hub_folder, tmp_path):
    spec = resolved(RunSpec, {"data": {"source": str(hub_folder)},
                              "backbone": {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE},
                              "paradigm": "knn"}, "test")
    record = execute_run(spec, tmp_path)
    assert record["splits"]["test"] == 10 * TEST_PER_CLASS  # the official test shard, as it is
    assert record["labels"]["dataset"] == hub_folder.name
    assert record["metrics"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
