"""BiT-HyperRule (Kolesnikov et al., google-research/big_transfer `bit_hyperrule.py`) as pure functions.

Everything the rule decides is a function of the training-set size and the image size; `decide` returns
all of it as one dict that goes into the run record. Two CPU-budget caps are ours, not the paper's: the crop
size (`max_resolution`) and the schedule's length (`max_epochs`: the rule's steps shrunk to that many epochs,
warm-up and decays at the same fractions of training); the dict says whether each applied.
"""

from __future__ import annotations

import math
from typing import Any

BASE_LR = 0.003  # for batch 512; scaled linearly with the batch size
BASE_BATCH = 512


def schedule_supports(dataset_size: int) -> list[int]:
    """[warm-up end, decay, decay, decay, end] in optimizer steps; lr ×0.1 at each decay."""
    if dataset_size < 20_000:
        return [100, 200, 300, 400, 500]
    if dataset_size < 500_000:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def mixup_alpha(dataset_size: int) -> float:
    return 0.0 if dataset_size < 20_000 else 0.1


def resolution(height: int, width: int) -> tuple[int, int]:
    """(resize to, random-crop to): small images go 160 → 128, others 512 → 480."""
    return (160, 128) if height * width < 96 * 96 else (512, 480)


def learning_rate(batch_size: int) -> float:
    return BASE_LR * batch_size / BASE_BATCH


def capped_schedule(supports: list[int], total: int) -> list[int]:
    """`supports` shrunk to `total` steps, every point at the same fraction of training (rounded to a step)."""
    return [round(s * total / supports[-1]) for s in supports[:-1]] + [total]


def decide(dataset_size: int, image_hw: tuple[int, int], batch_size: int, max_resolution: int | None,
           max_epochs: int | None = None) -> dict[str, Any]:
    """Every decision of the rule for this dataset, with the resolution capped at `max_resolution` and the
    schedule at `max_epochs` epochs of `dataset_size` images (both CPU budgets; the dict says when each applied)."""
    precrop, crop = resolution(*image_hw)
    if max_resolution and crop > max_resolution:  # keep the rule's precrop/crop ratio
        precrop, crop = round(precrop * max_resolution / crop), max_resolution
    supports = rule = schedule_supports(dataset_size)
    steps_per_epoch = max(1, math.ceil(dataset_size / batch_size))
    capped = max_epochs is not None and rule[-1] > max_epochs * steps_per_epoch
    if capped:  # keep warm-up and decays at the rule's fractions of training
        supports = capped_schedule(rule, max_epochs * steps_per_epoch)
    decision = {
        "dataset_size": dataset_size, "image_hw": list(image_hw), "resize": precrop, "crop": crop,
        "capped_by_max_resolution": crop != resolution(*image_hw)[1],
        "batch_size": batch_size, "lr": learning_rate(batch_size), "momentum": 0.9,
        "steps": supports[-1], "warmup_steps": supports[0], "decay_steps": supports[1:-1],
        "epochs": math.ceil(supports[-1] / steps_per_epoch), "capped_by_max_epochs": capped,
        "mixup_alpha": mixup_alpha(dataset_size), "head_init": "zeros",
    }
    if capped:  # what the rule itself would have run
        decision["uncapped"] = {"steps": rule[-1], "warmup_steps": rule[0], "decay_steps": rule[1:-1],
                                "epochs": math.ceil(rule[-1] / steps_per_epoch)}
    return decision
