"""The model card a person reads: `README.md` beside an export's `model.json`.

huggingface_hub's `ModelCard` (YAML metadata the Hub indexes + markdown): what the model classifies, the data
it learned from, how good it is on the test split with a 95 % interval, the same row's other seeds and the
study's reference rows beside it (what transfer bought), what it is for, where it is weak, and how to run the
file. Everything comes from the run's record and the other records of its study folder; nothing is re-scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import ModelCard, ModelCardData
from scipy.stats import binomtest

from ..core.paths import atomic_write
from .artifact import RunModel

HEADLINE = ("accuracy", "macro_f1", "micro_f1", "mean_average_precision", "log_loss", "ece")
USAGE = {
    "onnx": ("```python\nimport numpy as np, onnxruntime as ort\nsession = ort.InferenceSession(\"{file}\")\n"
             "scores = session.run(None, {{\"images\": images}})[0]  # images: uint8 N×3×H×W, RGB\n```"),
    "torchscript": ("```python\nimport torch\nmodel = torch.jit.load(\"{file}\")\n"
                    "scores = model(images)  # uint8 N×3×H×W\n```"),
    "safetensors": ("```python\nfrom transferlab.deploy.export import load_bundle\nmodel = load_bundle(\"{file}\")"
                    "\nscores = model(images)  # uint8 N×3×H×W\n```"),
    "timm": ("```python\nimport timm  # beside this README; or pretrained_cfg_overlay=dict(file=..., num_classes=...)\n"
             "model = timm.create_model(\"local-dir:{folder}\", pretrained=True).eval()\n"
             "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
             "scores = model(transform(image).unsqueeze(0))  # a PIL image; model.pretrained_cfg['label_names']\n```"),
}


def write_readme(model: RunModel, card: dict[str, Any], folder: Path) -> Path:
    """Write `folder/README.md` atomically; returns its path."""
    text = readme_text(model, card, study_records(model))
    path = folder / "README.md"
    atomic_write(path, lambda tmp: ModelCard(text).save(tmp))
    return path


def study_records(model: RunModel) -> list[dict[str, Any]]:
    """The other run records beside this one (its study's, when it ran in a study)."""
    records = []
    for path in sorted(model.path.parent.glob("*.json")):
        if path != model.path:
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a record being written, or not a record: the card goes without it
    return records


def readme_text(model: RunModel, card: dict[str, Any], others: list[dict[str, Any]]) -> str:
    record, labels = model.record, model.record["labels"]
    metrics = record.get("metrics", {})
    data = ModelCardData(library_name="transferlab", pipeline_tag="image-classification",
                         tags=["image-classification", "transfer-learning", labels["backbone"] or "no-backbone",
                               labels["paradigm"]],
                         datasets=[labels["dataset"]])
    sections = [f"---\n{data.to_yaml()}\n---",
                f"# {labels['paradigm']} on {labels['backbone'] or 'raw pixels'} — {labels['dataset']}",
                _what_it_does(model, card), _data(record), _how_good(record, metrics, others),
                _intended_use(model, record), _limitations(model, metrics), _use_it(model, card)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _what_it_does(model: RunModel, card: dict[str, Any]) -> str:
    classes = model.classes
    shown = ", ".join(classes[:20]) + (f", … ({len(classes)} in all)" if len(classes) > 20 else "")
    task = "Tags an image with any of" if model.multi_label else "Sorts an image into one of"
    return (f"{task} {len(classes)} classes: {shown}. Made by transferlab run `{model.record['run_id']}` "
            f"(seed {model.record.get('seed')}); the file `{card['file']}` ({card['format']}) takes "
            f"{'normalised' if card['format'] == 'timm' else 'uint8'} RGB "
            f"images of {model.input_size[1]}×{model.input_size[2]} px and returns class scores "
            f"({card['output']['activation']} gives probabilities).")


def _data(record: dict[str, Any]) -> str:
    splits = record.get("splits") or {}
    sizes = ", ".join(f"{n} {name}" for name, n in splits.items())
    return (f"## Data\n\n`{record['labels']['dataset']}`: {sizes} images. Model and hyper-parameters were chosen "
            "on validation; the test images were scored once, at the end.")


def _how_good(record: dict[str, Any], metrics: dict[str, Any], others: list[dict[str, Any]]) -> str:
    n_test = (record.get("splits") or {}).get("test")
    rows = ["| metric (test) | value | 95 % interval |", "|---|---|---|"]
    for name in HEADLINE:
        value = metrics.get(name)
        if isinstance(value, int | float):
            rows.append(f"| {name} | {value:.4f} | {_interval(name, value, n_test)} |")
    lines = ["## How good", "", *rows]
    seeds = [r for r in others if r.get("labels") == record["labels"] and r.get("reference") == record.get("reference")
             and "accuracy" in r.get("metrics", {})]
    if seeds and "accuracy" in metrics:
        values = [metrics["accuracy"], *(r["metrics"]["accuracy"] for r in seeds)]
        lines += ["", f"Over the {len(values)} seeds of this row in its study: accuracy {np.mean(values):.4f} ± "
                      f"{np.std(values, ddof=1):.4f} (mean ± std)."]
    references = _reference_rows(record, others)
    if references:
        lines += ["", "Beside the study's reference rows (same data; mean test accuracy over their seeds):", "",
                  "| reference row | accuracy |", "|---|---|", *references]
    return "\n".join(lines)


def _interval(name: str, value: float, n_test: int | None) -> str:
    """Accuracy: Wilson's interval over the test images (each image right or wrong); others: not computed."""
    if name != "accuracy" or not n_test:
        return "–"
    ci = binomtest(round(value * n_test), n_test).proportion_ci(0.95, method="wilson")
    return f"[{ci.low:.4f}, {ci.high:.4f}] over {n_test} images"


def _reference_rows(record: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    by_kind: dict[str, list[float]] = {}
    for other in others:
        if other.get("reference") and other["labels"]["dataset"] == record["labels"]["dataset"] \
                and "accuracy" in other.get("metrics", {}):
            by_kind.setdefault(other["reference"], []).append(other["metrics"]["accuracy"])
    return [f"| {kind} | {np.mean(values):.4f} |" for kind, values in sorted(by_kind.items())]


def _intended_use(model: RunModel, record: dict[str, Any]) -> str:
    return ("## Intended use\n\nImages like the training images of "
            f"`{record['labels']['dataset']}`: the same classes, framed and lit as they were. transferlab's "
            f"`predict` applies the run's own preprocessing (`{card_view(model)}`); other code must resize and "
            "crop the same way.")


def card_view(model: RunModel) -> str:
    return " ".join(repr(model.view).split())[:160]


def _limitations(model: RunModel, metrics: dict[str, Any]) -> str:
    lines = ["## Limitations", "",
             "- It knows only these classes: an image of anything else still gets one of them"
             + (" (or none above its thresholds)." if model.multi_label else ".")]
    per_class = [c for c in metrics.get("per_class", []) if isinstance(c.get("f1"), int | float)]
    if per_class:
        weakest = sorted(per_class, key=lambda c: c["f1"])[:2]
        lines.append("- Weakest classes on test (F1): " + ", ".join(f"{c['class']} {c['f1']:.2f}" for c in weakest)
                     + ".")
    confused = metrics.get("most_confused") or []
    if confused:
        top = confused[0]
        lines.append(f"- Most often confused: {top['true']} taken for {top['predicted']} "
                     f"({top['rate']:.1%} of its test images).")
    if isinstance(metrics.get("ece"), int | float):
        lines.append(f"- Scores as probabilities are off by {metrics['ece']:.3f} on average (expected calibration "
                     "error on test).")
    lines.append("- One run, one seed: the interval above is over test images, not over training randomness.")
    return "\n".join(lines)


def _use_it(model: RunModel, card: dict[str, Any]) -> str:
    return ("## Use it\n\n```bash\ntransferlab predict " + str(model.path) + " photos/\n```\n\n"
            + USAGE[card["format"]].format(file=card["file"], folder=Path(card["file"]).parent))
