"""`transferlab predict RUN IMAGES...`: classify new images with a run's model, preprocessed as the run was.

Files, folders (searched recursively for images) and glob patterns; decoded in the decoding thread beside
the model, batched, with a progress bar; an unreadable file is listed and the others are still predicted.
Single-label rows give the top-k classes with probabilities; multi-label rows also give the labels above
the run's tuned thresholds. Output: CSV or JSON by the file's suffix. With `explain` (a folder), each image also
gets a Grad-CAM overlay there (deploy/explain.py) and its row the overlay's path (`gradcam`).
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..data.decode import decoded_batches
from ..data.sources import IMAGE_EXTENSIONS, FileSource
from ..evaluate import predicted_labels
from .artifact import RunModel
from .explain import Explainer


@dataclass
class Predictions:
    rows: list[dict[str, Any]]  # one per readable image, in the order the images were given
    unreadable: list[str] = field(default_factory=list)  # "path: reason"


def collect_images(patterns: list[str | Path]) -> list[Path]:
    """Files as given, image files under folders (sorted), glob matches; a pattern matching nothing is an error."""
    found: list[Path] = []
    for pattern in map(str, patterns):
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        elif any(ch in pattern for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        else:
            raise TransferlabError(f"{pattern}: no such file or folder; give image files, folders or glob patterns")
    if not found:
        raise TransferlabError(f"no images in {', '.join(map(str, patterns))} "
                               f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return list(dict.fromkeys(found))  # a file named twice is predicted once


def image_source(paths: list[Path], classes: list[str]) -> FileSource:
    """Unlabelled files as a source, so they decode through the same path (and checks) as training data."""
    return FileSource("predict", Path("."), paths, np.zeros(len(paths), dtype=np.int64), classes)


def predict_images(model: RunModel, patterns: list[str | Path], *, top_k: int = 5, batch_size: int = 32,
                   explain: str | Path | None = None) -> Predictions:
    paths = collect_images(patterns)
    explainer = Explainer(model, Path(explain)) if explain is not None else None  # refuses before any work
    source = image_source(paths, model.classes)
    rows: dict[int, dict[str, Any]] = {}
    unreadable: list[str] = []
    indices = np.arange(len(paths))
    for batch, good, bad in decoded_batches(source, indices, model.view, batch_size, "predict"):
        unreadable += [bad[i] for i in sorted(bad)]
        if batch is None:
            continue
        probabilities = model.probabilities(batch)
        for index, proba in zip(good, probabilities, strict=True):
            rows[index] = {"path": str(paths[index]), **describe(model, proba, top_k)}
        if explainer is not None:
            overlays = explainer.write(batch, probabilities, [paths[i] for i in good])
            for index, overlay in zip(good, overlays, strict=True):
                rows[index]["gradcam"] = overlay
    return Predictions([rows[i] for i in sorted(rows)], unreadable)


def describe(model: RunModel, proba: np.ndarray, top_k: int = 5) -> dict[str, Any]:
    """One image's prediction: the top-k classes with probabilities; multi-label: the labels above threshold."""
    order = np.argsort(-proba, kind="stable")[: max(1, min(top_k, len(proba)))]
    top = [{"class": model.classes[i], "probability": round(float(proba[i]), 6)} for i in order]
    if not model.multi_label:
        return {"prediction": top[0]["class"], "top": top}
    chosen = predicted_labels(proba[None], multi_label=True, thresholds=model.thresholds)[0]  # as the run scored
    labels = [model.classes[i] for i in np.flatnonzero(chosen)]
    return {"labels": labels, "top": top}


def write_predictions(predictions: Predictions, out: Path) -> Path:
    """CSV (path, prediction / labels, top-k as class:probability) or JSON (everything, plus unreadable files)."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        text = json.dumps({"predictions": predictions.rows, "unreadable": predictions.unreadable}, indent=1)
        return atomic_write(out, lambda tmp: tmp.write_text(text))
    if out.suffix.lower() != ".csv":
        raise TransferlabError(f"--out {out}: write predictions to a .csv or .json file")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            multi = bool(predictions.rows) and "labels" in predictions.rows[0]
            explained = any("gradcam" in row for row in predictions.rows)
            writer.writerow(["path", "labels" if multi else "prediction", "top"] + (["gradcam"] if explained else []))
            for row in predictions.rows:
                answer = ";".join(row["labels"]) if multi else row["prediction"]
                top = " ".join(f"{t['class']}:{t['probability']:.4f}" for t in row["top"])
                writer.writerow([row["path"], answer, top] + ([row.get("gradcam", "")] if explained else []))

    return atomic_write(out, write)
