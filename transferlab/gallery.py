"""The test images a run got wrong, as small thumbnails kept in its record (the report shows them).

The report is built from run records alone, so the pictures it shows of mistakes travel in the record:
at most `MAX_EXAMPLES` thumbnails of `THUMBNAIL` px (a few kB each). Single-label: first the most confident
mistakes of each most-confused class pair (so the report can show what each confusion looks like), then the
most confident other mistakes. Multi-label: the images with the most wrong labels.

With the optional extra `transferlab[explain]`, `explain_mistakes` adds to each a Grad-CAM overlay (where the
network found the class it wrongly called). It runs here, while the runner still holds the fitted model, rather than
in the report: the report reads records only and may not import `deploy/` (its sibling layer), and this keeps the
overlays beside the thumbnails they explain.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .core.errors import TransferlabError
from .core.progress import log
from .data import Split, UnreadableImage
from .data.views import make_view
from .models import gradcam

MAX_EXAMPLES = 24
PER_PAIR = 4  # examples of each of the most confused pairs
PAIRS = 4
THUMBNAIL = 96
OVERLAY = 64  # px a side of a Grad-CAM overlay: its heatmap is smooth, so it keeps the record small


def mistakes(test: Split, proba: np.ndarray, predicted: np.ndarray, classes: list[str], metrics: dict[str, Any],
             *, multi_label: bool) -> list[dict[str, Any]]:
    """Up to MAX_EXAMPLES wrong test predictions: {index, true, predicted, confidence, thumbnail}."""
    truth = np.asarray(test.labels)
    chosen = (_multi_label_choice(truth, predicted) if multi_label else
              _single_label_choice(truth, predicted, proba, metrics.get("most_confused", [])))
    examples = []
    for position in chosen:
        thumbnail = _thumbnail(test, int(test.indices[position]))
        if thumbnail is None:
            continue
        if multi_label:
            true = [c for c, on in zip(classes, truth[position], strict=True) if on]
            said = [c for c, on in zip(classes, predicted[position], strict=True) if on]
            wrong = np.flatnonzero(truth[position] != predicted[position])
            # how sure the model was of its wrong calls: the mean distance of their probabilities from 0.5
            confidence = float(np.mean(np.abs(proba[position, wrong] - 0.5)) + 0.5)
        else:
            true, said = classes[int(truth[position])], classes[int(predicted[position])]
            confidence = float(proba[position, int(predicted[position])])
        examples.append({"index": int(test.indices[position]), "true": true, "predicted": said,
                         "confidence": round(confidence, 4), "thumbnail": thumbnail})
    return examples


def _single_label_choice(truth, predicted, proba, most_confused) -> list[int]:
    wrong = np.flatnonzero(truth != predicted)
    by_confidence = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind="stable")]
    chosen: list[int] = []
    for pair in most_confused[:PAIRS]:
        in_pair = by_confidence[(truth[by_confidence] == pair["true_index"])
                                & (predicted[by_confidence] == pair["predicted_index"])]
        chosen += in_pair[:PER_PAIR].tolist()
    rest = [int(i) for i in by_confidence if int(i) not in set(chosen)]
    return (chosen + rest)[:MAX_EXAMPLES]


def _multi_label_choice(truth, predicted) -> list[int]:
    errors = (np.asarray(truth) != np.asarray(predicted)).sum(axis=1)
    wrong = np.flatnonzero(errors)
    return wrong[np.argsort(-errors[wrong], kind="stable")][:MAX_EXAMPLES].tolist()


def _thumbnail(test: Split, index: int) -> str | None:
    try:
        image = test.source.load(index)
    except UnreadableImage:
        return None
    return _data_uri(image.convert("RGB"))


def _data_uri(image: Image.Image, side: int = THUMBNAIL) -> str:
    """A small PNG of the image as a data: URI (at most `side` px a side; tiny images enlarged)."""
    image = image.copy()
    image.thumbnail((side, side))
    if max(image.size) < side // 2:  # tiny images (28 px garments) are enlarged, pixels kept sharp
        factor = side // max(image.size)
        image = image.resize((image.width * factor, image.height * factor), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- Grad-CAM overlays of the mistakes


def explain_mistakes(examples: list[dict[str, Any]], test: Split, classes: list[str], paradigm,
                     backbone, device: torch.device | None = None) -> dict[str, Any] | None:
    """Add a Grad-CAM overlay (`gradcam`, a PNG data URI; `gradcam_class`, the class it shows) to each example,
    computed on the run's `device` (default: CUDA when there is one); return the record's `gradcam` entry: the layer
    read, or a `note` saying why there are no overlays. None where there is nothing to explain (no mistakes, a
    reference row without a model)."""
    if not examples:
        return None
    try:
        network, view = run_network(paradigm, backbone)
        if not gradcam.available():
            return {"note": f"not computed: the grad-cam package is missing ({gradcam.INSTALL})"}
        cam = gradcam.GradCam(network, device)
        images = torch.stack([view(test.source.load(e["index"]).convert("RGB")) for e in examples])
        shown = [_explained_class(e, classes) for e in examples]
        heatmaps = cam.heatmaps(images, [classes.index(c) for c in shown])
    except gradcam.NotExplainable as exc:
        return {"note": str(exc)}
    except TransferlabError:  # NotDeployable: a reference row learned nothing to explain
        return None
    except (RuntimeError, ValueError, UnreadableImage) as exc:  # a run's result must not be lost to its pictures
        log.warning("Grad-CAM of the test mistakes failed (%s: %s); the record keeps the thumbnails alone",
                    type(exc).__name__, exc)
        return {"note": f"failed: {type(exc).__name__}: {exc}"}
    for example, image, heatmap, name in zip(examples, images, heatmaps, shown, strict=True):
        example["gradcam"] = _data_uri(Image.fromarray(gradcam.overlay(image, heatmap)), OVERLAY)
        example["gradcam_class"] = name
    return {"method": "Grad-CAM", "layer": cam.target.name, "map_size": list(cam.target.map_size),
            "class": "the predicted class (multi-label: the first wrong label)"}


def run_network(paradigm, backbone) -> tuple[nn.Module, Any]:
    """(the fitted run as one module, uint8 images → scores; its view, PIL → uint8 tensor). A trained network is the
    paradigm's whole model; a feature paradigm's steps follow the frozen backbone, as deploy rebuilds the run."""
    steps, frozen_features = paradigm.deploy_steps()
    if frozen_features:
        if backbone is None:
            raise gradcam.NotExplainable("the run has no backbone network (its features are the raw pixels)")
        steps = [backbone.feature_model(getattr(steps[0], "needs_feature_map", False)), *steps]
    view, _ = make_view(paradigm.deploy_view(backbone))
    return nn.Sequential(*steps).eval(), view


def _explained_class(example: dict[str, Any], classes: list[str]) -> str:
    """Single-label: the class predicted. Multi-label: the first label wrongly called on, else the first missed."""
    predicted, true = example["predicted"], example["true"]
    if isinstance(predicted, str):
        return predicted
    wrong = [c for c in predicted if c not in true] or [c for c in true if c not in predicted] or predicted
    return wrong[0] if wrong else classes[0]
