"""A study: datasets × backbones × paradigms × seeds → runs → leaderboard → report.

Cells share everything cacheable: each dataset is opened once, and the feature store gives every
paradigm, seed and rerun the features already computed. Paradigms that need no backbone (the `pixels`
reference row) run once per dataset and seed, not once per backbone.
"""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.table import Table

from .config import RunSpec, StudySpec, deep_merge, load_study_spec, validated
from .data import open_pools
from .distributed import is_main
from .errors import TransferlabError
from .evaluate import HEADLINE
from .features import FeatureStore
from .paradigms import get_paradigm_class
from .progress import console, results
from .runner import execute_run, headline


def expand(spec: StudySpec) -> list[RunSpec]:
    """Every cell of the grid as a validated RunSpec, overrides applied, in a cache-friendly order."""
    cells = []
    for data in spec.datasets:
        for seed in spec.seeds:
            for paradigm in spec.paradigms:
                backbones = spec.backbones if get_paradigm_class(paradigm.name).needs_backbone else [None]
                if not backbones:
                    raise TransferlabError(f"study '{spec.name}': paradigm '{paradigm.name}' needs a backbone; "
                                           "add one under backbones:")
                for backbone in backbones:
                    cell = {
                        "data": data.model_dump(exclude_defaults=True),
                        "backbone": backbone.model_dump(exclude_defaults=True) if backbone else None,
                        "paradigm": {"name": paradigm.name, **({"label": paradigm.label} if paradigm.label else {}),
                                     **paradigm.params},
                        "seed": seed, "device": spec.device, "engine": spec.engine, "batch_size": spec.batch_size,
                    }
                    for override in spec.overrides:
                        if _matches(override.where, data.label, backbone, paradigm):
                            cell = deep_merge(cell, override.set)
                    cells.append(validated(RunSpec, cell, f"study '{spec.name}', cell {len(cells) + 1}"))
    seen: dict[str, RunSpec] = {}
    for cell in cells:  # two cells with one id would overwrite each other's record and checkpoints
        if cell.run_id in seen and seen[cell.run_id] != cell:
            raise TransferlabError(f"study '{spec.name}': two cells are both named {cell.run_id}; give the datasets "
                                   "distinct `name:`s or the paradigms distinct `label:`s")
        seen[cell.run_id] = cell
    return cells


def _matches(where, dataset: str, backbone, paradigm) -> bool:
    names = {
        "dataset": {dataset},
        "backbone": {backbone.name, backbone.label} if backbone else {"none"},
        "paradigm": {paradigm.name, paradigm.row_label},
    }
    return all(wanted is None or wanted in names[field] for field, wanted in where.model_dump().items())


def run_study(spec: StudySpec | str | Path, out: str | Path | None = None, *, skip_bad: bool = False,
              force: bool = False, resume: bool = False) -> list[dict]:
    """Run every cell, write records, leaderboard.csv and report.html under `out` (default runs/<name>).

    Cells whose record is up to date are reused (see `execute_run`); `force` recomputes every cell;
    `resume` continues interrupted training runs from their last epoch checkpoint.
    """
    if not isinstance(spec, StudySpec):
        spec = load_study_spec(spec)
    out_dir = Path(out) if out else Path("runs") / spec.name
    cells = expand(spec)
    if skip_bad:
        cells = [c.model_copy(update={"data": c.data.model_copy(update={"skip_bad": True})}) for c in cells]
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        (out_dir / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    started = time.perf_counter()
    store, pools_by_data, records = FeatureStore(), {}, []
    for number, cell in enumerate(cells, 1):
        data_key = cell.data.model_dump_json(include={"source", "val", "test"})
        if data_key not in pools_by_data:
            pools_by_data[data_key] = open_pools(cell.data)
        record = execute_run(cell, out_dir, study=spec.name, pools=pools_by_data[data_key], store=store,
                             reuse=not force, resume=resume)
        how = ("reused: record up to date" if record.get("reused") else
               f"fit {record['timings']['fit_s']:.1f}s, backbone passes {sum(record['backbone_passes'].values())}")
        console.print(f"[bold]run {number}/{len(cells)}[/] {cell.run_id}: {headline(record)} ({how})")
        records.append(record)
    summary = invocation_summary(records, time.perf_counter() - started)
    if not is_main():  # under torchrun rank 0 alone writes the study's files
        return records
    (out_dir / "last_invocation.json").write_text(json.dumps(summary, indent=1))

    rows = leaderboard(records)
    write_leaderboard_csv(rows, out_dir / "leaderboard.csv")
    results.print(leaderboard_table(rows, title=f"{spec.name}: test metrics, mean ± std over seeds"))
    from .report import build_report

    report = build_report(out_dir)
    console.print(f"{summary['computed']} runs computed, {summary['reused']} reused, "
                  f"{summary['backbone_passes']} backbone passes, {summary['seconds']:.1f}s")
    console.print(f"records in {out_dir / 'runs'}, leaderboard {out_dir / 'leaderboard.csv'}, report {report}")
    return records


def invocation_summary(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What this invocation cost: runs computed vs reused, and images that went through a backbone."""
    computed = [r for r in records if not r.get("reused")]
    return {"computed": len(computed), "reused": len(records) - len(computed), "seconds": round(seconds, 2),
            "backbone_passes": sum(sum(r["backbone_passes"].values()) for r in computed),
            "run_ids": [r["run_id"] for r in records]}  # the study's cells: what its report shows


# ---------------------------------------------------------------- leaderboard

GROUP = ("dataset", "backbone", "paradigm")


def leaderboard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset × backbone × paradigm: mean and std (ddof=1) over seeds; best first per dataset."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record["labels"][k] for k in GROUP)].append(record)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["n_seeds"] = len(group)
        for metric in HEADLINE:
            values = np.array([r["metrics"][metric] for r in group], dtype=float)
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        row["fit_seconds_mean"] = float(np.mean([r["timings"]["fit_s"] for r in group]))
        row["run_ids"] = [r["run_id"] for r in group]
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], -r["accuracy_mean"]))
    return rows


CSV_COLUMNS = [*GROUP, "n_seeds", *(f"{m}_{s}" for m in HEADLINE for s in ("mean", "std")), "fit_seconds_mean"]


def write_leaderboard_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not np.isnan(v) else
                                 "" if isinstance(v, float) else v) for k, v in row.items()})


def format_mean_std(row: dict[str, Any], metric: str) -> str:
    std = row[f"{metric}_std"]
    return f"{row[f'{metric}_mean']:.4f}" + ("" if np.isnan(std) else f" ± {std:.4f}")


def leaderboard_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in (*GROUP, "seeds", *HEADLINE, "fit s"):
        table.add_column(column, justify="right" if column not in GROUP else "left")
    for row in rows:
        table.add_row(*(row[k] for k in GROUP), str(row["n_seeds"]),
                      *(format_mean_std(row, m) for m in HEADLINE), f"{row['fit_seconds_mean']:.1f}")
    return table
