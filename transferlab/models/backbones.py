"""Backbones: any timm model, or a torchvision one (`torchvision/alexnet`), with weights from the hub, a local
file, the offline registry, or random init: the loaders of `WEIGHT_SOURCES` (a `core.registry.Registry`; a new
source is one `@WEIGHT_SOURCES.register(name)` function of the spec and the seed).

`load_backbone(spec)` is the one entry point. It returns the full model (ImageNet head included, so a
user can check the weights on a photo), the weight source with a content hash (part of every cache key),
and the preprocessing resolved by timm from the model's pretrained config (explicit image size first).
torchvision models come through `torchvision_nets`, which gives them timm's interface and a pretrained
config read from their torchvision weights' transforms; their hub is torchvision's download.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from timm.data import create_transform, resolve_model_data_config
from torch.utils.flop_counter import FlopCounterMode

from ..config import BackboneSpec
from ..core.errors import TransferlabError
from ..core.names import unknown_model_message
from ..core.registry import Registry
from ..core.seeding import torch_seeded
from . import torchvision_nets
from .weights import OFFLINE_WEIGHTS, load_offline_state_dict, offline_models


def check_model_name(name: str) -> None:
    """Unknown timm (or `torchvision/<model>`) model → one line with the closest names."""
    if torchvision_nets.is_torchvision(name) or not timm.is_model(name):
        problem = unknown_model_message(name, *model_names())
        if problem:
            raise TransferlabError(problem)
    if torchvision_nets.is_torchvision(name):
        torchvision_nets.check_weights_tag(name)


def model_names() -> tuple[list[str], list[str]]:
    """Every architecture timm accepts (its deprecated names too, which `timm.is_model` and `create_model` still
    take but `list_models` leaves out), and every classification model torchvision has."""
    return [*timm.list_models(), *timm.models.get_deprecated_models()], torchvision_nets.model_names()


def create_model(name: str, num_classes: int | None = None) -> torch.nn.Module:
    """A randomly initialised network by name (timm, or `torchvision/<model>`), from torch's global RNG, e.g. to
    receive saved weights. `num_classes`: the new classifier's size (0: none, pooled pre-logit features); None:
    the architecture's own (ImageNet's 1000)."""
    if not torchvision_nets.is_torchvision(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)  # timm drops a None
    model = torchvision_nets.create(name)
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # offline | hub | file | random: its loader in WEIGHT_SOURCES
    detail: str  # file path, hub tag, or seed
    sha256: str  # content hash of the weights (of the loaded tensors for hub tags; of the recipe for random init)


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module  # eval mode, with its pretrained classifier
    weights: WeightsInfo
    data_config: dict[str, Any]  # timm: input_size, interpolation, mean, std, crop_pct, crop_mode

    def feature_model(self, feature_map: bool = False) -> torch.nn.Module:
        """uint8 images → pooled pre-logit features (a copy, classifier removed with timm's `reset_classifier(0)`);
        `feature_map`: the last feature map, unpooled (`global_pool=""`), for a head that pools itself."""
        model = copy.deepcopy(self.model)
        if feature_map:
            model.reset_classifier(0, global_pool="")
        else:
            model.reset_classifier(0)
        return self.with_normalization(model)

    def with_new_head(self, n_classes: int) -> torch.nn.Module:
        """A copy of the pretrained model whose classifier is new and sized for `n_classes` (timm's reset)."""
        model = copy.deepcopy(self.model)
        model.reset_classifier(n_classes)
        return model

    def with_normalization(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap `model` to take the uint8 tensors of `eval_transform`, normalising as the weights expect."""
        return Normalized(model, self.data_config["mean"], self.data_config["std"]).eval()

    def eval_transform(self):
        """PIL image → uint8 C×H×W tensor, resized and cropped as the pretrained weights expect.

        timm's prefetcher form: scaling and normalisation happen in `with_normalization`, inside the
        frozen model (and its ONNX export), which roughly halves the work of the decoding worker (measured).
        """
        return create_transform(**self.data_config, is_training=False, use_prefetcher=True)

    @property
    def key(self) -> str:
        """Identifies what features this backbone computes: architecture, weights and preprocessing."""
        view = ",".join(f"{k}={self.data_config[k]}" for k in sorted(self.data_config))
        return hashlib.sha256(f"{self.name}|{self.weights.sha256}|{view}".encode()).hexdigest()[:20]


class Normalized(torch.nn.Module):
    """uint8 image batch → (x / 255 - mean) / std → model."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean) / self.std)


# spec, seed → (the full model, where its weights came from)
WEIGHT_SOURCES: Registry[Callable[[BackboneSpec, int], tuple[torch.nn.Module, WeightsInfo]]] = Registry("weight source")


def resolve_weights_choice(spec: BackboneSpec) -> str:
    if spec.weights == "auto":
        return "offline" if spec.name in OFFLINE_WEIGHTS else "hub"
    return spec.weights


def weight_source(spec: BackboneSpec) -> str:
    """The `WEIGHT_SOURCES` loader for `spec.weights`: `auto` resolved, a path is `file`."""
    choice = resolve_weights_choice(spec)
    return choice if choice in WEIGHT_SOURCES else "file"


def load_backbone(spec: BackboneSpec, seed: int = 0) -> Backbone:
    check_model_name(spec.name)
    model, weights = WEIGHT_SOURCES.create(weight_source(spec), spec, seed)
    model.eval()
    overrides = {"input_size": (3, spec.image_size, spec.image_size)} if spec.image_size else None
    data_config = resolve_model_data_config(model, args=overrides)
    return Backbone(spec.name, model, weights, data_config)


def _initialised(name: str, seed: int) -> torch.nn.Module:
    """The architecture's random init from `seed`, reproducible (what a file's or the offline weights replace;
    a head that a file lacks keeps it)."""
    with torch_seeded(seed):
        return create_model(name)


@WEIGHT_SOURCES.register("offline")
def _from_offline_registry(spec: BackboneSpec, seed: int) -> tuple[torch.nn.Module, WeightsInfo]:
    if torchvision_nets.is_torchvision(spec.name):
        raise TransferlabError(f"{spec.name}: there are no offline torchvision weights (the offline registry has "
                               f"{', '.join(offline_models())}); use weights: hub (torchvision's download), "
                               "weights: path/to/state_dict.pth or weights: random")
    model = _initialised(spec.name, seed)
    state, path = load_offline_state_dict(spec.name, model)
    model.load_state_dict(state)
    return model, WeightsInfo("offline", str(path), file_sha256(path))


@WEIGHT_SOURCES.register("random")
def _random_init(spec: BackboneSpec, seed: int) -> tuple[torch.nn.Module, WeightsInfo]:
    model = _initialised(spec.name, seed)
    torchvision_model = torchvision_nets.is_torchvision(spec.name)
    library = f"torchvision-{torchvision.__version__}" if torchvision_model else timm.__version__
    return model, WeightsInfo("random", f"seed {seed}", f"random-{library}-{seed}")


@WEIGHT_SOURCES.register("file")
def _from_file(spec: BackboneSpec, seed: int) -> tuple[torch.nn.Module, WeightsInfo]:
    model = _initialised(spec.name, seed)
    path = Path(spec.weights)
    _load_file_into(model, path)
    return model, WeightsInfo("file", str(path), file_sha256(path))


HUB_HOST = ("huggingface.co", 443)
TORCHVISION_HOST = ("download.pytorch.org", 443)


@WEIGHT_SOURCES.register("hub")
def _from_hub(spec: BackboneSpec, seed: int) -> tuple[torch.nn.Module, WeightsInfo]:
    """timm's pretrained weights from the Hugging Face hub; torchvision's download for `torchvision/` models."""
    name = spec.name
    if torchvision_nets.is_torchvision(name):
        return _from_torchvision(name)
    advice = (f"use weights: offline ({', '.join(offline_models())}) or weights: path/to/file.safetensors "
              "(weights already in your Hugging Face cache: set HF_HUB_OFFLINE=1)")
    if not _hub_reachable():
        raise TransferlabError(f"{name}: hub weights need internet and {HUB_HOST[0]} is unreachable; {advice}")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - network, missing tag, HF errors: all get the same advice
        raise TransferlabError(f"{name}: could not get hub weights ({type(exc).__name__}); {advice}") from None
    cfg = model.pretrained_cfg
    tag = f"{cfg.get('hf_hub_id') or cfg.get('url') or name}:{cfg.get('tag', '')}"
    return model, WeightsInfo("hub", tag, weights_sha256(model, _hub_file(cfg)))


def _from_torchvision(name: str) -> tuple[torch.nn.Module, WeightsInfo]:
    """torchvision's DEFAULT weights, downloaded once into torch.hub's cache (`$TORCH_HOME`)."""
    advice = ("use weights: path/to/state_dict.pth (a torchvision state dict, .pth or .safetensors) or weights: "
              f"random (weights already downloaded are used from {torch.hub.get_dir()}/checkpoints)")
    weights = torchvision_nets.default_weights(name)
    if weights is None:
        raise TransferlabError(f"{name}: torchvision has no pretrained weights for it; {advice}")
    torchvision_nets.check_supported(name)  # before downloading anything
    if not torchvision_nets.weights_cached(weights) and not _reachable(TORCHVISION_HOST):
        raise TransferlabError(f"{name}: hub weights need internet and {TORCHVISION_HOST[0]} is unreachable; "
                               f"{advice}")
    try:
        model = torchvision_nets.create(name, weights)
    except Exception as exc:  # noqa: BLE001 - network, hash mismatch, disk: all get the same advice
        raise TransferlabError(f"{name}: could not get torchvision weights {weights} ({type(exc).__name__}); "
                               f"{advice}") from None
    tag = f"{weights}:{weights.url}"
    return model, WeightsInfo("hub", tag, weights_sha256(model, torchvision_nets.weights_file(weights)))


# A hub tag names weights but does not pin them: the file behind it can change. The cache keys, the cell keys and
# load_run's check therefore use the hash of the loaded tensors, computed once per downloaded file and kept
# beside it (<file>.tensors-sha256, with the file's size and mtime so a new download is hashed again).


def weights_sha256(model: torch.nn.Module, downloaded: Path | None) -> str:
    """sha256 of the model's tensors (names, dtypes, shapes, bytes), cached beside `downloaded` when known."""
    stamp = None
    if downloaded is not None and downloaded.is_file():
        stat = downloaded.stat()
        stamp, cache = f"{stat.st_size}:{stat.st_mtime_ns}", downloaded.with_name(downloaded.name + ".tensors-sha256")
        if cache.is_file():
            kept_stamp, _, kept = cache.read_text().strip().partition(" ")
            if kept_stamp == stamp and len(kept) == 64:
                return kept
    digest = tensors_sha256(model.state_dict())
    if stamp is not None:
        try:
            cache.write_text(f"{stamp} {digest}\n")
        except OSError:
            pass  # a read-only cache: hash again next time
    return digest


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes as stored (bf16 too)
    return digest.hexdigest()


def _hub_file(cfg: dict[str, Any]) -> Path | None:
    """The file timm loaded the pretrained weights from, when it is in the Hugging Face cache."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for filename in [*filter(None, [cfg.get("hf_hub_filename")]), "model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that an offline machine gets one line at once instead of a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return True  # the cache decides; let huggingface_hub try
    return _reachable(HUB_HOST, timeout)


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy")):
        return True  # the proxy decides; let the download try
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def _load_file_into(model: torch.nn.Module, path: Path) -> None:
    """Load a .safetensors or .pth state dict (never unpickling code); a mismatched head is left at init."""
    if not path.is_file():
        raise TransferlabError(f"{path}: no such weights file; give a .safetensors or .pth file, or "
                               "weights: offline | hub | random")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for wrapper in ("state_dict", "model"):  # common checkpoint layouts
                if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                    state = state[wrapper]
    except Exception as exc:  # noqa: BLE001
        raise TransferlabError(f"{path}: not a loadable weights file ({exc}); save a state dict with "
                               "safetensors or torch.save") from None
    # Fine to drop the classifier when its size differs: a new task gets a new head anyway.
    head = model.default_cfg.get("classifier", "")
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith(head) and k in own and v.shape != own[k].shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise TransferlabError(f"{path}: does not fit {type(model).__name__} ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected keys, e.g. '{first}'); check the model name")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def forward_cost(backbone: Backbone | None, image_size: int | None) -> dict[str, Any]:
    """GFLOPs of one image's forward through the backbone (torch's FlopCounterMode counts 2 FLOPs per
    multiply-add, so this is twice timm's GMACs) and its parameter count; None for runs without one."""
    if backbone is None or image_size is None:
        return {"gflops": None, "parameters": None, "image_size": image_size}

    model = backbone.model
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    return {"gflops": round(counter.get_total_flops() / 1e9, 4),
            "parameters": sum(p.numel() for p in model.parameters()), "image_size": image_size}
