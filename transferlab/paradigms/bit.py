"""`bit`: fine-tune every layer with BiT-HyperRule (train/hyperrule.py), for any timm backbone.

SGD with momentum 0.9, lr 0.003 × batch/512, linear warm-up then ×0.1 at the rule's decay steps, a
zero-initialised head, MixUp from 20 000 examples, and the rule's resolution: images resized to the
rule's size, a fresh random crop (+ flip) every step for training, the centre crop for evaluation; the
crop is capped by `max_resolution`, and the schedule by `max_epochs` (the rule's steps shrunk to that many
epochs, warm-up and decays at the same fractions). Every decision goes into `selected_` and so into the run
record.
An `augment` the user writes runs after the rule's random crop, at the crop size, instead of its flip.
"""

from __future__ import annotations

import copy
import math

import torch
from pydantic import Field, model_validator
from torchvision.transforms import v2

from ..data.augment import make_augment
from ..data.views import make_view
from ..models.heads import ClassifierHead, WithHead
from ..train.hyperrule import decide
from ..train.params import TrainParams
from .base import register
from .trained import TrainedParadigm

# What the rule sets; a user's value for one of these would be overridden, so it is refused instead.
RULED = {"optimizer", "momentum", "nesterov", "lr", "epochs", "schedule", "warmup_epochs", "milestones", "gamma",
         "mixup"}


class BitParams(TrainParams, WithHead):
    batch_size: int = Field(64, gt=0, description="the rule's lr scales with it (0.003 at 512)")
    max_resolution: int | None = Field(128, ge=16, description="cap on the rule's crop size (CPU budgets)")
    max_epochs: int | None = Field(None, gt=0, description="cap on the rule's schedule (CPU budgets): a longer "
                                   "one is shrunk to this many epochs of the training set, warm-up and lr decays "
                                   "at the same fractions of training; the record keeps the rule's own steps")

    @model_validator(mode="after")
    def _rule_decides(self):
        # Silently replacing a value the user wrote would be worse than refusing it.
        chosen = sorted(self.model_fields_set & RULED)
        if chosen:
            raise ValueError(f"BiT-HyperRule decides {', '.join(chosen)} for bit; remove them (or use finetune "
                             "to choose them yourself)")
        if self.augment_copies:  # copies would have to be cropped before the rule's per-step random crop
            raise ValueError("bit crops every step by its rule, so it takes no augment_copies; use "
                             "oversample_to or augment")
        return self


@register
class Bit(TrainedParadigm):
    name = "bit"
    Params = BitParams
    epoch_fields = ("max_epochs",)  # the rule decides epochs; max_epochs caps them

    def rule(self, dataset_size: int) -> dict:
        hw = self.context.sample_hw or tuple(self.context.backbone.data_config["input_size"][1:])
        p = self.params
        return decide(dataset_size, hw, p.batch_size, p.max_resolution, p.max_epochs)

    def view(self):
        """What training decodes: resized and centre-cropped at the rule's resolution (random crops come later)."""
        return make_view({"steps": self._resize_steps()})[0]

    def _resize_steps(self) -> list[list]:
        size = self.rule(0)["resize"]  # the resolution depends on the image size only
        return [["resize", size], ["center_crop", size]]

    def fit(self, X, y, X_val, y_val):
        rule = self.rule(len(y))
        steps_per_epoch = math.ceil(len(y) / self.params.batch_size)
        p = self.params.model_copy(update={  # model_copy skips validation: the rule may set RULED fields
            "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "lr": rule["lr"], "epochs": rule["epochs"],
            "schedule": "multistep", "warmup_epochs": rule["warmup_steps"] / steps_per_epoch,
            "milestones": [s / rule["steps"] for s in rule["decay_steps"]], "gamma": 0.1,
            "mixup": rule["mixup_alpha"]})
        backbone = self.context.backbone
        self.crop_ = rule["crop"]
        net = self.with_new_head(copy.deepcopy(backbone.model), (self.crop_, self.crop_))
        classifier = net.get_classifier()
        if isinstance(classifier, ClassifierHead):  # a head spec: its last layer is the classifier
            classifier = classifier.dense[-1]
        for tensor in classifier.parameters():
            torch.nn.init.zeros_(tensor)  # BiT's zero-initialised head
        self.model_ = backbone.with_normalization(net)
        augment = v2.Compose([v2.RandomCrop(self.crop_), self._augment_at_crop()])
        self.record_history("", self.train_phase(self.model_, [(list(net.parameters()), p.lr)], X, y,
                                                 self._center(X_val), y_val, params=p, augment=augment))
        self.selected_["hyperrule"] = rule
        self.model_.eval()
        return self

    def deploy_view(self, backbone):
        """The rule's evaluation view: resize, centre crop, then the centre crop at the rule's crop size."""
        return {"steps": [*self._resize_steps(), ["center_crop", self.crop_]]}

    def _augment_at_crop(self):
        """The rule's flip, or the user's own augmentation if they wrote one."""
        if "augment" not in self.params.model_fields_set:
            return v2.RandomHorizontalFlip()
        return make_augment(self.params.augment, self.crop_) or v2.Identity()

    def _center(self, X):
        return v2.functional.center_crop(X, [self.crop_, self.crop_])

    def predict_proba(self, X):
        return super().predict_proba(self._center(X))

    def chosen_epochs(self) -> dict[str, int]:
        """None: the rule decides the epochs (and refuses a user's), recomputed for the train + val size; the
        final refit runs the rule's whole schedule and keeps its last epoch."""
        return {}
