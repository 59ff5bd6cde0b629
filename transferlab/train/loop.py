"""The one training loop every weight-training paradigm uses.

Data are uint8 image tensors decoded once (small datasets), labelled by integers or, for multi-label
data, an N × C 0/1 matrix. Offline steps run once before the first epoch
(oversampling short classes, augmented copies: seeded, so reruns and resumes get the same set); then each
epoch draws its order from a generator seeded by (seed, epoch) — a plain shuffle or a balancing sampler —
and augments on the fly, so an epoch is reproducible on its own. At every epoch end the loop
writes a checkpoint (model: safetensors; optimizer, scheduler, RNG, history: a torch file loaded with
weights_only=True), so `resume` continues exactly where a killed run left off: same seed, same numbers.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from ..core.distributed import is_main, rank, world_size
from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..core.progress import progress_bar
from ..core.seeding import deterministic_cuda, seeded_generator, torch_seeded
from ..data.augment import augment_batch, augmented_copies, make_augment
from ..data.balance import class_counts, epoch_length, oversample, oversample_named, sampled_order
from .hooks import epoch_done
from .optim import make_loss, make_optimizer, make_schedule, steps_per_epoch_only
from .params import TrainParams, autocast_dtype


@dataclass
class Images:
    """uint8 images N×3×H×W (or activations / features computed from them) and their labels: N integers,
    or for multi-label data an N × C 0/1 matrix."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def multi_label(self) -> bool:
        return self.y.ndim == 2


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    resumed_from: int = 0  # epochs taken from a checkpoint
    notes: dict[str, Any] = field(default_factory=dict)  # what balancing did that params do not show


def offline_training_set(train: Images, p: TrainParams, seed: int, n_classes: int, label: str = "train",
                         classes: list[str] | None = None) -> tuple[Images, dict[str, Any]]:
    """The training set after the offline steps, and notes on what they did.

    First `oversample_to` (augmented copies until every class has N images) or `oversample_classes` (the
    named classes' images `factor` times; `classes` are the names), with the run's preset or light if none;
    then `augment_copies` (N augmented copies of every image). All are seeded by the run seed alone, so
    every rank and every rerun builds the same set.
    """
    if p.oversample_to is None and p.oversample_classes is None and not p.augment_copies:
        return train, {}
    _require_images(train.x, "oversample_to, oversample_classes and augment_copies need", label)
    size = tuple(train.x.shape[-2:])
    x, y, notes = train.x, train.y, {}
    topping_up = make_augment(p.augment, size) or make_augment("light", size)
    if p.oversample_to is not None:
        x, y = oversample(x, y, p.oversample_to, topping_up, seed)
    if p.oversample_classes is not None:
        x, y = oversample_named(x, y, p.oversample_classes, list(classes or map(str, range(n_classes))),
                                topping_up, seed)
    if p.oversample_to is not None or p.oversample_classes is not None:
        notes["train_images_per_class"] = class_counts(y.numpy(), n_classes)
    if p.augment_copies:
        x = torch.cat([x, *augmented_copies(x, make_augment(p.augment, size), p.augment_copies, seed)])
        y = y.repeat(p.augment_copies + 1, *[1] * (y.ndim - 1))  # a label matrix repeats by rows
    notes["train_images"] = len(y)
    return Images(x, y), notes


def _require_images(x: torch.Tensor, what: str, label: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise TransferlabError(f"{label}: {what} the images, but this phase trains on precomputed "
                               "activations or features; for finetune set cache_activations: false")


def fit(model: nn.Module, groups: list[dict], train: Images, val: Images, p: TrainParams, *, n_classes: int,
        seed: int, device: torch.device, checkpoints: Path | None = None, resume: bool = False,
        label: str = "train", epochs: int | None = None, penalty=None, augment=None,
        run_key: str = "", classes: list[str] | None = None) -> TrainResult:
    """Train `model` (its trainable parameters, in `groups`) and leave it holding the best epoch's weights
    (the last epoch's with `p.restore_best` false).

    Multi-label data (labels an N × C 0/1 matrix) train with bce unless `loss` says mse, and the epoch's
    score is micro-F1 at 0.5 (`train_micro_f1` / `val_micro_f1` in the history, what `monitor:
    val_accuracy` then follows) instead of accuracy.

    `penalty()`, if given, is added to the training loss (e.g. an L1 term on a head's weights); `augment`,
    if given, replaces the `p.augment` preset online (per-image, uint8 in, uint8 out; offline
    copies still use the preset). `run_key` is stored with every checkpoint; `resume` refuses a checkpoint
    written under another key. `classes` names the classes (what `oversample_classes` refers to).
    """
    with torch_seeded(seed + rank()), deterministic_cuda(p.deterministic, device.type):
        # torch_seeded: augmentation, MixUp and dropout; under torchrun each rank draws its own
        return _fit(model, groups, train, val, p, n_classes=n_classes, seed=seed, device=device,
                    checkpoints=checkpoints, resume=resume, label=label, epochs=epochs, penalty=penalty,
                    augment=augment, run_key=run_key, classes=classes)


def _fit(model, groups, train: Images, val: Images, p: TrainParams, *, n_classes, seed, device, checkpoints, resume,
         label, epochs, penalty, augment, run_key, classes) -> TrainResult:
    epochs = epochs or p.epochs
    if train.multi_label:
        p.check_multi_label(label)
    train, notes = offline_training_set(train, p, seed, n_classes, label, classes)
    if p.cutmix:
        _require_images(train.x, "cutmix needs", label)
    # channels_last: the fast convolution layout on GPU and on CPU alike (2× per training step, measured).
    model.to(device=device, memory_format=torch.channels_last)
    shards = world_size()
    per_epoch = len(train) if p.sampler == "none" else epoch_length(train.y.numpy(), p.sampler)
    if p.sampler != "none":
        notes["images_per_epoch"] = per_epoch
    batch = _batch_per_process(p.batch_size, shards, label, notes)
    steps = math.ceil(math.ceil(per_epoch / shards) / batch)
    bn = _batchnorm_policy(model, p, steps, notes)
    recompute = bn == "train" and p.recompute_bn(steps) and "batchnorm" in notes
    if recompute:
        notes["batchnorm"]["recomputed"] = "over the training images before each evaluation"
    optimizer = make_optimizer(groups, p)
    # Under torchrun the forward of training goes through DDP (gradients averaged across ranks); evaluation
    # uses the plain model, whose weights are the same on every rank.
    trained = model if shards == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    # accumulate: N batches per optimizer step; the schedule counts optimizer steps
    schedule = make_schedule(optimizer, p, math.ceil(steps / p.accumulate), epochs)
    precision = Precision(autocast_dtype(p.precision, device), device)
    # ema: the moving average is what evaluates, what the best epoch keeps and what the model ends as
    ema = ModelEmaV3(model, decay=p.ema) if p.ema else None
    evaluated = ema.module if ema else model
    loss_fn = make_loss(p, train.y.numpy(), n_classes, device)
    train_loss_fn = loss_fn if penalty is None else (lambda logits, y: loss_fn(logits, y) + penalty())
    augment = online_augment(p, train.x, augment)
    result, best_state, stale = TrainResult(), None, 0

    finished = False
    if resume and checkpoints and (checkpoints / "last.pt").is_file():
        result, stale, finished = _restore(checkpoints, model, optimizer, schedule, run_key, ema, precision)
        best_state = _load_best(checkpoints, model) if p.restore_best else None
    result.notes = notes
    metric = score_name(train.multi_label)

    # One bar for the whole training (its ETA is the fit's, not an epoch's); early stopping ends it short.
    remaining = 0 if finished else epochs - result.resumed_from
    with progress_bar(label, total=remaining * math.ceil(per_epoch / shards), unit="img") as bar:
        for epoch in range(result.resumed_from, result.resumed_from + remaining):
            started = time.perf_counter()
            step = Step(optimizer, schedule, precision, ema, p.accumulate, p.grad_clip)
            train_loss, train_score = _train_epoch(trained, step, train_loss_fn, train, p, augment,
                                                   seed, epoch, device, f"{label} · epoch {epoch + 1}/{epochs}", bar,
                                                   bn, batch)
            if shards > 1:  # each rank's BatchNorm buffers saw only its shard's last step: evaluate their mean
                distribute_bn(evaluated, shards, reduce=True)
            if recompute:
                recompute_batchnorm(evaluated, train.x, p.batch_size, device)
            val_loss, val_score = _agreed(evaluate(evaluated, val, loss_fn, p.batch_size, device), device)
            result.history.append({"epoch": epoch + 1, "train_loss": train_loss, f"train_{metric}": train_score,
                                   "val_loss": val_loss, f"val_{metric}": val_score,
                                   "lr": optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - started})
            epoch_done(result.history[-1])  # a search's pruner may stop the trial here
            score = _monitored(result.history[-1], p, metric)
            if steps_per_epoch_only(schedule):
                schedule.step(score)
            if result.best_score is None or score > result.best_score + p.min_delta:
                result.best_score, result.best_epoch, stale = score, epoch + 1, 0
                if p.restore_best:  # only then is the best epoch's state needed again
                    best_state = copy.deepcopy(evaluated.state_dict())
                    if checkpoints and is_main():
                        atomic_write(checkpoints / _weights_file("best", epoch + 1),
                                     lambda path: save_model(evaluated, str(path)))
            else:
                stale += 1
            finished = epoch + 1 == epochs or bool(p.patience and stale >= p.patience)
            if checkpoints and is_main():
                _save(checkpoints, model, optimizer, schedule, result, stale, finished, run_key, ema, precision)
            if finished:
                break
    if not p.restore_best:
        # The model is the last epoch's, so that is the epoch the result reports. (The checkpoint keeps the
        # tracked best: patience counts from it, and a resume must continue that count exactly.)
        result.best_epoch = len(result.history)
        result.best_score = _monitored(result.history[-1], p, metric)
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())
    elif best_state is not None:
        model.load_state_dict(best_state)
    return result


def online_augment(p: TrainParams, x: torch.Tensor, augment=None):
    """The augmentation each training batch gets: `augment` when the paradigm brings its own, else `p.augment`'s
    on images (not on features or activations); none with augment_copies, whose offline copies replace it."""
    if p.augment_copies:
        return None
    if augment is None and x.ndim == 4:
        return make_augment(p.augment, tuple(x.shape[-2:]))
    return augment


@dataclass
class Precision:
    """Autocast and, for float16, the gradient scaler that keeps small gradients from flushing to zero."""

    dtype: torch.dtype | None
    device: torch.device

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


@dataclass
class Step:
    """What one optimizer step needs: every `accumulate` batches the (scaled) gradients are clipped, the optimizer
    steps, the per-step schedule advances and the EMA follows the weights."""

    optimizer: torch.optim.Optimizer
    schedule: Any
    precision: Precision
    ema: ModelEmaV3 | None
    accumulate: int
    grad_clip: float | None
    batches: int = 0  # since the last step

    def backward(self, loss: torch.Tensor, model: nn.Module, last_batch: bool) -> None:
        self.precision.scaler.scale(loss / self.accumulate).backward()
        self.batches += 1
        if self.batches < self.accumulate and not last_batch:
            return
        scaler = self.precision.scaler
        if self.grad_clip:
            scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.batches = 0
        if not steps_per_epoch_only(self.schedule):
            self.schedule.step()
        if self.ema is not None:
            self.ema.update(_unwrapped(model))


def score_name(multi_label: bool) -> str:
    """The epoch's score in the history: accuracy, or for multi-label micro-F1 at threshold 0.5."""
    return "micro_f1" if multi_label else "accuracy"


def _monitored(entry: dict[str, Any], p: TrainParams, metric: str) -> float:
    """The figure best epochs and early stopping compare (higher is better); `monitor: val_accuracy` means
    the validation score, whichever it is for these labels."""
    return entry[f"val_{metric}"] if p.monitor == "val_accuracy" else -entry["val_loss"]


def _batch_per_process(batch_size: int, shards: int, label: str, notes: dict) -> int:
    """`batch_size` is the global batch: under torchrun each of the `shards` processes takes its equal share, so a
    step averages the gradients of `batch_size` images (DDP) and an epoch makes as many steps as one process."""
    if shards == 1:
        return batch_size
    if batch_size % shards:
        raise TransferlabError(f"{label}: batch_size {batch_size} (the global batch) does not split evenly over "
                               f"{shards} torchrun processes; use a multiple of {shards}")
    notes["batch_per_process"] = {"processes": shards, "images": batch_size // shards}
    return batch_size // shards


def _train_epoch(model, step: Step, loss_fn, data: Images, p: TrainParams, augment, seed: int, epoch: int,
                 device: torch.device, label: str, bar, bn: str, batch_size: int) -> tuple[float, float]:
    order = epoch_order(len(data), seed, epoch, labels=data.y, sampler=p.sampler)
    set_train_mode(model, bn)
    total_loss, counts, seen = 0.0, None, 0
    short = "f1" if data.multi_label else "acc"
    batches = order.split(batch_size)
    step.optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(batches):
        x = data.x[batch]
        if augment is not None:
            x = augment_batch(x, augment)
        x, y = _to_device(x, device), data.y[batch].to(device, non_blocking=True)
        x, mix = _mix(x, p.mixup, p.cutmix)
        try:
            with step.precision.autocast():
                logits = model(x)
                loss = loss_fn(logits.float(), y)
                if mix is not None:  # MixUp / CutMix: the loss mixes like the images did
                    lam, partner = mix
                    loss = lam * loss + (1 - lam) * loss_fn(logits.float(), y[partner])
            if not _finite_everywhere(loss, device):
                raise TransferlabError(f"{label}, step {index + 1}: the loss became {loss.item()}; lower the "
                                       f"learning rate (lr={p.lr}) or set grad_clip")
            step.backward(loss, model, last_batch=index == len(batches) - 1)
        except torch.cuda.OutOfMemoryError:
            raise TransferlabError(f"{label}: out of memory at batch_size={p.batch_size}; lower batch_size "
                                   "(or the image size), or accumulate gradients over smaller batches "
                                   "(accumulate: N)") from None
        total_loss += loss.item() * len(y)
        batch_counts = score_counts(logits, y)
        counts = batch_counts if counts is None else [a + b for a, b in zip(counts, batch_counts, strict=True)]
        seen += len(y)
        bar(len(y))
        bar.note(f"epoch {epoch + 1} · loss {total_loss / seen:.3f} {short} {score_from_counts(counts, seen):.3f}")
    if world_size() > 1:  # the epoch's figures over every rank's shard (micro-F1: its TP / FP / FN counts)
        totals = torch.tensor([total_loss, *counts, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        total_loss, *counts, seen = totals.tolist()
    return total_loss / seen, score_from_counts(counts, seen)


def score_counts(logits: torch.Tensor, y: torch.Tensor) -> list[int]:
    """What an epoch's score is summed from, batch by batch (and rank by rank): [correct] for one label per
    image; for a 0/1 label matrix [TP, FP, FN] at threshold 0.5, which micro-F1 pools over images and classes."""
    if y.ndim == 1:
        return [int((logits.argmax(1) == y).sum())]
    predicted, truth = logits.float().sigmoid() >= 0.5, y.bool()  # ≥ 0.5: the runner's thresholding
    return [int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())]


def score_from_counts(counts: list[float], seen: float) -> float:
    """Accuracy from [correct], or micro-F1 = 2TP / (2TP + FP + FN) from [TP, FP, FN] (0 when TP is 0, which
    covers 0/0 as scikit-learn's zero_division=0 does)."""
    if len(counts) == 1:
        return counts[0] / seen
    tp, fp, fn = counts
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _finite_everywhere(loss: torch.Tensor, device: torch.device) -> bool:
    """Is the loss finite on every rank? (One rank stopping alone would leave the others waiting forever.)"""
    finite = bool(torch.isfinite(loss))
    if world_size() > 1:
        flag = torch.tensor([float(finite)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def _agreed(metrics: tuple[float, float], device: torch.device) -> tuple[float, float]:
    """Rank 0's validation figures on every rank, so best-epoch and early-stop decisions cannot diverge (the
    ranks' weights and averaged BatchNorm buffers agree; a decision must not hinge on float noise either)."""
    if world_size() == 1:
        return metrics
    values = torch.tensor(metrics, dtype=torch.float64, device=device)
    torch.distributed.broadcast(values, src=0)
    return float(values[0]), float(values[1])


def epoch_order(n: int, seed: int, epoch: int, *, labels=None, sampler: str = "none") -> torch.Tensor:
    """This epoch's sample order (this rank's shard of it under torchrun), reproducible from (seed, epoch).

    A balancing `sampler` (data/balance.py) needs the `labels`: it draws the whole epoch's order, and each
    rank takes its equal-length shard of it.
    """
    if sampler != "none":
        return _shard(sampled_order(np.asarray(labels), sampler, seed, epoch))
    if world_size() == 1:
        return torch.randperm(n, generator=seeded_generator(seed * 100_003 + epoch))
    sampler = DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)  # equal-length shards (padded), so every rank takes the same number of steps
    return torch.tensor(list(sampler))


def _shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of a full epoch order: DistributedSampler's equal-length shards (padded by
    wrapping around), taken over positions in `order`."""
    if world_size() == 1:
        return order
    positions = DistributedSampler(range(len(order)), num_replicas=world_size(), rank=rank(), shuffle=False)
    return order[torch.tensor(list(positions))]


def _mix(x: torch.Tensor, mixup: float, cutmix: float):
    """MixUp (Zhang et al.) and CutMix (Yun et al.; λ = the kept-area fraction) from torchvision, drawing
    from torch's global RNG. With both set, each batch takes one of them with probability 0.5 (timm's
    `switch_prob` default). Returns the batch and (λ, partner indices), or None when neither is on.

    The loss is mixed like the images (λ·loss(y) + (1 − λ)·loss(y[partner])) rather than given soft
    targets, which keeps every loss of the engine (CE with class weights, BCE, MSE) as it is. torchvision's
    transforms mix the labels they are given like the images; given each image's own batch position as its
    label, the soft labels they return are the mixing matrix, from which λ and the partners are read.
    """
    mixers = [mix(alpha=alpha, num_classes=len(x)) for mix, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix))
              if alpha]
    if not mixers:
        return x, None
    mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
    mixed, weights = mixer(x.float(), torch.arange(len(x), device=x.device))
    lam = float(weights[0, 0])  # one λ per batch: every image keeps the same share of itself
    partner = (weights - torch.diag(torch.diagonal(weights))).argmax(1)
    return mixed, (lam, partner)


def _batchnorm_policy(model: nn.Module, p: TrainParams, batches_per_epoch: int, notes: dict[str, Any]) -> str:
    """train | frozen for this fit (`bn: auto` by the batches per epoch); a model with BatchNorm layers records
    which and why in `notes`. Frozen statistics with `bn_affine: false` freeze the scale and shift too."""
    policy, why = p.bn_policy(batches_per_epoch)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        notes["batchnorm"] = {"policy": policy, "why": why, "affine": p.bn_affine or policy == "train"}
    if policy == "frozen" and not p.bn_affine:
        for norm in norms:
            for q in norm.parameters(recurse=False):
                q.requires_grad = False
    return policy


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """PreciseBN: replace the running statistics of the BatchNorm layers that train by their exact average over
    `x` under the current weights. By hand rather than torch's swa_utils.update_bn, which resets every
    BatchNorm (frozen pretrained ones too) and runs the whole model in train mode (dropout on)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and any(q.requires_grad for q in m.parameters(recurse=False))]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches that follow
        m.train()
    for chunk in x.split(batch_size):
        model(_to_device(chunk, device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _unwrapped(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel (what the EMA averages)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def set_train_mode(model: nn.Module, bn: str = "train") -> None:
    """train(), except BatchNorm layers that keep their pretrained statistics: every one with `bn: frozen`,
    and those whose parameters are frozen always."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if bn == "frozen" or (params and not any(q.requires_grad for q in params)):
                module.eval()


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.to(device).eval()  # where training left it: a cached-activation finetune trained only its top on `device`
    return torch.cat([model(_to_device(chunk, device)).float().cpu() for chunk in x.split(batch_size)])


def evaluate(model, data: Images, loss_fn, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(loss, score) on `data`: accuracy, or for multi-label micro-F1 at 0.5."""
    logits = predict_logits(model, data.x, batch_size, device).to(device)
    y = data.y.to(device)
    if data.multi_label:
        return float(loss_fn(logits, y)), score_from_counts(score_counts(logits, y), len(y))
    return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


# ---------------------------------------------------------------- checkpoints


# A checkpoint is last.pt (optimizer, schedule, RNG, history) naming the weight files of its own epoch
# (last-<epoch>.safetensors, best-<epoch>.safetensors). Weights are written first, under a new name, then
# last.pt; only then are older weight files removed. A kill at any point leaves a last.pt whose files exist and
# belong to it: resume never pairs one epoch's weights with another epoch's optimizer, RNG or history.


def _weights_file(kind: str, epoch: int) -> str:
    return f"{kind}-{epoch}.safetensors"


def _save(folder: Path, model, optimizer, schedule, result: TrainResult, stale: int, finished: bool,
          run_key: str, ema: ModelEmaV3 | None, precision: Precision) -> None:
    epoch = len(result.history)
    atomic_write(folder / _weights_file("last", epoch), lambda path: save_model(model, str(path)))
    best = _weights_file("best", result.best_epoch) if result.best_epoch else None
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "history": result.history, "best_epoch": result.best_epoch, "best_score": result.best_score,
             "stale": stale, "finished": finished, "run_key": run_key, "weights": _weights_file("last", epoch),
             "best_weights": best if best and (folder / best).is_file() else None,
             "ema": ema.module.state_dict() if ema is not None else None, "scaler": precision.scaler.state_dict()}
    atomic_write(folder / "last.pt", lambda path: torch.save(state, path))
    kept = {state["weights"], state["best_weights"]}
    for stale_file in folder.glob("*.safetensors"):  # files of earlier epochs, now that last.pt names others
        if stale_file.name not in kept:
            stale_file.unlink(missing_ok=True)


def _restore(folder: Path, model, optimizer, schedule, run_key: str, ema: ModelEmaV3 | None,
             precision: Precision) -> tuple[TrainResult, int, bool]:
    try:
        state = torch.load(folder / "last.pt", weights_only=True)
        load_model(model, str(folder / state["weights"]))
    except Exception as exc:  # noqa: BLE001 - any damage means the checkpoint cannot be trusted
        raise TransferlabError(f"{folder}: checkpoint unreadable ({type(exc).__name__}); delete the folder to "
                               "start over") from None
    if state.get("run_key", "") != run_key:
        raise TransferlabError(f"{folder}: this checkpoint belongs to another version of the run (its spec, "
                               "data or code changed); delete the folder or run without --resume")
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ema is not None:
        if not state.get("ema"):
            raise TransferlabError(f"{folder}: this checkpoint has no weight average (it was written without ema); "
                                   "delete the folder or run without --resume")
        ema.module.load_state_dict(state["ema"])
    if state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    history = state["history"]
    result = TrainResult(history, state["best_epoch"], state["best_score"], resumed_from=len(history))
    return result, state["stale"], state["finished"]


def _load_best(folder: Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights that last.pt names (None when it names none)."""
    name = torch.load(folder / "last.pt", weights_only=True).get("best_weights")
    if not name:
        return None
    current = copy.deepcopy(model.state_dict())
    load_model(model, str(folder / name))
    best = copy.deepcopy(model.state_dict())
    model.load_state_dict(current)
    return best

