"""A run's model file `OUT/models/<run id>.safetensors`: the fitted paradigm as the torch modules of
`models/modules.py`, written by the runner; `deploy/artifact.py` loads it back. A feature paradigm's file holds
what it learned on top of the frozen backbone (its backbone comes back through `load_backbone`); a training
paradigm's file holds the whole network. Reference rows learn nothing a file could hold and save none.
`load_pipeline` reads a file back (checked against the record's sha256): deploy loads runs through it, and
the runner the network a `features_from` row takes its features from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .core.errors import TransferlabError
from .core.paths import atomic_write
from .models.backbones import Backbone, WeightsInfo, file_sha256
from .models.modules import TTA_VIEWS, Pipeline, Temperature, TimmModel, TtaMean, TtaViews, build, describe
from .paradigms.base import NotDeployable

MODEL_FORMAT = 1


def save_run_model(paradigm, backbone, run_id: str, out_dir: str | Path,
                   temperature_beta: float | None = None) -> dict[str, Any] | None:
    """Write the fitted paradigm's model file; the record's `model` entry (None for reference rows). With
    `temperature_beta` (calibrate: temperature) the scores pass a last `Temperature` step: calibrated logits."""
    try:
        steps, frozen_features = paradigm.deploy_steps()
    except NotDeployable:
        return None
    scores = paradigm.scores
    tta = getattr(paradigm.params, "tta", "none")
    if tta != "none":  # the views around the whole network, as predict_proba scored (frozen_features: refused)
        steps = [TtaViews(tta), *steps, TtaMean(TTA_VIEWS[tta])]
    if temperature_beta is not None:
        steps, scores = [*steps, Temperature(temperature_beta, scores)], "logits"
    pipeline = Pipeline(steps, frozen_features=frozen_features)
    relative = Path("models") / f"{run_id}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in pipeline.state_dict().items()}
    metadata = {"format": str(MODEL_FORMAT)}
    atomic_write(Path(out_dir) / relative, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return {"format": MODEL_FORMAT, "file": str(relative), "sha256": file_sha256(Path(out_dir) / relative),
            "pipeline": describe(pipeline), "view": paradigm.deploy_view(backbone), "scores": scores,
            "activation": "none" if scores == "probabilities" else ("sigmoid" if paradigm.multi_label else "softmax")}


def load_pipeline(record: dict[str, Any], record_file: Path) -> Pipeline:
    """The run's saved modules with their tensors (the backbone of a feature paradigm not included); the file
    must hash to what the record says."""
    entry = record.get("model")
    if not entry:
        reason = ("a reference row has no model" if record.get("reference") else
                  "it was recorded before models were saved; rerun it with --force")
        raise TransferlabError(f"{record_file}: run {record['run_id']} has no saved model ({reason})")
    file = Path(record_file).parent.parent / entry["file"]
    if not file.is_file():
        raise TransferlabError(f"{record_file}: its model file {file} is missing; rerun the run with --force")
    if file_sha256(file) != entry["sha256"]:
        raise TransferlabError(f"{file}: sha256 differs from its run record — the file was changed or damaged; "
                               "rerun the run with --force")
    pipeline = build(entry["pipeline"])
    pipeline.load_state_dict(load_file(str(file)))
    return pipeline.eval()


def trained_backbone(record: dict[str, Any], record_file: Path) -> Backbone:
    """The network a finetune / scratch run trained, as a frozen backbone (a `features_from` row's): its weights
    from the run's model file, which its hash names (so it is part of every feature cache key), and the
    preprocessing the run trained with."""
    pipeline = load_pipeline(record, record_file)
    network = next(step for step in pipeline.steps if isinstance(step, TimmModel))  # tta's views around it: not used
    net = network.net.model  # TimmModel → Normalized → the network
    info = record["backbone"]
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in info["data_config"].items()}
    weights = WeightsInfo("trained", f"run {record['run_id']}", record["model"]["sha256"])
    return Backbone(info["name"], net.eval(), weights, data_config)
