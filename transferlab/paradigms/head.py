"""`head`: a new head (`head:` a HeadSpec: pooling, dense layers, dropout, L1/L2) on a frozen backbone, with
augmentation.

The frozen backbone runs without autograd through the same engine as feature extraction (ONNX Runtime
on CPU), so an epoch costs one fast forward pass per image and a backward pass through the head alone.
`views: K` instead encodes K augmented views of every training image once and trains the head on those
features (offline augmentation): after that, epochs cost no backbone pass at all. With `oversample_to`,
short classes are topped up first, and the views are made of the topped-up set.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ..core.seeding import torch_seeded
from ..data.augment import augmented_copies, make_augment
from ..features import BackboneEncoder
from ..models.heads import ClassifierHead, HeadSpec, WithHead, check_one_head_form, shorthand_head
from ..models.modules import SpecHead
from ..train.loop import Images, offline_training_set
from ..train.params import LR_HELP, LearningRate, Optimizer, TrainParams
from .base import register
from .trained import TrainedParadigm


class HeadParams(TrainParams, WithHead):
    hidden: int = Field(0, ge=0, description="shorthand for head: {hidden: [N]}; 0: a linear head")
    dropout: float = Field(0.2, ge=0, lt=1, description="shorthand for head: {dropout: p}")
    l1: float = Field(0.0, ge=0, description="shorthand for head: {l1: λ}, the L1 penalty on the head's weights")
    views: int = Field(0, ge=0, description="0: augment online every epoch; K: K augmented views encoded once")
    optimizer: Optimizer = "adamw"
    lr: LearningRate = Field(1e-3, description=LR_HELP)
    epochs: int = Field(15, gt=0)

    @property
    def head_spec(self) -> HeadSpec:
        return shorthand_head(self, self.hidden, self.dropout, self.l1)

    @model_validator(mode="after")
    def _no_mixing(self):
        check_one_head_form(self, ("hidden", "dropout", "l1"))
        if self.mixup or self.cutmix:  # the frozen engine takes uint8 images; blended images are not that
            raise ValueError("mixup and cutmix are not available for head; use finetune, or views: K for "
                             "augmentation")
        if self.views and self.augment_copies:
            raise ValueError("views: K already encodes K augmented copies of every image; drop augment_copies")
        if self.tta != "none":  # the frozen features are cached once per image: a test-time view would need its own
            raise ValueError("tta is not available for head (its frozen features are one pass per image); use "
                             "finetune, whose whole network sees each view")
        return self


class FrozenThenHead(nn.Module):
    """uint8 images → frozen features (no autograd, fast engine) → trainable head.

    Also takes features already encoded (float, N×D or N×C×H×W): validation images never change, so they are
    encoded once rather than at every epoch's evaluation.
    """

    def __init__(self, encode, head: nn.Module):
        super().__init__()
        self.encode, self.head = encode, head

    def __deepcopy__(self, memo) -> FrozenThenHead:
        """A copy with its own head and the same frozen encoder (an engine session: nothing in it trains or can be
        copied): what an EMA of the weights (`ema:`) keeps."""
        return FrozenThenHead(self.encode, copy.deepcopy(self.head, memo))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            features = images
        else:
            with torch.no_grad():
                features = torch.from_numpy(self.encode(images.cpu()))
        return self.head(features.to(next(self.head.parameters()).device))


@register
class Head(TrainedParadigm):
    name = "head"
    Params = HeadParams

    def fit(self, X, y, X_val, y_val):
        p, spec = self.params, self.params.head_spec
        # the engine a feature paradigm gets; the last feature map when the head pools it itself
        encoder = BackboneEncoder(self.context.backbone, self.context.device, self.context.engine,
                                  feature_map=spec.needs_feature_map)
        self.encode_ = encoder.encode
        val_features = self._features(X_val)
        with torch_seeded(self.seed):  # the new head's initialisation
            head = ClassifierHead(spec, tuple(val_features.shape[1:]), self.n_classes)
        if p.views:
            X, y = self._augmented_views(X, y)
            offline_done = {"augment": "none", "oversample_to": None}  # done above, on the images
            result = self.train_phase(head, [(list(head.parameters()), p.lr)], X, y, val_features, y_val,
                                      params=p.model_copy(update=offline_done))
        else:
            model = FrozenThenHead(self.encode_, head)
            result = self.train_phase(model, [(list(head.parameters()), p.lr)], X, y, val_features, y_val)
        self.record_history("", result)
        self.selected_["engine"] = self.engine_ = encoder.engine
        self.model_ = FrozenThenHead(self.encode_, head.eval())
        return self

    def deploy_steps(self):
        """The frozen backbone's features → the trained head (the backbone's own weights complete it)."""
        head = self.model_.head
        module = SpecHead(list(head.in_shape), self.n_classes, head.spec.model_dump(mode="json"))
        module.net.load_state_dict(head.state_dict())
        return [module.eval()], True

    def _features(self, images: torch.Tensor, split: str = "val") -> torch.Tensor:
        self.count_passes(split, images)
        return torch.cat([torch.from_numpy(self.encode_(chunk)) for chunk in images.split(self.params.batch_size)])

    def _augmented_views(self, X: torch.Tensor, y) -> tuple[torch.Tensor, np.ndarray]:
        """K augmented copies of every training image, encoded once (seeded: the same views every rerun)."""
        images, notes = offline_training_set(Images(X, torch.as_tensor(y)), self.params, self.seed, self.n_classes,
                                             self.name, self.context.classes)
        self.selected_.update(notes)
        augment = make_augment(self.params.augment, tuple(X.shape[-2:])) or (lambda image: image)
        views = [self._features(view, "train")
                 for view in augmented_copies(images.x, augment, self.params.views, self.seed)]
        y = images.y.numpy()
        return torch.cat(views), np.tile(y, (self.params.views,) + (1,) * (y.ndim - 1))  # label matrices by rows
