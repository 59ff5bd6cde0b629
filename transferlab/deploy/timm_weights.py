"""`transferlab export RUN --format timm`: a trained network as the folder timm itself writes for the Hugging Face
Hub (`model.safetensors` + `config.json`, timm's `save_for_hf`), so a timm user loads it with plain timm:

    timm.create_model("local-dir:OUT/deploy/<run id>/timm", pretrained=True)     # architecture, classes, weights
    timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=10,
                      pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=10))

timm's network takes normalised float images (its `pretrained_cfg` carries the run's mean, std and input size,
so `timm.data.resolve_data_config` gives the run's preprocessing) and returns logits.

Which runs: a timm network with its classifier trained (finetune, scratch, bit) or a frozen timm backbone under a
trained `head`, when the classifier is one linear layer on the average-pooled features — the shape of timm's own
classifier. A head with hidden layers or a pool of its own has no place in timm's architecture, and a torchvision
network or a features-then-scikit-learn pipeline is not a timm model: those are refused in one line.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from ..core.errors import TransferlabError
from ..models.backbones import Normalized
from ..models.heads import ClassifierHead, classifier_path
from ..models.modules import SpecHead, Temperature, TimmModel, TtaViews
from .artifact import RunModel

FOLDER = "timm"
WEIGHTS = "model.safetensors"  # timm's HF_SAFE_WEIGHTS_NAME: what `local-dir:` and `hf-hub:` look for


def timm_network(model: RunModel) -> nn.Module:
    """The run's network as a plain `timm.create_model(name, num_classes=n)` with the trained weights in it."""
    steps = list(model.module.steps)
    if any(isinstance(step, TtaViews | Temperature) for step in steps):
        raise _refusal(model, "its scores average test-time views (tta) or pass a calibrating temperature, which a "
                       "plain timm model does not do")
    first = steps[0] if isinstance(steps[0], TimmModel) else None
    if first is None or not timm.is_model(first.config["name"]) or first.config.get("feature_map"):
        raise _refusal(model, "its network is not a timm model")
    body = first.net.model
    if len(steps) == 1 and first.config["num_classes"] > 0:  # finetune, scratch, bit: the classifier inside
        heads = [m for m in body.modules() if isinstance(m, ClassifierHead)]
        head = heads[0] if heads else None
    elif len(steps) == 2 and isinstance(steps[1], SpecHead):  # head: frozen backbone, then the trained head
        head = steps[1].net
    else:
        raise _refusal(model, "it is not a network with a trained classifier (a features-then-probe pipeline)")
    net = timm.create_model(first.config["name"], pretrained=False, num_classes=len(model.classes),
                            drop_rate=_dropout(model, head))
    net.load_state_dict(_timm_state(model, body, head, net))
    return net.eval()


def _dropout(model: RunModel, head: ClassifierHead | None) -> float:
    """The head's dropout, which timm applies before its classifier too (`drop_rate`): for further training."""
    if head is None:
        return 0.0
    if head.spec.hidden or head.spec.pool != "avg":
        raise _refusal(model, f"its head ({_describe(head)}) has no place in timm's architecture, whose classifier "
                       "is one linear layer on the average-pooled features")
    return head.spec.rates()[0]


def _timm_state(model: RunModel, body: nn.Module, head: ClassifierHead | None, net: nn.Module) -> dict[str, Any]:
    """`body`'s tensors under timm's names, the head's linear layer in timm's classifier place (its shape: a 1×1
    convolution in some networks, ResNetV2's)."""
    prefix = classifier_path(net) + "."
    state = {k: v for k, v in body.state_dict().items() if head is None or not k.startswith(prefix)}
    if head is not None:
        linear = head.dense[-1]
        wanted = net.state_dict()
        state[prefix + "weight"] = linear.weight.detach().reshape(wanted[prefix + "weight"].shape)
        state[prefix + "bias"] = linear.bias.detach().reshape(wanted[prefix + "bias"].shape)
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise _refusal(model, f"timm's {type(net).__name__} wants tensors the run does not have "
                       f"({', '.join(sorted(missing)[:3])})")
    return state


def write_timm(model: RunModel, path: Path) -> Path:
    """timm's own Hub layout through `save_for_hf`: `path` (the weights) and `config.json` beside it, with the run's
    class names and preprocessing in the pretrained config."""
    net = timm_network(model)
    mean, std = _normalization(model)
    data_config = {"input_size": list(model.input_size), "mean": mean, "std": std}
    model_config = {"label_names": list(model.classes), "num_classes": len(model.classes)}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        save_for_hf(net, tmp, model_config=model_config, model_args={"drop_rate": net.drop_rate},
                    safe_serialization=True, data_config=data_config)
        shutil.move(Path(tmp) / WEIGHTS, path)
        shutil.move(Path(tmp) / "config.json", path.parent / "config.json")
    return path


def _normalization(model: RunModel) -> tuple[list[float], list[float]]:
    """The run's mean and std, in timm's 0-1 scale (`Normalized` keeps them in 0-255)."""
    normalized = next(m for m in model.module.modules() if isinstance(m, Normalized))
    return ([float(v) / 255 for v in normalized.mean.flatten()], [float(v) / 255 for v in normalized.std.flatten()])


def load_timm(path: Path, model: RunModel):
    """The file loaded the way a timm user would (`pretrained_cfg_overlay`), behind the run's normalisation."""
    config = json.loads((path.parent / "config.json").read_text())
    n = config["num_classes"]
    net = timm.create_model(config["architecture"], pretrained=True, num_classes=n,
                            pretrained_cfg_overlay={"file": str(path), "num_classes": n}).eval()
    mean, std = _normalization(model)
    wrapped = Normalized(net, mean, std).eval()

    def run(images: torch.Tensor):
        with torch.no_grad():
            return wrapped(images).numpy()

    return run


def _describe(head: ClassifierHead) -> str:
    return f"pool {head.spec.pool}" + (f", hidden {head.spec.hidden}" if head.spec.hidden else "")


def _refusal(model: RunModel, why: str) -> TransferlabError:
    return TransferlabError(f"--format timm: run {model.record['run_id']} ({model.record['labels']['paradigm']}) "
                            f"cannot load into timm.create_model: {why}; export onnx, torchscript or safetensors")
