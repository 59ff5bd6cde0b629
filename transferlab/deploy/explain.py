"""`transferlab predict --explain`: a Grad-CAM overlay per image, `<image stem>.gradcam.png`, beside the predictions.

The heatmap is Grad-CAM (models/gradcam.py, the `grad-cam` package: optional extra `transferlab[explain]`) of
the class the run predicted (multi-label: the most probable label) at the network's last convolutional feature
map, drawn over the image as the model saw it (the run's view: resized and cropped as the run decoded it).
Trained networks are explained whole; a feature paradigm through its frozen backbone and its differentiable steps.
A k-NN vote has no gradient and a vision transformer no feature map: each is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.errors import TransferlabError
from ..models import gradcam
from ..models.modules import Pipeline
from .artifact import RunModel

SUFFIX = ".gradcam.png"


class Explainer:
    """Writes the overlays of one run's predictions into `folder`, naming each after its image (`a.png` →
    `a.gradcam.png`; a second image of the same stem gets `a-2.gradcam.png`)."""

    def __init__(self, model: RunModel, folder: Path):
        if not gradcam.available():
            raise TransferlabError(f"--explain needs the grad-cam package: {gradcam.INSTALL}")
        try:
            self.cam = gradcam.GradCam(explained_network(model.module))
        except gradcam.NotExplainable as exc:
            raise TransferlabError(f"run {model.record['run_id']}: no Grad-CAM for it: {exc}") from None
        self.model, self.folder = model, Path(folder)
        self.taken: set[str] = set()

    def write(self, images: torch.Tensor, proba: np.ndarray, paths: list[Path]) -> list[str]:
        """One overlay per image of the batch (uint8 N×3×H×W at the run's view, its probabilities); their paths."""
        try:
            heatmaps = self.cam.heatmaps(images, np.argmax(proba, axis=1))
        except gradcam.NotExplainable as exc:
            raise TransferlabError(f"run {self.model.record['run_id']}: no Grad-CAM for it: {exc}") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for image, heatmap, path in zip(images, heatmaps, paths, strict=True):
            target = self.folder / self._name(Path(path).stem)
            Image.fromarray(gradcam.overlay(image, heatmap)).save(target)
            written.append(str(target))
        return written

    def _name(self, stem: str) -> str:
        name, n = stem + SUFFIX, 1
        while name in self.taken:
            n += 1
            name = f"{stem}-{n}{SUFFIX}"
        self.taken.add(name)
        return name


def explained_network(module: nn.Module) -> nn.Module:
    """The run's module without test-time-augmentation steps (`tta:`): they turn N images into k·N views and average
    the logits back, and Grad-CAM needs one feature map per image it explains."""
    if not isinstance(module, Pipeline):
        return module
    steps = [step for step in module.steps if not type(step).__name__.startswith("Tta")]
    return nn.Sequential(*steps).eval()


def default_folder(model: RunModel, out: str | Path | None) -> Path:
    """Where overlays go when --explain names no folder: `explain/` beside the --out file, else the run's deploy
    folder (OUT/deploy/<run id>/explain/, beside its exports)."""
    if out is not None:
        return Path(out).parent / "explain"
    return model.path.parent.parent / "deploy" / model.record["run_id"] / "explain"
