"""Shared fixtures: real data only (Debian's Fashion-MNIST, scikit-learn digits, skimage photos).

Every test session gets its own feature cache, shared by its tests (ONNX exports are cached there too).
"""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.data import open_pools
from transferlab.data.builtins import FASHION_MNIST_DIRS
from transferlab.data.export import export_image_folder

HAVE_FASHION_MNIST = any((d / "t10k-images-idx3-ubyte.gz").is_file() for d in FASHION_MNIST_DIRS)
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST, reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist (.ci/run does)")

SMALL_SIZE = 64  # backbone input size for fast tests (the ONNX export at this size is shared by the session)
FOLDER_CLASSES = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("TRANSFERLAB_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def fashion_pools():
    if not HAVE_FASHION_MNIST:
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    from transferlab.config import DataSpec

    return open_pools(DataSpec(source="fashion-mnist"))


def take_per_class(labels: np.ndarray, classes, n: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in classes])


@pytest.fixture(scope="session")
def image_folder(fashion_pools, tmp_path_factory):
    """A real image folder: 3 Fashion-MNIST classes × 40 training PNGs, plus a test folder of 3 × 20."""
    root = tmp_path_factory.mktemp("folder")
    train = export_image_folder(fashion_pools.train, take_per_class(fashion_pools.train.labels, FOLDER_CLASSES, 40),
                                root / "train")
    test = export_image_folder(fashion_pools.test, take_per_class(fashion_pools.test.labels, FOLDER_CLASSES, 20),
                               root / "test")
    return train, test


@pytest.fixture
def copy_folder(image_folder, tmp_path):
    """A private copy of the training folder, for tests that damage or change files."""
    import shutil

    return shutil.copytree(image_folder[0], tmp_path / "train")


def study_spec(folder, **extra):
    """A small real study: frozen-feature rows, the pixels row and a 3-epoch CNN, 2 seeds (+ reference rows)."""
    train, test = folder
    return {"name": "tiny", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": ["knn", {"name": "linear", "C": [0.1, 1.0]}, "pixels",
                          {"name": "simple-cnn", "label": "cnn", "epochs": 3, "image_size": 16, "augment": "none"}],
            "seeds": [0, 1], **extra}


@pytest.fixture(scope="session")
def finished_study(image_folder, tmp_path_factory):
    """(output folder, records) of `study_spec` run once per test session (the study and report tests share it)."""
    import transferlab

    out = tmp_path_factory.mktemp("study")
    records = transferlab.study(study_spec(image_folder), out)
    return out, records


@pytest.fixture(scope="session")
def mosaic_manifest(fashion_pools, tmp_path_factory):
    from .mosaics import write_mosaic_manifest

    return write_mosaic_manifest(fashion_pools.train, tmp_path_factory.mktemp("mosaics"), 360, seed=0)


@pytest.fixture(scope="session")
def multilabel_study(mosaic_manifest, tmp_path_factory):
    """(output folder, records) of a multi-label study on the mosaics: mlp (BCE) and knn, per-class thresholds,
    the all-negative and most-frequent baselines."""
    import transferlab

    spec = {"name": "mosaics", "datasets": [{"source": str(mosaic_manifest), "name": "mosaics"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": ["mlp", {"name": "knn", "k": [5, 15]}],
            "references": ["all-negative", "majority"], "threshold": "per_class"}
    out = tmp_path_factory.mktemp("ml-study")
    return out, transferlab.study(spec, out)


def search_spec(folder, **search):
    """A small real search on `image_folder`: mlp (width, lr; conditional on paradigm) or linear (C)."""
    train, test = folder
    return {"name": "tiny-search", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": [{"name": "mlp", "max_epochs": 30, "patience": 5}, "linear"], "references": False,
            "search": {"trials": 10, "sampler": "tpe", "pruner": "median", "objective": "log_loss",
                       "space": {"paradigm.hidden": {"choices": [0, 32, 128], "when": {"paradigm": "mlp"}},
                                 "paradigm.lr": {"low": 1e-4, "high": 3e-2, "log": True, "when": {"paradigm": "mlp"}},
                                 "paradigm.C": {"low": 0.01, "high": 10.0, "log": True,
                                                "when": {"paradigm": "linear"}}}, **search}}


@pytest.fixture(scope="session")
def finished_search(image_folder, tmp_path_factory):
    """(output folder, summary) of `search_spec` run once per session (SQLite storage under the folder)."""
    import transferlab

    out = tmp_path_factory.mktemp("search")
    return out, transferlab.search(search_spec(image_folder), out)


@pytest.fixture(scope="session")
def digits16():
    """scikit-learn's 8×8 digits as 16 px uint8 images (real data), the first 450, with their labels: small enough
    for training tests that run a whole loop in seconds."""
    from transferlab.config import DataSpec
    from transferlab.data.decode import decode_images
    from transferlab.data.views import make_view

    source = open_pools(DataSpec(source="digits")).train
    view, _ = make_view({"steps": [["resize", 16], ["center_crop", 16]]})
    x, _, _ = decode_images(source, np.arange(450), view, cache=False)
    return x, source.labels[:450]
