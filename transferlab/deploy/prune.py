"""`transferlab prune RUN --sparsity 0.8[,0.9…] [--scope head|backbone|all] [--structured] [--recover-epochs N]`:
magnitude pruning of a run's model (torch.nn.utils.prune), scored before and after on the run's real
validation and test images, with the non-zero parameters and the gzip-compressed size of its tensors.

Unstructured pruning is global: one L1 threshold over every weight in scope (`prune.global_unstructured`).
Structured pruning is per layer (torch has no global structured method): whole output rows / conv output
channels by L2 norm (`prune.ln_structured`, dim 0), except the output layer, where dim 0 would be a class
and zeroing it would make that class unpredictable: it loses whole input columns instead — those of the
units the layer before lost when there is one in scope (an MLP's hidden units go as a whole), else its own
weakest (features). A zeroed conv channel still passes its BatchNorm's shift: the channel is silent, not gone.
The zeros stay zeros in a dense tensor: the file on disk keeps its size, only its compressed size falls.

A recovery fine-tune (`recover_epochs`) trains on the run's train split while the masks are still
attached (pruned weights get no update), then the masks are made permanent (`prune.remove`). Every
sparsity starts again from the unpruned model. Choose a sparsity on the validation figures: test is
reported beside them for reference, and choosing on it would overstate what the pruned model does.

Writes `OUT/deploy/<run id>/prune.json` (the summary the report draws) and one safetensors bundle per
sparsity, `pruned-0.80.safetensors`, in `export.write_safetensors`' format (`export.load_bundle` reads it).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.utils import prune

from ..config import PruneSpec, validated
from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..evaluate import PRIMARY, score
from ..models.modules import Affine, KnnVote
from ..train.hooks import listening_to_epochs
from ..train.loop import Images, fit
from ..train.params import TrainParams
from .artifact import RunModel, decoded_split, to_probabilities
from .export import default_export_dir, write_safetensors

SCOPES = get_args(PruneSpec.model_fields["scope"].annotation)  # head, backbone, all
SUMMARY_FORMAT = 1
STRUCTURED_NORM = 2  # L2 norm of a row / channel decides which go
BATCH = 32
LR = {"head": 3e-3, "backbone": 1e-4, "all": 1e-4}  # a pretrained backbone takes smaller steps than a head
CHOOSE_ON = ("choose a sparsity on validation; test is shown for reference only (choosing on it would "
             "overstate the pruned model)")

Target = tuple[nn.Module, str]  # (layer, "weight")


def prune_run(model: RunModel, sparsities: list[float], *, scope: str = "head", structured: bool = False,
              recover_epochs: int = 0, out: str | Path | None = None, lr: float | None = None) -> dict[str, Any]:
    """Prune `model` at each sparsity (each from the unpruned model), optionally fine-tune to recover, score,
    measure and save; returns the summary also written to `out/prune.json` (default OUT/deploy/<run id>/)."""
    sparsities = check_inputs(model, sparsities, scope, structured, recover_epochs)
    started = time.perf_counter()
    folder = Path(out) if out else default_export_dir(model)
    stem_length = frozen_stem_length(model, scope)
    data = Data(model, stem_length, train=recover_epochs > 0)
    dense_part = nn.Sequential(*model.module.steps[stem_length:])
    dense = {**data.score(dense_part), **measure(model.module, targets(model, model.module, scope))}
    results = [prune_one(model, s, scope, structured, recover_epochs, lr or LR[scope], data, folder)
               for s in sparsities]
    summary = {
        "format": SUMMARY_FORMAT, "run_id": model.record["run_id"], "study": model.record.get("study"),
        "labels": model.record.get("labels"), "task": model.record.get("task"), "metric": data.metric,
        "scope": scope, "structured": structured, "method": method_text(structured),
        "recover_epochs": recover_epochs, "lr": (lr or LR[scope]) if recover_epochs else None,
        "choose_on": "val", "note": CHOOSE_ON, "images": data.counts(),
        "layers": [name for name, _ in named_targets(model, model.module, scope)],
        "counted": "nn.Parameters (buffers — kNN references, random Fourier projections, BatchNorm statistics — "
                   "are not counted; the compressed sizes cover every tensor)",
        "dense": dense, "results": results, "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write(folder / "prune.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return {**summary, "path": str(folder / "prune.json")}


def check_inputs(model: RunModel, sparsities, scope: str, structured: bool, recover_epochs: int) -> list[float]:
    """The sparsities sorted, without repeats; one-line errors for what cannot be pruned as asked (the values
    themselves are checked by `config.PruneSpec`, as a study's `prune:` block is)."""
    run = model.record["run_id"]
    spec = validated(PruneSpec, {"sparsity": list(sparsities), "scope": scope, "structured": structured,
                                 "recover_epochs": recover_epochs}, "prune")
    values, recover_epochs = spec.sparsity, spec.recover_epochs
    if not targets(model, model.module, scope):
        hint = ("a kNN model's head is its reference features (data, not weights); use --scope backbone"
                if is_knn(model) else "try --scope backbone or --scope all")
        raise TransferlabError(f"run {run}: nothing to prune in scope '{scope}' ({hint})")
    if recover_epochs and is_knn(model):
        raise TransferlabError(f"run {run}: a kNN model has no trainable weights to recover with; drop "
                               "--recover-epochs (or re-fit kNN on the pruned backbone's features)")
    return sorted(set(values))


def method_text(structured: bool) -> str:
    if structured:
        return (f"L{STRUCTURED_NORM}-structured per layer: whole output rows / conv channels; the output layer loses "
                "the input columns of the units the layer before lost (else its own weakest columns)")
    return "global L1 unstructured over every weight in scope"


# ---------------------------------------------------------------- what is in scope


def is_knn(model: RunModel) -> bool:
    return any(isinstance(m, KnnVote) for m in model.module.modules())


def frozen_features(model: RunModel) -> bool:
    """The pipeline's first step is the frozen backbone (feature paradigms); else it is one trained network."""
    return bool(model.record["model"]["pipeline"].get("frozen_features"))


def frozen_stem_length(model: RunModel, scope: str) -> int:
    """Steps run once and reused: the frozen backbone when only the head is pruned (and trained)."""
    return 1 if scope == "head" and frozen_features(model) else 0


def named_targets(model: RunModel, module: nn.Module, scope: str) -> list[tuple[str, Target]]:
    """(name, (layer, "weight")) of every weight in scope, in module order, in `module` (the run's or a copy)."""
    head_layers = set(map(id, head_modules(model, module)))
    out = []
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.Conv2d | nn.Linear | Affine):
            continue
        in_head = id(layer) in head_layers
        if scope == "all" or (scope == "head") == in_head:
            out.append((f"{name}.weight", (layer, "weight")))
    return out


def targets(model: RunModel, module: nn.Module, scope: str) -> list[Target]:
    return [target for _, target in named_targets(model, module, scope)]


def head_modules(model: RunModel, module: nn.Module) -> list[nn.Module]:
    """The learned layers after the backbone: every Affine / nn.Linear of the head steps (feature paradigms),
    or the classifier of a whole trained network (timm's `get_classifier()`, else its last nn.Linear)."""
    if frozen_features(model):
        return [m for step in module.steps[1:] for m in step.modules() if isinstance(m, nn.Linear | Affine)]
    return [classifier(module)]


def classifier(module: nn.Module) -> nn.Module:
    for inner in module.modules():
        get = getattr(inner, "get_classifier", None)
        if callable(get) and isinstance(get(), nn.Linear):
            return get()
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def output_layer(model: RunModel, module: nn.Module) -> nn.Module | None:
    heads = head_modules(model, module)
    return heads[-1] if heads else None


# ---------------------------------------------------------------- one sparsity


def prune_one(model: RunModel, sparsity: float, scope: str, structured: bool, epochs: int, lr: float,
              data: Data, folder: Path) -> dict[str, Any]:
    """A copy of the model pruned at `sparsity` (recovered for `epochs`), scored, measured and saved."""
    module = copy.deepcopy(model.module)
    in_scope = targets(model, module, scope)
    apply_pruning(in_scope, sparsity, structured, output_layer(model, module))
    part = nn.Sequential(*module.steps[data.stem_length:])  # shares the copy's layers
    result: dict[str, Any] = {"sparsity": sparsity}
    if epochs:
        result["pruned"] = data.score(part)  # before recovery: what pruning alone costs
        result["history"] = recover(model, part, in_scope, scope, epochs, lr, data, sparsity)
    for layer, name in in_scope:
        prune.remove(layer, name)  # the mask made permanent: plain weights with zeros, a plain state dict
    result.update(data.score(part))
    result.update(measure(module, in_scope))
    result["reached"] = 1 - result["nonzero_scope"] / result["params_scope"]
    file = folder / f"pruned-{sparsity_tag(sparsity)}.safetensors"
    write_safetensors(dataclasses.replace(model, module=module.eval()), file)
    result["file"] = file.name
    return result


def sparsity_tag(sparsity: float) -> str:
    """0.8 → "0.80"; finer values keep their digits (0.995 must not become "1.00")."""
    return f"{sparsity:.2f}" if round(sparsity, 2) == sparsity else f"{sparsity:g}"


def apply_pruning(in_scope: list[Target], sparsity: float, structured: bool, output: nn.Module | None) -> None:
    """Masks on the weights in scope (torch's forward pre-hooks: weight = weight_orig · weight_mask)."""
    if not structured:
        prune.global_unstructured(in_scope, pruning_method=prune.L1Unstructured, amount=sparsity)
        return
    kept_rows = None  # the previous layer's surviving output rows / channels
    for layer, name in in_scope:
        weight = getattr(layer, name)
        if layer is not output:
            prune.ln_structured(layer, name, amount=sparsity, n=STRUCTURED_NORM, dim=0)
            kept_rows = getattr(layer, f"{name}_mask").flatten(1).any(1)
        elif kept_rows is not None and len(kept_rows) == weight.shape[1]:
            # The units the layer before lost go here too: columns chosen on their own would leave almost no
            # unit alive in both (5 % × 5 % at sparsity 0.95).
            prune.custom_from_mask(layer, name, kept_rows.to(weight.dtype).expand_as(weight))
        else:  # the output layer's rows are the classes (zeroing one makes it unpredictable): drop input columns
            prune.ln_structured(layer, name, amount=sparsity, n=STRUCTURED_NORM, dim=1)


def measure(module: nn.Module, in_scope: list[Target]) -> dict[str, Any]:
    """Non-zero weights (in scope, whole model) and bytes of the safetensors state dict, raw and gzipped."""
    weights = [getattr(layer, name).detach() for layer, name in in_scope]
    params = [p.detach() for p in module.parameters()]
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    scoped = {f"{i}": w.contiguous() for i, w in enumerate(weights)}
    return {"nonzero_scope": count_nonzero(weights), "params_scope": sum(w.numel() for w in weights),
            "nonzero_total": count_nonzero(params), "params_total": sum(p.numel() for p in params),
            "size": {"raw": len(raw := safetensors_bytes(state)), "gzip": gzipped(raw),
                     "scope_gzip": gzipped(safetensors_bytes(scoped))}}


def count_nonzero(tensors: list[torch.Tensor]) -> int:
    return int(sum(int(torch.count_nonzero(t)) for t in tensors))


def gzipped(raw: bytes) -> int:
    return len(gzip.compress(raw, compresslevel=6, mtime=0))  # mtime 0: the same bytes give the same size


# ---------------------------------------------------------------- the run's images, scored


class Data:
    """The run's val / test (and, to recover, train) images — through the frozen stem once when there is one."""

    def __init__(self, model: RunModel, stem_length: int, train: bool):
        self.model, self.stem_length = model, stem_length

        self.metric = PRIMARY[model.multi_label]
        stem = nn.Sequential(*model.module.steps[:stem_length]).eval()
        self.splits = {name: self._inputs(stem, name) for name in ("train", "val", "test")[0 if train else 1:]}

    def _inputs(self, stem: nn.Module, name: str) -> tuple[torch.Tensor, np.ndarray]:
        images, labels = decoded_split(self.model, name)
        with torch.no_grad():
            inputs = torch.cat([stem(chunk) for chunk in images.split(64)]) if len(images) else images
        return inputs, labels

    def images(self, name: str) -> Images:
        """A split's inputs and labels as the training loop takes them (a float 0/1 matrix for multi-label)."""
        inputs, labels = self.splits[name]
        return Images(inputs, torch.as_tensor(labels, dtype=torch.float32 if self.model.multi_label else torch.long))

    def counts(self) -> dict[str, int]:
        return {name: int(len(labels)) for name, (_, labels) in self.splits.items()}

    def score(self, part: nn.Module) -> dict[str, float | None]:
        return {"val": self.split_score(part, "val"), "test": self.split_score(part, "test")}

    def split_score(self, part: nn.Module, name: str) -> float | None:
        inputs, labels = self.splits[name]
        if not len(labels):
            return None
        part.eval()
        with torch.no_grad():
            scores = torch.cat([part(chunk) for chunk in inputs.split(64)])
        proba = to_probabilities(scores, self.model.activation).double().numpy()
        metrics = score(labels, proba, self.model.classes, multi_label=self.model.multi_label,
                        thresholds=self.model.thresholds, detailed=False)
        return float(metrics[self.metric])


# ---------------------------------------------------------------- recovery


def recover(model: RunModel, part: nn.Module, in_scope: list[Target], scope: str, epochs: int, lr: float,
            data: Data, sparsity: float) -> list[float | None]:
    """Fine-tune with the masks attached (masked weights get zero gradient) through the one training loop;
    the run's validation figure (its primary metric, at its thresholds) after every epoch.

    Scope head trains the head only (the frozen backbone's features were computed once); backbone / all
    train everything after the stem, so the head follows the pruned features. BatchNorm keeps its statistics:
    small recovery batches would overwrite the learned ones."""
    trainable = trainable_parameters(part, in_scope, scope)
    params = TrainParams(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=lr, weight_decay=0.0,
                         schedule="constant", augment="none", bn="frozen", restore_best=False)
    train, val = data.images("train"), data.images("val")
    history: list[float | None] = []
    with listening_to_epochs(lambda _: history.append(data.split_score(part, "val"))):
        fit(part, [{"params": trainable, "lr": lr, "weight_decay": 0.0}], train, val if len(val) else train,
            params, n_classes=len(model.classes), seed=int(model.record.get("seed") or 0),
            device=torch.device("cpu"), label=f"prune {sparsity_tag(sparsity)} · recover")
    part.eval()
    return history


def trainable_parameters(part: nn.Module, in_scope: list[Target], scope: str) -> list[nn.Parameter]:
    """Head scope on a whole network: the classifier's parameters only (the backbone stays frozen)."""
    if scope == "head":
        layers = {id(layer) for layer, _ in in_scope}
        wanted = [p for m in part.modules() if id(m) in layers for p in m.parameters()]
    else:
        wanted = list(part.parameters())
    chosen = set(map(id, wanted))
    for p in part.parameters():
        p.requires_grad_(id(p) in chosen)
    return wanted
