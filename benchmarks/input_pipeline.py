"""Input pipeline epoch throughput: the decoded-image cache, cold and warm, vs torchvision's ImageFolder + DataLoader.

Builds an image folder of real PNGs (Fashion-MNIST training items, upscaled to --export-size px), then, in the
same run, produces one epoch of uint8 image tensors at tf_efficientnet_lite0's 96 px view (its eval transform:
resize 109, centre crop 96) with
  baseline:  torchvision ImageFolder + DataLoader (2 workers, persistent), the same transform; epochs after
             the first are timed (the first pays for starting the workers; printed too)
  no cache:  transferlab.data.decode.decode_images(cache=False), as every run decoded before this cache
  cold:      decode_images with an empty decoded-image cache (a fresh TRANSFERLAB_CACHE)
  warm:      the same call again, as a later epoch or a later run makes it (a new FolderSource, cache full)
and prints images/s for each (best of --repeats epochs: the machine may be shared), whether all gave the same
tensors, and the ratios, warm vs the baseline last.

    python benchmarks/input_pipeline.py [--images 2000] [--export-size 128] [--batch-size 64] [--repeats 3]
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
from transferlab.models import load_backbone


def build_folder(root: Path, n_images: int, size: int) -> Path:
    pools = open_pools(DataSpec(source="fashion-mnist"))
    indices = np.random.default_rng(0).choice(len(pools.train), n_images, replace=False)
    return export_image_folder(pools.train, np.sort(indices), root / "pngs", size=size, suffix=".png")


def image_folder_epochs(folder: Path, view, batch_size: int, epochs: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of each epoch through ImageFolder + DataLoader, and the images of the last."""
    loader = DataLoader(ImageFolder(str(folder), transform=view), batch_size=batch_size, num_workers=2,
                        persistent_workers=True)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        images = torch.cat([batch for batch, _ in loader])
        seconds.append(time.perf_counter() - started)
    return seconds, images


def transferlab_epoch(folder: Path, view, batch_size: int, cache: Path | None) -> tuple[float, torch.Tensor, int]:
    """One epoch through decode_images, from listing the folder (fingerprint included) to the tensor; and how
    many images it really decoded (calls of the source's `load`). `cache=None`: without the cache, as before it."""
    if cache is not None:
        os.environ["TRANSFERLAB_CACHE"] = str(cache)
    started = time.perf_counter()
    source = FolderSource(folder)
    load, decoded = source.load, []
    source.load = lambda index: decoded.append(index) or load(index)
    images, kept, _ = decode_images(source, np.arange(len(source)), view, batch_size=batch_size,
                                    cache=cache is not None)
    assert len(kept) == len(source)
    return time.perf_counter() - started, images, len(decoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--export-size", type=int, default=128, help="side of the PNGs written (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="each figure is the best of this many epochs")
    args = parser.parse_args()
    view = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=96)).eval_transform()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp), args.images, args.export_size)
        base, base_images = image_folder_epochs(folder, view, args.batch_size, 1 + args.repeats)
        plains = [transferlab_epoch(folder, view, args.batch_size, None) for _ in range(args.repeats)]
        colds = [transferlab_epoch(folder, view, args.batch_size, Path(tmp) / f"cache{r}") for r in range(args.repeats)]
        warms = [transferlab_epoch(folder, view, args.batch_size, Path(tmp) / "cache0") for _ in range(args.repeats)]
        slots = next((Path(tmp) / "cache0" / "decoded").glob("*/*/slots.npy"))
        on_disk = slots.stat().st_blocks * 512
    n, first_s, base_s = len(base_images), base[0], min(base[1:])
    plain_s, cold_s, warm_s = (min(run[0] for run in runs) for runs in (plains, colds, warms))
    same = all(torch.equal(base_images, run[1]) for run in plains + colds + warms)
    print(f"images: {n} PNGs, {args.export_size}x{args.export_size} -> tf_efficientnet_lite0 view at 96 px (uint8), "
          f"batch {args.batch_size}, {os.cpu_count()} CPU cores, best of {args.repeats} epochs")
    print(f"ImageFolder + DataLoader (2 workers): {n / base_s:8.1f} img/s  ({base_s:.2f} s; first epoch, starting "
          f"the workers: {n / first_s:.1f} img/s)")
    print(f"transferlab decode, no cache:         {n / plain_s:8.1f} img/s  ({plain_s:.2f} s; as before the cache)")
    print(f"transferlab decode, cold cache:       {n / cold_s:8.1f} img/s  ({cold_s:.2f} s, "
          f"{max(c[2] for c in colds)} decoded; cache file {on_disk / 2**20:.0f} MiB on disk)")
    print(f"transferlab decode, warm cache:       {n / warm_s:8.1f} img/s  ({warm_s:.3f} s, "
          f"{max(w[2] for w in warms)} decoded)")
    print(f"same tensors from all: {'yes' if same else 'NO'}")
    print(f"warm vs cold: {cold_s / warm_s:.1f}x")
    print(f"ratio: {base_s / warm_s:.1f}x (warm cache vs ImageFolder + DataLoader)")


if __name__ == "__main__":
    main()
