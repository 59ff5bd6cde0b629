"""The one training loop every weight-training paradigm uses.

Data are uint8 image tensors decoded once (small datasets); each epoch shuffles with a generator seeded by
(seed, epoch) and augments on the fly, so an epoch is reproducible on its own. At every epoch end the loop
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

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from ..distributed import is_main, rank, world_size
from ..errors import TransferlabError
from ..paths import atomic_write
from ..progress import progress_bar
from .optim import make_loss, make_optimizer, make_schedule
from .params import TrainParams


@dataclass
class Images:
    """uint8 images N×3×H×W and their integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    resumed_from: int = 0  # epochs taken from a checkpoint


def augmenter(kind: str, size: int):
    """Per-image augmentation on uint8 tensors (torchvision v2), drawn from torch's global RNG."""
    if kind == "none":
        return None
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()])


def fit(model: nn.Module, groups: list[dict], train: Images, val: Images, p: TrainParams, *, n_classes: int,
        seed: int, device: torch.device, checkpoints: Path | None = None, resume: bool = False,
        label: str = "train", epochs: int | None = None, penalty=None, augment=None,
        run_key: str = "") -> TrainResult:
    """Train `model` (its trainable parameters, in `groups`) and leave it holding the best epoch's weights.

    `penalty()`, if given, is added to the training loss (e.g. an L1 term on a head's weights);
    `augment`, if given, replaces the `p.augment` preset (per-image, uint8 in, uint8 out). `run_key` is
    stored with every checkpoint; `resume` refuses a checkpoint written under another key.
    """
    epochs = epochs or p.epochs
    torch.manual_seed(seed + rank())  # under torchrun each rank draws its own augmentations
    # channels_last: the fast convolution layout on GPU and on CPU alike (2× per training step, measured).
    model.to(device=device, memory_format=torch.channels_last)
    shards = world_size()
    steps = math.ceil(math.ceil(len(train) / shards) / p.batch_size)
    optimizer = make_optimizer(groups, p)
    # Under torchrun the forward of training goes through DDP (gradients averaged across ranks); evaluation
    # uses the plain model, whose weights are the same on every rank.
    trained = model if shards == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    schedule = make_schedule(optimizer, p, steps, epochs)
    loss_fn = make_loss(p, train.y.numpy(), n_classes, device)
    train_loss_fn = loss_fn if penalty is None else (lambda logits, y: loss_fn(logits, y) + penalty())
    augment = augment or augmenter(p.augment, train.x.shape[-1])
    result, best_state, stale = TrainResult(), None, 0

    finished = False
    if resume and checkpoints and (checkpoints / "last.pt").is_file():
        result, stale, finished = _restore(checkpoints, model, optimizer, schedule, run_key)
        best_state = _load_best(checkpoints, model)

    for epoch in range(result.resumed_from, 0 if finished else epochs):
        started = time.perf_counter()
        train_loss, train_acc = _train_epoch(trained, optimizer, schedule, train_loss_fn, train, p, augment, seed,
                                             epoch, device, f"{label} · epoch {epoch + 1}/{epochs}")
        val_loss, val_acc = _agreed(evaluate(model, val, loss_fn, p.batch_size, device), device)
        result.history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                               "val_loss": val_loss, "val_accuracy": val_acc,
                               "lr": optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - started})
        score = val_acc if p.monitor == "val_accuracy" else -val_loss
        if result.best_score is None or score > result.best_score:
            result.best_score, result.best_epoch, stale = score, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
            if checkpoints and is_main():
                atomic_write(checkpoints / "best.safetensors", lambda path: save_model(model, str(path)))
        else:
            stale += 1
        finished = epoch + 1 == epochs or bool(p.patience and stale >= p.patience)
        if checkpoints and is_main():
            _save(checkpoints, model, optimizer, schedule, result, stale, finished, run_key)
        if finished:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def _train_epoch(model, optimizer, schedule, loss_fn, data: Images, p: TrainParams, augment, seed: int, epoch: int,
                 device: torch.device, label: str) -> tuple[float, float]:
    order = epoch_order(len(data), seed, epoch)
    set_train_mode(model)
    total_loss, correct, seen = 0.0, 0, 0
    autocast = device.type == "cuda" and p.amp
    with progress_bar(label, total=len(data), unit="img") as bar:
        for step, batch in enumerate(order.split(p.batch_size)):
            x = data.x[batch]
            if augment is not None:
                x = torch.stack([augment(image) for image in x])
            x, y = _to_device(x, device), data.y[batch].to(device, non_blocking=True)
            x, mix = _mixup(x, p.mixup)
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                    if mix is not None:  # MixUp: the loss mixes like the images did
                        lam, partner = mix
                        loss = lam * loss + (1 - lam) * loss_fn(logits.float(), y[partner])
                if not _finite_everywhere(loss, device):
                    raise TransferlabError(f"{label}, step {step + 1}: the loss became {loss.item()}; lower the "
                                           f"learning rate (lr={p.lr}) or set grad_clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                optimizer.step()
            except torch.cuda.OutOfMemoryError:
                raise TransferlabError(f"{label}: out of memory at batch_size={p.batch_size}; lower batch_size "
                                       "(or the image size)") from None
            schedule.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar(len(y))
            bar.note(f"loss {total_loss / seen:.3f} acc {correct / seen:.3f}")
    if world_size() > 1:  # the epoch's figures over every rank's shard
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        total_loss, correct, seen = totals.tolist()
    return total_loss / seen, correct / seen


def _finite_everywhere(loss: torch.Tensor, device: torch.device) -> bool:
    """Is the loss finite on every rank? (One rank stopping alone would leave the others waiting forever.)"""
    finite = bool(torch.isfinite(loss))
    if world_size() > 1:
        flag = torch.tensor([float(finite)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def _agreed(metrics: tuple[float, float], device: torch.device) -> tuple[float, float]:
    """Rank 0's validation figures on every rank, so best-epoch and early-stop decisions cannot diverge
    (BatchNorm buffers differ slightly between ranks after each rank's last step)."""
    if world_size() == 1:
        return metrics
    values = torch.tensor(metrics, dtype=torch.float64, device=device)
    torch.distributed.broadcast(values, src=0)
    return float(values[0]), float(values[1])


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """This epoch's sample order (this rank's shard of it under torchrun), reproducible from (seed, epoch)."""
    if world_size() == 1:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    sampler = DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)  # equal-length shards (padded), so every rank takes the same number of steps
    return torch.tensor(list(sampler))


def _mixup(x: torch.Tensor, alpha: float):
    """MixUp (Zhang et al.): each image blended with a partner image by λ ~ Beta(α, α), from torch's RNG.

    Written here rather than with timm's Mixup because that one needs soft-target losses; mixing the loss
    keeps every loss of the engine (CE, BCE, MSE) as it is.
    """
    if not alpha:
        return x, None
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(x), device=x.device)
    return lam * x.float() + (1 - lam) * x[partner].float(), (lam, partner)


def set_train_mode(model: nn.Module) -> None:
    """train(), except BatchNorm layers whose parameters are frozen keep their ImageNet statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(q.requires_grad for q in params):
                module.eval()


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    return torch.cat([model(_to_device(chunk, device)).float().cpu() for chunk in x.split(batch_size)])


def evaluate(model, data: Images, loss_fn, batch_size: int, device: torch.device) -> tuple[float, float]:
    logits = predict_logits(model, data.x, batch_size, device).to(device)
    y = data.y.to(device)
    return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


# ---------------------------------------------------------------- checkpoints


def _save(folder: Path, model, optimizer, schedule, result: TrainResult, stale: int, finished: bool,
          run_key: str) -> None:
    atomic_write(folder / "last.safetensors", lambda path: save_model(model, str(path)))
    state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "history": result.history, "best_epoch": result.best_epoch, "best_score": result.best_score,
             "stale": stale, "finished": finished, "run_key": run_key}
    atomic_write(folder / "last.pt", lambda path: torch.save(state, path))


def _restore(folder: Path, model, optimizer, schedule, run_key: str) -> tuple[TrainResult, int, bool]:
    try:
        state = torch.load(folder / "last.pt", weights_only=True)
        load_model(model, str(folder / "last.safetensors"))
    except Exception as exc:  # noqa: BLE001 - any damage means the checkpoint cannot be trusted
        raise TransferlabError(f"{folder}: checkpoint unreadable ({type(exc).__name__}); delete the folder to "
                               "start over") from None
    if state.get("run_key", "") != run_key:
        raise TransferlabError(f"{folder}: this checkpoint belongs to another version of the run (its spec, "
                               "data or code changed); delete the folder or run without --resume")
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    history = state["history"]
    result = TrainResult(history, state["best_epoch"], state["best_score"], resumed_from=len(history))
    return result, state["stale"], state["finished"]


def _load_best(folder: Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    if not (folder / "best.safetensors").is_file():
        return None
    current = copy.deepcopy(model.state_dict())
    load_model(model, str(folder / "best.safetensors"))
    best = copy.deepcopy(model.state_dict())
    model.load_state_dict(current)
    return best

