"""Assemble report.html from the records under `<study dir>/runs/` (one self-contained file)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..errors import TransferlabError
from ..evaluate import HEADLINE
from . import plots


def load_records(study_dir: str | Path) -> list[dict[str, Any]]:
    """The study's records: the cells of its last invocation when known (records of cells since dropped
    from the spec stay on disk but leave the report, as they leave leaderboard.csv), else every record."""
    runs = Path(study_dir) / "runs"
    files = sorted(runs.glob("*.json"))
    manifest = Path(study_dir) / "last_invocation.json"
    if manifest.is_file():
        wanted = set(json.loads(manifest.read_text()).get("run_ids", []))
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


def build_report(study_dir: str | Path) -> Path:
    from ..study import format_mean_std, leaderboard  # the same aggregation as the CSV

    study_dir = Path(study_dir)
    records = load_records(study_dir)
    rows = leaderboard(records)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    best = max(records, key=lambda r: r["metrics"]["accuracy"])
    env = Environment(loader=PackageLoader("transferlab", "report"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        title=records[0].get("study") or study_dir.name,
        metrics=HEADLINE,
        rows=[{**r, "cells": [format_mean_std(r, m) for m in HEADLINE]} for r in rows],
        bars={d: data_uri(plots.accuracy_bars(rows, d)) for d in datasets},
        best=best,
        confusion=data_uri(plots.confusion(best["metrics"]["confusion_matrix"], best["classes"],
                                            f"{best['run_id']} (test)")),
        curves=data_uri(plots.learning_curves(trained)) if (trained := [r for r in records if r.get("history")])
        else None,
        records=records,
        versions=records[0]["versions"],
    )
    path = study_dir / "report.html"
    path.write_text(html)
    return path


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
