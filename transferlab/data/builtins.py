"""Builtin datasets by name: Fashion-MNIST (Debian's files first), fashion-mnist-mosaics (multi-label, made
from it) and scikit-learn's digits offline; torchvision's flowers102, caltech101, oxford-iiit-pet, dtd,
cifar10 and cifar100, downloaded once into the cache when online, and one clear line when not.

Adding one = a function returning `Pools`, registered by name with `@BUILTINS.register(name)`.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits as sk_digits
from torchvision.datasets import CIFAR10, CIFAR100, DTD, Caltech101, FashionMNIST, Flowers102, OxfordIIITPet

from ..core.distributed import barrier, is_main
from ..core.errors import TransferlabError
from ..core.paths import cache_root
from ..core.registry import Registry
from .mosaics import garment_mosaics
from .sources import ArraySource, FileSource, Pools

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]

BUILTINS: Registry[Callable[[], Pools]] = Registry("dataset")  # name → loader of its pools; errors list them in order


def _read_idx(path: Path) -> np.ndarray:
    # The IDX format is four lines of numpy; torchvision's reader would insist on its own folder layout and
    # on downloading, which Debian's gzipped copy does not need.
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@BUILTINS.register("fashion-mnist")
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
    return _train_test_arrays("fashion-mnist", FashionMNIST, hint="or install Debian's copy with `apt-get "
                              "install dataset-fashion-mnist`")


# train: 3000 mosaics of training garments, test: 1000 of test garments (no garment photo is in both)
MOSAIC_POOLS = {"train": (3000, 0), "test": (1000, 1)}  # pool → (images, seed)
MOSAIC_EMPTY = 0.5  # chance a tile stays black: 1 in 16 mosaics shows no garment


@BUILTINS.register("fashion-mnist-mosaics")
def load_fashion_mnist_mosaics() -> Pools:
    """Multi-label: 56×56 mosaics of 2×2 Fashion-MNIST tiles, each a garment of any of the 10 classes or
    black; an image's labels are its garments' classes (some images have none). Built in well under a
    second from the Fashion-MNIST pools, always the same images."""
    garments = load_fashion_mnist()

    def pool(part: str, source: ArraySource) -> ArraySource:
        n, seed = MOSAIC_POOLS[part]
        images, labels = garment_mosaics(source, n, seed, classes=range(len(source.classes)), empty=MOSAIC_EMPTY)
        return ArraySource(f"fashion-mnist-mosaics/{part}", images, labels, source.classes)

    return Pools(train=pool("train", garments.train), test=pool("test", garments.test))


@BUILTINS.register("digits")
def load_digits() -> Pools:
    digits = sk_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 8×8, values 0..16
    return Pools(train=ArraySource("digits", images, digits.target, [str(c) for c in digits.target_names]))


# ---------------------------------------------------------------- torchvision's datasets (downloaded once)


def _torchvision(name: str, make, hint: str = ""):
    """Build the torchvision dataset objects with download (a no-op once the files are there).

    Under torchrun rank 0 downloads alone (two processes extracting one archive corrupt it); the others
    wait for it, then find the files there, or fail with the same line.
    """
    root = cache_root() / "torchvision"
    if not is_main():
        barrier()
    try:
        return make(root)
    except Exception:  # noqa: BLE001 - offline, a moved server or a half download all get the same advice
        raise TransferlabError(
            f"{name}: not in {root} and the download failed; go online once (torchvision downloads it "
            f"there), or put the dataset's files in {root} yourself{'; ' + hint if hint else ''}") from None
    finally:
        if is_main():
            barrier()


def _files(name: str, dataset, files, labels, classes) -> FileSource:
    return FileSource(name, Path(dataset.root), [Path(f) for f in files], np.asarray(labels), classes)


@BUILTINS.register("flowers102")
def load_flowers102() -> Pools:
    def split(ds):
        classes = getattr(ds, "classes", None) or [str(c) for c in range(102)]
        return _files(f"flowers102/{ds._split}", ds, ds._image_files, ds._labels, classes)

    sets = _torchvision("flowers102", lambda root: [Flowers102(root, s, download=True)
                                                    for s in ("train", "val", "test")])
    return Pools(*map(split, sets))


@BUILTINS.register("caltech101")
def load_caltech101() -> Pools:
    """One pool (Caltech-101 has no official split): test and validation are carved, stratified."""
    ds = _torchvision("caltech101", lambda root: Caltech101(root, download=True))
    folder = Path(ds.root) / "101_ObjectCategories"
    files = [folder / ds.categories[y] / f"image_{i:04d}.jpg" for y, i in zip(ds.y, ds.index, strict=True)]
    return Pools(train=_files("caltech101", ds, files, ds.y, list(ds.categories)))


@BUILTINS.register("oxford-iiit-pet")
def load_oxford_pet() -> Pools:
    sets = _torchvision("oxford-iiit-pet", lambda root: [OxfordIIITPet(root, s, download=True)
                                                         for s in ("trainval", "test")])
    train, test = (_files(f"oxford-iiit-pet/{s}", ds, ds._images, ds._labels, ds.classes)
                   for s, ds in zip(("trainval", "test"), sets, strict=True))
    return Pools(train=train, test=test)


@BUILTINS.register("dtd")
def load_dtd() -> Pools:
    sets = _torchvision("dtd", lambda root: [DTD(root, s, download=True) for s in ("train", "val", "test")])
    return Pools(*[_files(f"dtd/{s}", ds, ds._image_files, ds._labels, ds.classes)
                   for s, ds in zip(("train", "val", "test"), sets, strict=True)])


def _train_test_arrays(name: str, cls, hint: str = "") -> Pools:
    """torchvision datasets held as arrays with a train flag (CIFAR, Fashion-MNIST)."""
    train, test = _torchvision(name, lambda root: [cls(root, train=t, download=True) for t in (True, False)], hint)
    train, test = (ArraySource(f"{name}/{part}", np.asarray(ds.data), np.asarray(ds.targets), ds.classes)
                   for part, ds in (("train", train), ("test", test)))
    return Pools(train=train, test=test)


@BUILTINS.register("cifar10")
def load_cifar10() -> Pools:
    return _train_test_arrays("cifar10", CIFAR10)


@BUILTINS.register("cifar100")
def load_cifar100() -> Pools:
    return _train_test_arrays("cifar100", CIFAR100)
