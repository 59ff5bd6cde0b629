"""Optimizer, schedule and loss factories: torch's own classes, chosen by name.

Parameter groups carry their own learning rate (discriminative rates per stage are just groups with
smaller `lr`), so every torch scheduler scales each group from its own starting point.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from ..data.balance import class_weights, pos_weight
from .params import TrainParams


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


def make_optimizer(groups: list[dict], p: TrainParams) -> torch.optim.Optimizer:
    if p.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov and p.momentum > 0)
    if p.optimizer == "adam":
        return torch.optim.Adam(groups, lr=p.lr)
    if p.optimizer == "amsgrad":
        return torch.optim.Adam(groups, lr=p.lr, amsgrad=True)
    if p.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=p.lr)
    return torch.optim.RMSprop(groups, lr=p.lr, momentum=p.momentum)


def make_schedule(optimizer: torch.optim.Optimizer, p: TrainParams, steps_per_epoch: int, epochs: int):
    """A per-step torch LR scheduler for `p.schedule` (with linear warm-up where asked)."""
    total = max(1, steps_per_epoch * epochs)
    if p.schedule == "onecycle":  # cycles momentum (or Adam's beta1) inversely, as in Smith's one-cycle
        return S.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                            pct_start=p.pct_start, cycle_momentum=p.optimizer != "rmsprop" or p.momentum > 0)
    warm = min(total - 1, round(p.warmup_epochs * steps_per_epoch))
    rest = total - warm
    main = {
        "constant": lambda: S.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "step": lambda: S.StepLR(optimizer, step_size=p.step_epochs * steps_per_epoch, gamma=p.gamma),
        "multistep": lambda: S.MultiStepLR(optimizer, milestones=[round(f * total) - warm for f in p.milestones],
                                           gamma=p.gamma),
        "cosine": lambda: S.CosineAnnealingLR(optimizer, T_max=rest),
        "exponential": lambda: S.ExponentialLR(optimizer, gamma=p.gamma ** (1 / steps_per_epoch)),
    }[p.schedule]()
    if not warm:
        return main
    warmup = S.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warm)
    return S.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def make_loss(p: TrainParams, labels: np.ndarray, n_classes: int, device: torch.device | None = None):
    """logits, targets → loss. Single-label targets are integers (BCE and MSE see them one-hot); multi-label
    targets are the N × C 0/1 matrix (uint8), told apart by `labels` being 2-D.

    `labels` are the training labels the loss will see (after any offline oversampling): class weights are
    computed from them (data/balance.py).
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return multi_label_loss(p, labels, device)
    w = class_weights(labels, n_classes, p.class_weights, p.effective_beta)
    weight = None if w is None else torch.as_tensor(w, device=device)
    if p.loss == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=p.label_smoothing)
    if p.loss == "bce":
        # For BCE the imbalance is positives vs negatives within each class: a per-class `weight` would scale
        # both alike, so class weighting here means BCE's pos_weight (negatives / positives).
        positive = None if w is None else torch.as_tensor(
            pos_weight(np.eye(n_classes, dtype=np.uint8)[labels]), device=device)
        bce = nn.BCEWithLogitsLoss(pos_weight=positive)
        return lambda logits, y: bce(logits, nn.functional.one_hot(y, n_classes).to(logits.dtype))
    mse = nn.MSELoss()
    return lambda logits, y: mse(logits.softmax(1), nn.functional.one_hot(y, n_classes).to(logits.dtype))


def multi_label_loss(p: TrainParams, label_matrix: np.ndarray, device: torch.device | None = None):
    """logits, N × C 0/1 targets → loss: BCE on the logits (the default) or MSE on their sigmoids.

    Each class is its own yes/no question, so class weighting (balanced or effective alike) is BCE's
    pos_weight = negatives / positives of that class, and label smoothing moves every target ε/2 toward
    the other answer (y·(1 − ε) + ε/2, Keras's binary smoothing).
    """
    if p.loss_for(multi_label=True) == "mse":
        mse = nn.MSELoss()
        return lambda logits, y: mse(logits.sigmoid(), y.to(logits.dtype))
    positive = None if p.class_weights == "none" else torch.as_tensor(pos_weight(label_matrix), device=device)
    bce = nn.BCEWithLogitsLoss(pos_weight=positive)
    eps = p.label_smoothing
    return lambda logits, y: bce(logits, y.to(logits.dtype) * (1 - eps) + eps / 2)
