"""Assemble report.html from the records under `<study dir>/runs/` (one self-contained file).

Everything shown comes from the run records (aggregated by the study's `leaderboard` / `compare_best`):
no recomputation, no cache, and every figure and thumbnail is inlined as a data: URI so that the file
opens offline on its own. Records of older formats render with whatever keys they have.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader

from ..core.errors import TransferlabError
from ..core.paths import atomic_write_text
from ..evaluate import headline_metrics, primary_metric
from ..leaderboard import GROUP, compare_best, comparison_text, leaderboard, ranked_by_validation, row_label
from ..record import is_multi_label
from . import plots
from .deploy import prune_context
from .plots import data_uri
from .search import search_context

# The test metrics shown beside the best run of a dataset (whichever its record has), in order.
SUMMARY_METRICS = {
    False: ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "top5_accuracy",
            "roc_auc_ovr", "ece", "log_loss"),
    True: ("micro_f1", "macro_f1", "samples_f1", "mAP", "micro_precision", "micro_recall", "subset_accuracy",
           "hamming_loss", "log_loss", "n_images_without_label"),
}
UNBOUNDED = frozenset({"log_loss"})  # metrics not confined to [0, 1]
PAIR_EXAMPLES = 6  # thumbnails shown beside each most-confused pair


def load_records(study_dir: str | Path) -> list[dict[str, Any]]:
    """The study's records: the cells of its last invocation when known (records of cells since dropped
    from the spec stay on disk but leave the report, as they leave leaderboard.csv), else every record."""
    runs = Path(study_dir) / "runs"
    files = sorted(runs.glob("*.json"))
    manifest = Path(study_dir) / "last_invocation.json"
    if manifest.is_file():  # a search's retrained best (search/<name>.json) stays beside the study's cells
        wanted = set(json.loads(manifest.read_text()).get("run_ids", [])) | search_run_ids(study_dir)
        files = [f for f in files if f.stem in wanted] or files
    if not files:
        raise TransferlabError(f"{runs}: no run records; run a study first (transferlab study SPEC.yaml)")
    records = []
    for path in files:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TransferlabError(f"{path}: unreadable run record ({exc}); delete it and rerun its cell") from None
    return records


def search_run_ids(study_dir: str | Path) -> set[str]:
    """The run ids of every search's retrained best configuration (`transferlab search`)."""
    ids: set[str] = set()
    for path in sorted((Path(study_dir) / "search").glob("*.json")):
        try:
            ids |= set(json.loads(path.read_text()).get("final_run_ids", []))
        except (OSError, ValueError):
            continue
    return ids


def build_report(study_dir: str | Path) -> Path:
    """Write `study_dir/report.html` from the study's run records alone; return its path."""
    study_dir = Path(study_dir)
    records = load_records(study_dir)
    # autoescape on for every value: class names, paths and notes come from users (select_autoescape() would
    # not match *.html.j2 and left it off)
    env = Environment(loader=PackageLoader("transferlab", "report"), autoescape=True)
    env.filters.update(num=fmt_number, run_href=run_href, compact=compact_json)
    html = env.get_template("report.html.j2").render(**report_context(records, study_dir))
    return atomic_write_text(study_dir / "report.html", html)


def report_context(records: list[dict[str, Any]], study_dir: Path) -> dict[str, Any]:
    """Everything the template shows, section by section, one entry per dataset where it is per dataset."""

    rows = leaderboard(records)
    by_id = {r["run_id"]: r for r in records}
    comparisons = compare_best(records)
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    datasets = []
    for name in names:
        own_rows = [r for r in rows if r["dataset"] == name]
        own = [r for r in records if r["labels"]["dataset"] == name]
        datasets.append(dataset_context(name, own_rows, own, by_id, comparisons.get(name)))
    trained = [r for r in records if r.get("history")]
    return {
        "title": records[0].get("study") or study_dir.name,
        "n_records": len(records),
        "datasets": datasets,
        "curves": data_uri(plots.learning_curves(trained)) if trained else None,
        "n_trained": len(trained),
        "searches": search_context(study_dir),  # transferlab search: one entry per search/<name>.json
        "prunes": prune_context(study_dir),  # transferlab prune: one entry per deploy/<run id>/prune.json
        "runs": [run_row(r, study_dir) for r in sorted(records, key=_run_order)],
        "versions": merged_values(records, "versions"),
        "environment": merged_values(records, "environment"),
    }


# ------------------------------------------------------------------------------------------ per dataset

def dataset_context(name: str, rows: list[dict[str, Any]], records: list[dict[str, Any]],
                    by_id: dict[str, dict[str, Any]], comparison: Any) -> dict[str, Any]:
    """One dataset's leaderboard, comparison, cost figure, best-run diagnostics and data summary."""
    multi_label = any(is_multi_label(r) for r in records)
    metrics, primary = list(headline_metrics(multi_label)), primary_metric(multi_label)
    table = leaderboard_rows(rows, by_id, metrics)
    for shown, warning in zip(table, below_linear_probe(rows, by_id, primary), strict=True):
        shown["warning"] = warning
    best = best_run(records, name, primary)
    points = [{"label": shown["label"], "score": _float(row.get(f"{primary}_mean")), "fit_s": shown["fit_s"] or 0.0,
               "gflops": shown["gflops"], "reference": bool(shown["reference"])}
              for row, shown in zip(rows, table, strict=True)]
    return {
        "name": name,
        "anchor": "dataset-" + quote(name, safe=""),
        "multi_label": multi_label,
        "metrics": metrics,
        "primary": primary,
        "rows": table,
        "comparison": comparison_text(comparison) if comparison else None,
        "scatter": data_uri(plots.cost_scatter(points, primary, f"{name}: test {primary} vs cost")),
        "best": diagnostics(best) if best else None,
        "summary": data_summary(records),
    }


def leaderboard_rows(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]],
                     metrics: list[str]) -> list[dict[str, Any]]:
    """Leaderboard rows for display: formatted cells, links to the seeds' runs, the top non-reference row."""
    shown, top_seen = [], False
    for row in rows:
        runs = [by_id[i] for i in row.get("run_ids", []) if i in by_id]
        reference = row.get("reference") or next((r.get("reference") for r in runs if r.get("reference")), None)
        top = not reference and not top_seen
        top_seen = top_seen or top
        shown.append({
            "backbone": row["backbone"], "paradigm": row["paradigm"], "label": row_label(row),
            "reference": reference, "top": top, "n_seeds": row.get("n_seeds", len(runs)),
            "runs": [{"seed": r.get("seed"), "run_id": r["run_id"]} for r in runs],
            "cells": [metric_cell(row, m) for m in metrics],
            "fit_s": _float(row.get("fit_seconds_mean")),
            "gflops": _float(row["gflops"]),
        })
    return shown


FROM_SCRATCH = ("scratch", "simple-cnn", "small-resnet")  # no pretrained weights to lose to a probe
TRY = ("bn: frozen", "optimizer: adamw, lr: 3.0e-4", "epochs: 20", "head_epochs: 3")


def below_linear_probe(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], primary: str) -> list[str | None]:
    """Per row, a warning when a weight-training row of a pretrained backbone ends below the frozen `linear` row
    of the same backbone: that is far more often a broken recipe (BatchNorm statistics on small data, the
    learning rate, too few epochs) than a finding about fine-tuning, and a reader must not take it for one."""
    def runs(row):
        return [by_id[i] for i in row.get("run_ids", []) if i in by_id]

    probes = {row["backbone"]: _float(row.get(f"{primary}_mean")) for row in rows
              if not row.get("reference") and any(r["spec"]["paradigm"]["name"] == "linear" for r in runs(row))}
    warnings = []
    for row in rows:
        records, score, probe = runs(row), _float(row.get(f"{primary}_mean")), probes.get(row["backbone"])
        trained = records and all((r.get("backbone") or {}).get("engine") == "torch (training)" and
                                  r["spec"]["paradigm"]["name"] not in FROM_SCRATCH for r in records)
        if row.get("reference") or not trained or score is None or probe is None or score >= probe:
            warnings.append(None)
            continue
        bn = {(r.get("selected") or {}).get("batchnorm", {}).get("policy") for r in records} - {None}
        warnings.append(f"below the frozen linear probe on this backbone ({score:.3f} < {probe:.3f}): more likely "
                        f"a recipe problem than a finding. Likely causes: BatchNorm statistics on small data"
                        f"{' (they trained here)' if bn == {'train'} else ''}, the learning rate, too few epochs; "
                        f"try {', '.join(TRY)}")
    return warnings


def metric_cell(row: dict[str, Any], metric: str) -> dict[str, str]:
    """mean, ± std and the 95 % interval [mean − h, mean + h] of one headline metric, formatted; the
    interval is clipped to [0, 1] where the metric lives there (a t-interval over two seeds can overshoot)."""
    mean, std, half = (_float(row.get(f"{metric}_{s}")) for s in ("mean", "std", "ci95"))
    interval = ""
    if mean is not None and half is not None:
        low, high = mean - half, mean + half
        if metric not in UNBOUNDED:
            low, high = max(low, 0.0), min(high, 1.0)
        interval = f"[{low:.3f}, {high:.3f}]"
    return {"mean": fmt_number(mean), "std": "" if std is None else f"± {std:.3f}", "interval": interval}


def best_run(records: list[dict[str, Any]], dataset: str, primary: str) -> dict[str, Any] | None:
    """The run the report shows in detail, chosen on validation like every other choice: the seed with the
    best validation `primary` of the non-reference row with the best mean validation score."""
    ranking, by_row = ranked_by_validation(records)
    if not ranking.get(dataset):
        return None
    runs = by_row[tuple(ranking[dataset][0][k] for k in GROUP)]
    return max(runs, key=lambda r: _float((r.get("val_metrics") or {}).get(primary)) or -math.inf)


# ------------------------------------------------------------------------------------ best-run diagnostics

def diagnostics(record: dict[str, Any]) -> dict[str, Any]:
    """What a decision needs to see of one run: scores, per-class table and bars, confusions, mistakes."""
    multi_label = is_multi_label(record)
    metrics, classes = record.get("metrics") or {}, record.get("classes") or []
    per_class = metrics.get("per_class") or []
    examples = [e for e in record.get("examples") or [] if str(e.get("thumbnail", "")).startswith("data:image/")]
    out: dict[str, Any] = {
        "record": record, "multi_label": multi_label,
        "scores": [{"name": m, "test": metrics.get(m), "val": (record.get("val_metrics") or {}).get(m)}
                   for m in SUMMARY_METRICS[multi_label] if metrics.get(m) is not None],
        "per_class": per_class,
        "has_auc": any(c.get("auc") is not None for c in per_class),
        "has_ap": any(c.get("ap") is not None for c in per_class),
        "has_threshold": any(c.get("threshold") is not None for c in per_class),
        "bars": data_uri(plots.per_class_bars(per_class, f"{record['run_id']}: per-class test scores"))
        if per_class else None,
        "gallery": [{**e, "true_text": _label_text(e.get("true")), "predicted_text": _label_text(e.get("predicted")),
                     "gradcam": e["gradcam"] if str(e.get("gradcam", "")).startswith("data:image/") else None}
                    for e in examples],
        "gradcam": gradcam_text(record),
        "thresholds": thresholds_text(record) if multi_label else None,
        "confusion": None, "pairs": [], "reliability": None, "calibration": calibration_text(record),
    }
    if metrics.get("reliability"):
        before = ((record.get("calibration") or {}).get("test") or {}).get("reliability_before")
        out["reliability"] = data_uri(plots.reliability(metrics["reliability"], f"{record['run_id']} (test)", before))
    if not multi_label and metrics.get("confusion_matrix"):
        out["confusion"] = data_uri(plots.confusion(metrics["confusion_matrix"], classes, f"{record['run_id']} (test)",
                                                    normalized=metrics.get("confusion_normalized")))
        out["pairs"] = [{**p, "examples": [e for e in examples if e.get("true") == p.get("true")
                                           and e.get("predicted") == p.get("predicted")][:PAIR_EXAMPLES]}
                        for p in metrics.get("most_confused") or []]
    return out


def calibration_text(record: dict[str, Any]) -> str | None:
    """What `calibrate: temperature` did, in words (None when the run was not calibrated)."""
    effect = record.get("calibration")
    if not effect:
        return None
    test = effect.get("test") or {}
    return (f"Calibrated: temperature {effect['temperature']:.3g}, fitted on validation. On test, ECE "
            f"{test.get('ece_before', float('nan')):.4f} → {test.get('ece_after', float('nan')):.4f}, log-loss "
            f"{test.get('log_loss_before', float('nan')):.4f} → {test.get('log_loss_after', float('nan')):.4f} "
            "(the ranking of classes, hence accuracy, is unchanged).")


def gradcam_text(record: dict[str, Any]) -> str | None:
    """What the Grad-CAM overlays beside the mistakes show (computed at run time, gallery.py), or why there are none."""
    entry = record.get("gradcam")
    if not entry:
        return None
    if entry.get("note"):
        return f"No Grad-CAM overlays: {entry['note']}."
    size = "×".join(map(str, entry.get("map_size") or []))
    return (f"Beside each, Grad-CAM: where the network found the evidence for the class it predicted (red: most), read "
            f"at {entry.get('layer', 'its last feature map')}{f' ({size} map)' if size else ''}.")


def thresholds_text(record: dict[str, Any]) -> str | None:
    """The decision thresholds chosen on validation, in words."""
    chosen = record.get("thresholds") or {}
    values = chosen.get("values", (record.get("metrics") or {}).get("thresholds"))
    if values is None:
        return None
    if isinstance(values, list):
        listed = ", ".join(f"{c} {v:.2f}" for c, v in zip(record.get("classes") or [], values, strict=False))
        return f"one threshold per class, chosen on validation: {listed}"
    return f"one global threshold, chosen on validation: {values:.2f} (a label is predicted where its probability ≥ it)"


def _label_text(label: Any) -> str:
    if isinstance(label, list):
        return "{" + ", ".join(map(str, label)) + "}" if label else "∅ (no label)"
    return str(label)


# ------------------------------------------------------------------------------------- dataset summary

def data_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Images (multi-label: positives) per class and split, split sizes and skipped files, from one record.

    Test is the same for every seed; validation (and a few-shot train set) are drawn per seed, so the
    counts are those of the first record's seed."""
    record = min(records, key=lambda r: (bool(r.get("reference")), r.get("seed") or 0))
    classes = record.get("classes") or []
    counts = dict(record.get("class_counts") or {})
    if not counts and (record.get("metrics") or {}).get("per_class"):  # older records: test support only
        counts = {"test": [c.get("support", 0) for c in record["metrics"]["per_class"]]}
    counts = {split: values for split, values in counts.items() if values and len(values) == len(classes)}
    skipped = list(dict.fromkeys(note for r in records for note in r.get("skipped") or []))
    return {
        "seed": record.get("seed"), "classes": classes, "splits": record.get("splits") or {},
        "counts": counts, "skipped": skipped, "multi_label": is_multi_label(record),
        "plot": data_uri(plots.class_counts({s: dict(zip(classes, v, strict=True)) for s, v in counts.items()}))
        if counts else None,
    }


# ------------------------------------------------------------------------------------------ runs, environment

def run_row(record: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """One runs-table row: what ran, its primary score on test and validation, choices, time, cost."""
    primary = primary_metric(is_multi_label(record))
    timings, cost = record.get("timings") or {}, record.get("cost") or {}
    return {
        "record": record, "run_id": record["run_id"], "primary": primary,
        "json_exists": (study_dir / "runs" / f"{record['run_id']}.json").is_file(),
        "test": (record.get("metrics") or {}).get(primary), "val": (record.get("val_metrics") or {}).get(primary),
        "passes": sum((record.get("backbone_passes") or {}).values()),
        "inputs_s": timings.get("inputs_s"), "fit_s": timings.get("fit_s"), "gflops": cost.get("gflops"),
    }


def merged_values(records: list[dict[str, Any]], key: str) -> dict[str, str]:
    """{name: value} of a per-record mapping (versions, environment); values that differ between runs are
    all listed, so a study assembled on two machines says so."""
    seen: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for name, value in (record.get(key) or {}).items():
            text = "—" if value is None else str(value)
            if text not in seen[name]:
                seen[name].append(text)
    return {name: " | ".join(values) for name, values in seen.items()}


def _run_order(record: dict[str, Any]) -> tuple:
    labels = record.get("labels") or {}
    return (labels.get("dataset", ""), bool(record.get("reference")), labels.get("paradigm", ""),
            labels.get("backbone", ""), record.get("seed") or 0)


# ------------------------------------------------------------------------------------------------ helpers

def run_href(run_id: str) -> str:
    """The record's file relative to the report (which sits beside runs/)."""
    return "runs/" + quote(run_id, safe="@=,+-_.") + ".json"


def fmt_number(value: Any, digits: int = 3) -> str:
    """A metric for a table: fixed decimals, integers as they are, "—" for missing or NaN."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


def _float(value: Any) -> float | None:
    """A number or None (None, NaN and non-numbers all read as missing)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
