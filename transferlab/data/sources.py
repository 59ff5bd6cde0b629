"""Image sources: a fixed, ordered set of labelled images that splits index into.

`FileSource` is any list of image files with labels; `FolderSource` finds that list in a
`root/<class>/<image>` tree, `manifests.py` in a CSV / Parquet manifest or split files, `builtins.py`
in a known dataset. `ArraySource` holds images already in memory. `pools.open_pools` turns a `DataSpec`
into the pools a dataset offers, narrowed to `data.select_classes` by `subset_classes`; `splits.py` cuts them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import TransferlabError
from ..core.paths import name_bytes, printable
from ..core.registry import did_you_mean
from .images import DEFAULT_MAX_PIXELS, UnreadableImage, open_image  # noqa: F401 - re-exported

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MANIFEST_EXTENSIONS = (".csv", ".parquet")


def class_name(folder_name: str) -> str:
    """The class a folder name stands for: itself, with bytes that are not UTF-8 shown as \\xNN escapes (the
    folder is still found by its own name)."""
    return printable(folder_name)


class ImageSource(ABC):
    """An ordered, labelled image collection. Labels index `classes`; `load(i)` gives an RGB PIL image.

    Single-label: `labels` is int64, one class index per image. Multi-label: `labels` is an N × C uint8
    0/1 matrix (an image may have no label at all); `multi_label` says which.
    """

    name: str
    classes: list[str]
    labels: np.ndarray
    notes: list[str]  # what was skipped or dropped while listing the images (reported in the run record)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def label_matrix(self, indices: np.ndarray | None = None) -> np.ndarray:
        """N × C 0/1 uint8 for either kind (one-hot rows for single-label)."""
        labels = self.labels if indices is None else self.labels[indices]
        if self.multi_label:
            return labels.astype(np.uint8)
        return np.eye(len(self.classes), dtype=np.uint8)[labels]

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """Decode image `index` as RGB (grayscale and palette images become 3-channel)."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """A human name for image `index`: its file path, or `dataset/pool[index]`."""

    @abstractmethod
    def subset(self, name: str, indices: np.ndarray, *, labels: np.ndarray | None = None,
               classes: list[str] | None = None) -> ImageSource:
        """Images `indices` as a new source of the same kind (relabelled with `labels` / `classes` if given)."""

    @cached_property
    @abstractmethod
    def fingerprint(self) -> str:
        """A content key: changes whenever the images or labels change."""


class FileSource(ImageSource):
    """Image files with their labels, decoded lazily from disk (`images.open_image`)."""

    def __init__(self, name: str, root: Path, paths: list[Path], labels: np.ndarray, classes: list[str], *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, notes: list[str] | None = None):
        self.name, self.root, self.paths, self.classes = name, Path(root), list(paths), list(classes)
        self.labels = labels.astype(np.uint8) if labels.ndim == 2 else labels.astype(np.int64)
        self.max_pixels, self.notes = max_pixels, list(notes or [])

    def load(self, index: int) -> Image.Image:
        return open_image(self.paths[index], self.max_pixels)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def subset(self, name: str, indices: np.ndarray, *, labels: np.ndarray | None = None,
               classes: list[str] | None = None) -> FileSource:
        return FileSource(name, self.root, [self.paths[i] for i in indices],
                          self.labels[indices] if labels is None else labels,
                          self.classes if classes is None else classes, max_pixels=self.max_pixels, notes=self.notes)

    @cached_property
    def fingerprint(self) -> str:
        # Path, size and mtime of every file (what make and rsync trust): re-reading every byte on each
        # run would cost as much as decoding, and any edit to a file changes its mtime.
        digest = hashlib.sha256(name_bytes("\n".join(self.classes)))
        digest.update(f"max_pixels={self.max_pixels}".encode())  # what is refused as a bomb is remembered as bad
        for path, label in zip(self.paths, self.labels, strict=True):
            stat = path.stat()
            where = path.relative_to(self.root) if path.is_relative_to(self.root) else path
            # ctime too: a chmod that makes an unreadable file readable must not leave it remembered as bad
            digest.update(name_bytes(f"{where}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|"
                                     f"{np.asarray(label).tobytes().hex()}\n"))
        return digest.hexdigest()[:20]


class FolderSource(FileSource):
    """`root/<class>/<image>` (images may sit in nested sub-folders of their class folder): class names are
    the sub-folder names, sorted (torchvision's ImageFolder rule).

    `classes` may be imposed (an explicit val/test folder must use the training folder's class order). An
    empty class folder is an error, or with `skip_empty` a note (the class keeps its column, no images).
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None, *, skip_empty: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, imposed_by_training: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise TransferlabError(f"{root}: no such dataset folder; give a folder laid out as "
                                   "root/<class>/<image>")
        folders = {class_name(d.name): d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
        found = sorted(folders)
        if not found:
            raise TransferlabError(f"{root}: no class folders inside; lay images out as root/<class>/<image>")
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise TransferlabError(f"{root}: class folder '{unknown[0]}' is not a training class; "
                                       f"use the training classes ({', '.join(classes)})")
        classes = list(classes) if classes is not None else found
        paths, labels, notes = [], [], []
        for label, cls in enumerate(classes):
            folder = root / folders.get(cls, cls)
            if not folder.is_dir():
                if imposed_by_training:
                    continue  # a val/test folder may lack a class
                raise TransferlabError(f"{folder}: data.classes names '{cls}' but there is no such class folder; "
                                       "fix data.classes or add the folder")
            everything = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
            files = sorted(p for p in everything if p.suffix.lower() in IMAGE_EXTENSIONS)
            if len(everything) > len(files):
                others = sorted({p.suffix.lower() or p.name for p in everything} - set(IMAGE_EXTENSIONS))
                notes.append(f"{folder}: {len(everything) - len(files)} non-image files ignored ({', '.join(others)})")
            if not files:
                if not skip_empty:
                    raise TransferlabError(f"{folder}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                           "add images, remove the folder, or pass --skip-bad")
                notes.append(f"{folder}: empty class folder (no images)")
            paths += files
            labels += [label] * len(files)
        super().__init__(root.name, root, paths, np.asarray(labels, dtype=np.int64), classes, max_pixels=max_pixels,
                         notes=notes)


class ArraySource(ImageSource):
    """Images held in memory as a uint8 array, N×H×W (grayscale) or N×H×W×3."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError("ArraySource wants uint8 images shaped N×H×W or N×H×W×3")
        self.name, self.images, self.classes, self.notes = name, images, list(classes), []
        self.labels = np.asarray(labels, dtype=np.uint8 if np.ndim(labels) == 2 else np.int64)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def subset(self, name: str, indices: np.ndarray, *, labels: np.ndarray | None = None,
               classes: list[str] | None = None) -> ArraySource:
        subset = ArraySource(name, self.images[indices], self.labels[indices] if labels is None else labels,
                             self.classes if classes is None else classes)
        subset.notes = list(self.notes)
        return subset

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.images).data)
        digest.update(self.labels.tobytes())
        digest.update(name_bytes("\n".join(self.classes)))
        return digest.hexdigest()[:20]


class PooledSource(ImageSource):
    """Several sources with the same classes as one, in order: a dataset's official train / val / test pooled
    so that `ratios` can cut all of its images (`data.official_split: false`)."""

    def __init__(self, name: str, parts: list[ImageSource]):
        kinds = {(tuple(part.classes), part.multi_label) for part in parts}
        if len(kinds) != 1:
            raise TransferlabError(f"{name}: its splits have different classes or kinds of labels and cannot be "
                                   "pooled; keep official_split")
        self.name, self.parts, self.classes = name, list(parts), list(parts[0].classes)
        self.labels = np.concatenate([part.labels for part in parts])
        self.notes = [note for part in parts for note in part.notes]
        self._starts = np.cumsum([0, *(len(part) for part in parts)])

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.parts[part], int(index - self._starts[part])

    def load(self, index: int) -> Image.Image:
        part, local = self._locate(index)
        return part.load(local)

    def describe(self, index: int) -> str:
        part, local = self._locate(index)
        return part.describe(local)

    def subset(self, name: str, indices: np.ndarray, *, labels: np.ndarray | None = None,
               classes: list[str] | None = None) -> PooledSource:
        """Each part's share of `indices` (given part by part, as every caller's ascending indices are)."""
        indices = np.asarray(indices, dtype=np.int64)
        owner = np.searchsorted(self._starts, indices, side="right") - 1
        if np.any(np.diff(owner) < 0):
            raise ValueError("PooledSource.subset: give the indices part by part (e.g. ascending)")
        labels = self.labels[indices] if labels is None else np.asarray(labels)
        return PooledSource(name, [part.subset(part.name, indices[owner == i] - self._starts[i],
                                               labels=labels[owner == i], classes=classes)
                                   for i, part in enumerate(self.parts)])

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256("|".join(part.fingerprint for part in self.parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Pools:
    """What a dataset offers before splitting: a training pool, and official val / test sets if any."""

    train: ImageSource
    val: ImageSource | None = None
    test: ImageSource | None = None


def subset_classes(source: ImageSource, names: list[str]) -> ImageSource:
    """`source` with only the classes `names`, in that order (labels re-indexed to it).

    Single-label: images of the other classes are dropped. Multi-label: the other columns are; every image
    stays, since one left with none of `names` is a true negative for all of them (as an image with no
    label at all already is). The new source has new classes and labels, hence a new fingerprint.
    """
    for i, name in enumerate(names):
        if name not in source.classes:
            hint = did_you_mean(name, source.classes)
            shown = ", ".join(source.classes[:30]) + (f", ... ({len(source.classes)} classes)"
                                                      if len(source.classes) > 30 else "")
            raise TransferlabError(f"data.select_classes: '{name}' is not a class of {source.name}{hint}; "
                                   f"choose from {shown}")
        if name in names[:i]:
            raise TransferlabError(f"data.select_classes: '{name}' is listed twice; name each class once")
    columns = np.array([source.classes.index(name) for name in names], dtype=np.int64)
    if source.multi_label:
        return source.subset(source.name, np.arange(len(source)), labels=source.labels[:, columns],
                             classes=list(names))
    new_label = np.full(len(source.classes), -1, dtype=np.int64)
    new_label[columns] = np.arange(len(names))
    kept = np.flatnonzero(new_label[source.labels] >= 0)
    return source.subset(source.name, kept, labels=new_label[source.labels[kept]], classes=list(names))
