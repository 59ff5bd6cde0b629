"""Hyper-parameter search: Optuna explores a space over any run option; each trial is one run on the shared
feature cache, scored on validation only; the best configuration is then retrained and scored once on test
as an ordinary run record, beside the study's other rows.

One module per job, each importing only those before it: `space` (the `search:` space → dimensions; a trial's
values → RunSpec), `storage` (the Optuna study in its RDB storage), `retrain` (the best configuration
retrained; the summary), `workers` (the worker loop with its exact shared budget); here, `run_search`
puts them together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from ..config import StudySpec
from ..core.distributed import broadcast_from_main, is_main, world_size
from ..core.progress import log
from ..data import open_pools
from ..features import FeatureStore
from ..resolve import load_study_spec
from ..tracking import Tracker
from .retrain import best_configuration, importances, retrain, summarize, write_summary
from .space import (
    MINIMIZED,
    RUN_FIELDS,
    Dimension,
    grid_points,
    objective_of,
    parse_space,
    resolve_backbone,
    resolve_paradigm,
    space_digest,
    trial_spec,
    valid_paths,
)
from .storage import (
    BUDGET_ATTR,
    DEFAULT_TRIALS,
    READY_ATTR,
    SPACE_ATTR,
    default_storage,
    make_pruner,
    make_sampler,
    open_search,
    open_storage,
    redact,
)
from .workers import Objective, TrialFailed, budget_status, counts_toward_budget, follow_trials, run_trials

__all__ = [
    "BUDGET_ATTR", "DEFAULT_TRIALS", "MINIMIZED", "READY_ATTR", "RUN_FIELDS", "SPACE_ATTR", "Dimension", "Objective",
    "TrialFailed", "best_configuration", "budget_status", "counts_toward_budget", "default_storage",
    "follow_trials", "grid_points", "importances", "make_pruner", "make_sampler", "objective_of", "open_search",
    "open_storage", "parse_space", "redact", "resolve_backbone", "resolve_paradigm", "retrain", "run_search",
    "run_trials", "search_and_retrain", "space_digest", "summarize", "trial_spec", "valid_paths", "write_summary",
]


def run_search(spec: StudySpec | str | Path, out: str | Path | None = None, *, trials: int | None = None,
               timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
               worker: bool = False, resume: bool = False) -> dict[str, Any]:
    """Search the spec's space; unless `worker`, retrain the best configuration (one record per study seed)
    and write `out/search/<name>.json`. Returns the search summary.

    Every worker runs this with the same spec and storage: the budget is shared, and the command that is not a
    `--worker` waits for the others' last trials before it retrains."""
    return search_and_retrain(spec, out, trials=trials, timeout=timeout, storage=storage, study_name=study_name,
                              worker=worker, resume=resume)[0]


def search_and_retrain(spec: StudySpec | str | Path, out: str | Path | None = None, *, trials: int | None = None,
                       timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
                       worker: bool = False, resume: bool = False,
                       tracker: Tracker | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`run_search`, returning the retrained best's records too (a study adds them to its leaderboard).
    `tracker`: the search's parent run (tracking.py), which its trials and retrained runs join."""
    if not isinstance(spec, StudySpec):
        spec = load_study_spec(spec)
    dims = parse_space(spec)
    search = spec.search
    out_dir = Path(out) if out else Path("runs") / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    name = study_name or spec.name
    url = storage or default_storage(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # transferlab prints one line per trial instead
    pools = open_pools(spec.datasets[0])
    multi_label = pools.train.multi_label
    metric, direction = objective_of(spec, multi_label)
    if not is_main():  # torchrun: rank 0 alone talks to the storage; this rank runs what it is told
        return follow_trials(spec, pools, out_dir, metric), []
    best = None
    try:
        study = open_search(spec, dims, open_storage(url, search.heartbeat), name, worker=worker, resume=resume,
                            multi_label=multi_label, trials=trials or search.trials)
        budget = study.user_attrs[BUDGET_ATTR]
        if trials and trials != budget:
            log.info(f"search {name}: counting to the budget stored in the study, {budget} trials "
                     f"(--trials {trials} applies only to a new search)")
        objective = Objective(spec, dims, pools, FeatureStore(), out_dir / "search" / "trials", budget, metric,
                              direction, tracker)
        started = time.perf_counter()
        run_trials(study, objective, budget, timeout=timeout or search.timeout, heartbeat=search.heartbeat)
        log.info(f"search {name}: {budget_status(study)[0]}/{budget} trials done, "
                 f"{time.perf_counter() - started:.1f}s in this process{_ranks()}")
        best = None if worker else best_configuration(study, metric)
    finally:
        broadcast_from_main({"kind": "stop", "best": best})  # the other ranks retrain with this one, or exit
    if worker:
        return summarize(study, spec, dims, url, budget, metric, final_records=[]), []
    records = retrain(spec, best, out_dir, pools, tracker)
    summary = summarize(study, spec, dims, url, budget, metric, final_records=records)
    path = write_summary(summary, out_dir)
    log.info(f"search summary {path}")
    if tracker is not None:
        tracker.attach([path])
    return summary, records


def _ranks() -> str:
    return f" ({world_size()} torchrun processes per trial)" if world_size() > 1 else ""
