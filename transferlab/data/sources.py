"""Image sources: a fixed, ordered set of labelled images that splits index into.

Two kinds cover the foundation: `FolderSource` (`root/<class>/<image>`, decoded lazily from disk) and
`ArraySource` (builtin datasets that ship as arrays). `open_pools` turns a `DataSpec` into the pools a
dataset offers (train, and official val / test where it has them); `splits.py` cuts them into splits.
"""

from __future__ import annotations

import gzip
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataSpec
from ..errors import TransferlabError
from ..paths import cache_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class UnreadableImage(Exception):
    """An image that cannot be decoded; carries the file (or item) name and PIL's reason."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: cannot read image ({reason})")
        self.where = where


class ImageSource(ABC):
    """An ordered, labelled image collection. Labels index `classes`; `load(i)` gives an RGB PIL image.

    Single-label: `labels` is int64, one class index per image. Multi-label: `labels` is an N × C uint8
    0/1 matrix (an image may have no label at all); `multi_label` says which.
    """

    name: str
    classes: list[str]
    labels: np.ndarray

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

    @cached_property
    @abstractmethod
    def fingerprint(self) -> str:
        """A content key: changes whenever the images or labels change."""


class FolderSource(ImageSource):
    """`root/<class>/<image>`: class names are the sub-folder names, sorted (torchvision's ImageFolder rule).

    `classes` may be imposed (an explicit val/test folder must use the training folder's class order).
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TransferlabError(f"{self.root}: no such dataset folder; give a folder laid out as "
                                   "root/<class>/<image>")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise TransferlabError(f"{self.root}: no class folders inside; lay images out as "
                                   "root/<class>/<image>")
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise TransferlabError(f"{self.root}: class folder '{unknown[0]}' is not a training class; "
                                       f"use the training classes ({', '.join(classes)})")
        self.classes = list(classes) if classes is not None else found
        self.name = self.root.name
        paths, labels = [], []
        for label, cls in enumerate(self.classes):
            folder = self.root / cls
            if not folder.is_dir():
                continue  # a val/test folder may lack a class
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise TransferlabError(f"{folder}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                       "add images or remove the folder")
            paths += files
            labels += [label] * len(files)
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(str(path), str(exc) or type(exc).__name__) from None

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    @cached_property
    def fingerprint(self) -> str:
        # Path, size and mtime of every file (what make and rsync trust): re-reading every byte on each
        # run would cost as much as decoding, and any edit to a file changes its mtime.
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for path, label in zip(self.paths, self.labels, strict=True):
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
        return digest.hexdigest()[:20]


class ArraySource(ImageSource):
    """Images held in memory as a uint8 array, N×H×W (grayscale) or N×H×W×3."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError("ArraySource wants uint8 images shaped N×H×W or N×H×W×3")
        self.name, self.images, self.classes = name, images, list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.images).data)
        digest.update(self.labels.tobytes())
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Pools:
    """What a dataset offers before splitting: a training pool, and official val / test sets if any."""

    train: ImageSource
    val: ImageSource | None = None
    test: ImageSource | None = None


# ---------------------------------------------------------------- builtin datasets

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


def _read_idx(path: Path) -> np.ndarray:
    # The IDX format is four lines of numpy; torchvision's reader would insist on its own folder layout and
    # on downloading, which Debian's gzipped copy does not need.
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist() -> Pools:
    for folder in FASHION_MNIST_DIRS:
        files = {k: folder / f"{k}-ubyte.gz" for k in
                 ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
        if all(f.is_file() for f in files.values()):
            arrays = {k: _read_idx(f) for k, f in files.items()}
            return Pools(
                train=ArraySource("fashion-mnist/train", arrays["train-images-idx3"],
                                  arrays["train-labels-idx1"], FASHION_MNIST_CLASSES),
                test=ArraySource("fashion-mnist/test", arrays["t10k-images-idx3"],
                                 arrays["t10k-labels-idx1"], FASHION_MNIST_CLASSES))
    return _torchvision_fashion_mnist()


def _torchvision_fashion_mnist() -> Pools:
    from torchvision.datasets import FashionMNIST

    root = cache_root() / "torchvision"
    try:
        train = FashionMNIST(root, train=True, download=True)
        test = FashionMNIST(root, train=False, download=True)
    except Exception:  # noqa: BLE001 - any download failure gets the same advice
        raise TransferlabError(
            "fashion-mnist: not found in /usr/share/datasets/fashion-mnist and the download failed; "
            "install it with `apt-get install dataset-fashion-mnist` or go online") from None
    return Pools(
        train=ArraySource("fashion-mnist/train", train.data.numpy(), train.targets.numpy(), train.classes),
        test=ArraySource("fashion-mnist/test", test.data.numpy(), test.targets.numpy(), test.classes))


def load_digits() -> Pools:
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 8×8, values 0..16
    return Pools(train=ArraySource("digits", images, digits.target, [str(c) for c in digits.target_names]))


BUILTINS: dict[str, Callable[[], Pools]] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
}


def open_pools(spec: DataSpec) -> Pools:
    """The pools of `spec.source`: a builtin name or an image-folder root (plus optional val/test folders)."""
    if spec.source in BUILTINS:
        if spec.val or spec.test:
            raise TransferlabError(f"data.source '{spec.source}' is a builtin dataset with its own splits; "
                                   "drop data.val / data.test")
        return BUILTINS[spec.source]()
    path = Path(spec.source)
    if not path.exists():
        raise TransferlabError(f"{spec.source}: no such dataset folder and not a builtin dataset "
                               f"({', '.join(BUILTINS)}); check the path")
    train = FolderSource(path)
    val = FolderSource(spec.val, classes=train.classes) if spec.val else None
    test = FolderSource(spec.test, classes=train.classes) if spec.test else None
    return Pools(train=train, val=val, test=test)
