"""Hyper-parameters of the training engine, shared by every paradigm that trains weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import Spec

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "amsgrad"]
Schedule = Literal["constant", "step", "multistep", "cosine", "onecycle", "exponential"]


class TrainParams(Spec):
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD / RMSprop momentum (one-cycle cycles it)")
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0, description="L2 (decoupled for adamw); not on biases and norms")
    schedule: Schedule = "onecycle"
    warmup_epochs: float = Field(0, ge=0, description="linear warm-up (not with onecycle, which has its own)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="one-cycle: share of steps spent warming up")
    step_epochs: int = Field(3, gt=0, description="step: epochs between decays")
    milestones: list[float] = Field(default_factory=lambda: [0.3, 0.6, 0.9],
                                    description="multistep: decay points as fractions of training")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step, multistep; exponential: per epoch)")
    loss: Literal["ce", "bce", "mse"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = "none"
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    patience: int | None = Field(None, gt=0, description="early stopping: epochs without a better val score")
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    augment: Literal["none", "light"] = Field("light", description="light: random resized crop + flip")
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (0: off)")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
