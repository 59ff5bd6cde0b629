"""New classification heads, shared by the paradigms that train one (mlp on cached features, head)."""

from __future__ import annotations

from torch import nn


def make_head(n_features: int, n_classes: int, *, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """Dropout → linear when `hidden` is 0; else linear → ReLU → dropout → linear."""
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, n_classes))
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
