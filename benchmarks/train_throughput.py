"""Fine-tuning throughput: transferlab's whole training path vs a bare PyTorch loop on the same network.

tf_efficientnet_lite0 (offline ImageNet weights) at --size px, every layer trained (`finetune`, its defaults:
AdamW 3e-4, batch 32, the `light` augmentation online), on --images Fashion-MNIST training images decoded
once into the decoded-image cache's uint8 views (outside the timing), --epochs epochs:
  transferlab  `finetune.fit`: the loop's epoch (shuffled order, augmentation, channels_last, forward, loss,
               backward, AdamW step, per-step bookkeeping and progress bar) plus its validation pass
               over --val images; the history's epoch seconds
  bare         the network that run built and trained (a copy, so the arithmetic is the same), the same
               optimizer settings, in a plain loop over in-memory uint8 batches: forward, loss, backward,
               step; no augmentation, no validation
Prints img/s of each (training images per second of epoch) and the ratio transferlab / bare last (issue 21's
target: within 1.5x). torch.compile is not used by either: on 2 CPU cores its first compile of a training
step takes minutes, more than a small fine-tune runs.

    python benchmarks/train_throughput.py [--images 500] [--val 100] [--epochs 3] [--size 96]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import make_splits, open_pools
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.train.loop import set_train_mode


def transferlab_arm(backbone, data, splits, epochs: int):
    paradigm = create_paradigm("finetune", {"epochs": epochs}, n_classes=10, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu")))
    paradigm.fit(data["train"], splits["train"].labels, data["val"], splits["val"].labels)
    return paradigm, [h["seconds"] for h in paradigm.history_]


def bare_arm(model: nn.Module, images: torch.Tensor, labels: np.ndarray, epochs: int, batch_size: int,
             lr: float, batchnorm: str) -> list[float]:
    """The arithmetic of training, nothing around it (BatchNorm in the mode the transferlab run chose)."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    set_train_mode(model, batchnorm)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    targets = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            x = images[batch].contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    spec = DataSpec(source="fashion-mnist", train_size=args.images, val_size=args.val)
    splits = make_splits(open_pools(spec), spec, seed=0)
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=args.size))
    data = {name: decode_images(s.source, s.indices, backbone.eval_transform())[0] for name, s in splits.items()
            if name != "test"}
    paradigm, ours = transferlab_arm(backbone, data, splits, args.epochs)
    p = paradigm.params
    batchnorm = next(v["policy"] for k, v in paradigm.selected_.items() if k.endswith("batchnorm"))
    bare = bare_arm(paradigm.model_, data["train"], splits["train"].labels, args.epochs, p.batch_size, p.lr,
                    batchnorm)
    # the first epoch of each warms allocators and oneDNN's kernels: the median of the rest is the figure
    ours_s, bare_s = float(np.median(ours[1:] or ours)), float(np.median(bare[1:] or bare))
    n = len(data["train"])
    print(f"lite0 @ {args.size} px, every layer trained, {n} training images (+{len(data['val'])} validation), "
          f"batch {p.batch_size}, {args.epochs} epochs, BatchNorm {batchnorm}, {torch.get_num_threads()} threads")
    print(f"transferlab finetune: {n / ours_s:6.1f} img/s  ({ours_s:.2f} s/epoch, validation included; "
          f"augment {p.augment})")
    print(f"bare PyTorch loop:    {n / bare_s:6.1f} img/s  ({bare_s:.2f} s/epoch)")
    print(f"ratio: {ours_s / bare_s:.2f}x (transferlab epoch / bare epoch; 1.0 = no overhead)")


if __name__ == "__main__":
    main()
