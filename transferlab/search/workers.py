"""The worker loop: trials asked from the storage one at a time under a budget shared exactly by every worker.

transferlab adds only what Optuna's `study.optimize` lacks for that budget: a worker asks for a trial only
while finished + running trials are below it, and a trial that still finds the budget full when it starts
(two workers asked at once) gives its slot back (Optuna's MaxTrialsCallback checks only when a trial ends, so
N workers overshoot by up to N − 1). Each trial is one run on validation only (`Objective`); under torchrun
the ranks > 0 follow rank 0's trials (`follow_trials`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config import StudySpec
from ..core.distributed import broadcast_from_main, world_size
from ..core.errors import TransferlabError
from ..core.progress import log, progress_bar
from ..features import FeatureStore
from ..runner import execute_run
from ..tracking import Tracker, scalars
from ..train.hooks import listening_to_epochs
from .retrain import retrain
from .space import Dimension, trial_spec


class TrialFailed(Exception):
    """A trial that cannot give a score (bad configuration, NaN loss): recorded as failed, the search goes on."""


def counts_toward_budget(trial) -> bool:
    """Complete, pruned, and failed for a reason of its own (bad config, NaN loss): those use up the budget.
    A trial failed by a dead worker's heartbeat is retried instead, and a surplus one gave its slot back."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs and \
        not trial.user_attrs.get("surplus")


def budget_status(study) -> tuple[int, int]:
    """(trials that used up budget, trials running now)."""
    trials = study.get_trials(deepcopy=False)
    return (sum(counts_toward_budget(t) for t in trials), sum(t.state == TrialState.RUNNING for t in trials))


class Objective:
    """One trial = one run on validation only (`execute_run(validation_only=True)`), on shared pools and
    feature store; epochs report to the pruner; failures become failed trials with their reason. `tracker`
    logs each trial as a run (its sampled values, epochs and validation metrics)."""

    def __init__(self, spec: StudySpec, dims: list[Dimension], pools, store: FeatureStore, trial_dir: Path,
                 budget: int, metric: str, direction: str, tracker: Tracker | None = None):
        self.spec, self.dims, self.pools, self.store, self.trial_dir = spec, dims, pools, store, trial_dir
        self.budget, self.metric, self.direction = budget, metric, direction
        self.tracker = tracker or Tracker()

    def __call__(self, trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        ahead = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and
                 (counts_toward_budget(t) or t.state == optuna.trial.TrialState.RUNNING)]
        if len(ahead) >= self.budget:  # another worker asked at the same moment and took the last slot
            trial.set_user_attr("surplus", True)
            self._fail(trial, "the budget was already taken by other workers")
        values: dict[str, Any] = {}
        for dim in self.dims:
            if dim.active(values):
                values[dim.path] = dim.suggest(trial)
        tags = {"kind": "trial", "trial": trial.number, "objective": self.metric}
        with self.tracker.run(f"trial{trial.number}", values, tags,
                              folder=f"search/{trial.study.study_name}/trial{trial.number}") as tracked:
            try:
                value = self._score(trial, values)
            except optuna.TrialPruned:
                tracked.state = "pruned"
                raise
            finally:
                tracked.scores(scalars(trial.user_attrs.get("val_metrics"), "val/"))
        return value

    def _score(self, trial, values: dict[str, Any]) -> float:
        """The trial's run on validation → its objective value (or a failed / pruned trial)."""
        folder = self.trial_dir / f"trial{trial.number}-{os.getpid()}"
        try:
            run = trial_spec(self.spec, values, seed=self.spec.seeds[0], label=f"trial{trial.number}")
            if world_size() > 1:  # torchrun: the other ranks run the same trial with this process (follow_trials)
                broadcast_from_main({"kind": "trial", "values": values, "number": trial.number})
            with listening_to_epochs(self._reporter(trial)):
                result = execute_run(run, folder, pools=self.pools, store=self.store, reuse=False,
                                     validation_only=True)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Optuna fails the trial; queue its configuration so that a rerun does it
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial(values)
            raise
        except TransferlabError as exc:
            self._fail(trial, str(exc))
        except Exception as exc:  # noqa: BLE001 — any one configuration may break; the search goes on
            self._fail(trial, f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # a trial's checkpoints are never resumed
        value = result["val_metrics"].get(self.metric)
        for key in ("backbone_passes", "selected", "timings"):
            trial.set_user_attr(key, result[key])
        trial.set_user_attr("val_metrics", {k: v for k, v in result["val_metrics"].items()
                                            if isinstance(v, int | float) or v is None})
        if value is None or not np.isfinite(value):
            self._fail(trial, f"validation {self.metric} is undefined ({value}) for this configuration")
        return float(value)

    def _reporter(self, trial):
        """Per-epoch validation score → trial.report; the pruner may stop the trial (Optuna's TrialPruned)."""
        key = "val_loss" if self.direction == "minimize" else None
        step = itertools.count()

        def report(figures: dict[str, Any]) -> None:
            name = key or next((k for k in ("val_accuracy", "val_micro_f1") if k in figures), "val_loss")
            value = figures.get(name)
            if value is None or not np.isfinite(value):
                return
            # val_loss is reported negated when the objective is maximised, so the pruner compares like with like
            trial.report(float(-value if name == "val_loss" and self.direction == "maximize" else value), next(step))
            if broadcast_from_main(trial.should_prune()):  # under torchrun every rank stops at the same epoch
                raise optuna.TrialPruned(f"pruned at epoch {figures.get('epoch', '?')}")

        return report

    @staticmethod
    def _fail(trial, reason: str):
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)


def run_trials(study, objective, budget: int, *, timeout: float | None, heartbeat: int,
               print_trials: bool = True) -> None:
    """Ask the storage for trials until the budget is used up (by every worker together) or `timeout`.

    A worker that finds the remaining budget in other workers' hands waits while they run: if one of them
    dies, its trial is failed by its heartbeat and retried here. `print_trials`: a line per finished trial (false:
    the objective prints its own)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = False  # as in Optuna's optimize, a timeout lets the first trial start
    done, _ = budget_status(study)
    with progress_bar(f"search {study.study_name}", budget, "trial") as bar:
        bar(done)
        while True:
            optuna.storages.fail_stale_trials(study)
            finished, running = budget_status(study)
            bar(finished - done)
            done = finished
            if finished >= budget or (ran and deadline is not None and time.monotonic() >= deadline):
                return
            if finished + running >= budget:
                time.sleep(min(heartbeat, 2))
                continue
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False,
                           callbacks=[_print_trial] if print_trials else None)
            ran = True


def _print_trial(study, trial) -> None:
    reason = trial.user_attrs.get("fail_reason")
    if trial.user_attrs.get("surplus"):
        return
    what = (f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower() +
            (f" ({reason})" if reason else ""))
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    log.info(f"[bold]trial {trial.number}[/] {what}  {params}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def follow_trials(spec: StudySpec, pools, out_dir: Path, metric: str) -> dict[str, Any]:
    """torchrun ranks > 0: run each trial rank 0 announces (the training loop's DDP path needs every rank in
    it), stop at the epochs where rank 0's pruner stops, then join the retraining of the best."""
    store = FeatureStore()

    def pruned_by_rank_0(figures: dict[str, Any]) -> None:
        if broadcast_from_main():
            raise optuna.TrialPruned()

    while True:
        message = broadcast_from_main()
        if message["kind"] == "stop":
            if message["best"] is not None:
                retrain(spec, message["best"], out_dir, pools)
            return {}
        folder = out_dir / "search" / "trials" / f"trial{message['number']}-{os.getpid()}"
        try:
            run = trial_spec(spec, message["values"], seed=spec.seeds[0], label=f"trial{message['number']}")
            with listening_to_epochs(pruned_by_rank_0):
                execute_run(run, folder, pools=pools, store=store, reuse=False, validation_only=True)
        except Exception:  # noqa: BLE001 — rank 0 records how the trial ended; this rank waits for the next
            pass
        finally:
            shutil.rmtree(folder, ignore_errors=True)
