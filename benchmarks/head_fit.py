"""A head fitted on cached features: transferlab's `mlp` paradigm vs a bare PyTorch loop, in the same run.

Real features: tf_efficientnet_lite0 (offline ImageNet weights) frozen at --image-size px on --train-size
Fashion-MNIST training images and --val-size validation images (1280 values each), extracted once and
outside the timing. Then, --rounds times in turn:
  mlp    transferlab's `mlp` paradigm with its defaults (hidden 512, dropout 0.5, AdamW 1e-3, batch 128,
         early stopping on the validation loss), `Mlp.fit` timed whole (standardising included)
  bare   the same network, optimizer, batch size and number of epochs (the ones mlp ran) in a plain loop:
         one randperm, forward, loss, backward, step per batch, and one validation forward per epoch
Prints the median seconds of each, the epochs run, both validation accuracies, and the ratio mlp / bare last
(1.0 = no overhead beyond the arithmetic). Issue 21's target: an mlp fit on 1000 × 1280 features ≤ 0.5 s.

    python benchmarks/head_fit.py [--train-size 1000] [--val-size 500] [--image-size 96] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import make_splits, open_pools
from transferlab.features import BackboneEncoder, FeatureStore
from transferlab.models import load_backbone
from transferlab.paradigms import create_paradigm

BACKBONE = "tf_efficientnet_lite0"


def features(args) -> tuple[np.ndarray, ...]:
    spec = DataSpec(source="fashion-mnist", train_size=args.train_size, val_size=args.val_size)
    splits = make_splits(open_pools(spec), spec, 0)
    backbone = load_backbone(BackboneSpec(name=BACKBONE, image_size=args.image_size))
    encoder = BackboneEncoder(backbone, torch.device("cpu"), "auto")
    store = FeatureStore()
    X, X_val = (store.get(splits[k].source, splits[k].indices, encoder).features for k in ("train", "val"))
    return X, splits["train"].labels, X_val, splits["val"].labels


def fit_mlp(X, y, X_val, y_val, n_classes: int):
    paradigm = create_paradigm("mlp", {}, n_classes=n_classes, seed=0)
    started = time.perf_counter()
    paradigm.fit(X, y, X_val, y_val)
    seconds = time.perf_counter() - started
    accuracy = float((paradigm.predict_proba(X_val).argmax(1) == y_val).mean())
    return seconds, paradigm.selected_["epochs_run"], accuracy


def fit_bare(X, y, X_val, y_val, n_classes: int, epochs: int):
    """The arithmetic mlp does, with nothing around it."""
    torch.manual_seed(0)
    started = time.perf_counter()
    mean, std = X.mean(0), X.std(0) + 1e-8
    x = torch.as_tensor((X - mean) / std, dtype=torch.float32)
    x_val = torch.as_tensor((X_val - mean) / std, dtype=torch.float32)
    t, t_val = torch.as_tensor(y), torch.as_tensor(y_val)
    model = nn.Sequential(nn.Linear(x.shape[1], 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, n_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(128):
            loss = loss_fn(model(x[batch]), t[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(x_val), t_val).item()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        accuracy = float((model(x_val).argmax(1) == t_val).float().mean())
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    X, y, X_val, y_val = features(args)
    n_classes = int(max(y.max(), y_val.max())) + 1
    mlp_s, bare_s = [], []
    for _ in range(args.rounds):
        seconds, epochs, mlp_accuracy = fit_mlp(X, y, X_val, y_val, n_classes)
        mlp_s.append(seconds)
        seconds, bare_accuracy = fit_bare(X, y, X_val, y_val, n_classes, epochs)
        bare_s.append(seconds)
    mlp_median, bare_median = statistics.median(mlp_s), statistics.median(bare_s)
    print(f"features: {X.shape[0]} train × {X.shape[1]}, {X_val.shape[0]} validation ({BACKBONE} @ "
          f"{args.image_size} px, Fashion-MNIST); {torch.get_num_threads()} threads; {args.rounds} rounds")
    print(f"mlp (transferlab): {mlp_median:6.3f} s  ({epochs} epochs, early-stopped; val accuracy {mlp_accuracy:.3f})")
    print(f"bare PyTorch loop: {bare_median:6.3f} s  (the same {epochs} epochs; val accuracy {bare_accuracy:.3f})")
    print(f"ratio mlp / bare: {mlp_median / bare_median:.2f}x")


if __name__ == "__main__":
    main()
