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

from .config import BackboneSpec, ParadigmSpec, RunSpec, StudySpec, deep_merge, load_study_spec, validated
from .data import open_pools
from .distributed import is_main
from .errors import TransferlabError
from .evaluate import headline_metrics, primary_metric
from .features import FeatureStore
from .paradigms import get_paradigm_class
from .progress import console, results
from .runner import execute_run, headline
from .stats import interval95, paired_comparison


def expand(spec: StudySpec, is_multi_label=None) -> list[RunSpec]:
    """Every cell of the grid as a validated RunSpec, overrides applied, in a cache-friendly order, followed
    per dataset and seed by the reference rows (`reference_cells`). `is_multi_label(data_spec)` says which
    baselines apply (default: what the spec declares)."""
    is_multi_label = is_multi_label or (lambda data: bool(data.multi_label))
    cells = []
    for data in spec.datasets:
        for seed in spec.seeds:
            for paradigm in spec.paradigms:
                for backbone in backbones_of(spec, paradigm):
                    cell = base_cell(spec, data, backbone, paradigm, seed)
                    cell = apply_overrides(spec, cell, data, backbone, paradigm)
                    cells.append(validated(RunSpec, cell, f"study '{spec.name}', cell {len(cells) + 1}"))
            for cell in reference_cells(spec, data, seed, is_multi_label(data)):
                # A reference row anchors the grid rows of its dataset: it takes their data-wide overrides
                # (e.g. a train_size), never those that select a backbone or paradigm.
                for override in spec.overrides:
                    if override.where.backbone is None and override.where.paradigm is None and \
                            override.where.dataset in (None, data.label):
                        cell = deep_merge(cell, {k: v for k, v in override.set.items() if k != "paradigm"})
                cells.append(validated(RunSpec, cell, f"study '{spec.name}', reference row {cell['reference']}"))
    seen: dict[str, RunSpec] = {}
    for cell in cells:  # two cells with one id would overwrite each other's record and checkpoints
        if cell.run_id in seen and seen[cell.run_id] != cell:
            raise TransferlabError(f"study '{spec.name}': two cells are both named {cell.run_id}; give the datasets "
                                   "distinct `name:`s or the paradigms distinct `label:`s")
        seen[cell.run_id] = cell
    return list(seen.values())  # a cell listed twice runs (and counts as a seed) once


def backbones_of(spec: StudySpec, paradigm: ParadigmSpec) -> list[BackboneSpec | None]:
    """The backbones a paradigm's rows run on: every study backbone, or those its `backbones:` names
    ([None] for paradigms that use none)."""
    where = f"study '{spec.name}', paradigm {paradigm.row_label}"
    if not get_paradigm_class(paradigm.name).needs_backbone:
        if paradigm.backbones:
            raise TransferlabError(f"{where}: '{paradigm.name}' uses no backbone; drop its backbones:")
        return [None]
    if not spec.backbones:
        raise TransferlabError(f"study '{spec.name}': paradigm '{paradigm.name}' needs a backbone; add one under "
                               "backbones:")
    if paradigm.backbones is None:
        return list(spec.backbones)
    chosen = []
    for wanted in paradigm.backbones:
        found = find_backbones(spec.backbones, wanted)
        if not found:
            raise TransferlabError(f"{where}: backbones: '{wanted}' is not one of the study's backbones "
                                   f"({', '.join(b.label for b in spec.backbones)})")
        chosen += found
    return [b for b in spec.backbones if b in chosen]


def find_backbones(backbones: list[BackboneSpec], wanted: str) -> list[BackboneSpec]:
    """The backbones `wanted` names: a row label names one (under --mini, so does the label of the backbone it
    stands in for); a model name, every entry of that model."""
    return ([b for b in backbones if b.label == wanted] or [b for b in backbones if b.stands_in_for == wanted] or
            [b for b in backbones if wanted in b.names])


def apply_overrides(spec: StudySpec, cell: dict[str, Any], data, backbone, paradigm) -> dict[str, Any]:
    """`cell` with every override whose `where` selects it merged in, in the order they are listed."""
    for override in spec.overrides:
        if _matches(override.where, data.label, backbone, paradigm):
            cell = deep_merge(cell, override.set)
    return cell


def base_cell(spec: StudySpec, data, backbone, paradigm, seed: int, reference: str | None = None) -> dict[str, Any]:
    return {
        "data": data.model_dump(exclude_defaults=True),
        "backbone": backbone.model_dump(exclude_defaults=True) if backbone else None,
        "paradigm": {"name": paradigm.name, **({"label": paradigm.label} if paradigm.label else {}),
                     **paradigm.params},
        "seed": seed, "device": spec.device, "engine": spec.engine, "batch_size": spec.batch_size,
        "threshold": spec.threshold, "final": spec.final,
        "reference": reference or (paradigm.name if paradigm.name in LABEL_AND_PIXEL_REFERENCES else None),
    }


LABEL_AND_PIXEL_REFERENCES = ("majority", "all-negative", "pixels")  # paradigms that are reference rows by nature
# What each reference row is: the paradigm it runs and whether it needs a backbone.
REFERENCE_PARADIGMS = {"majority": "majority", "all-negative": "all-negative", "pixels": "pixels",
                       "untrained": "linear"}


def reference_cells(spec: StudySpec, data, seed: int, multi_label: bool) -> list[dict[str, Any]]:
    """The rows that show what transfer buys, for one dataset and seed: the majority class (multi-label: the
    training label frequencies) and, for multi-label data, no label at all; raw pixels (no backbone); and a
    linear probe on each backbone's *untrained* (random-init) features. Untrained inits share one fixed seed,
    so every run seed reuses one encoding."""
    wanted = list(REFERENCE_PARADIGMS) if spec.references is True else list(dict.fromkeys(spec.references or []))
    if not multi_label:
        if any(p.name == "all-negative" for p in spec.paradigms):
            raise TransferlabError(f"study '{spec.name}': paradigm 'all-negative' is a multi-label baseline, but "
                                   f"{data.label} is single-label; use 'majority'")
        wanted = [w for w in wanted if w != "all-negative"]
    in_grid = {p.name for p in spec.paradigms}  # e.g. pixels listed by hand: that row is the reference
    wanted = [w for w in wanted if w == "untrained" or REFERENCE_PARADIGMS[w] not in in_grid]
    cells = []
    for kind in wanted:
        # The untrained row is labelled apart, so a random-init backbone in the grid never shares its id.
        paradigm = ParadigmSpec(name=REFERENCE_PARADIGMS[kind], label="linear-untrained" if kind == "untrained"
                                else None)
        if kind != "untrained":
            cells.append(base_cell(spec, data, None, paradigm, seed, reference=kind))
            continue
        for backbone in dict.fromkeys((b.name, b.image_size) for b in spec.backbones):
            untrained = BackboneSpec(name=backbone[0], image_size=backbone[1], weights="random", init_seed=0)
            cells.append(base_cell(spec, data, untrained, paradigm, seed, reference=kind))
    return cells


def _matches(where, dataset: str, backbone, paradigm) -> bool:
    names = {
        "dataset": {dataset},
        "backbone": backbone.names if backbone else {"none"},
        "paradigm": {paradigm.name, paradigm.row_label},
    }
    return all(wanted is None or wanted in names[field] for field, wanted in where.model_dump().items())


# DataSpec fields that only change how the listed images are split: datasets differing in these share pools.
SPLIT_ONLY_FIELDS = {"name", "train_size", "val_size", "test_size", "ratios", "folds", "limit_per_class", "split_seed"}


def run_study(spec: StudySpec | str | Path, out: str | Path | None = None, *, skip_bad: bool = False,
              force: bool = False, resume: bool = False, mini: bool = False) -> list[dict]:
    """Run every cell, then the spec's `search:` (if any) and its `prune:` of the winner (if any); write
    records, leaderboard.csv and report.html under `out` (default runs/<name>).

    Cells whose record is up to date are reused (see `execute_run`); `force` recomputes every cell;
    `resume` continues interrupted training runs from their last epoch checkpoint; `mini` runs the spec's
    offline miniature instead (`mini.miniature`, default out runs/<name>-mini).
    """
    if not isinstance(spec, StudySpec):
        spec = load_study_spec(spec)
    if mini:
        from .mini import miniature

        spec, swaps = miniature(spec)
        for line in swaps:
            console.print(line)
    out_dir = Path(out) if out else Path("runs") / spec.name
    if skip_bad:
        spec = spec.model_copy(update={"datasets": [d.model_copy(update={"skip_bad": True}) for d in spec.datasets]})
    pools_by_data: dict[str, Any] = {}

    def pools_of(data):  # each dataset is opened once, for the expansion (which baselines apply) and the runs
        key = data.model_dump_json(exclude=SPLIT_ONLY_FIELDS)
        if key not in pools_by_data:
            pools_by_data[key] = open_pools(data)
        return pools_by_data[key]

    cells = expand(spec, is_multi_label=lambda data: pools_of(data).train.multi_label)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        (out_dir / "study.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    started = time.perf_counter()
    store, records = FeatureStore(), []
    for number, cell in enumerate(cells, 1):
        record = execute_run(cell, out_dir, study=spec.name, pools=pools_of(cell.data), store=store,
                             reuse=not force, resume=resume)
        how = ("reused: record up to date" if record.get("reused") else
               f"fit {record['timings']['fit_s']:.1f}s, backbone passes {sum(record['backbone_passes'].values())}")
        console.print(f"[bold]run {number}/{len(cells)}[/] {cell.run_id}: {headline(record)} ({how})")
        records.append(record)
    summary = invocation_summary(records, time.perf_counter() - started)
    if is_main():
        (out_dir / "last_invocation.json").write_text(json.dumps(summary, indent=1))
    if spec.search is not None:  # the searched rows join the grid's (the report finds them through search/)
        from .search import search_and_retrain

        records += search_and_retrain(spec, out_dir, report=False)[1]
    if not is_main():  # under torchrun rank 0 alone writes the study's files
        return records

    rows = leaderboard(records)
    write_leaderboard_csv(rows, out_dir / "leaderboard.csv")
    results.print(leaderboard_table(rows, title=f"{spec.name}: test metrics, mean ± std over seeds"))
    from .report import build_report
    from .report.html import comparison_text

    for dataset, comparison in compare_best(records).items():
        results.print(f"{dataset}: {comparison_text(comparison)['sentence']}")
    if spec.prune is not None:
        for record in winners(records):
            try:
                prune_winner(spec, record, out_dir)
            except TransferlabError as exc:  # e.g. a winner with no dense layer to prune: the report still comes
                console.print(f"prune: skipped the winner {record['run_id']}: {exc}")

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


def is_multi_label(records: list[dict[str, Any]]) -> bool:
    return any(r.get("task") == "multi-label" for r in records)


def leaderboard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset × backbone × paradigm: mean, std (ddof=1) and 95 % t-interval over seeds of each
    headline metric; per dataset the rows are sorted by the primary metric, best first, reference rows
    (what transfer buys) among them, tagged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record["labels"][k] for k in GROUP)].append(record)
    rows = []
    for key, group in groups.items():
        multi = is_multi_label(group)
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["task"] = "multi-label" if multi else "single-label"
        row["reference"] = group[0].get("reference")
        row["n_seeds"] = len(group)
        for metric in headline_metrics(multi):
            values = np.array([np.nan if r["metrics"].get(metric) is None else r["metrics"][metric] for r in group],
                              dtype=float)
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            row[f"{metric}_ci95"] = interval95(values)
        row["primary"] = primary_metric(multi)
        row["score"] = row[f"{row['primary']}_mean"]
        row["fit_seconds_mean"] = float(np.mean([r["timings"]["fit_s"] + r["timings"].get("final_fit_s", 0)
                                                 for r in group]))
        row["gflops"] = (group[0].get("cost") or {}).get("gflops")
        row["run_ids"] = [r["run_id"] for r in group]
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], -np.nan_to_num(r["score"], nan=-np.inf)))
    return rows


def ranked_by_validation(records: list[dict[str, Any]]) -> tuple[dict[str, list[dict]], dict[tuple, list[dict]]]:
    """Per dataset, its non-reference leaderboard rows ordered by mean *validation* score (best first), and
    each row's records. Choosing rows on validation keeps their test scores unbiased."""
    by_row: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        by_row[tuple(record["labels"][k] for k in GROUP)].append(record)

    def validation_score(row) -> float:
        values = [r["val_metrics"].get(row["primary"]) for r in by_row[tuple(row[k] for k in GROUP)]]
        return float(np.mean([np.nan if v is None else v for v in values]))

    rows, ranked = leaderboard(records), {}
    for dataset in dict.fromkeys(r["labels"]["dataset"] for r in records):
        candidates = [row for row in rows if row["dataset"] == dataset and not row["reference"]]
        ranked[dataset] = sorted(candidates, key=lambda row: -np.nan_to_num(validation_score(row), nan=-np.inf))
    return ranked, by_row


def compare_best(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset: the two best non-reference rows (by validation, `ranked_by_validation`), and which is
    better on test with what confidence (stats.paired_comparison on their per-image test outcomes)."""
    out, (ranking, by_row) = {}, ranked_by_validation(records)
    for dataset, ranked in ranking.items():
        if len(ranked) < 2:
            continue
        first, second = ranked[:2]
        comparison = paired_comparison(by_row[tuple(first[k] for k in GROUP)], by_row[tuple(second[k] for k in GROUP)],
                                       first["primary"])
        if comparison is not None:
            out[dataset] = {"a": {k: first[k] for k in GROUP}, "b": {k: second[k] for k in GROUP}, **comparison}
    return out


def winners(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, the first-seed run of the best non-reference row by validation (what `prune:` prunes)."""
    ranking, by_row = ranked_by_validation(records)
    return [min(by_row[tuple(ranked[0][k] for k in GROUP)], key=lambda r: r["seed"])
            for ranked in ranking.values() if ranked]


def prune_winner(spec: StudySpec, record: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The spec's `prune:` step on one winning run: `transferlab prune` with the spec's settings."""
    from .deploy import load_run
    from .deploy.prune import prune_run

    p = spec.prune
    summary = prune_run(load_run(record["run_id"], out_dir), p.sparsity, scope=p.scope, structured=p.structured,
                        recover_epochs=p.recover_epochs)
    dense = summary["dense"]
    for result in summary["results"]:
        results.print(f"pruned {result['reached']:.0%} of the {p.scope} weights of the winner {record['run_id']}: "
                      f"{summary['metric']} val {dense['val']:.4f} → {result['val']:.4f}, test {dense['test']:.4f} → "
                      f"{result['test']:.4f}")
    return summary


def study_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The headline metrics of rows that may mix single- and multi-label datasets: the union, in order."""
    tasks = [False] * any(r.get("task") != "multi-label" for r in rows) + [True] * any(
        r.get("task") == "multi-label" for r in rows)
    return list(dict.fromkeys(m for multi in tasks for m in headline_metrics(multi)))


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    metrics = study_metrics(rows)
    return [*GROUP, "reference", "n_seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95")),
            "fit_seconds_mean", "gflops"]


def write_leaderboard_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(rows), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not np.isnan(v) else
                                 "" if isinstance(v, float) or v is None else v) for k, v in row.items()})


def format_mean_std(row: dict[str, Any], metric: str) -> str:
    mean, std = row.get(f"{metric}_mean", np.nan), row.get(f"{metric}_std", np.nan)
    if np.isnan(mean):
        return "–"
    return f"{mean:.4f}" + ("" if np.isnan(std) else f" ± {std:.4f}")


def leaderboard_table(rows: list[dict[str, Any]], title: str) -> Table:
    metrics = study_metrics(rows)
    table = Table(title=title)
    for column in (*GROUP, "seeds", *metrics, "95% CI", "fit s"):
        table.add_column(column, justify="right" if column not in GROUP else "left")
    for row in rows:
        ci = row[f"{row['primary']}_ci95"]
        paradigm = row["paradigm"] + (f" [dim](reference: {row['reference']})[/]" if row["reference"] else "")
        table.add_row(row["dataset"], row["backbone"], paradigm, str(row["n_seeds"]),
                      *(format_mean_std(row, m) for m in metrics), "" if np.isnan(ci) else f"± {ci:.4f}",
                      f"{row['fit_seconds_mean']:.1f}")
    return table
