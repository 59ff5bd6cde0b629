"""torchvision classification models (AlexNet, VGG, ResNet, ...) behind timm's backbone interface.

A backbone named `torchvision/<model>` is torchvision's own network, built by `torchvision.models.get_model`,
and then *adopted*: its class becomes a subclass of itself that adds what transferlab uses of timm's interface
(`reset_classifier`, `num_features`, `get_classifier`, `pretrained_cfg` / `default_cfg`, `feature_info`,
`group_matcher`). Nothing is wrapped, so the forward pass, the module names and the state dict are
torchvision's: a plain `torchvision.models.alexnet().state_dict()` file loads as it is, and the
pretrained weights are torchvision's own download.

Pre-logit features are everything before the final nn.Linear (`reset_classifier(0)` makes it an Identity):
AlexNet / VGG give the classic 4096-d "fc7 features" (conv blocks → avgpool → flatten → fc6 → fc7, after
ReLU), ResNets their pooled 512 / 2048-d vector. Stages (`feature_info`, for `finetune from_stage`): AlexNet /
VGG each max-pool-delimited conv block, then fc6, fc7; ResNets the stem, layer1..layer4; other models
(whose classifier is a final nn.Linear or a Sequential ending in one) have none, and train by
`from_fraction` or whole.
"""

from __future__ import annotations

import bisect
import functools
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import VGG, AlexNet, ResNet

from ..core.errors import TransferlabError
from ..core.names import TORCHVISION_PREFIX

PREFIX = TORCHVISION_PREFIX
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")  # where torchvision models keep their classifier
IMAGENET_VIEW = {"crop_size": 224, "resize_size": 256, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "interpolation": "bilinear"}  # torchvision's ImageClassification defaults


def is_torchvision(name: str) -> bool:
    return name.startswith(PREFIX)


def architecture(name: str) -> str:
    """`torchvision/resnet50.IMAGENET1K_V1` → resnet50."""
    return name.removeprefix(PREFIX).partition(".")[0]


def weights_tag(name: str) -> str | None:
    """`torchvision/resnet50.IMAGENET1K_V1` → IMAGENET1K_V1: a weights version, as timm names its tags (none:
    torchvision's DEFAULT)."""
    return name.removeprefix(PREFIX).partition(".")[2] or None


def model_names() -> list[str]:
    """torchvision's classification models (detection, segmentation, video, quantized ones excluded)."""
    return torchvision.models.list_models(module=torchvision.models)


def check_weights_tag(name: str) -> None:
    """`torchvision/<model>.<TAG>` of a model without pretrained weights → one line (an unknown tag of one
    with weights is refused by `default_weights`)."""
    if weights_tag(name) and default_weights(name) is None:
        raise TransferlabError(f"{name}: torchvision has no pretrained weights for {architecture(name)}; drop "
                               f".{weights_tag(name)}")


def default_weights(name: str):
    """The model's pretrained weights (a WeightsEnum member): the version its name gives, else torchvision's
    DEFAULT; None if it has none."""
    try:
        versions = torchvision.models.get_model_weights(architecture(name))
    except (ValueError, AttributeError):
        return None
    tag = weights_tag(name)
    if tag is None:
        return versions.DEFAULT
    if tag not in versions.__members__:
        raise TransferlabError(f"{name}: torchvision has no weights {tag} for {architecture(name)} (it has "
                               f"{', '.join(versions.__members__)}); write {PREFIX}{architecture(name)}.<one of them>")
    return versions[tag]


def weights_file(weights) -> Path:
    """Where `get_model(weights=...)` keeps the weights file: torch.hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def weights_cached(weights) -> bool:
    """Is the weights file already in torch.hub's cache (where `get_model(weights=...)` would download it)?"""
    return weights_file(weights).is_file()


def check_supported(name: str) -> None:
    """A model whose classifier is not a final nn.Linear has no pre-logit features to offer; say so before any
    download (the check builds the architecture on the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        _head_path(_build(architecture(name), None), name)


def create(name: str, weights=None) -> nn.Module:
    """`torchvision/<model>` with the given torchvision weights (downloaded once by torch.hub), or randomly
    initialised (torch's global RNG) when `weights` is None; eval mode is the caller's."""
    model = _build(architecture(name), weights)
    return adopt(model, name, weights or default_weights(name))


def _build(arch: str, weights) -> nn.Module:
    with warnings.catch_warnings():  # GoogLeNet / Inception-v3 announce a future change of their random init
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return torchvision.models.get_model(arch, weights=weights)


def adopt(model: nn.Module, name: str, weights=None) -> nn.Module:
    """Give a torchvision model timm's interface in place; `weights` (its torchvision weights, or the ones it
    would have) describe the preprocessing (`pretrained_cfg`)."""
    head = _head_path(model, name)
    if getattr(model, "aux_logits", False):  # GoogLeNet / Inception-v3: plain logits in training too
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    if hasattr(model, "transform_input"):
        model.transform_input = True  # what torchvision's pretrained GoogLeNet / Inception-v3 weights expect
    model.__class__ = _adopted_class(type(model))
    final = model.get_submodule(head)
    model.num_features, model.num_classes = final.in_features, final.out_features
    model.pretrained_cfg = pretrained_cfg(name, weights, head)
    model.feature_info = stages(model)
    return model


def _head_path(model: nn.Module, name: str) -> str:
    """The module path of the final nn.Linear: `fc`, `classifier.6`, `heads.head`, ..."""
    for attr in HEAD_ATTRIBUTES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Linear):
            return attr
        if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear):
            return f"{attr}.{list(module._modules)[-1]}"
    raise TransferlabError(f"{name}: its classifier is not a final Linear layer, so it has no pre-logit features "
                           "for transferlab to use; choose another torchvision or timm model")


def pretrained_cfg(name: str, weights, head: str) -> dict[str, Any]:
    """timm's pretrained config from the torchvision weights' eval transform (resize, crop, mean, std, mode)."""
    view = dict(IMAGENET_VIEW)
    if weights is not None:
        transform = weights.transforms()
        view = {"crop_size": transform.crop_size[0], "resize_size": transform.resize_size[0],
                "mean": tuple(transform.mean), "std": tuple(transform.std),
                "interpolation": transform.interpolation.value}
    crop = view["crop_size"]
    return {"architecture": name, "source": "torchvision", "tag": str(weights) if weights else None,
            "url": weights.url if weights else None, "classifier": head,
            "num_classes": len(weights.meta["categories"]) if weights else 1000,
            "input_size": (3, crop, crop), "interpolation": view["interpolation"], "mean": view["mean"],
            "std": view["std"], "crop_pct": crop / view["resize_size"], "crop_mode": "center"}


def stages(model: nn.Module) -> list[dict[str, Any]]:
    """timm-style feature stages (num_chs, reduction, module: the last module of the stage)."""
    if isinstance(model, AlexNet | VGG):
        return _conv_fc_stages(model)
    if isinstance(model, ResNet):  # also wide_resnet*, resnext*
        return _resnet_stages(model)
    return []


def _conv_fc_stages(model: AlexNet | VGG) -> list[dict[str, Any]]:
    out, channels, reduction = [], 3, 1
    for i, layer in enumerate(model.features):
        channels = getattr(layer, "out_channels", channels)
        stride = getattr(layer, "stride", 1)
        reduction *= stride if isinstance(stride, int) else stride[0]
        if isinstance(layer, nn.MaxPool2d):
            out.append({"num_chs": channels, "reduction": reduction, "module": f"features.{i}"})
    layers = list(model.classifier)
    for i in [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)][:-1]:  # fc6, fc7
        end = i + 1 if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU) else i  # features after ReLU
        out.append({"num_chs": layers[i].out_features, "reduction": reduction, "module": f"classifier.{end}"})
    return out


def _resnet_stages(model: ResNet) -> list[dict[str, Any]]:
    out = [{"num_chs": model.bn1.num_features, "reduction": 2, "module": "relu"}]
    for i in range(1, 5):
        norms = [m for m in getattr(model, f"layer{i}").modules() if isinstance(m, nn.BatchNorm2d)]
        out.append({"num_chs": norms[-1].num_features, "reduction": 2 ** (i + 1), "module": f"layer{i}"})
    return out


class TimmInterface:
    """What transferlab uses of a timm model, for an adopted torchvision model (see `adopt`)."""

    pretrained_cfg: dict[str, Any]
    feature_info: list[dict[str, Any]]
    num_features: int
    num_classes: int

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.pretrained_cfg["classifier"])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new final layer for `num_classes` (torch's default init); 0: none, the model gives pre-logit features."""
        new = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.set_submodule(self.pretrained_cfg["classifier"], new.to(next(self.parameters()).device))
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False):
        """Parameter name → group, input to output: one group per feature stage (everything before the first
        stage's end joins it), then the head. Models without stages: the body, then the final layer. The
        same groups whether `coarse` or not."""
        order = {name: i for i, (name, _) in enumerate(self.named_modules())}
        ends = [max(i for name, i in order.items() if name == stage["module"] or name.startswith(stage["module"] + "."))
                for stage in self.feature_info]
        ends = ends or [order[self.pretrained_cfg["classifier"]] - 1]

        def group(param_name: str) -> int:
            return bisect.bisect_left(ends, order[param_name.rpartition(".")[0]])

        return group

    def __reduce_ex__(self, protocol):
        """Pickles (and deep-copies) through the torchvision class: the adopted class is made, not importable."""
        return _new_adopted, (type(self).torchvision_class,), self.__getstate__()


@functools.cache
def _adopted_class(base: type[nn.Module]) -> type[nn.Module]:
    """`base` with timm's interface; named as torchvision names it, so messages say AlexNet, ResNet, ..."""
    return type(base.__name__, (TimmInterface, base), {"__module__": __name__, "torchvision_class": base,
                                                       "__doc__": f"torchvision's {base.__name__}, adopted."})


def _new_adopted(base: type[nn.Module]) -> nn.Module:
    cls = _adopted_class(base)
    return cls.__new__(cls)
