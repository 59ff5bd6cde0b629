"""Frozen-feature extraction throughput: transferlab's feature store vs the naive PyTorch loop.

Builds an image folder of >= 2000 real JPEGs at 256×256 (Fashion-MNIST items, upscaled), then, in the same
run, extracts tf_efficientnet_lite0 features (offline ImageNet weights, 224 px) with
  baseline:     torchvision ImageFolder + DataLoader (2 workers) + eager timm model, timm's eval transform
  transferlab:  FeatureStore.get (ONNX Runtime engine, uint8 views, decoding thread), empty feature cache
  model only:   the same engine on the same images decoded into memory beforehand (the loop's ceiling)
and prints images/s for each, the largest feature difference, end-to-end / model-only, and the ratio last.
The ONNX export (~10 s, once per backbone and size, cached on disk) is built before timing starts.

    python benchmarks/feature_throughput.py [--images 2000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import FolderSource, open_pools
from transferlab.data.decode import decode_images
from transferlab.data.export import export_image_folder
from transferlab.features import BackboneEncoder, FeatureStore
from transferlab.models import load_backbone


def build_folder(root: Path, n_images: int) -> Path:
    pools = open_pools(DataSpec(source="fashion-mnist"))
    indices = np.random.default_rng(0).choice(len(pools.train), n_images, replace=False)
    return export_image_folder(pools.train, np.sort(indices), root / "jpegs", size=256, suffix=".jpg")


def baseline(folder: Path, batch_size: int) -> tuple[float, np.ndarray]:
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    model = backbone.feature_model().model  # plain timm model, float input
    import timm.data

    transform = timm.data.create_transform(**backbone.data_config, is_training=False)
    loader = DataLoader(ImageFolder(str(folder), transform=transform), batch_size=batch_size, num_workers=2)
    started, out = time.perf_counter(), []
    with torch.no_grad():
        for images, _ in loader:
            out.append(model(images).numpy())
    return time.perf_counter() - started, np.concatenate(out)


def transferlab_store(folder: Path, batch_size: int, cache: Path) -> tuple[float, np.ndarray]:
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    source = FolderSource(folder)
    warm = BackboneEncoder(backbone, torch.device("cpu"), "auto")
    warm.encode(torch.zeros(2, *backbone.data_config["input_size"], dtype=torch.uint8))  # builds the export
    encoder = BackboneEncoder(backbone, torch.device("cpu"), "auto")
    started = time.perf_counter()
    got = FeatureStore(cache).get(source, np.arange(len(source)), encoder, batch_size=batch_size)
    assert got.encoded == len(source)
    return time.perf_counter() - started, got.features


def model_only(folder: Path, batch_size: int) -> float:
    """Seconds the same engine takes on the same images already decoded into memory (uint8, its view): the
    ceiling the feature store's decode-beside-the-model loop can reach."""
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    source = FolderSource(folder)
    encoder = BackboneEncoder(backbone, torch.device("cpu"), "auto")
    images, _, _ = decode_images(source, np.arange(len(source)), encoder.transform, cache=False, label="decode")
    encoder.encode(images[:2])  # the session is built outside the timing, as in the store's arm
    started = time.perf_counter()
    for batch in images.split(batch_size):
        encoder.encode(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp), args.images)
        n = sum(1 for _ in folder.rglob("*.jpg"))
        base_s, base_features = baseline(folder, args.batch_size)
        ours_s, our_features = transferlab_store(folder, args.batch_size, Path(tmp) / "features")
        model_s = model_only(folder, args.batch_size)
    print(f"images: {n} JPEGs, 256x256 -> 224 px, tf_efficientnet_lite0, batch {args.batch_size}, "
          f"{torch.get_num_threads()} model threads, {len(os.sched_getaffinity(0))} decoding threads (one per core "
          "the process may use)")
    print(f"baseline (ImageFolder + DataLoader + eager timm): {n / base_s:7.1f} img/s ({base_s:.1f} s)")
    print(f"transferlab feature store:                         {n / ours_s:7.1f} img/s ({ours_s:.1f} s)")
    print(f"the same engine on decoded images (model only):   {n / model_s:7.1f} img/s ({model_s:.1f} s)")
    print(f"max |feature difference|: {np.abs(base_features - our_features).max():.1e}")
    print(f"end-to-end / model-only: {model_s / ours_s:.2f} (1.0: decoding fully hidden behind the model)")
    print(f"ratio: {base_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
