"""Grad-CAM (the `grad-cam` package, optional extra `transferlab[explain]`) on a run's network: where in the image
the last convolutional feature map held the evidence for a class.

It lives down here, beside the torch forms of `modules.py`, because two layers that may not import each other use
it: the runner's gallery (`gallery.py`, overlays of the test mistakes kept in the record, so the report stays a
reader of records) and `deploy/explain.py` (`transferlab predict --explain`). It takes any module that maps uint8
N×3×H×W images to class scores — a trained network, or the frozen backbone followed by a paradigm's
differentiable steps — and finds the layer itself: the last 4-D feature map the forward pass produces.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.errors import TransferlabError
from .modules import KnnVote

try:  # optional extra: transferlab[explain]
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
except ImportError:  # optional extra: without it only `available()` is False and `GradCam` refuses in one line
    GradCAM = None

INSTALL = "pip install 'transferlab[explain]'"
POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)  # return their input: never the layer that made a map
CHUNK = 16  # images per forward/backward pass: bounds the memory a large backbone's activations take


class NotExplainable(TransferlabError):
    """Grad-CAM cannot explain this network (no feature map, or a step without gradients); the message says why."""


def available() -> bool:
    return GradCAM is not None


@dataclass
class Target:
    """The layer Grad-CAM reads: the module (called once per forward) whose output is the last feature map."""

    module: nn.Module
    name: str
    map_size: tuple[int, int]


class GradCam:
    """Heatmaps of one network (a copy: the caller's model is left as it was); the target layer is found on the
    first images. No parameter requires gradients: the target's output is made a leaf that does, so backward runs
    only through the layers after it (a whole network's weight gradients would cost ~10× more on CPU, measured on
    lite0: depthwise convolutions' weight gradients are slow)."""

    def __init__(self, network: nn.Module, device: torch.device | str | None = None):
        if GradCAM is None:
            raise TransferlabError(f"Grad-CAM needs the grad-cam package: {INSTALL}")
        if any(isinstance(m, KnnVote) for m in network.modules()):
            raise NotExplainable("a k-NN vote is not differentiable, so Grad-CAM has no gradient to follow; explain a "
                                 "linear, mlp, head or trained-network run instead")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = copy.deepcopy(network).to(self.device).eval().requires_grad_(False)
        self.target: Target | None = None

    def heatmaps(self, images: torch.Tensor, classes: list[int] | np.ndarray) -> np.ndarray:
        """N×H×W float32 in [0, 1] at the images' own size: Grad-CAM of `classes[i]` on `images[i]` (uint8)."""
        if self.target is None:
            self.target = find_target(self.network, images[:1].to(self.device))
        classes = [int(c) for c in classes]
        maps = []
        leaf = self.target.module.register_forward_hook(_gradient_leaf)  # before grad-cam's hooks, which see its output
        try:
            with torch.enable_grad(), GradCAM(model=self.network, target_layers=[self.target.module]) as cam:
                for start in range(0, len(images), CHUNK):
                    chunk = images[start:start + CHUNK]
                    targets = [ClassifierOutputTarget(c) for c in classes[start:start + CHUNK]]
                    maps.append(cam(input_tensor=chunk, targets=targets))
        finally:
            leaf.remove()
        return np.clip(np.concatenate(maps), 0.0, 1.0).astype(np.float32)


def _gradient_leaf(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    """The feature map as a fresh leaf that requires gradients: what Grad-CAM differentiates the class score by."""
    return output.detach().requires_grad_(True)


def find_target(network: nn.Module, sample: torch.Tensor) -> Target:
    """The last feature map of one forward pass: the last N×C×h×w output (h×w above 1×1: a pooled map is not one)
    of any module but a pooling or pass-through one — a block's output, residual sum included, comes after its
    layers' — read at the outermost module called once that returns that very tensor (a module called several
    times, as torchvision's ResNet ReLU, would give grad-cam one activation per call)."""
    events, calls = _trace(network, sample)
    maps = [i for i, (module, out) in enumerate(events) if _is_map(module, out)]
    if not maps:
        raise NotExplainable("Grad-CAM needs a convolutional feature map, and this network has none")
    last = maps[-1]
    later = events[last + 1:]
    if any(out is not None and out.dim() == 3 for _, out in later):
        raise NotExplainable("Grad-CAM needs a convolutional feature map, and this network ends in tokens (a vision "
                             "transformer); use a CNN backbone or a trained CNN")
    if _convolves_at_1x1(later):
        raise NotExplainable("the last feature map is 1×1 at this input size, so Grad-CAM has nothing to localise; "
                             "use larger images")
    feature_map = events[last][1]
    holders = [m for m, out in events if out is feature_map and calls[m] == 1]
    names = {module: name or "network" for name, module in network.named_modules()}
    if not holders:
        raise NotExplainable(f"the last feature map ({names[events[last][0]]}) comes from a module used several "
                             "times per pass; Grad-CAM cannot tell its calls apart")
    named = _maker(events, calls, feature_map) or holders[0]
    # the outermost holder is hooked: nothing after it changes the map in place
    return Target(holders[-1], _layer_name(names[named], named), tuple(feature_map.shape[-2:]))


def _maker(events, calls, feature_map: torch.Tensor) -> nn.Module | None:
    """The module a reader would call the map's layer: the last leaf that wrote it (in-place ReLUs write their input),
    or, where that one runs several times per pass or a block's own sum made the map, the innermost module called once
    that returned it after that."""
    touching = [i for i, (m, out) in enumerate(events) if out is feature_map and not isinstance(m, PASS_THROUGH)]
    leaves = [i for i in touching if not list(events[i][0].children())]
    start = leaves[-1] if leaves else touching[0]
    return next((events[i][0] for i in touching if i >= start and calls[events[i][0]] == 1), None)


def _is_map(module: nn.Module, output: torch.Tensor | None) -> bool:
    return (output is not None and output.dim() == 4 and output.is_floating_point() and output.shape[-2:].numel() > 1
            and not isinstance(module, POOLING + PASS_THROUGH))


def _layer_name(name: str, module: nn.Module) -> str:
    """`bn2.act (ReLU6)`: the path inside the network (after the wrappers' `…model.`) and the module's class."""
    parts = name.split(".")
    inner = parts[len(parts) - parts[::-1].index("model"):] if "model" in parts else parts
    path = ".".join(inner) or name
    return f"{'layer ' if path.isdigit() else ''}{path} ({type(module).__name__})"  # a Sequential's index: "layer 12"


def _convolves_at_1x1(later: list[tuple[nn.Module, torch.Tensor | None]]) -> bool:
    """Does a convolution run on a 1×1 map before any pooling (the last stage itself is 1×1)? A convolution after
    the global pool (MobileNetV3's conv_head) is the head's, not a feature map."""
    for module, out in later:
        if isinstance(module, POOLING):
            return False
        if isinstance(module, nn.Conv2d) and out is not None and out.dim() == 4:
            return True
    return False


def _trace(network: nn.Module, sample: torch.Tensor):
    """[(module, tensor output or None)] in the order modules finish, and how often each module ran."""
    events: list[tuple[nn.Module, torch.Tensor | None]] = []
    calls: dict[nn.Module, int] = {}

    def hook(module, _inputs, output):
        calls[module] = calls.get(module, 0) + 1
        events.append((module, output if isinstance(output, torch.Tensor) else None))

    handles = [m.register_forward_hook(hook) for m in network.modules()]
    try:
        with torch.no_grad():
            network(sample)
    finally:
        for handle in handles:
            handle.remove()
    return events, calls


def overlay(image: torch.Tensor | np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """H×W×3 uint8: the heatmap (jet colours) blended over the image as the model saw it (uint8 3×H×W)."""
    if GradCAM is None:
        raise TransferlabError(f"Grad-CAM needs the grad-cam package: {INSTALL}")
    rgb = np.asarray(image, dtype=np.float32).transpose(1, 2, 0) / 255.0
    return show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=weight)
