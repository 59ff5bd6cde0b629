"""A new MLP head (`head:` a HeadSpec on pooled features) trained on cached features by the one training loop
(train/loop.py): dropout, L2, early stopping on the validation loss.

Cross-entropy over softmax for single-label data; binary cross-entropy per label (independent sigmoids)
for multi-label data.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, model_validator

from ..core.seeding import torch_seeded
from ..models.heads import ClassifierHead, HeadSpec, WithHead, check_one_head_form, shorthand_head
from ..models.modules import SpecHead, Standardize
from ..train.loop import Images, fit
from ..train.params import TrainParams
from .base import Paradigm, register
from .resample import FeatureParams


class MlpParams(FeatureParams, WithHead):
    hidden: int = Field(512, ge=0, description="shorthand for head: {hidden: [N]}; 0 gives a linear head")
    dropout: float = Field(0.5, ge=0, lt=1, description="shorthand for head: {dropout: p}")
    weight_decay: float = Field(1e-4, ge=0, description="L2, decoupled (AdamW)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, gt=0)
    max_epochs: int = Field(200, gt=0)
    patience: int | None = Field(15, gt=0, description="epochs without a better validation loss before stopping "
                                 "(none: run max_epochs)")
    restore_best: bool = Field(True, description="keep the best validation epoch's weights; false keeps the last "
                               "epoch's (the `final` retraining on train + val)")

    @model_validator(mode="after")
    def _pooled_features(self):
        check_one_head_form(self, ("hidden", "dropout"))
        if self.head is not None and self.head.needs_feature_map:
            raise ValueError(f"head.pool: {self.head.pool} needs a feature map, but mlp trains on pooled cached "
                             "features; use pool: avg, or the head paradigm (it pools the frozen feature map)")
        return self

    @property
    def head_spec(self) -> HeadSpec:
        return shorthand_head(self, self.hidden, self.dropout)


@register
class Mlp(Paradigm):
    name = "mlp"
    Params = MlpParams
    epoch_fields = ("max_epochs",)  # early stopping decides within them

    def fit(self, X, y, X_val, y_val):
        with torch_seeded(self.seed):  # the head's initialisation draws from it; the caller's RNG is left as it was
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val):
        p = self.params
        X, y = self.resampled_training_rows(X, y)
        # Standardise as StandardScaler does, except that a near-constant feature (a nearly dead ReLU) is centred
        # and scaled by at most 100× the typical feature's: dividing by its tiny std (measured: 7e-4 vs a median of
        # 0.9) blows the 1e-5 float noise between engines (ONNX Runtime vs PyTorch features) up to logit changes
        # over the export's 1e-4 parity limit.
        std = X.std(0)
        floor = max(1e-8, 1e-2 * float(np.median(std)))
        self.mean_, self.std_ = X.mean(0), np.maximum(std, floor)
        model = ClassifierHead(p.head_spec, (X.shape[1],), self.n_classes)
        # The one training loop, on whole feature tensors: constant lr, early stopping on the validation loss.
        # Weight decay acts on every parameter, biases too: the L2 this paradigm has always documented.
        groups = [{"params": list(model.parameters()), "lr": p.lr, "weight_decay": p.weight_decay}]
        result = fit(model, groups, self._images(X, y), self._images(X_val, y_val), self._train_params(),
                     n_classes=self.n_classes, seed=self.seed, device=torch.device("cpu"), label=self.name,
                     penalty=model.penalty if p.head_spec.l1 or p.head_spec.l2 else None)
        self.model_ = model.eval()
        self.history_ = result.history
        self.selected_.update({"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                               "val_loss": round(-result.best_score, 5)})
        return self

    def _train_params(self) -> TrainParams:
        p = self.params
        return TrainParams(epochs=p.max_epochs, batch_size=p.batch_size, optimizer="adamw", lr=p.lr,
                           weight_decay=p.weight_decay, schedule="constant", augment="none", monitor="val_loss",
                           min_delta=1e-4, patience=p.patience, restore_best=p.restore_best)

    def _images(self, X: np.ndarray, y: np.ndarray) -> Images:
        """Standardised features and their labels (a float 0/1 matrix for multi-label), as the loop takes them."""
        return Images(self._tensor(X), torch.as_tensor(y, dtype=torch.float32 if self.multi_label else None))

    def final_params(self):
        """The refit on train + val runs exactly the epochs that were best on validation, and keeps the last."""
        return {**super().final_params(), "max_epochs": self.selected_["best_epoch"], "patience": None,
                "restore_best": False}

    def deploy_steps(self):
        head = SpecHead([len(self.mean_)], self.n_classes, self.params.head_spec.model_dump(mode="json"))
        head.net.load_state_dict(self.model_.state_dict())
        return [Standardize(len(self.mean_), self.mean_, self.std_), head.eval()], True

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.mean_) / self.std_, dtype=torch.float32)

    def predict_proba(self, X):
        with torch.no_grad():
            logits = self.model_(self._tensor(X))
            return (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).double().numpy()
