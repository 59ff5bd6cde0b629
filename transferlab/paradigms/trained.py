"""The base of paradigms that train weights: they see uint8 images (`input = "images"`), not vectors.

The runner decodes each split once at the paradigm's `view()` geometry and calls `bind(context)` before
`fit`; training goes through the one loop in `train/loop.py`. What was learned per epoch is `history_`.

Multi-label data (y an N × C 0/1 matrix) train with bce (or mse) on independent sigmoids, and
`predict_proba` gives each class's sigmoid. For the `final` retraining on train + val, `final_params`
fixes the epoch count chosen on validation (the best epoch) and keeps the last epoch's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..core.errors import TransferlabError
from ..models.backbones import Backbone
from ..models.heads import ClassifierHead, head_penalty, with_head
from ..models.modules import TimmModel, with_tta
from ..train.loop import Images, TrainResult, fit, online_augment, predict_logits
from ..train.lr_find import find_lr
from ..train.optim import param_groups
from .base import Paradigm


class LrFound(Exception):  # noqa: N818 - not an error: it carries the result out of `fit`
    """Stops `fit` right after the range test when only the test was asked for (`transferlab lr-find`)."""

    def __init__(self, found: dict[str, Any]):
        super().__init__("lr found")
        self.found = found


@dataclass
class TrainingContext:
    backbone: Backbone | None
    device: torch.device
    checkpoints: Path | None = None  # where the loop checkpoints every epoch
    resume: bool = False
    sample_hw: tuple[int, int] | None = None  # (H, W) of a training image as stored (BiT's resolution rule)
    run_key: str = ""  # identifies the run; a checkpoint written under another key is not resumed
    engine: str = "auto"  # for frozen parts run without autograd (head): see engines.select_engine
    classes: list[str] | None = None  # the class names (what oversample_classes refers to)


class TrainedParadigm(Paradigm):
    input = "images"
    epoch_fields: ClassVar[tuple[str, ...]] = ("epochs",)  # the params that count training epochs (a cap caps these)
    stop_after_lr_find = False  # transferlab lr-find: the range test only (LrFound carries its result out of fit)

    def bind(self, context: TrainingContext) -> TrainedParadigm:
        if self.multi_label:  # before any decoding or encoding: refuse what needs one label per image
            self.params.check_multi_label(self.name)
        self.context = context
        self.passes_ = {"train": 0, "val": 0}  # images through the backbone's input layers while fitting
        # lr: find — the paradigm computes its group lrs from lr = 1 (ratios); the first training phase runs the
        # range test and every phase's lrs are then multiplied by its suggestion (`lr_scale_`)
        self.lr_scale_ = None
        self.finding_lr_ = getattr(self.params, "lr", None) == "find"
        if self.finding_lr_:
            self.params = self.params.model_copy(update={"lr": 1.0})
        return self

    def count_passes(self, split: str, images: torch.Tensor, times: int = 1) -> None:
        """uint8 tensors are images entering the backbone; features and cached activations are not."""
        if images.dtype == torch.uint8:
            self.passes_[split] += len(images) * times

    def view(self):
        """PIL image → uint8 tensor: the backbone's pretrained geometry by default."""
        return self.context.backbone.eval_transform()

    def build_model(self, input_hw: tuple[int, int]) -> nn.Module:
        """uint8 images of `input_hw` → logits over n_classes."""
        raise NotImplementedError

    def fit(self, X, y, X_val, y_val):
        """Default: build the model and train every layer (scratch, simple-cnn); finetune overrides."""
        model = self.build_model(tuple(X.shape[-2:]))
        self.record_history("", self.train_phase(model, [(list(model.parameters()), self.params.lr)],
                                                 X, y, X_val, y_val))
        self.selected_["parameters"] = sum(q.numel() for q in model.parameters())
        self.model_ = model.eval()
        return self

    def penalty(self, model: nn.Module):
        """A term added to the training loss, as `() → tensor`: the L1/L2 of a `head:` spec's dense layers
        (simple-cnn: the L2 on its own dense layers); None."""
        return head_penalty(model)

    def with_new_head(self, net: nn.Module, input_hw: tuple[int, int]) -> nn.Module:
        """`net` (a copy, changed in place) with a new head for n_classes: the `head:` spec's, sized by a dry run
        at `input_hw`, or timm's `reset_classifier` (one linear layer) when none is given. Draws from torch's
        global RNG: seed it around the call."""
        spec = getattr(self.params, "head", None)
        if spec is None:
            net.reset_classifier(self.n_classes)
            return net
        return with_head(net, spec, self.n_classes, input_hw)

    def train_phase(self, model: nn.Module, groups: list[tuple[list[nn.Parameter], float]], X, y, X_val, y_val,
                    *, params=None, phase: str = "", epochs: int | None = None, penalty=None,
                    augment=None) -> TrainResult:
        p = params or self.params
        penalty = penalty or self.penalty(model)
        if (np.ndim(y) == 2) != self.multi_label:  # the loss and predict_proba must agree on what labels are
            form = "an N × C 0/1 matrix" if np.ndim(y) == 2 else "one per image"
            raise TransferlabError(f"{self.name}: the labels are {form}, but the paradigm was created with "
                                   f"multi_label={self.multi_label}; create it with the data's multi_label")
        if self.finding_lr_:
            self._find_lr(model, groups, X, y, p, augment)
        if self.lr_scale_ is not None:  # lr: find — lrs were computed from lr = 1
            groups = [(params, lr * self.lr_scale_) for params, lr in groups]
            p = p.model_copy(update={"lr": p.lr * self.lr_scale_})
        folder = self.context.checkpoints / phase if self.context.checkpoints and phase else self.context.checkpoints
        result = fit(model, param_groups(groups, p.weight_decay), Images(X, torch.as_tensor(y)),
                   Images(X_val, torch.as_tensor(y_val)), p, n_classes=self.n_classes, seed=self.seed,
                   device=self.context.device, checkpoints=folder, resume=self.context.resume,
                   label=f"{self.name}{' ' + phase if phase else ''}", epochs=epochs, penalty=penalty,
                   augment=augment, run_key=self.context.run_key, classes=self.context.classes)
        epochs_run = len(result.history) - result.resumed_from
        self.count_passes("train", X, epochs_run)
        self.count_passes("val", X_val, epochs_run)
        return result

    def _find_lr(self, model, groups, X, y, p, augment) -> None:
        """The range test (train/lr_find.py) on this phase's model and data: its suggestion scales every phase."""
        found = find_lr(model, groups, X, torch.as_tensor(y), p, n_classes=self.n_classes, seed=self.seed,
                        device=self.context.device, augment=online_augment(p, X, augment), label=self.name)
        self.finding_lr_, self.lr_scale_ = False, found["suggested_lr"]
        self.selected_["lr_find"] = found
        if self.stop_after_lr_find:
            raise LrFound(found)

    def used_params(self):
        """The params the run trained with: with lr: find, the suggested lr in place of the placeholder."""
        if self.lr_scale_ is None:
            return self.params
        return self.params.model_copy(update={"lr": self.lr_scale_ * self.params.lr})

    def record_history(self, phase: str, result: TrainResult) -> None:
        self.history_: list[dict[str, Any]] = getattr(self, "history_", [])
        self.history_ += [{"phase": phase, **epoch} for epoch in result.history]
        self.selected_[f"{phase}_best_epoch" if phase else "best_epoch"] = result.best_epoch
        self.selected_.update(result.notes)  # what balancing did (images per class after oversampling, ...)
        if result.resumed_from:
            self.selected_["resumed_from_epoch"] = result.resumed_from

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities from the trained network, through `tta:`'s views when it is on (the saved model does the
        same: model_file.py)."""
        model = with_tta(self.model_, self.params.tta) if X.ndim == 4 else self.model_
        logits = predict_logits(model, X, self.params.batch_size, self.context.device)
        # multi-label: every class is its own yes/no (what bce and mse trained), so rows need not sum to 1
        return (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).double().numpy()

    def deploy_steps(self):
        """The whole trained model: a timm architecture behind its normalisation (finetune, scratch, bit)."""
        config = self.context.backbone.data_config
        heads = [m for m in self.model_.modules() if isinstance(m, ClassifierHead)]
        head = {"spec": heads[0].spec.model_dump(mode="json"), "in_shape": list(heads[0].in_shape)} if heads else None
        model = TimmModel(self.context.backbone.name, self.n_classes, config["mean"], config["std"], head=head)
        model.net.load_state_dict(self.model_.state_dict())
        return [model.eval()], False

    def final_params(self) -> dict[str, Any]:
        """What validation chose was the best epoch: train that many epochs, no early stopping, and keep the
        last epoch's weights (nothing in train + val is held out to pick another)."""
        found = {"lr": self.used_params().lr} if self.lr_scale_ is not None else {}  # lr: find's suggestion, fixed
        return {**super().final_params(), **self.chosen_epochs(), **found, "patience": None, "restore_best": False}

    def chosen_epochs(self) -> dict[str, int]:
        """The epoch counts validation chose, as params (`epochs`; finetune's two phases: both)."""
        return {"epochs": self.selected_["best_epoch"]}
