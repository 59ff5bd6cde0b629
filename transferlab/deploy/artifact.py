"""A run's model on disk, and loading it back: `OUT/models/<run id>.safetensors` + the run record.

The runner saves every fitted (non-reference) run as the torch modules of `models/modules.py`
(`model_file.save_run_model`): their tensors in a safetensors file, their shapes (a JSON description) and
the file's sha256 in the record's `model` entry. A feature paradigm's file holds what it learned on top
of the frozen backbone (the head; kNN: its reference features); the backbone's own weights come back
through `load_backbone` and must hash to what the record says. A training paradigm's file holds the whole
trained network.

Loading never unpickles: JSON, safetensors, and `load_backbone` (safetensors / `weights_only` torch files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from ..config import BackboneSpec, DataSpec, RunSpec
from ..core.errors import TransferlabError
from ..data import Split, make_splits, open_pools
from ..data.decode import decode_images
from ..data.views import make_view
from ..model_file import load_pipeline, trained_backbone
from ..models import load_backbone
from ..models.backbones import Backbone
from ..models.modules import Pipeline, TimmModel
from ..record import is_multi_label

DEFAULT_RUNS = Path("runs")  # where run ids are looked up: every study folder under it


# ---------------------------------------------------------------- finding a run


def find_record(ref: str | Path, runs: str | Path = DEFAULT_RUNS) -> Path:
    """A run record from what a user types: the record file, `OUT/models/<id>.safetensors`, or a run id
    (looked up as `*/runs/<id>.json` under `runs`, default ./runs)."""
    path = Path(ref)
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_file() and path.suffix == ".safetensors" and path.parent.name == "models":
        return _must_exist(path.parent.parent / "runs" / f"{path.stem}.json", ref)
    if path.is_dir():
        records = sorted((path / "runs").glob("*.json")) if (path / "runs").is_dir() else []
        if len(records) == 1:
            return records[0]
        what = (f"a study folder with {len(records)} runs; name one: {', '.join(r.stem for r in records[:5])}"
                f"{' …' if len(records) > 5 else ''}") if records else "not a run (no runs/<run id>.json in it)"
        raise TransferlabError(f"{ref}: {what}")
    found = sorted(Path(runs).glob(f"**/runs/{path.name}.json")) if Path(runs).is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise TransferlabError(f"run id '{ref}' is in several folders ({', '.join(map(str, found[:3]))}); give the "
                               "record's path")
    raise TransferlabError(f"{ref}: not a run — give a run record (OUT/runs/<run id>.json), its model file "
                           f"(OUT/models/<run id>.safetensors), a folder holding one run, or a run id under {runs}/")


def _must_exist(path: Path, ref) -> Path:
    if not path.is_file():
        raise TransferlabError(f"{ref}: its run record {path} is missing; the model file alone cannot be used")
    return path


def read_run(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TransferlabError(f"{path}: not a readable run record ({type(exc).__name__})") from None
    if not isinstance(record, dict) or "run_id" not in record or "spec" not in record:
        raise TransferlabError(f"{path}: not a transferlab run record (no run_id / spec)")
    return record


# ---------------------------------------------------------------- loading


@dataclass
class RunModel:
    """A run's model, ready to predict: uint8 N×3×H×W images → class scores, with what the record says."""

    record: dict[str, Any]
    module: nn.Module
    view: Any  # PIL image → uint8 C×H×W tensor, the run's preprocessing
    input_size: tuple[int, int, int]
    path: Path  # the run record

    @property
    def classes(self) -> list[str]:
        return self.record["classes"]

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.record)

    @property
    def activation(self) -> str:
        return self.record["model"]["activation"]

    @property
    def thresholds(self) -> list[float] | None:
        thresholds = self.record.get("thresholds")
        return thresholds["values"] if thresholds else None

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return to_probabilities(self.scores(images), self.activation).double().numpy()


def to_probabilities(scores: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return scores.softmax(dim=1)
    if activation == "sigmoid":
        return scores.sigmoid()
    return scores


def load_run(ref: str | Path, runs: str | Path = DEFAULT_RUNS) -> RunModel:
    """The run's model, rebuilt from its record and checked: the model file's sha256 must be the record's,
    and a frozen backbone's weights must hash to what the run used."""
    path = find_record(ref, runs)
    record = read_run(path)
    entry = record["model"] if record.get("model") else {}
    pipeline = load_pipeline(record, path)
    if pipeline.frozen_features:  # one pipeline, image → scores: the backbone's features first
        pipeline = Pipeline([_frozen_features(record, path, pipeline.needs_feature_map), *pipeline.steps])
    view, input_size = make_view(entry["view"])
    return RunModel(record, pipeline.eval(), view, input_size, path)


def _frozen_features(record: dict[str, Any], path: Path, feature_map: bool) -> nn.Module:
    backbone = _frozen_backbone(record, path)
    expected = record["backbone"]["weights"]["sha256"]
    if backbone.weights.sha256 != expected:
        raise TransferlabError(f"{path}: backbone {backbone.name} weights ({backbone.weights.source} "
                               f"{backbone.weights.detail}) hash to {backbone.weights.sha256[:12]}…, not the run's "
                               f"{expected[:12]}…; the weights changed since the run: rerun it with --force")
    config = backbone.data_config
    # timm's num_classes=0: pooled features; feature_map: the last map, for a head that pools it itself
    features = TimmModel(backbone.name, 0, config["mean"], config["std"], feature_map=feature_map)
    features.net.load_state_dict(backbone.feature_model(feature_map).state_dict())
    return features


def _frozen_backbone(record: dict[str, Any], path: Path) -> Backbone:
    """The backbone the run's features came from: its weight source's, or (features_from) the network that
    another run of the study trained, from that run's model file."""
    if record["backbone"]["weights"]["source"] == "trained":
        source = RunSpec.model_validate(record["spec"]).features_source
        source_path = path.parent / f"{source.run_id}.json"
        return trained_backbone(read_run(source_path), source_path)
    spec = BackboneSpec.model_validate(record["spec"]["backbone"])
    return load_backbone(spec, seed=record["seed"] if spec.init_seed is None else spec.init_seed)


# ---------------------------------------------------------------- the run's own images


def run_split(record: dict[str, Any], name: str):
    """The run's `name` split (train / val / test) as a `Split`: the record's image indices in the source the
    run's data spec opens to. Parity checks, pruning and quantization score on these real images."""
    spec = DataSpec.model_validate(record["spec"]["data"])
    try:
        splits = make_splits(open_pools(spec), spec, record["seed"])
    except TransferlabError as exc:
        raise TransferlabError(f"run {record['run_id']}: its {name} images are needed and its data cannot be "
                               f"opened here ({exc})") from None
    indices = np.asarray(record["split_indices"][name]["indices"], dtype=np.int64)
    return Split(splits[name].source, indices)


def stratified_sample(indices: np.ndarray, labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """`limit` of `indices` drawn with every class in proportion (scikit-learn's stratified split; seeded
    random where a class has too few images for that, and for multi-label rows), in their original order."""
    if not limit or limit >= len(indices):
        return np.asarray(indices)
    positions = np.arange(len(indices))
    try:
        if labels.ndim != 1:
            raise ValueError("multi-label")
        chosen, _ = train_test_split(positions, train_size=limit, stratify=labels, random_state=seed)
    except ValueError:
        chosen = np.random.default_rng(seed).choice(positions, size=limit, replace=False)
    return np.asarray(indices)[np.sort(chosen)]


def decoded_split(model: RunModel, name: str, limit: int | None = None, batch_size: int = 64):
    """(uint8 images at the model's view, labels) of the run's `name` split: all of it, or a seeded sample of
    `limit` images stratified over classes (a split is ordered by class, so its first N would hold a few)."""
    split = run_split(model.record, name)
    indices = stratified_sample(split.indices, np.asarray(split.source.labels)[split.indices], limit)
    images, kept, _ = decode_images(split.source, indices, model.view, batch_size=batch_size, skip_bad=True,
                                    label=f"{name:>5} · decode")
    labels = np.asarray(split.source.labels)[kept]
    return images, labels
