"""A view as data: how a run's images were preprocessed, written into its model entry and rebuilt from it.

`{"timm": data_config}` is timm's eval transform (uint8 output, as the prefetcher takes it); `{"steps": [[op,
size], ...]}` resizes and centre-crops (`simple-cnn`, `bit`). Paradigms describe their view this way once and
build the transform they decode with from the description, so training and deployment cannot disagree.
"""

from __future__ import annotations

from typing import Any

from timm.data import create_transform
from torchvision.transforms import v2


def make_view(spec: dict[str, Any]):
    """(PIL → uint8 tensor, (3, H, W)) from a model entry's `view`: timm's eval transform for a data config,
    or resize / centre-crop steps (bit, simple-cnn)."""
    if "timm" in spec:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["timm"].items()}
        return create_transform(**config, is_training=False, use_prefetcher=True), tuple(config["input_size"])
    steps, size = [v2.PILToTensor()], None
    for op, size in spec["steps"]:
        steps.append(v2.Resize(size, antialias=True) if op == "resize" else v2.CenterCrop(size))
    return v2.Compose(steps), (3, size, size)
