"""Fine-tuning: the backbone's weights change. `finetune` starts from the pretrained weights, `scratch` from a
random initialisation of the same architecture (what pretraining buys): timm's own, or the Glorot / He schemes
reference studies name (`init`).

finetune options: `unfreeze:` a plan (train/freeze.py: all, a timm feature stage, a fraction or a Keras-style
count of layers, globs to train or to keep frozen; `from_stage` / `from_fraction` are shorthands); `lr_decay`:
each stage toward the input trains at lr × lr_decay^distance; `head_epochs: N`: fastai's `fine_tune` — N
epochs on the new head alone (one-cycle, pct_start 0.99), then unfreeze with the base lr halved, spread over
the stages from lr/100 to lr unless `lr_decay` is given. BatchNorm layers of frozen stages keep their ImageNet
statistics. The new head always fits n_classes. Defaults: AdamW at 3e-4 with `bn: auto` (chosen by
examples/defaults.yaml, see docs/concepts.md).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from ..config import describe_validation_error
from ..core.seeding import torch_seeded
from ..models.backbones import Normalized, create_model
from ..models.heads import WithHead
from ..train.freeze import Unfreeze, UnfreezePlan, classifier_names, layer_groups, set_trainable, trainable_by_plan
from ..train.params import LR_HELP, FromScratchParams, LearningRate, Optimizer, TrainParams
from ..train.partial import activations, split_at_frozen_prefix
from .base import register
from .trained import TrainedParadigm

FASTAI_LR_SPREAD = 100  # fine_tune's slice(base_lr / lr_mult, base_lr), lr_mult = 100


class FinetuneParams(TrainParams, WithHead):
    unfreeze: Unfreeze = Field("all", description="which layers train: all, {stage: k}, {fraction: f}, "
                               "{last_layers: N}, {first_layers: M, last_layers: N}, {modules: [glob, ...]} or "
                               "{frozen: [glob, ...]}; the new classifier always trains")
    from_stage: int | None = Field(None, description="shorthand for unfreeze: {stage: k} (-1: the last stage)")
    from_fraction: float | None = Field(None, gt=0, le=1, description="shorthand for unfreeze: {fraction: f}")
    head_epochs: int = Field(0, ge=0, description="two-phase: epochs on the frozen backbone first")
    lr_decay: float | None = Field(None, gt=0, le=1, description="per-stage lr factor toward the input")
    cache_activations: bool = Field(True, description="with augment: none, run the frozen stages only once")
    # examples/defaults.yaml: AdamW at 3e-4 had the best mean validation rank of the recipes tried (2.0, SGD at
    # 0.01 4.2) and beat the frozen linear probe on every dataset there (docs/concepts.md).
    optimizer: Optimizer = "adamw"
    lr: LearningRate = Field(3e-4, description=LR_HELP)

    @field_validator("unfreeze", mode="before")
    @classmethod
    def _a_plan(cls, value: Any) -> Any:
        """One message for a wrong plan (a union would report each of its branches)."""
        if value == "all" or isinstance(value, UnfreezePlan):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"'all' or a plan such as {{last_layers: 14}}, not {value!r}")
        try:
            return UnfreezePlan.model_validate(value)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc)) from None

    @model_validator(mode="after")
    def _one_cut(self):
        given = [name for name in ("from_stage", "from_fraction") if getattr(self, name) is not None]
        if "unfreeze" in self.model_fields_set:
            given.insert(0, "unfreeze")
        if len(given) > 1:
            raise ValueError(f"give one of unfreeze, from_stage, from_fraction (found {', '.join(given)})")
        return self

    @property
    def plan(self) -> Unfreeze:
        """The unfreeze plan, the shorthands spelled out."""
        if self.from_stage is not None:
            return UnfreezePlan(stage=self.from_stage)
        if self.from_fraction is not None:
            return UnfreezePlan(fraction=self.from_fraction)
        return self.unfreeze


@register
class Finetune(TrainedParadigm):
    name = "finetune"
    Params = FinetuneParams
    trains_backbone = True
    epoch_fields = ("epochs", "head_epochs")

    def build_model(self, input_hw: tuple[int, int]) -> Normalized:
        backbone = self.context.backbone
        with torch_seeded(self.seed):  # the new head's initialisation
            return backbone.with_normalization(self.with_new_head(copy.deepcopy(backbone.model), input_hw))

    def trainable(self, net) -> set[str]:
        return trainable_by_plan(net, self.params.plan)

    def fit(self, X, y, X_val, y_val):
        p = self.params
        model = self.build_model(tuple(X.shape[-2:]))
        net = model.model
        lr, decay = p.lr, p.lr_decay
        if p.head_epochs:
            set_trainable(net, classifier_names(net))
            head = p.model_copy(update={"pct_start": 0.99}) if p.schedule == "onecycle" else p
            self.record_history("head", self.train_phase(model, [(list(net.parameters()), lr)], X, y, X_val, y_val,
                                                         params=head, phase="head", epochs=p.head_epochs))
            n_groups = len(layer_groups(net))  # spread base/100 … base over the stages, as fastai does
            lr, decay = lr / 2, decay or (1 / FASTAI_LR_SPREAD) ** (1 / max(1, n_groups - 1))
        set_trainable(net, self.trainable(net))
        groups = layer_groups(net)
        rates = list(zip(groups, [lr * (decay or 1.0) ** (len(groups) - 1 - i) for i in range(len(groups))],
                         strict=True))
        phase = "finetune" if p.head_epochs else ""
        self.selected_["stage_lrs"] = [lr_ * (self.lr_scale_ or 1.0) for _, lr_ in rates]  # input → output
        # Exact only when the bottom sees the same input every epoch: no augmentation, MixUp, CutMix or copies.
        cacheable = p.fixed_inputs and p.cache_activations
        split = split_at_frozen_prefix(net, tuple(X.shape[-2:])) if cacheable else None
        if split is None:
            result = self.train_phase(model, rates, X, y, X_val, y_val, phase=phase)
        else:  # the frozen bottom runs once; epochs train the top (net's own modules) on its cached output
            bottom, top = split
            bottom = self.context.backbone.with_normalization(bottom)
            device, batch = self.context.device, p.batch_size
            self.count_passes("train", X)
            self.count_passes("val", X_val)
            result = self.train_phase(top, rates, activations(bottom, X, batch, device), y,
                                      activations(bottom, X_val, batch, device), y_val, phase=phase)
            self.selected_["cached_activations_from"] = top.first  # the first module that trains
        self.record_history(phase, result)
        self.selected_["trainable_parameters"] = sum(q.numel() for q in net.parameters() if q.requires_grad)
        self.model_ = model.eval()
        return self

    def chosen_epochs(self) -> dict[str, int]:
        """Two-phase: each phase's best epoch (the finetune phase started from the head phase's best)."""
        if not self.params.head_epochs:
            return super().chosen_epochs()
        return {"head_epochs": self.selected_["head_best_epoch"], "epochs": self.selected_["finetune_best_epoch"]}


class ScratchParams(FromScratchParams, WithHead):
    init: Literal["default", "glorot", "he"] = Field(
        "default", description="default: timm's own initialisation of the architecture; glorot: Keras's default, "
        "Glorot/Xavier-uniform on every convolution and linear weight, zero biases; he: Kaiming-normal (fan_out, "
        "relu) on convolutions, Glorot on linears, zero biases. Norm layers keep timm's init; drawn from the run "
        "seed")


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # timm's same-padding convolutions subclass these


def initialize(net: nn.Module, init: str) -> None:
    """Re-draw every convolution and linear layer's weights by `init` (torch.nn.init, the global RNG); biases 0."""
    if init == "default":
        return
    for module in net.modules():
        if isinstance(module, CONVOLUTIONS) and init == "he":
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (*CONVOLUTIONS, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register
class Scratch(TrainedParadigm):
    """The same architecture, randomly initialised (`init`: timm's default, Glorot or He), every layer trained."""

    name = "scratch"
    Params = ScratchParams
    trains_backbone = True

    def build_model(self, input_hw: tuple[int, int]) -> Normalized:
        backbone = self.context.backbone
        with torch_seeded(self.seed):  # timm's init and `init` both draw from it: one seed, one start (refit too)
            net = create_model(backbone.name, self.n_classes)  # timm or torchvision, by name
            initialize(net, self.params.init)
            if self.params.head is not None:  # the head's own init: `head.init`
                net = self.with_new_head(net, input_hw)
        return backbone.with_normalization(net)
