"""Partial fine-tuning epoch time: cached frozen-stage activations vs the full forward, in the same run.

tf_efficientnet_lite0 (offline ImageNet weights) at 96 px, only its last feature stage and head trained
(`finetune from_stage=-1`, no augmentation), on 1000 Fashion-MNIST training images, 3 epochs each way.
Prints the mean epoch time of each, the one-time cost of computing the activations, and the ratio last.

    python benchmarks/partial_finetune.py [--images 1000] [--epochs 3] [--size 96]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import make_splits, open_pools
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext


def mean_epoch_seconds(paradigm) -> float:
    return float(np.mean([h["seconds"] for h in paradigm.history_]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    spec = DataSpec(source="fashion-mnist", train_size=args.images, val_size=500)
    splits = make_splits(open_pools(spec), spec, seed=0)
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=args.size))
    data = {name: decode_images(s.source, s.indices, backbone.eval_transform())[0] for name, s in splits.items()
            if name != "test"}
    runs, totals = {}, {}
    for cached in (False, True):
        paradigm = create_paradigm("finetune", {"epochs": args.epochs, "from_stage": -1, "augment": "none",
                                                "cache_activations": cached}, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(backbone, torch.device("cpu")))
        started = time.perf_counter()
        paradigm.fit(data["train"], splits["train"].labels, data["val"], splits["val"].labels)
        runs[cached], totals[cached] = paradigm, time.perf_counter() - started
    full, cached = mean_epoch_seconds(runs[False]), mean_epoch_seconds(runs[True])
    drift = abs(runs[False].history_[-1]["val_loss"] - runs[True].history_[-1]["val_loss"])
    print(f"lite0 @ {args.size} px, last stage + head trained, {args.images} images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    print(f"full forward:       {full:6.2f} s/epoch  (fit {totals[False]:.1f} s)")
    print(f"cached activations: {cached:6.2f} s/epoch  (fit {totals[True]:.1f} s, including the one-time pass "
          f"of {totals[True] - sum(h['seconds'] for h in runs[True].history_):.1f} s)")
    print(f"final validation loss differs by {drift:.1e} (same computation, other float summation order)")
    print(f"ratio: {full / cached:.2f}x")


if __name__ == "__main__":
    main()
