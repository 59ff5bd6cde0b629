"""Hugging Face datasets as a source: the Hub's own layout, read offline with pyarrow, or `hf:<repo>[:config]`.

What is recognised (`is_hf_data`):

- a Parquet file, or a folder of Parquet shards (directly inside, under `data/`, or under `<split>/`), whose
  schema has an image column: the Hub's `image: {bytes, path}` struct (or plain bytes). A Parquet file
  without one is a manifest of file paths (`manifests.py`), so the schema decides, not the extension;
- a folder written by `datasets`' `save_to_disk` (a `Dataset`: state.json + Arrow files, memory-mapped here;
  a `DatasetDict`: dataset_dict.json and one such folder per split).

Split names in shard file names (`train-00000-of-00001.parquet`, `data/test-*.parquet`, `validation/…`) or
a `DatasetDict`'s splits become the official train / val / test pools. Labels come from a `label` column
(one class per image) or a `labels` list column (multi-label); class names from the `ClassLabel` feature
that `datasets` stores in the Parquet schema metadata (`huggingface` key) or dataset_info.json, or else the
sorted label values. `hf:<repo>[:config]` asks the `datasets` library (optional extra `transferlab[hf]`) to
load the dataset from the Hub, and says in one line what to do when it cannot.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from PIL import Image

from ..config import DataSpec
from ..core.errors import TransferlabError
from ..core.names import HUB_DATASET_PREFIX
from ..core.paths import name_bytes
from .images import DEFAULT_MAX_PIXELS, UnreadableImage, open_image
from .manifests import PATH_COLUMN
from .sources import ImageSource, Pools


def hub_loader():
    """`datasets.load_dataset`, or None when the optional extra is not installed. Imported here, only for an `hf:`
    source: importing `datasets` costs ~0.3 s (and pandas) that every other run would pay."""
    try:
        from datasets import load_dataset  # optional extra: transferlab[hf], only for `hf:<repo>` sources
    except ImportError:
        return None
    return load_dataset

HUB_PREFIX = HUB_DATASET_PREFIX
IMAGE_COLUMN = "image"
LABEL_COLUMNS = ("label", "labels")  # one class per image | a list of classes per image
# The words the Hub itself reads as split names in file and folder names (datasets' data_files patterns).
SPLIT_WORDS = {"train": ("train", "training"), "val": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict, Dataset)
LIST_TYPES = ("Sequence", "List", "LargeList")  # how datasets versions name a list feature


# ---------------------------------------------------------------- what the rest of data/ calls


def is_hf_data(path: Path) -> bool:
    """Whether `path` is a dataset in the Hugging Face layout (rather than an image folder or a manifest)."""
    if path.is_file():
        return path.suffix.lower() == ".parquet" and _is_hub_parquet(path)
    if not path.is_dir():
        return False
    # an image folder may hold a Parquet manifest beside its class folders: only Hub-layout shards count
    return any((path / marker).is_file() for marker in SAVED_MARKERS) or any(map(_is_hub_parquet, _shard_files(path)))


def hf_pools(path: Path, spec: DataSpec) -> Pools:
    """The pools of a Hub-layout Parquet file / shard folder or a save_to_disk folder (official splits kept)."""
    return _pools_of(_splits_at(path), path, spec)


def hf_source(path: Path, spec: DataSpec, classes: list[str] | None) -> HfSource:
    """One pool (`data.val` / `data.test`): data in the Hugging Face layout holding a single split."""
    splits = _splits_at(path)
    if len(splits) > 1:
        raise TransferlabError(f"{path}: holds several splits ({', '.join(splits)}); point data.val / data.test at "
                               "one split's file or folder, or give the whole dataset as data.source")
    (split,) = splits.values()
    return _source(_stem(path), path, split, spec, classes)


def hub_pools(spec: DataSpec) -> Pools:
    """`hf:<repo>[:config]`, loaded by the `datasets` library (downloaded once into its cache)."""
    repo, _, config = spec.source[len(HUB_PREFIX):].partition(":")
    if not repo:
        raise TransferlabError(f"data.source '{spec.source}': name a dataset, e.g. hf:zalando-datasets/fashion_mnist")
    load_dataset = hub_loader()
    if load_dataset is None:
        raise TransferlabError(f"{spec.source}: reading from the Hugging Face Hub needs the `datasets` library; "
                               "pip install 'transferlab[hf]', or save the dataset where it is installed "
                               "(save_to_disk, or its Parquet files) and point data.source at that folder")
    try:
        loaded = load_dataset(repo, config or None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated, bad config: all are the user's to fix
        raise TransferlabError(f"{spec.source}: could not load it from the Hugging Face Hub ({_first_line(exc)}); "
                               "check the name and go online once, or download it elsewhere "
                               "(`load_dataset(...).save_to_disk(folder)`) and point data.source at that "
                               "folder") from None
    splits = {name: _split_of_dataset(f"{spec.source}/{name}", dataset) for name, dataset in loaded.items()}
    return _pools_of(splits, Path(repo), spec)


# ---------------------------------------------------------------- the source


@dataclass(frozen=True)
class _Shards:
    """A pool's image bytes, as pyarrow holds them (memory-mapped for Arrow files); shared, never copied, by
    every subset of the pool. pyarrow arrays are immutable, so concurrent reads need no lock."""

    root: Path
    files: tuple[str, ...]  # the file each run of rows came from, for messages
    starts: np.ndarray  # first row of each file
    images: pa.ChunkedArray  # binary: one encoded image per row
    names: pa.ChunkedArray | None  # the image's own file name (`image.path`), where stored
    stamp: str  # what the files were when read (name, size, times), the content key's base

    def encoded(self, row: int) -> bytes:
        return self.images[row].as_py()

    def describe(self, row: int) -> str:
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        own = self.names[row].as_py() if self.names is not None else None
        return f"{self.files[part]}, row {row - int(self.starts[part])}" + (f" ({own})" if own else "")


class HfSource(ImageSource):
    """Images stored as encoded bytes in Parquet / Arrow tables, decoded on `load` like files
    (`images.open_image`: EXIF orientation, modes, the bomb limit, one-line `UnreadableImage`)."""

    def __init__(self, name: str, shards: _Shards, rows: np.ndarray, labels: np.ndarray, classes: list[str], *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, notes: list[str] | None = None):
        self.name, self.shards, self.classes = name, shards, list(classes)
        self.root = shards.root
        self.rows = np.asarray(rows, dtype=np.int64)  # this pool's rows of the shared table
        self.labels = labels.astype(np.uint8) if labels.ndim == 2 else labels.astype(np.int64)
        self.max_pixels, self.notes = max_pixels, list(notes or [])

    def load(self, index: int) -> Image.Image:
        try:
            return open_image(io.BytesIO(self.shards.encoded(int(self.rows[index]))), self.max_pixels)
        except UnreadableImage as exc:  # name the row, not the in-memory stream
            raise UnreadableImage(self.describe(index), exc.reason) from None

    def describe(self, index: int) -> str:
        return self.shards.describe(int(self.rows[index]))

    def subset(self, name: str, indices: np.ndarray, *, labels: np.ndarray | None = None,
               classes: list[str] | None = None) -> HfSource:
        return HfSource(name, self.shards, self.rows[indices], self.labels[indices] if labels is None else labels,
                        self.classes if classes is None else classes, max_pixels=self.max_pixels, notes=self.notes)

    @cached_property
    def fingerprint(self) -> str:
        # The files' names, sizes and times (as FileSource trusts them) rather than every image byte again.
        digest = hashlib.sha256(self.shards.stamp.encode())
        digest.update(f"max_pixels={self.max_pixels}".encode())
        digest.update(name_bytes("\n".join(self.classes)))
        digest.update(self.rows.tobytes())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()[:20]


# ---------------------------------------------------------------- reading the layouts


@dataclass
class _Split:
    """One split as read: its tables (one per file) and the `datasets` features, if stored."""

    files: list[str]
    tables: list[pa.Table]
    features: dict | None
    stamp: str


def _splits_at(path: Path) -> dict[str, _Split]:
    """Split name → its data, for a Parquet file, a shard folder or a save_to_disk folder."""
    if path.is_file():
        return {"train": _parquet_split([path], path.parent)}
    if (path / "dataset_dict.json").is_file():
        names = _json(path / "dataset_dict.json").get("splits") or []
        return {name: _saved_split(path / name) for name in names}
    if (path / "state.json").is_file():
        return {"train": _saved_split(path)}
    shards = _shard_files(path)
    if not shards:
        raise TransferlabError(f"{path}: no Parquet shards or save_to_disk files (state.json, dataset_dict.json) "
                               "inside; point data.source at the dataset's folder")
    return {name: _parquet_split(files, path) for name, files in _by_split(shards, path).items()}


def _shard_files(folder: Path) -> list[Path]:
    """Parquet files in the Hub's places: the folder itself, `data/`, or a folder per split."""
    places = [folder, folder / "data", *(folder / word for words in SPLIT_WORDS.values() for word in words)]
    return sorted(file for place in places if place.is_dir() for file in place.glob("*.parquet") if file.is_file())


def _by_split(shards: list[Path], root: Path) -> dict[str, list[Path]]:
    """Shards grouped by the split their name (or folder) gives; without any split name, all are training data."""
    named = {file: _split_word(file, root) for file in shards}
    if not any(named.values()):
        return {"train": shards}
    groups: dict[str, list[Path]] = {}
    for file, split in named.items():
        groups.setdefault(split or file.name, []).append(file)  # an unknown name is a split of its own (noted)
    return groups


def _split_word(file: Path, root: Path) -> str | None:
    """'train' for train-00000-of-00002.parquet, mnist-train.parquet or train/0000.parquet: a split word anywhere
    between separators, as the Hub reads file names (the Hub's other spellings too)."""
    candidates = re.split(r"[-_. ]", file.stem.lower())
    if file.parent != root:
        candidates.append(file.parent.name.lower())
    for pool, words in SPLIT_WORDS.items():
        if any(word in words for word in candidates):
            return pool
    return None


def _parquet_split(files: list[Path], root: Path) -> _Split:
    tables = [_read_parquet(file) for file in files]
    return _Split([str(file) for file in files], tables, _features_in(tables[0].schema), _stamp(files, root))


def _saved_split(folder: Path) -> _Split:
    """One `Dataset.save_to_disk` folder: the Arrow files state.json lists, features from dataset_info.json."""
    state = folder / "state.json"
    if not state.is_file():
        raise TransferlabError(f"{folder}: no state.json (dataset_dict.json lists this split); save the dataset "
                               "again with save_to_disk")
    files = [folder / entry["filename"] for entry in _json(state).get("_data_files", [])]
    if not files:
        raise TransferlabError(f"{state}: lists no data files; save the dataset again with save_to_disk")
    tables = [_read_arrow(file) for file in files]
    info = folder / "dataset_info.json"
    features = _json(info).get("features") if info.is_file() else None
    return _Split([str(file) for file in files], tables, features or _features_in(tables[0].schema),
                  _stamp(files, folder))


def _split_of_dataset(where: str, dataset) -> _Split:
    """A `datasets.Dataset` (what load_dataset gives): its memory-mapped table and features."""
    files = [Path(entry["filename"]) for entry in dataset.cache_files]
    table = dataset.data.table
    stamp = _stamp(files, None) if files else _content_stamp(table)
    return _Split([where], [table], dataset.features.to_dict(), stamp)


def _read_parquet(file: Path) -> pa.Table:
    try:
        return pq.read_table(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all mean "not a readable table"
        raise TransferlabError(f"{file}: not a readable Parquet file ({_first_line(exc)}); check the file") from None


def _read_arrow(file: Path) -> pa.Table:
    """An Arrow IPC file as save_to_disk writes it (a stream), memory-mapped: large datasets stay on disk."""
    try:
        mapped = pa.memory_map(str(file))
        try:
            return ipc.open_stream(mapped).read_all()
        except pa.ArrowInvalid:
            return ipc.open_file(mapped).read_all()  # the random-access form, in case a writer used it
    except (OSError, pa.ArrowInvalid) as exc:
        raise TransferlabError(f"{file}: not a readable Arrow file ({_first_line(exc)}); save the dataset again "
                               "with save_to_disk") from None


def _is_hub_parquet(file: Path) -> bool:
    """The schema decides whether a .parquet is Hub data (an image column, or no manifest 'path' column either:
    then the message asks for an image column) or a manifest; an unreadable file goes to the manifest reader,
    which says so."""
    try:
        schema = pq.read_schema(file)
    except Exception:  # noqa: BLE001 - see _read_parquet
        return False
    return _image_column_name(_features_in(schema), schema) is not None or PATH_COLUMN not in schema.names


def _features_in(schema: pa.Schema) -> dict | None:
    """The `datasets` features that it stores in the Arrow / Parquet schema metadata, if any."""
    stored = (schema.metadata or {}).get(b"huggingface")
    if not stored:
        return None
    try:
        return json.loads(stored).get("info", {}).get("features")
    except (ValueError, AttributeError):
        return None  # metadata some other tool wrote under the same key: fall back to the columns


def _json(file: Path) -> dict:
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TransferlabError(f"{file}: not readable JSON ({_first_line(exc)}); save the dataset again with "
                               "save_to_disk") from None
    if not isinstance(found, dict):
        raise TransferlabError(f"{file}: not the JSON object save_to_disk writes; save the dataset again")
    return found


def _stamp(files: list[Path], root: Path | None) -> str:
    """Names (relative to the dataset folder), sizes and times of the files: the images change only with them."""
    lines = []
    for file in files:
        stat = file.stat()
        shown = file.relative_to(root) if root is not None and file.is_relative_to(root) else file
        lines.append(f"{shown}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}")
    return "\n".join(lines)


def _content_stamp(table: pa.Table) -> str:
    """A table held in memory only (no file to stat): its bytes are the key."""
    digest = hashlib.sha256()
    for batch in table.to_batches():
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()


# ---------------------------------------------------------------- pools, columns, labels


def _pools_of(splits: dict[str, _Split], root: Path, spec: DataSpec) -> Pools:
    """Official train / val / test from the splits' names; other splits (e.g. 'unlabeled') are left out, noted."""
    pools: dict[str, _Split] = {}
    ignored = []
    for name, split in splits.items():
        pool = next((pool for pool, words in SPLIT_WORDS.items() if name.lower() in (pool, *words)), None)
        if pool is None or pool in pools:
            ignored.append(name)
            continue
        pools[pool] = split
    if "train" not in pools:
        raise TransferlabError(f"{root}: no training split (found {', '.join(splits) or 'none'}); name the training "
                               "shards train-*.parquet or give the DatasetDict a 'train' split")
    train = _source(f"{_stem(root)}/train", root, pools["train"], spec, spec.classes)
    train.notes += [f"{root}: split '{name}' left out (train, validation and test are used, one of each)"
                    for name in ignored]
    others = {pool: _source(f"{_stem(root)}/{pool}", root, pools[pool], spec, train.classes)
              for pool in ("val", "test") if pool in pools}
    for pool in others.values():
        if pool.multi_label != train.multi_label:
            raise TransferlabError(f"{pool.name}: {'multi' if pool.multi_label else 'single'}-label, but the "
                                   "training split is not; give every split the same kind of labels")
    return Pools(train=train, val=others.get("val"), test=others.get("test"))


def _stem(path: Path) -> str:
    return path.stem if path.suffix.lower() == ".parquet" else path.name


def _source(name: str, root: Path, split: _Split, spec: DataSpec, classes: list[str] | None) -> HfSource:
    """One split → a source: the image bytes, the labels mapped to `classes` (imposed) or found, rows checked."""
    where = split.files[0] if len(split.files) == 1 else f"{root} ({len(split.files)} shards)"
    schema = split.tables[0].schema
    image_name = _image_column_name(split.features, schema)
    if image_name is None:
        raise TransferlabError(f"{where}: no image column (columns: {', '.join(schema.names)}); the Hugging Face "
                               "layout keeps images in an 'image' column of {bytes, path} (a manifest of file paths "
                               "names its column 'path')")
    label_name = _label_column_name(split.features, schema, where)
    images, names = _image_bytes(split, image_name, where)
    raw = [value for table in split.tables for value in _column(table, label_name, where).to_pylist()]
    if not raw:
        raise TransferlabError(f"{where}: no rows, so no images; point data.source at a file that holds the "
                               "dataset (an interrupted download or save leaves an empty one)")
    multi = _is_list(schema.field(label_name).type) or bool(spec.multi_label)
    given = [_row_labels(value, multi) for value in raw]
    label_names = _class_label_names((split.features or {}).get(label_name))
    shards = _Shards(root, tuple(split.files), np.cumsum([0, *(len(t) for t in split.tables)])[:-1], images, names,
                     split.stamp)
    return _labelled(name, shards, given, label_names, classes, spec, multi)


def _image_column_name(features: dict | None, schema: pa.Schema) -> str | None:
    """The column `datasets` typed Image, else one named 'image'."""
    typed = [name for name, feature in (features or {}).items()
             if isinstance(feature, dict) and feature.get("_type") == "Image" and name in schema.names]
    return typed[0] if typed else IMAGE_COLUMN if IMAGE_COLUMN in schema.names else None


def _label_column_name(features: dict | None, schema: pa.Schema, where: str) -> str:
    """'label' or 'labels', else the first ClassLabel column (e.g. CIFAR-100's 'fine_label')."""
    for name in LABEL_COLUMNS:
        if name in schema.names:
            return name
    for name, feature in (features or {}).items():
        if name in schema.names and _class_label_names(feature) is not None:
            return name
    raise TransferlabError(f"{where}: no label column (columns: {', '.join(schema.names)}); add 'label' (one class "
                           "per image) or 'labels' (a list of classes per image)")


def _class_label_names(feature) -> list[str] | None:
    """The names of a ClassLabel feature, or of the ClassLabel inside a list feature (multi-label)."""
    if isinstance(feature, list) and feature:
        feature = feature[0]  # older datasets wrote a list feature as [inner]
    if not isinstance(feature, dict):
        return None
    if feature.get("_type") == "ClassLabel":
        names = feature.get("names")
        return [str(n) for n in names] if names else [str(i) for i in range(int(feature.get("num_classes", 0)))]
    if feature.get("_type") in LIST_TYPES:
        return _class_label_names(feature.get("feature"))
    return None


def _column(table: pa.Table, name: str, where: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise TransferlabError(f"{where}: a shard lacks the '{name}' column; give every shard the same columns")
    return table.column(name)


def _image_bytes(split: _Split, column: str, where: str) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """The encoded images (and their own file names, if stored) of every table, in order."""
    images, names = [], []
    for table in split.tables:
        values = _column(table, column, where)
        kind = values.type
        if pa.types.is_struct(kind):
            if kind.get_field_index("bytes") < 0:
                raise TransferlabError(f"{where}: the image column '{column}' has no 'bytes' field ({kind}); embed "
                                       "the images (datasets' Image feature stores {bytes, path}) or list the files "
                                       "in a manifest")
            images.append(pc.struct_field(values, "bytes"))  # a null struct gives a null here too
            has_path = kind.get_field_index("path") >= 0
            names.append(pc.struct_field(values, "path") if has_path else None)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            images.append(values)
            names.append(None)
        else:
            raise TransferlabError(f"{where}: column '{column}' holds {kind}, not image bytes; store the encoded "
                                   "images (PNG, JPEG, ...) as {bytes, path} or binary")
    return _joined(images), None if any(n is None for n in names) else _joined(names)


def _joined(arrays: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """One chunked array over the tables (binary and large_binary shards made alike; no copy when alike)."""
    if len({array.type for array in arrays}) > 1:
        arrays = [array.cast(pa.large_binary() if pa.types.is_binary(array.type) or
                             pa.types.is_large_binary(array.type) else pa.large_string()) for array in arrays]
    return pa.chunked_array([chunk for array in arrays for chunk in array.chunks], type=arrays[0].type)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _row_labels(value, multi: bool) -> list | None:
    """A row's labels as a list (None: the row has no label at all, which single-label data cannot have)."""
    if isinstance(value, list):
        return value
    if value is None:
        return [] if multi else None
    return [value]


def _labelled(name: str, shards: _Shards, given: list[list | None], label_names: list[str] | None,
              classes: list[str] | None, spec: DataSpec, multi: bool) -> HfSource:
    """Labels → class indices; a row whose label is missing or unknown is an error, or with skip_bad a note."""
    shown = [None if labels is None else [_label_text(value, label_names) for value in labels] for labels in given]
    known = list(classes) if classes is not None else label_names or _sorted_values(given)
    index = {cls: i for i, cls in enumerate(known)}
    has_bytes = np.asarray(pc.is_valid(shards.images))  # once, not a pyarrow scalar per row
    keep, notes = [], []
    for row, labels in enumerate(shown):
        bad = "(none)" if labels is None else next((label for label in labels if label not in index), None)
        if bad is not None:
            problem = _bad_label(shards, row, given[row], bad, known, label_names)
            if not spec.skip_bad:
                raise TransferlabError(f"{problem}; fix the label or data.classes, or pass --skip-bad to skip such "
                                       "rows")
            notes.append(f"{problem} (row skipped)")
        elif has_bytes[row]:
            keep.append(row)
        elif spec.skip_bad:
            notes.append(f"{shards.describe(row)}: no image bytes (row skipped)")
        else:
            raise TransferlabError(f"{shards.describe(row)}: no image bytes (only a path?); embed the images, or pass "
                                   "--skip-bad to skip such rows")
    if not keep:
        raise TransferlabError(f"{name}: no usable rows ({notes[0] if notes else 'none'}); check the labels")
    labels = _targets([shown[row] for row in keep], index, multi)
    return HfSource(name, shards, np.asarray(keep, dtype=np.int64), labels, known, max_pixels=spec.max_pixels,
                    notes=notes)


def _label_text(value, label_names: list[str] | None) -> str:
    """A ClassLabel index → its name (an index out of range stays a number, and is refused as unknown)."""
    if label_names is not None and isinstance(value, int) and 0 <= value < len(label_names):
        return label_names[value]
    return str(value)


def _sorted_values(given: list[list | None]) -> list[str]:
    """Class names without a ClassLabel: the label values, sorted (numbers as numbers: 2 before 10)."""
    values = {value for labels in given if labels is not None for value in labels if value is not None}
    numeric = all(isinstance(value, int) for value in values)
    return [str(value) for value in sorted(values, key=(lambda v: v) if numeric else str)]


def _bad_label(shards: _Shards, row: int, raw: list | None, bad: str, known: list[str],
               label_names: list[str] | None) -> str:
    where = shards.describe(row)
    if raw is None:
        return f"{where}: no label"
    listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
    if label_names is not None and bad.lstrip("-").isdigit():
        return f"{where}: label {bad} is not an index of the ClassLabel names ({len(label_names)}: {listed})"
    return f"{where}: label '{bad}' is not a known class ({listed})"


def _targets(shown: list[list[str]], index: dict[str, int], multi: bool) -> np.ndarray:
    if not multi:
        return np.array([index[labels[0]] for labels in shown], dtype=np.int64)
    matrix = np.zeros((len(shown), len(index)), dtype=np.uint8)
    for row, labels in enumerate(shown):
        matrix[row, [index[label] for label in labels]] = 1
    return matrix


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
