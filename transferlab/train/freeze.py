"""Which parameters train: an unfreeze plan, for timm and torchvision networks alike.

Cuts follow module order (`named_modules`), so they work for any network: `{stage: k}` keeps frozen everything
up to the end of feature stage k-1 (timm's `feature_info`), `{fraction: f}` trains the last f of the layers
that own parameters, `{last_layers: N}` (with `first_layers: M`, the first M too) counts those layers as Keras
users count them, `{modules: [glob]}` trains the parameters whose names match, `{frozen: [glob]}` everything
else. The new classifier always trains: it starts from random weights. Learning-rate groups for discriminative
rates are timm's coarse layer groups (`group_matcher(coarse=True)`: stem, each stage, head).
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import Field, model_validator
from timm.models import group_parameters
from torch import nn

from ..config import Spec
from ..core.errors import TransferlabError

PLAN_KINDS = ("stage", "fraction", "last_layers", "modules", "frozen")


class UnfreezePlan(Spec):
    """One way to say which layers train (`first_layers` only beside `last_layers`)."""

    stage: int | None = Field(None, description="from this timm feature stage on (-1: the last)")
    fraction: float | None = Field(None, gt=0, le=1, description="the last fraction of the layers with weights")
    last_layers: int | None = Field(None, ge=0, description="the last N layers with weights (Keras's count)")
    first_layers: int | None = Field(None, ge=0, description="with last_layers: the first M layers too")
    modules: list[str] | None = Field(None, min_length=1, description="parameters whose names match these globs")
    frozen: list[str] | None = Field(None, min_length=1, description="everything but the parameters matching "
                                     "these globs")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.first_layers is not None and self.last_layers is None:
            raise ValueError("first_layers goes with last_layers ({first_layers: M, last_layers: N})")
        given = [kind for kind in PLAN_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give one of {', '.join(PLAN_KINDS)} (found {', '.join(given) or 'none'}); "
                             "or unfreeze: all")
        return self


Unfreeze = Literal["all"] | UnfreezePlan


def trainable_by_plan(model: nn.Module, plan: Any) -> set[str]:
    """The parameter names `plan` ("all" or an `UnfreezePlan`) trains, the new classifier's always included."""
    names = {name for name, _ in model.named_parameters()}
    if plan == "all":
        return names
    if plan.stage is not None:
        chosen = trainable_from_stage(model, plan.stage)
    elif plan.fraction is not None:
        chosen = trainable_from_fraction(model, plan.fraction)
    elif plan.last_layers is not None:
        chosen = trainable_by_layer_count(model, plan.first_layers or 0, plan.last_layers)
    elif plan.modules is not None:
        chosen = _matching(model, plan.modules, "modules")
    else:
        chosen = names - _matching(model, plan.frozen, "frozen")
    return chosen | classifier_names(model)


def layers_with_weights(model: nn.Module) -> list[str]:
    """Module names that own parameters, input to output: the layers Keras's `model.layers[-N:]` counts."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]


def trainable_by_layer_count(model: nn.Module, first: int, last: int) -> set[str]:
    layers = layers_with_weights(model)
    if first + last > len(layers):
        raise TransferlabError(f"unfreeze: first_layers + last_layers = {first + last}, but "
                               f"{type(model).__name__} has {len(layers)} layers with weights; lower them")
    keep = set(layers[:first]) | set(layers[len(layers) - last:])
    return {name for name, _ in model.named_parameters() if _module_of(name) in keep}


def _matching(model: nn.Module, globs: list[str], field: str) -> set[str]:
    names = [name for name, _ in model.named_parameters()]
    matched = set()
    for glob in globs:
        hits = {name for name in names if fnmatchcase(name, glob) or fnmatchcase(_module_of(name), glob)}
        if not hits:
            raise TransferlabError(f"unfreeze.{field}: '{glob}' matches no parameter of {type(model).__name__} "
                                   f"(names look like {', '.join(names[:3])}, ..., {names[-1]}); fix the glob")
        matched |= hits
    return matched


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def trainable_from_stage(model: nn.Module, stage: int) -> set[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise TransferlabError(f"{type(model).__name__} has no timm feature stages; use from_fraction instead")
    modules = [entry["module"] if isinstance(entry, dict) else entry for entry in
               (info.get_dicts() if hasattr(info, "get_dicts") else info)]
    n = len(modules)
    if not -n <= stage < n:
        raise TransferlabError(f"from_stage={stage}: {type(model).__name__} has {n} feature stages "
                               f"(0..{n - 1}, or -1 for the last)")
    stage %= n
    names = [name for name, _ in model.named_parameters()]
    if stage == 0:
        return set(names)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    cut = modules[stage - 1]
    return {name for name in names if order[_module_of(name)] > order[cut]
            and not _module_of(name).startswith(cut + ".")}


def trainable_from_fraction(model: nn.Module, fraction: float) -> set[str]:
    layers = layers_with_weights(model)
    keep = set(layers[len(layers) - max(1, math.ceil(fraction * len(layers))):])
    return {name for name, _ in model.named_parameters() if _module_of(name) in keep}


def set_trainable(model: nn.Module, trainable: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable


def classifier_names(model: nn.Module) -> set[str]:
    head = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"
    return {name for name, _ in model.named_parameters() if name.startswith(head + ".")}


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups from input to output: timm's coarse groups, or one group for other models."""
    if not hasattr(model, "group_matcher"):
        return [list(model.parameters())]

    grouped = group_parameters(model, model.group_matcher(coarse=True))
    params = dict(model.named_parameters())
    return [[params[name] for name in names] for _, names in sorted(grouped.items())]
