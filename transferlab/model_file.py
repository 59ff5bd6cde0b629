"""A run's model file `OUT/models/<run id>.safetensors`: the fitted paradigm as the torch modules of
`models/modules.py`, written by the runner; `deploy/artifact.py` loads it back. A feature paradigm's file holds
what it learned on top of the frozen backbone (its backbone comes back through `load_backbone`); a training
paradigm's file holds the whole network. Reference rows learn nothing a file could hold and save none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from .core.paths import atomic_write
from .models.backbones import file_sha256
from .models.modules import Pipeline, describe
from .paradigms.base import NotDeployable

MODEL_FORMAT = 1


def save_run_model(paradigm, backbone, run_id: str, out_dir: str | Path) -> dict[str, Any] | None:
    """Write the fitted paradigm's model file; the record's `model` entry (None for reference rows)."""
    try:
        steps, frozen_features = paradigm.deploy_steps()
    except NotDeployable:
        return None
    pipeline = Pipeline(steps, frozen_features=frozen_features)
    relative = Path("models") / f"{run_id}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in pipeline.state_dict().items()}
    metadata = {"format": str(MODEL_FORMAT)}
    atomic_write(Path(out_dir) / relative, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return {"format": MODEL_FORMAT, "file": str(relative), "sha256": file_sha256(Path(out_dir) / relative),
            "pipeline": describe(pipeline), "view": paradigm.deploy_view(backbone), "scores": paradigm.scores,
            "activation": "none" if paradigm.scores == "probabilities" else
            ("sigmoid" if paradigm.multi_label else "softmax")}
