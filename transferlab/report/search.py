"""The report's hyper-parameter search section: one entry per `<study dir>/search/<name>.json` summary.

Like the rest of the report it reads files only: the summary `transferlab.search.summarize` wrote (trials,
best, importances) and the retrained best configuration's run records beside it. The figures are Optuna's
own matplotlib plots, drawn on an in-memory study rebuilt from the summary (the search's storage may be a
PostgreSQL server the report cannot reach, or gone).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial
from optuna.visualization import matplotlib as optuna_plots

from ..core.errors import TransferlabError
from . import plots
from .plots import data_uri, plt

MISSING = "–"  # a parameter the trial did not use (conditional on another choice)
REQUIRED = ("name", "objective", "direction", "trials")


def search_context(study_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per search summary under `study_dir/search/`, in file-name order; none without that folder."""
    study_dir = Path(study_dir)
    return [search_entry(load_summary(path), study_dir) for path in sorted((study_dir / "search").glob("*.json"))]


def load_summary(path: Path) -> dict[str, Any]:
    return read_summary(path, REQUIRED, "search", "search/")


def read_summary(path: Path, required: tuple[str, ...], command: str, folder: str) -> dict[str, Any]:
    """A JSON summary `transferlab <command>` wrote, or a TransferlabError naming the file (as `load_records`
    does for run records). The search and pruning sections read theirs through it."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: unreadable {command} summary ({exc}); rerun `transferlab {command}` to "
                               "rewrite it, or delete it") from None
    missing = [k for k in required if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise TransferlabError(f"{path}: not a {command} summary (no {', '.join(missing)}); rerun `transferlab "
                               f"{command}` to rewrite it, or move it out of {folder}")
    return summary


def search_entry(summary: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """What the template shows of one search: title line, best trial and its retrained runs, top-N table,
    failures, and the three figures (None, with the reason in `no_plots`, when nothing completed)."""
    trials = summary["trials"]
    complete = [t for t in trials if t["state"] == "complete" and _finite(t.get("value"))]
    paths = param_paths(summary)
    figures = search_figures(summary, paths) if complete else {}
    return {
        "name": summary["name"], "anchor": "search-" + quote(summary["name"], safe=""),
        "objective": summary["objective"], "direction": summary["direction"],
        "sampler": summary.get("sampler"), "pruner": summary.get("pruner"), "storage": summary.get("storage"),
        "budget": summary.get("budget"), "counts": summary.get("counts") or _counts(trials),
        "space": summary.get("space") or {},
        "best": best_context(summary, study_dir),
        "params": paths,
        "top": top_rows(summary, paths),
        "failed": [{"number": t["number"], "reason": t.get("fail_reason") or "no reason recorded"}
                   for t in trials if t["state"] == "fail"],
        "history": figures.get("history"), "importances": figures.get("importances"),
        "parallel": figures.get("parallel"),
    }


def _counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail", "running")}


def param_paths(summary: dict[str, Any]) -> list[str]:
    """The table's parameter columns: the space's order, then any path only trials know (an older space)."""
    paths = list(summary.get("space") or {})
    for trial in summary["trials"]:
        paths += [p for p in trial.get("params") or {} if p not in paths]
    return paths


# --------------------------------------------------------------------------------------------- best, table

def best_context(summary: dict[str, Any], study_dir: Path) -> dict[str, Any] | None:
    """The best trial and the records of its retrained configuration (one per seed), scored once on test."""
    best = summary.get("best")
    if not best:
        return None
    metrics = summary.get("final_metrics") or []
    objective = summary["objective"]
    runs = []
    for i, run_id in enumerate(summary.get("final_run_ids") or []):
        test = metrics[i] if i < len(metrics) else {}
        runs.append({"run_id": run_id, "exists": (study_dir / "runs" / f"{run_id}.json").is_file(),
                     "objective": test.get(objective),
                     "accuracy": test.get("accuracy") if objective != "accuracy" else None})
    return {"number": best["number"], "value": best["value"], "shown": fmt_value(best["value"]),
            "params": [{"path": p, "value": shown_value(v)} for p, v in (best.get("params") or {}).items()],
            "runs": runs}


def ranked_trials(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials with a value, best first in the search's direction: completed ones, then pruned ones.

    A pruned trial's value is the last one it reported (an early epoch's, and for log_loss searches the
    training loop's val_loss), so it is ranked below every trial that finished rather than among them."""
    sign = -1.0 if summary["direction"] == "maximize" else 1.0
    scored = [t for t in summary["trials"] if t["state"] in ("complete", "pruned") and _finite(t.get("value"))]
    return sorted(scored, key=lambda t: (t["state"] != "complete", sign * t["value"], t["number"]))


def top_rows(summary: dict[str, Any], paths: list[str]) -> list[dict[str, Any]]:
    """The first `top` ranked trials as table rows: number, value, state, duration, one cell per parameter."""
    best = (summary.get("best") or {}).get("number")
    rows = []
    for trial in ranked_trials(summary)[: int(summary.get("top") or 10)]:
        params = trial.get("params") or {}
        steps = len(trial.get("intermediate") or {})
        rows.append({
            "number": trial["number"], "value": trial["value"], "shown": fmt_value(trial["value"]),
            "state": trial["state"],
            "note": f"at step {steps - 1}" if trial["state"] == "pruned" and steps else "",
            "duration": fmt_seconds(trial.get("seconds")), "best": trial["number"] == best,
            "cells": [shown_value(params[p]) if p in params else MISSING for p in paths],
        })
    return rows


def shown_value(value: Any) -> str:
    """A parameter as the table shows it: 4 significant digits for floats (log-uniform rates), else as is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_value(value: float) -> str:
    """An objective value: 4 decimals, or 3 significant digits where those would read 0.0000 (a log_loss of
    1e-5 on an easy validation set is still better than one of 1e-3)."""
    return f"{value:.3g}" if value and abs(value) < 1e-3 else f"{value:.4f}"


def fmt_seconds(seconds: Any) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ figures

def search_figures(summary: dict[str, Any], paths: list[str]) -> dict[str, str | None]:
    """Optimisation history, importances (None when the summary has none) and parallel coordinates as data URIs."""

    study = rebuild_study(summary)
    label = f"validation {summary['objective']}"
    with warnings.catch_warnings():  # Optuna marks its matplotlib backend "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical")  # an axis one trial spans
        history = optuna_plots.plot_optimization_history(study, target_name=label)
        history.set_title(f"{summary['name']}: {label} by trial ({summary['direction']})")
        history_png = plots._png(history.figure)
        parallel = optuna_plots.plot_parallel_coordinate(study, target_name=label)
        parallel.set_title(f"{summary['name']}: completed trials across the space")
        parallel.figure.set_size_inches(max(6.4, 1.6 * len(paths) + 3), 4.8)  # room for every axis's ticks
        parallel_png = plots._png(parallel.figure)
    plt.close("all")  # Optuna's style context may leave nothing open, but a report builds many figures
    found = summary.get("importances")
    return {"history": data_uri(history_png), "parallel": data_uri(parallel_png),
            "importances": data_uri(importance_bars(found, summary["name"])) if found else None}


def rebuild_study(summary: dict[str, Any]):
    """An in-memory Optuna study holding the summary's trials under their own numbers.

    Numbers the summary leaves out (a worker's surplus slot, given back) become failed placeholders, since
    Optuna numbers added trials in order and the history's x axis should match the table."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line per report
    study = optuna.create_study(direction=summary["direction"], study_name=summary["name"])
    by_number = {t["number"]: t for t in summary["trials"]}
    frozen = []
    for number in range(max(by_number, default=-1) + 1):
        trial = by_number.get(number)
        if trial is None or trial["state"] not in ("complete", "pruned") or not _finite(trial.get("value")):
            frozen.append(create_trial(state=TrialState.FAIL))  # the plots draw completed trials only
            continue
        frozen.append(create_trial(
            state=TrialState.COMPLETE if trial["state"] == "complete" else TrialState.PRUNED,
            value=trial["value"], params=trial["params"],
            distributions={k: json_to_distribution(v) for k, v in trial["distributions"].items()},
            intermediate_values={int(k): v for k, v in (trial.get("intermediate") or {}).items()}))
    study.add_trials(frozen)
    return study


def importance_bars(found: dict[str, float], name: str) -> bytes:
    """The summary's precomputed importances (fANOVA) as horizontal bars, most important on top."""
    ordered = sorted(found.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.4, max(2.2, 0.45 * len(ordered) + 1.2)))
    ax.barh([k for k, _ in ordered], [v for _, v in ordered], color="tab:blue")
    for y, (_, v) in enumerate(ordered):
        ax.annotate(f"{v:.2f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set(xlabel="importance for the objective (fANOVA, sums to 1)", xlim=(0, max(1.0, max(found.values())) * 1.1),
           title=f"{name}: parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return plots._png(fig)
