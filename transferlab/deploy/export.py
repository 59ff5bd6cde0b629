"""`transferlab export RUN --format onnx|torchscript|safetensors|timm`: the run's model as one file another runtime
loads, with a model card (`model.json`) and a parity check on the run's real test images.

The exported model takes uint8 N×3×H×W RGB images at the run's input size (any batch size) and returns
class scores (logits; kNN: vote shares); the card says which activation gives probabilities and how
images were resized and cropped. Parity: the exported file, loaded back by its own runtime (ONNX Runtime,
torch.jit, safetensors + transferlab), must give the PyTorch model's scores within 1e-4 and the same
top-1 class for every checked image — or the export fails and its files are removed. `timm` is a trained
network in timm's own Hub layout (`timm_weights.py`): it takes timm's normalised float input instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..models.backbones import file_sha256
from ..models.modules import Temperature, build, describe
from ..record import library_versions
from .artifact import RunModel, decoded_split
from .card import write_readme
from .timm_weights import load_timm, write_timm

FORMATS = ("onnx", "torchscript", "safetensors", "timm")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors",
              "timm": "timm/model.safetensors"}
PARITY_MAX_DIFF = 1e-4  # max |Δscore| between the exported file and the PyTorch model
PARITY_IMAGES = 512  # test images the check runs on: a stratified sample, or all of them when there are fewer


def default_export_dir(model: RunModel) -> Path:
    """OUT/deploy/<run id>/, beside the run's records."""
    return model.path.parent.parent / "deploy" / model.record["run_id"]


def export_model(model: RunModel, fmt: str, out: str | Path | None = None, *,
                 parity_images: int = PARITY_IMAGES) -> dict[str, Any]:
    """Write the export and its card; returns the card (+ `path`, `card_path`). Raises (and removes the file)
    when parity fails."""
    if fmt not in FORMATS:
        raise TransferlabError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    folder = Path(out) if out else default_export_dir(model)
    path = folder / FILE_NAMES[fmt]
    images, _ = decoded_split(model, "test", limit=parity_images)
    # The export is checked under a name of its own and only then takes the place of the last good one: a
    # failed re-export leaves the previous file and its card as they were.
    candidate = path.with_name(f".candidate.{path.name}")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    try:
        WRITERS[fmt](model, candidate)
        parity = check_parity(model, LOADERS[fmt](candidate, model), images)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    if parity["passed"]:
        os.replace(candidate, path)
    else:
        candidate.unlink(missing_ok=True)
        raise TransferlabError(f"{fmt} export of {model.record['run_id']} failed its parity check: max |Δscore| "
                               f"{parity['max_abs_diff']:.2e} (limit {parity['limit']:g}), top-1 agreement "
                               f"{parity['top1_agreement']:.1%} on {parity['images']} test images; nothing exported")
    card = model_card(model, fmt, path, parity)
    atomic_write(folder / "model.json", lambda tmp: tmp.write_text(json.dumps(card, indent=1)))
    readme = write_readme(model, card, folder)  # the same facts, for a person (card.py)
    return {**card, "path": str(path), "card_path": str(folder / "model.json"), "readme_path": str(readme)}


def check_parity(model: RunModel, run_exported, images: torch.Tensor) -> dict[str, Any]:
    """The exported model's scores vs the PyTorch model's, on real images, in batches of up to 32."""
    expected = torch.cat([model.scores(chunk) for chunk in images.split(32)]).numpy()
    got = np.concatenate([np.asarray(run_exported(chunk)) for chunk in images.split(32)])
    diff = float(np.abs(got - expected).max()) if len(images) else 0.0
    agreement = float((got.argmax(1) == expected.argmax(1)).mean()) if len(images) else 1.0
    limit = parity_limit(model.module)
    return {"images": int(len(images)), "split": "test", "max_abs_diff": diff, "top1_agreement": agreement,
            "limit": limit, "passed": bool(diff <= limit and agreement == 1.0)}


def parity_limit(module: nn.Module) -> float:
    """PARITY_MAX_DIFF, times a calibrating temperature's β above 1: β multiplies the logits, and with them the
    runtimes' float rounding (a β of 45 turns the backbone's 2e-5 into 1e-3 on scores near -500, measured)."""
    betas = [m.config["beta"] for m in module.modules() if isinstance(m, Temperature)]
    return PARITY_MAX_DIFF * max([1.0, *betas])


# ---------------------------------------------------------------- writers and loaders, one per format


def example_batch(model: RunModel, n: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *model.input_size), dtype=torch.uint8, generator=generator)


def write_onnx(model: RunModel, path: Path) -> Path:
    """torch.onnx's dynamo exporter at the installed onnx's opset, batch axis dynamic."""
    opset = onnx.defs.onnx_opset_version()

    def export(tmp: Path) -> None:
        # The opset converter logs a warning per export about its fallback (which works: parity checks it).
        with warnings.catch_warnings(), quiet(("onnxscript", "torch.onnx", "onnx_ir")):
            warnings.simplefilter("ignore")  # the exporter's progress and notes are not for the user
            torch.onnx.export(model.module.eval(), (example_batch(model),), str(tmp),
                              input_names=["images"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, optimize=True,
                              opset_version=opset, external_data=False, verbose=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, export)


@contextlib.contextmanager
def quiet(loggers: tuple[str, ...]):
    """Tools' progress prints and advice logs silenced (`loggers` at ERROR; "" is the root logger): export and
    quantize report what matters in their summaries."""
    found = [logging.getLogger(name or None) for name in loggers]
    levels = [logger.level for logger in found]
    for logger in found:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(found, levels, strict=True):
            logger.setLevel(level)


def load_onnx(path: Path, model: RunModel | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.numpy()})[0]


def write_torchscript(model: RunModel, path: Path) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about constant shapes: the batch axis stays free
        traced = torch.jit.trace(model.module.eval(), example_batch(model), check_trace=False)
    return atomic_write(path, lambda tmp: traced.save(str(tmp)))


def load_torchscript(path: Path, model: RunModel | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": still the way to load one
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images):
        with torch.no_grad():
            return loaded(images).numpy()

    return run


def write_safetensors(model: RunModel, path: Path) -> Path:
    """The whole model's tensors (backbone included); the card's `pipeline` rebuilds it (`load_bundle`)."""
    state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}
    meta = {"pipeline": json.dumps(describe(model.module))}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_bundle(path: str | Path) -> nn.Module:
    """A safetensors bundle back as the torch model (its description is in the file's metadata): no pickle."""
    with safe_open(str(path), framework="pt") as f:
        description = json.loads((f.metadata() or {})["pipeline"])
    module = build(description)
    module.load_state_dict(load_file(str(path)))
    return module.eval()


def load_safetensors(path: Path, model: RunModel | None = None):
    module = load_bundle(path)

    def run(images):
        with torch.no_grad():
            return module(images).numpy()

    return run


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "safetensors": write_safetensors, "timm": write_timm}
LOADERS = {"onnx": load_onnx, "torchscript": load_torchscript, "safetensors": load_safetensors, "timm": load_timm}


# ---------------------------------------------------------------- the model card


def model_card(model: RunModel, fmt: str, path: Path, parity: dict[str, Any]) -> dict[str, Any]:
    """What a person (or another program) needs to use the file: classes, input, output, how good, from what."""
    record, entry = model.record, model.record["model"]
    metrics = record.get("metrics", {})
    headline = {k: metrics.get(k) for k in ("accuracy", "top5_accuracy", "macro_f1", "micro_f1", "log_loss",
                                            "mean_average_precision") if metrics.get(k) is not None}
    return {
        "run_id": record["run_id"],
        "study": record.get("study"),
        "task": record.get("task"),
        "classes": model.classes,
        "format": fmt,
        "file": FILE_NAMES[fmt],
        "sha256": file_sha256(path),
        "input": {"name": "images", "dtype": "float32" if fmt == "timm" else "uint8",
                  "shape": ["batch", *model.input_size],
                  "layout": "NCHW, RGB, normalised by the mean and std in config.json (timm's pretrained_cfg)"
                  if fmt == "timm" else "NCHW, RGB, 0-255 (scaling and normalisation are inside the model)",
                  "preprocessing": entry["view"], "preprocessing_text": repr(model.view)},
        "output": {"name": "scores", "scores": entry["scores"], "activation": entry["activation"]},
        "thresholds": model.thresholds,
        "backbone": record["labels"]["backbone"],
        "paradigm": record["labels"]["paradigm"],
        "metrics": {"test": headline, "test_images": record.get("splits", {}).get("test")},
        "data": {"dataset": record["labels"]["dataset"], "fingerprints": record.get("data_fingerprints")},
        "parity": parity,
        "pipeline": describe(model.module) if fmt == "safetensors" else None,
        "versions": library_versions(),
    }
