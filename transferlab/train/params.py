"""Hyper-parameters of the training engine, shared by every paradigm that trains weights.

The optimizer, schedule and loss choices are the names in train/optim.py's registries (in registration order),
so a new one there is a valid choice here and in the parameter docs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..config import Spec
from ..core.errors import TransferlabError
from ..data.augment import AugmentSpec, check_augment
from ..data.balance import ClassWeights, OversampleClasses, Sampler
from .optim import LOSSES, OPTIMIZERS, SCHEDULES

Optimizer = Literal[tuple(OPTIMIZERS)]  # sgd, adam, adamw, rmsprop, amsgrad
Schedule = Literal[tuple(SCHEDULES)]  # constant, step, multistep, cosine, onecycle, exponential, cyclic, plateau
Loss = Literal[tuple(LOSSES)]  # ce, bce, mse


ADAM_FAMILY = ("adam", "adamw", "amsgrad")
# bn: auto freezes BatchNorm statistics below this many batches per epoch. Evidence (examples/defaults.yaml):
# see docs/concepts.md, "How the defaults were chosen".
BN_AUTO_BATCHES = 50
CYCLING_MOMENTUM = ("onecycle", "cyclic")  # schedules that set the momentum (Adam's β1) themselves
# option → (the choice it belongs to, the values of that choice that use it); anything else would ignore it
APPLIES_TO = {
    "momentum": ("optimizer", ("sgd", "rmsprop")),
    "nesterov": ("optimizer", ("sgd",)),
    "betas": ("optimizer", ADAM_FAMILY),
    "eps": ("optimizer", (*ADAM_FAMILY, "rmsprop")),
    "warmup_epochs": ("schedule", ("constant", "step", "multistep", "cosine", "exponential")),
    "pct_start": ("schedule", ("onecycle",)),
    "step_epochs": ("schedule", ("step",)),
    "milestones": ("schedule", ("multistep",)),
    "gamma": ("schedule", ("step", "multistep", "exponential", "plateau")),
    "min_lr": ("schedule", ("cyclic", "plateau")),
    "cycle_epochs": ("schedule", ("cyclic",)),
    "momentum_range": ("schedule", ("onecycle", "cyclic")),
    "plateau_patience": ("schedule", ("plateau",)),
}


# a number, or `find`: the range test's suggestion (train/lr_find.py)
LearningRate = Annotated[float, Field(gt=0)] | Literal["find"]
LR_HELP = ("the learning rate; find: the suggestion of a learning-rate range test (fastai's lr_find) on the training "
           "batches, recorded in the run's selected.lr_find")


Precision = Literal["auto", "fp32", "bf16", "fp16"]
Tta = Literal["none", "flip", "five-crop"]


class TrainParams(Spec):
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Optimizer = "sgd"
    lr: LearningRate = Field(0.01, description=LR_HELP)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD / RMSprop momentum (onecycle and cyclic cycle it "
                            "over momentum_range instead)")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum")
    betas: tuple[float, float] | None = Field(None, description="Adam family (adam, adamw, amsgrad): (β1, β2); "
                                              "none: torch's (0.9, 0.999)")
    eps: float | None = Field(None, gt=0, description="Adam family and RMSprop: the denominator's ε; none: "
                              "torch's")
    weight_decay: float = Field(1e-4, ge=0, description="L2 (decoupled for adamw); not on biases and norms")
    schedule: Schedule = "onecycle"
    warmup_epochs: float = Field(0, ge=0, description="linear warm-up (onecycle and cyclic have their own; "
                                "not with plateau)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="one-cycle: share of steps spent warming up")
    step_epochs: int = Field(3, gt=0, description="step: epochs between decays")
    milestones: list[float] = Field(default_factory=lambda: [0.3, 0.6, 0.9],
                                    description="multistep: decay points as fractions of training")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step, multistep, plateau; exponential: per "
                         "epoch)")
    min_lr: float = Field(1e-7, ge=0, description="cyclic: the low end of the cycle (lr is the high end); plateau: "
                          "the floor")
    cycle_epochs: float | None = Field(None, gt=0, description="cyclic: epochs per cycle, up then down (none: one "
                                       "cycle over the whole training)")
    momentum_range: tuple[float, float] = Field((0.85, 0.95), description="onecycle and cyclic: momentum (Adam's "
                                                "β1) cycles between these, high when the lr is low")
    plateau_patience: int = Field(2, ge=0, description="plateau: epochs without a better monitored figure before "
                                  "the lr is multiplied by gamma")
    loss: Loss = Field("ce", description="multi-label data train with bce (what the default means there) or mse "
                       "on the sigmoids; ce needs one label per image")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="ce (torch's); bce: each 0/1 target moves ε/2 "
                                   "toward the other (Keras's binary smoothing); not mse")
    class_weights: ClassWeights = Field("none", description="loss weights per class: balanced (n / (C·n_c)) or "
                                        "effective (Cui et al. 2019, effective number of samples); with bce "
                                        "(multi-label too) either means pos_weight = negatives / positives per "
                                        "class")
    effective_beta: float = Field(0.999, gt=0, lt=1, description="class_weights: effective — its β")
    sampler: Sampler = Field("none", description="per epoch: weighted (with replacement, ∝ 1/class count, as many "
                             "draws as images; multi-label: the mean inverse frequency of an image's labels) or "
                             "undersample (the smallest class's count from every class; single-label only)")
    oversample_to: int | None = Field(None, gt=0, description="offline: augmented copies until every class has "
                                      "this many images (the augment preset, light if none; single-label only)")
    oversample_classes: OversampleClasses | None = Field(None, description="offline: {classes: [...], factor: "
                                                         "2} — each image of these classes appears factor times "
                                                         "(augmented copies; single-label only)")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    patience: int | None = Field(None, gt=0, description="early stopping: epochs without a better val score")
    min_delta: float = Field(0.0, ge=0, description="best epoch and early stopping: a gain in the monitored figure "
                             "smaller than this is no gain (Keras's and Lightning's min_delta)")
    restore_best: bool = Field(True, description="keep the weights of the best validation epoch; false keeps the "
                               "last epoch's (what `final` retraining uses)")
    monitor: Literal["val_accuracy", "val_loss"] = Field("val_accuracy", description="best epoch and early "
                                                         "stopping by val_accuracy (multi-label: val_micro_f1, "
                                                         "micro-F1 at 0.5) or val_loss")
    augment: AugmentSpec = Field("light", description="a preset (data.augment.PRESETS), a list of "
                                 "torchvision.transforms.v2 transforms [{name: ..., kwarg: ...}], or a YAML file")
    augment_copies: int = Field(0, ge=0, description="offline: N augmented copies of every image made once "
                                "(seeded), then train on originals + copies with no online augmentation")
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha (0: off); with mixup too, each batch takes one "
                          "of them with probability 0.5")
    bn: Literal["auto", "train", "frozen"] = Field(
        "auto", description="BatchNorm statistics while training: train updates them in every layer that trains "
        "(a frozen layer keeps its own); frozen keeps every layer's pretrained statistics; auto: frozen when an "
        f"epoch has fewer than {BN_AUTO_BATCHES} batches (running statistics of a few batches drift from what the "
        "network computes), train otherwise. The record says which ran and why")
    bn_affine: bool = Field(True, description="with frozen statistics: BatchNorm's scale and shift still train "
                            "(false freezes them too)")
    bn_recompute: Literal["auto"] | bool = Field(
        "auto", description="before each evaluation, recompute the running statistics of the BatchNorm layers that "
        "train, over the training images with the current weights (PreciseBN), instead of the running averages of "
        f"past batches; auto: when an epoch has fewer than {BN_AUTO_BATCHES} batches, where those averages lag "
        "weights that change fast (a network from random weights on a few hundred images)")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: bfloat16 autocast (on CPU too, where "
        "AMX / AVX512-BF16 make it fast); fp16: float16 autocast with a gradient scaler (torch.amp.GradScaler); "
        "fp32: none")
    accumulate: int = Field(1, ge=1, description="gradient accumulation: one optimizer step every N batches (the "
                            "step sees batch_size × N images; schedules count steps)")
    ema: float | None = Field(None, gt=0, lt=1, description="an exponential moving average of the weights (timm's "
                              "ModelEmaV3, this decay, e.g. 0.999): it is what each epoch evaluates, what the best "
                              "epoch keeps and what the run saves")
    tta: Tta = Field("none", description="test-time augmentation at evaluation and predict: flip (the image and its "
                     "mirror) or five-crop (four corners and the centre at 87.5 %, resized back); the logits are "
                     "averaged. The saved model does the same, so predict, export and serve agree")
    deterministic: bool = Field(True, description="on CUDA: torch's deterministic algorithms and cuDNN's "
                                "deterministic mode, so a rerun gives the same metrics (slower; CPU training is "
                                "deterministic anyway)")

    @field_validator("augment", mode="before")
    @classmethod
    def _known_augment(cls, spec: Any) -> Any:
        try:
            return check_augment(spec)
        except TransferlabError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _no_option_without_effect(self):
        """An option the chosen optimizer or schedule would ignore is refused, naming what it needs."""
        for option, (choice, users) in APPLIES_TO.items():
            chosen = getattr(self, choice)
            if option in self.model_fields_set and getattr(self, option) != 0 and chosen not in users:
                raise ValueError(f"{option} applies to {choice} {' / '.join(users)}, not {chosen}; drop {option} "
                                 f"or set {choice}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum above 0; set momentum or drop nesterov")
        if self.label_smoothing and self.loss == "mse":
            raise ValueError("label_smoothing applies to loss ce and bce, not mse (its targets stay 0 / 1); drop "
                             "label_smoothing or set loss")
        if "momentum" in self.model_fields_set and self.momentum and self.schedule in CYCLING_MOMENTUM:
            raise ValueError(f"momentum: schedule {self.schedule} cycles it over momentum_range "
                             f"{list(self.momentum_range)}; set momentum_range instead, or another schedule")
        return self

    @model_validator(mode="after")
    def _consistent_balance_and_augmentation(self):
        if self.oversample_to is not None and self.oversample_classes is not None:
            raise ValueError("give oversample_to (every class up to N) or oversample_classes (named classes × "
                             "factor), not both")
        if self.augment_copies and self.augment == "none":
            raise ValueError("augment_copies needs an augmentation; set augment (e.g. light) or drop augment_copies")
        if self.bn_recompute is True and self.bn == "frozen":
            raise ValueError("bn_recompute recomputes the statistics of BatchNorm layers that train, and bn: frozen "
                             "trains none; drop bn_recompute or set bn: train")
        if "bn_affine" in self.model_fields_set and self.bn == "train":
            raise ValueError("bn_affine applies when BatchNorm statistics are frozen (bn: frozen or auto), not with "
                             "bn: train; drop bn_affine or set bn")
        if "effective_beta" in self.model_fields_set and self.class_weights != "effective":
            raise ValueError("effective_beta applies to class_weights: effective only; set that or drop it")
        if self.class_weights != "none" and self.loss == "mse":
            raise ValueError("class_weights work with loss ce or bce, not mse")
        return self

    def check_multi_label(self, label: str) -> None:
        """Refuse, in one line naming the option, what needs one label per image when the labels are an
        N × C 0/1 matrix. (Params are validated before the data are known, hence a method, not a validator.)"""
        if "loss" in self.model_fields_set and self.loss == "ce":
            raise TransferlabError(f"{label}: loss: ce needs one label per image, but these data are multi-label; "
                                   "set loss: bce or mse, or leave loss unset (multi-label trains with bce)")
        if self.sampler == "undersample":
            raise TransferlabError(f"{label}: sampler: undersample needs one label per image, but these data are "
                                   "multi-label; use sampler: weighted or class_weights: balanced")
        for option in ("oversample_to", "oversample_classes"):
            if getattr(self, option) is not None:
                raise TransferlabError(f"{label}: {option} needs one label per image, but these data are "
                                       "multi-label; use sampler: weighted or class_weights: balanced")

    def bn_policy(self, batches_per_epoch: int) -> tuple[str, str]:
        """(train | frozen, why): what `bn` means for a training of this many batches per epoch."""
        if self.bn != "auto":
            return self.bn, f"bn: {self.bn}"
        if batches_per_epoch < BN_AUTO_BATCHES:
            return "frozen", (f"auto: {batches_per_epoch} batches per epoch (< {BN_AUTO_BATCHES}); running statistics "
                              "of so few batches would drift from the pretrained ones")
        return "train", f"auto: {batches_per_epoch} batches per epoch (≥ {BN_AUTO_BATCHES})"

    def recompute_bn(self, batches_per_epoch: int) -> bool:
        """Recompute the training BatchNorm layers' statistics before each evaluation (`bn_recompute`)?"""
        if self.bn_recompute == "auto":
            return batches_per_epoch < BN_AUTO_BATCHES
        return self.bn_recompute

    def loss_for(self, multi_label: bool) -> str:
        """The loss that trains: `loss` as given, except that an unset loss on multi-label data means bce
        (ce, the single-label default, has no meaning for a 0/1 matrix)."""
        if multi_label and "loss" not in self.model_fields_set:
            return "bce"
        return self.loss

    @property
    def fixed_inputs(self) -> bool:
        """Does training see exactly the given images, unchanged, every epoch? (Then what a frozen bottom
        computes from them can be cached.)"""
        return (self.augment == "none" and not self.mixup and not self.cutmix and not self.augment_copies
                and self.oversample_to is None and self.oversample_classes is None)


class FromScratchParams(TrainParams):
    """A network that starts from random weights: it has no pretrained BatchNorm statistics to keep."""

    @model_validator(mode="after")
    def _statistics_to_learn(self):
        if self.bn == "frozen":
            raise ValueError("bn: frozen keeps pretrained BatchNorm statistics, but this network starts from random "
                             "weights and has none; drop bn (it trains them)")
        if "bn_affine" in self.model_fields_set:
            raise ValueError("bn_affine applies to frozen pretrained statistics, and this network starts from random "
                             "weights; drop bn_affine")
        return self

    def bn_policy(self, batches_per_epoch: int) -> tuple[str, str]:
        return "train", "a network from random weights learns its BatchNorm statistics"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `precision` means on `device` (None: fp32, no autocast)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
