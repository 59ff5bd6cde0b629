"""Optimizer, schedule and loss factories: torch's own classes, chosen by name from three registries.

`OPTIMIZERS`, `SCHEDULES` and `LOSSES` (core.registry) hold one small function per choice; `TrainParams` takes
its `optimizer`, `schedule` and `loss` choices from their names, so adding one is one decorated function here.
Parameter groups carry their own learning rate (discriminative rates per stage are just groups with
smaller `lr`), so every torch scheduler scales each group from its own starting point.

The functions receive the training params `p` (train.params.TrainParams, which imports this module for its
choices, hence typed `Any` here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from ..core.registry import Registry
from ..data.balance import class_weights, pos_weight

Params = Any  # train.params.TrainParams
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# groups, p → optimizer
OPTIMIZERS: Registry[Callable[[list[dict], Params], torch.optim.Optimizer]] = Registry("optimizer")
# optimizer, p, steps_per_epoch, total steps → per-step LR scheduler
SCHEDULES: Registry[Callable[[torch.optim.Optimizer, Params, int, int], Any]] = Registry("schedule")
# p, training labels (N, or N × C 0/1 for multi-label), n_classes, device → loss(logits, targets)
LOSSES: Registry[Callable[[Params, np.ndarray, int, torch.device | None], LossFn]] = Registry("loss")


def param_groups(groups: list[tuple[list[nn.Parameter], float]], weight_decay: float) -> list[dict]:
    """(params, lr) groups → torch groups, with no weight decay on biases and norm weights (timm's rule)."""
    out = []
    for params, lr in groups:
        trainable = [p for p in params if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        out += [{"params": ps, "lr": lr, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0))
                if ps]
    return out


def make_optimizer(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return OPTIMIZERS.create(p.optimizer, groups, p)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov)  # params refuse nesterov at 0


def _given(p: Params, *names: str) -> dict[str, Any]:
    """The optional settings the user gave (betas, eps); the rest stay torch's defaults."""
    return {name: getattr(p, name) for name in names if getattr(p, name) is not None}


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=p.lr, **_given(p, "betas", "eps"))


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=p.lr, **_given(p, "betas", "eps"))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=p.lr, momentum=p.momentum, **_given(p, "eps"))


@OPTIMIZERS.register("amsgrad")
def _amsgrad(groups: list[dict], p: Params) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=p.lr, amsgrad=True, **_given(p, "betas", "eps"))


def make_schedule(optimizer: torch.optim.Optimizer, p: Params, steps_per_epoch: int, epochs: int):
    """A per-step torch LR scheduler for `p.schedule` (with linear warm-up where asked)."""
    return SCHEDULES.create(p.schedule, optimizer, p, steps_per_epoch, max(1, steps_per_epoch * epochs))


def with_warmup(main: Callable[[torch.optim.Optimizer, Params, int, int, int], Any]):
    """A schedule that starts with `p.warmup_epochs` of linear warm-up; `main(optimizer, p, steps_per_epoch,
    total, warm)` makes the schedule that follows it (its steps: total − warm)."""

    @functools.wraps(main)
    def schedule(optimizer: torch.optim.Optimizer, p: Params, steps_per_epoch: int, total: int):
        warm = min(total - 1, round(p.warmup_epochs * steps_per_epoch))
        after = main(optimizer, p, steps_per_epoch, total, warm)
        if not warm:
            return after
        warmup = S.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warm)
        return S.SequentialLR(optimizer, [warmup, after], milestones=[warm])

    return schedule


@SCHEDULES.register("constant")
@with_warmup
def _constant(optimizer, p: Params, steps_per_epoch: int, total: int, warm: int):
    return S.ConstantLR(optimizer, factor=1.0, total_iters=0)


@SCHEDULES.register("step")
@with_warmup
def _step(optimizer, p: Params, steps_per_epoch: int, total: int, warm: int):
    return S.StepLR(optimizer, step_size=p.step_epochs * steps_per_epoch, gamma=p.gamma)


@SCHEDULES.register("multistep")
@with_warmup
def _multistep(optimizer, p: Params, steps_per_epoch: int, total: int, warm: int):
    return S.MultiStepLR(optimizer, milestones=[round(f * total) - warm for f in p.milestones], gamma=p.gamma)


@SCHEDULES.register("cosine")
@with_warmup
def _cosine(optimizer, p: Params, steps_per_epoch: int, total: int, warm: int):
    return S.CosineAnnealingLR(optimizer, T_max=total - warm)


@SCHEDULES.register("onecycle")
def _onecycle(optimizer, p: Params, steps_per_epoch: int, total: int):
    """Its own warm-up (`pct_start`); cycles momentum (or Adam's beta1) inversely, as in Smith's one-cycle."""
    low, high = p.momentum_range
    return S.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                        pct_start=p.pct_start, cycle_momentum=_cycles_momentum(p), base_momentum=low,
                        max_momentum=high)


@SCHEDULES.register("cyclic")
def _cyclic(optimizer, p: Params, steps_per_epoch: int, total: int):
    """Smith's cyclical learning rate (triangular): from min_lr up to each group's lr and back, `cycle_epochs`
    per cycle (one cycle over the whole training by default), momentum cycling the other way."""
    cycle = max(2, round(p.cycle_epochs * steps_per_epoch)) if p.cycle_epochs else max(2, total)
    low, high = p.momentum_range
    peaks = [g["lr"] for g in optimizer.param_groups]
    return S.CyclicLR(optimizer, base_lr=[p.min_lr * peak / p.lr for peak in peaks], max_lr=peaks,
                      step_size_up=cycle // 2, step_size_down=cycle - cycle // 2, mode="triangular",
                      cycle_momentum=_cycles_momentum(p), base_momentum=low, max_momentum=high)


@SCHEDULES.register("plateau")
def _plateau(optimizer, p: Params, steps_per_epoch: int, total: int):
    """Keras's ReduceLROnPlateau: the lr × gamma after `plateau_patience` epochs without a better monitored
    figure (the loop steps it once per epoch with that figure, higher being better)."""
    return S.ReduceLROnPlateau(optimizer, mode="max", factor=p.gamma, patience=p.plateau_patience,
                               min_lr=p.min_lr)


def steps_per_epoch_only(schedule) -> bool:
    """Does this schedule step once per epoch on the monitored figure (plateau), not once per batch?"""
    return isinstance(schedule, S.ReduceLROnPlateau)


def _cycles_momentum(p: Params) -> bool:
    return p.optimizer != "rmsprop" or p.momentum > 0  # RMSprop without momentum has none to cycle


@SCHEDULES.register("exponential")
@with_warmup
def _exponential(optimizer, p: Params, steps_per_epoch: int, total: int, warm: int):
    return S.ExponentialLR(optimizer, gamma=p.gamma ** (1 / steps_per_epoch))


def make_loss(p: Params, labels: np.ndarray, n_classes: int, device: torch.device | None = None) -> LossFn:
    """logits, targets → loss. Single-label targets are integers (BCE and MSE see them one-hot); multi-label
    targets are the N × C 0/1 matrix (uint8), told apart by `labels` being 2-D.

    `labels` are the training labels the loss will see (after any offline oversampling): class weights are
    computed from them (data/balance.py).
    """
    labels = np.asarray(labels)
    multi_label = labels.ndim == 2
    name = p.loss_for(multi_label)
    if multi_label and name == "ce":  # refused before training (TrainParams.check_multi_label); bce, as ever
        name = "bce"
    return LOSSES.create(name, p, labels, n_classes, device)


def _class_weight(p: Params, labels: np.ndarray, n_classes: int) -> np.ndarray | None:
    return class_weights(labels, n_classes, p.class_weights, p.effective_beta)


@LOSSES.register("ce")
def _cross_entropy(p: Params, labels: np.ndarray, n_classes: int, device: torch.device | None) -> LossFn:
    w = _class_weight(p, labels, n_classes)
    return nn.CrossEntropyLoss(weight=None if w is None else torch.as_tensor(w, device=device),
                               label_smoothing=p.label_smoothing)


@LOSSES.register("bce")
def _binary_cross_entropy(p: Params, labels: np.ndarray, n_classes: int, device: torch.device | None) -> LossFn:
    """Single-label: BCE on the one-hot targets. Multi-label: each class is its own yes/no question, so class
    weighting (balanced or effective alike) is BCE's pos_weight = negatives / positives of that class, and
    label smoothing moves every target ε/2 toward the other answer (y·(1 − ε) + ε/2, Keras's binary smoothing).
    """
    eps = p.label_smoothing
    if labels.ndim == 2:
        positive = None if p.class_weights == "none" else torch.as_tensor(pos_weight(labels), device=device)
        bce = nn.BCEWithLogitsLoss(pos_weight=positive)
        return lambda logits, y: bce(logits, y.to(logits.dtype) * (1 - eps) + eps / 2)
    # For BCE the imbalance is positives vs negatives within each class: a per-class `weight` would scale
    # both alike, so class weighting here means BCE's pos_weight (negatives / positives).
    w = _class_weight(p, labels, n_classes)
    positive = None if w is None else torch.as_tensor(
        pos_weight(np.eye(n_classes, dtype=np.uint8)[labels]), device=device)
    bce = nn.BCEWithLogitsLoss(pos_weight=positive)
    return lambda logits, y: bce(logits, nn.functional.one_hot(y, n_classes).to(logits.dtype) * (1 - eps) + eps / 2)


@LOSSES.register("mse")
def _mean_squared_error(p: Params, labels: np.ndarray, n_classes: int, device: torch.device | None) -> LossFn:
    """MSE on the softmax against the one-hot targets; multi-label: on the sigmoids against the 0/1 matrix."""
    mse = nn.MSELoss()
    if labels.ndim == 2:
        return lambda logits, y: mse(logits.sigmoid(), y.to(logits.dtype))
    return lambda logits, y: mse(logits.softmax(1), nn.functional.one_hot(y, n_classes).to(logits.dtype))
