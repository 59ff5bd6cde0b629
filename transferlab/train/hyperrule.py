"""BiT-HyperRule (Kolesnikov et al., google-research/big_transfer `bit_hyperrule.py`) as pure functions.

Everything the rule decides is a function of the training-set size and the image size; `decide` returns
all of it as one dict that goes into the run record.
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


def decide(dataset_size: int, image_hw: tuple[int, int], batch_size: int, max_resolution: int | None) -> dict[str, Any]:
    """Every decision of the rule for this dataset, with the resolution capped at `max_resolution`."""
    precrop, crop = resolution(*image_hw)
    if max_resolution and crop > max_resolution:  # keep the rule's precrop/crop ratio
        precrop, crop = round(precrop * max_resolution / crop), max_resolution
    supports = schedule_supports(dataset_size)
    steps_per_epoch = max(1, math.ceil(dataset_size / batch_size))
    return {
        "dataset_size": dataset_size, "image_hw": list(image_hw), "resize": precrop, "crop": crop,
        "capped_by_max_resolution": crop != resolution(*image_hw)[1],
        "batch_size": batch_size, "lr": learning_rate(batch_size), "momentum": 0.9,
        "steps": supports[-1], "warmup_steps": supports[0], "decay_steps": supports[1:-1],
        "epochs": math.ceil(supports[-1] / steps_per_epoch), "mixup_alpha": mixup_alpha(dataset_size),
        "head_init": "zeros",
    }
