"""Which parameters train: from a timm feature stage, from a fraction of the layers, or all.

Cuts follow module order (`named_modules`), so they work for any timm model: `from_stage: k` keeps
frozen everything up to the end of feature stage k-1 (timm's `feature_info`), `from_fraction: f` trains
the last f of the layers that own parameters. Learning-rate groups for discriminative rates are timm's
coarse layer groups (`group_matcher(coarse=True)`: stem, each stage, head).
"""

from __future__ import annotations

import math

from timm.models import group_parameters
from torch import nn

from ..core.errors import TransferlabError


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
    layers = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
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
