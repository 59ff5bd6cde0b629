"""The test images a run got wrong, as small thumbnails kept in its record (the report shows them).

The report is built from run records alone, so the pictures it shows of mistakes travel in the record:
at most `MAX_EXAMPLES` thumbnails of `THUMBNAIL` px (a few kB each). Single-label: first the most confident
mistakes of each most-confused class pair (so the report can show what each confusion looks like), then the
most confident other mistakes. Multi-label: the images with the most wrong labels.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from .data import Split, UnreadableImage

MAX_EXAMPLES = 24
PER_PAIR = 4  # examples of each of the most confused pairs
PAIRS = 4
THUMBNAIL = 96


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
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    if max(image.size) < THUMBNAIL // 2:  # tiny images (28 px garments) are enlarged, pixels kept sharp
        factor = THUMBNAIL // max(image.size)
        image = image.resize((image.width * factor, image.height * factor), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
