"""A study's cells spread over workers on many machines, through the Optuna storage the search already uses.

`transferlab study SPEC --storage postgresql://... [--worker]`: the first command to reach the storage enqueues
every cell of the grid as one waiting trial, its run id the trial's only parameter. Every worker then asks
the storage for the next waiting trial and runs that cell into the shared output folder (`execute_run`, which
reuses an up-to-date record). The storage hands a waiting trial to exactly one worker; a worker that dies
mid-cell stops its heartbeat, and the next worker that looks fails that trial and enqueues it again
(`open_storage`'s retry callback), so the cell runs elsewhere. The command without --worker runs cells too,
waits for the last one, and the study then goes on as in one process: every record is up to date (reused),
and the leaderboard and report are written.

The output folder and $TRANSFERLAB_CACHE must be on a file system every worker sees: records and features are
written atomically, and the feature store lets one worker at a time encode into a folder. A worker may be a
torchrun job: rank 0 talks to the storage and the other ranks run the cells it announces.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import optuna

from ..config import StudySpec
from ..core.distributed import broadcast_from_main, is_main, world_size
from ..core.errors import TransferlabError
from ..core.progress import log
from ..features import FeatureStore
from ..resolve import expand
from ..runner import PoolsByData, execute_run, headline
from .storage import READY_ATTR, open_storage, wait_until_ready
from .workers import TrialFailed, run_trials

CELL = "cell"  # the trial parameter that names the cell (its run id)
CELLS_ATTR = "transferlab:cells"
DEFAULT_HEARTBEAT = 10  # seconds, when the spec has no search: block to take it from


def run_cells(spec: StudySpec, out_dir: Path, url: str, *, name: str | None = None, worker: bool = False,
              force: bool = False, resume: bool = False) -> list[dict[str, Any]]:
    """Run cells of `spec` from the shared queue in `url` until every cell has finished (whoever ran it);
    returns the records this process made. `worker` only names the role: the caller without it goes on to
    the leaderboard and report."""
    pools_of = PoolsByData()
    cells = {cell.run_id: cell for cell in expand(spec, is_multi_label=lambda d: pools_of(d).train.multi_label)}
    store, records = FeatureStore(), []

    def run_cell(run_id: str) -> dict[str, Any]:
        cell = cells[run_id]
        return execute_run(cell, out_dir, study=spec.name, pools=pools_of(cell.data), store=store,
                           reuse=not force, resume=resume)

    if not is_main():  # torchrun: rank 0 asks the storage, this rank runs the cells it announces
        while (run_id := broadcast_from_main()) is not None:
            records.append(run_cell(run_id))
        return records
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per cell instead, below
    heartbeat = spec.search.heartbeat if spec.search else DEFAULT_HEARTBEAT
    study = open_cell_queue(open_storage(url, heartbeat), name or f"{spec.name}-cells", list(cells))

    def objective(trial) -> float:
        run_id = trial.suggest_categorical(CELL, list(cells))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if world_size() > 1:
            broadcast_from_main(run_id)
        try:
            record = run_cell(run_id)
        except TransferlabError as exc:  # the coordinator's own pass over the grid meets it again and stops
            trial.set_user_attr("fail_reason", str(exc))
            raise TrialFailed(str(exc)) from None
        records.append(record)
        log.info(f"[bold]cell[/] {run_id}: {headline(record)}"
                 + (" (reused: record up to date)" if record.get("reused") else ""))
        return 0.0  # a cell has no objective; the storage only needs it finished

    # Until every cell has finished, whoever ran it: meanwhile a dead worker's cell comes back and runs here.
    run_trials(study, objective, len(cells), timeout=None, heartbeat=heartbeat, print_trials=False)
    if world_size() > 1:
        broadcast_from_main(None)
    return records


def open_cell_queue(storage, name: str, run_ids: list[str]):
    """The study's queue: created with every cell enqueued once, or joined after checking it holds the same
    cells (another spec's queue under the same name is refused)."""
    digest = hashlib.sha256("\n".join(run_ids).encode()).hexdigest()
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name)
        wait_until_ready(study, name)  # its creator may still be enqueuing
        if study.user_attrs.get(CELLS_ATTR) != digest:
            raise TransferlabError(f"the cell queue '{name}' in this storage holds another grid's cells; give "
                                   "--study-name a new name") from None
        return study
    for run_id in run_ids:
        study.enqueue_trial({CELL: run_id})
    study.set_user_attr(CELLS_ATTR, digest)
    study.set_user_attr(READY_ATTR, True)
    return study

