"""`lr: find` and `transferlab lr-find`: the learning-rate range test (Smith 2015), as fastai's `lr_find` and
Lightning's `Tuner.lr_find` run it — through torch-lr-finder, the library made for it.

Training batches (augmented as training augments them) go through the model while the learning rate grows
exponentially from 1e-7 to 10 over 100 steps (fastai's defaults); the loss is smoothed (exponential moving
average, factor 0.05) and the test stops once it exceeds 5× its best. The model and the optimizer are put back as
they were afterwards, so the real training starts from the same weights.

The suggestion follows fastai's default rule, "valley": the longest stretch over which the smoothed loss keeps
falling (its longest decreasing run of steps, gaps allowed), and in it the step halfway through its middle third.
Hand-written (fastai is not a dependency; torch-lr-finder has only the steepest-gradient rule, which on small
datasets picks a dip in the noisy climb after the minimum: 0.51 for AdamW on a curve lowest at 7e-3, measured,
where valley gives 4.3e-4). A starting point, not an optimum: the plot shows the whole curve.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from ..core.errors import TransferlabError
from ..core.seeding import seeded_generator
from ..data.augment import augment_batch
from .optim import make_loss, make_optimizer, param_groups
from .params import TrainParams

START_LR, END_LR, STEPS = 1e-7, 10.0, 100  # fastai's lr_find defaults
SMOOTHING, DIVERGE = 0.05, 5  # torch-lr-finder's defaults
RULE = ("fastai's valley: within the longest stretch over which the smoothed loss keeps falling, the step halfway "
        "through its middle third")


class _AugmentedBatches(TrainDataLoaderIter):
    """Training batches as training sees them: uint8 images through the online augmentation."""

    def __init__(self, loader: DataLoader, augment):
        super().__init__(loader)
        self.augment = augment

    def inputs_labels_from_batch(self, batch):
        x, y = batch
        if self.augment is not None:
            x = augment_batch(x, self.augment)
        # channels_last, as the training loop feeds them: twice as fast per step on CPU (train/loop.py)
        return (x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x), y


def find_lr(model: nn.Module, groups: list[tuple[list[nn.Parameter], float]], x: torch.Tensor, y: torch.Tensor,
            p: TrainParams, *, n_classes: int, seed: int, device: torch.device, augment=None,
            label: str = "lr-find", steps: int = STEPS) -> dict[str, Any]:
    """The range test on `model`'s trainable `groups` (every group at the same lr) → {lrs, losses, suggested_lr,
    rule, steps}; `model` is left as it came."""
    model.to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer(param_groups([(params, START_LR) for params, _ in groups], p.weight_decay),
                               p.model_copy(update={"lr": START_LR}))
    loss_fn = make_loss(p, y.numpy(), n_classes, device)
    batches = DataLoader(TensorDataset(x, y), batch_size=min(p.batch_size, len(y)), shuffle=True,
                         generator=seeded_generator(seed, "lr-find"), drop_last=len(y) > p.batch_size)
    finder = LRFinder(model, optimizer, lambda logits, target: loss_fn(logits.float(), target), device=device)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # its bar, notes
            # accumulation_steps: a step of the test sums as many batches as a training step does (accumulate)
            finder.range_test(_AugmentedBatches(batches, augment), end_lr=END_LR, num_iter=steps,
                              smooth_f=SMOOTHING, diverge_th=DIVERGE, accumulation_steps=p.accumulate)
    finally:
        finder.reset()  # the weights and optimizer state from before the test
    lrs, losses = finder.history["lr"], finder.history["loss"]
    return {"lrs": [float(v) for v in lrs], "losses": [float(v) for v in losses],
            "suggested_lr": suggested_lr(lrs, losses, label), "rule": RULE, "steps": len(lrs),
            "start_lr": START_LR, "end_lr": END_LR}


def suggested_lr(lrs: list[float], losses: list[float], label: str = "lr-find") -> float:
    """fastai's valley rule: the longest decreasing run of losses (a longest decreasing subsequence, O(n²) on
    100 points), then the step halfway through its middle third."""
    longest = [1] * len(losses)  # the longest decreasing run ending at each step
    start = end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    if end - start < 3:
        raise TransferlabError(f"{label}: the loss never kept falling over the {len(lrs)} steps of the range test "
                               f"(lr {lrs[0]:.0e} to {lrs[-1]:.0e}); check the data and labels, or set lr by hand")
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])
