"""A new MLP head trained with torch on cached features: dropout, L2, early stopping on validation.

Cross-entropy over softmax for single-label data; binary cross-entropy per label (independent sigmoids)
for multi-label data.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..config import Spec
from ..core.errors import TransferlabError
from ..core.seeding import seeded_generator, torch_seeded
from ..models.heads import make_head
from ..models.modules import Head, Standardize
from ..train.hooks import epoch_done
from ..train.loop import score_counts, score_from_counts, score_name
from .base import Paradigm, register


class MlpParams(Spec):
    hidden: int = Field(512, ge=0, description="hidden units; 0 gives a linear head")
    dropout: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, description="L2, decoupled (AdamW)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, gt=0)
    max_epochs: int = Field(200, gt=0)
    patience: int | None = Field(15, gt=0, description="epochs without a better validation loss before stopping "
                                 "(none: run max_epochs)")
    restore_best: bool = Field(True, description="keep the best validation epoch's weights; false keeps the last "
                               "epoch's (the `final` retraining on train + val)")


@register
class Mlp(Paradigm):
    name = "mlp"
    Params = MlpParams
    epoch_fields = ("max_epochs",)  # early stopping decides within them

    def fit(self, X, y, X_val, y_val):
        with torch_seeded(self.seed):  # init and dropout draw from it; the caller's RNG is left as it was
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val):
        p = self.params
        generator = seeded_generator(self.seed)
        # Standardise as StandardScaler does, except that a near-constant feature (a nearly dead ReLU) is centred
        # and scaled by at most 100× the typical feature's: dividing by its tiny std (measured: 7e-4 vs a median of
        # 0.9) blows the 1e-5 float noise between engines (ONNX Runtime vs PyTorch features) up to logit changes
        # over the export's 1e-4 parity limit.
        std = X.std(0)
        floor = max(1e-8, 1e-2 * float(np.median(std)))
        self.mean_, self.std_ = X.mean(0), np.maximum(std, floor)
        target = (lambda t: torch.as_tensor(t, dtype=torch.float32)) if self.multi_label else torch.as_tensor
        X_t, y_t = self._tensor(X), target(y)
        X_v, y_v = self._tensor(X_val), target(y_val)
        model = make_head(X.shape[1], self.n_classes, hidden=p.hidden, dropout=p.dropout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()
        best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
        for epoch in range(p.max_epochs):
            model.train()
            for batch in torch.randperm(len(X_t), generator=generator).split(p.batch_size):
                optimizer.zero_grad()
                loss_fn(model(X_t[batch]), y_t[batch]).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                logits = model(X_v)
                val_loss = loss_fn(logits, y_v).item()
            if not np.isfinite(val_loss):
                raise TransferlabError(f"mlp: the validation loss became {val_loss} at epoch {epoch + 1}; lower lr "
                                       f"(now {p.lr:g})")
            epoch_done({"epoch": epoch + 1, "val_loss": val_loss,  # a search's pruner may stop the trial here
                        f"val_{score_name(self.multi_label)}": score_from_counts(score_counts(logits, y_v), len(y_v))})
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if p.patience is not None and stale >= p.patience:
                    break
        if p.restore_best:
            model.load_state_dict(best_state)
        self.model_ = model.eval()
        self.selected_ = {"best_epoch": best_epoch + 1, "epochs_run": epoch + 1, "val_loss": round(best_loss, 5)}
        return self

    def final_params(self):
        """The refit on train + val runs exactly the epochs that were best on validation, and keeps the last."""
        return {**super().final_params(), "max_epochs": self.selected_["best_epoch"], "patience": None,
                "restore_best": False}

    def deploy_steps(self):
        p = self.params
        head = Head(len(self.mean_), self.n_classes, p.hidden, p.dropout)
        head.net.load_state_dict(self.model_.state_dict())
        return [Standardize(len(self.mean_), self.mean_, self.std_), head.eval()], True

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X - self.mean_) / self.std_, dtype=torch.float32)

    def predict_proba(self, X):
        with torch.no_grad():
            logits = self.model_(self._tensor(X))
            return (logits.sigmoid() if self.multi_label else logits.softmax(dim=1)).double().numpy()
