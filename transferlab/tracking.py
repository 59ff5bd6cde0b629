"""Experiment tracking: every run also logged to MLflow or TensorBoard while it computes (optional extra `track`).

The run record stays the one source of truth (the leaderboard and report read records only); tracking copies
what a run produces into the tool people already browse:

- MLflow (`tracking: mlflow`): a study is a parent run named after it, each of its cells a nested run; a search
  is a parent run (nested in its study's, when a study runs it) with a nested run per trial and per retrained
  seed. A run logs its spec (`data.*`, `backbone.*`, `paradigm.*`, `seed`, ...), its hyper-parameters as used
  (`params.*`), each training epoch as it ends (`epoch/<figure>`, step = epoch), its final `val/*` and `test/*`
  scalars, timings and backbone passes, and its record JSON as an artifact; the study's parent run gets
  report.html, leaderboard.csv and study.yaml. The default store is `sqlite:///OUT/mlflow.db` with artifacts
  under `OUT/mlartifacts` (MLflow 3 refuses new file stores, and SQLite needs no server).
- TensorBoard (`tracking: tensorboard`): event files per run under `OUT/tensorboard/<run id>/` (search trials
  under `search/<name>/trial<N>/`): the same scalars, and the parameters on the HParams tab.

A cell whose record was up to date (reused) is logged too, from its record — marked `transferlab.reused` —
so each study invocation's parent run shows the whole grid, as the report does. TensorBoard skips a reused run
that already has event files, and a recomputed run replaces its old ones (unless it resumes).

Only the process that writes records logs (torchrun rank 0): the others get the `Tracker` that does nothing.
Per-epoch figures come through `train/hooks.py`, the listener the search's pruner uses too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import RunSpec, Tracking
from .core.distributed import is_main
from .core.errors import TransferlabError
from .core.registry import did_you_mean
from .record import record_path
from .train.hooks import listening_to_epochs

KINDS = typing.get_args(Tracking)  # none | mlflow | tensorboard: the spec's choices
EXTRA = "pip install 'transferlab[track]'"
RUNS_EXPERIMENT = "transferlab-runs"  # the MLflow experiment of single runs (`transferlab run`)
TAG = "transferlab."  # prefix of the tags transferlab sets
PARAM_LIMIT = 6000  # MLflow's longest parameter value


def open_tracking(kind: str | None, out_dir: str | Path, *, uri: str | None = None,
                  experiment: str = RUNS_EXPERIMENT) -> Tracker:
    """The tracker for `kind` (none | mlflow | tensorboard); the one that does nothing for none and on torchrun
    ranks > 0. `uri`: MLflow's tracking URI, or TensorBoard's log folder. Fails in one line when the extra is
    missing, before anything runs."""
    kind = kind or "none"
    if kind not in KINDS:
        raise TransferlabError(f"tracking: {kind}{did_you_mean(kind, KINDS)}; use one of {', '.join(KINDS)}")
    if kind == "none" or not is_main():
        return Tracker()
    if kind == "mlflow":
        return MlflowTracker.open(mlflow_uri(uri, out_dir), experiment, out_dir)
    return TensorBoardTracker.open(Path(uri) if uri else Path(out_dir) / "tensorboard", out_dir)


def mlflow_uri(given: str | None, out_dir: str | Path) -> str:
    """The spec's / command's URI, else $MLFLOW_TRACKING_URI, else a SQLite file in the output folder."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → dotted keys; lists as JSON text; None left out (MLflow and HParams take scalars)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}.")
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        elif value is not None:
            out[name] = value
    return out


def spec_params(spec: RunSpec) -> dict[str, Any]:
    """What the run was asked to do, as parameters: data, backbone, paradigm (its params as written), seed, options."""
    return flat(spec.model_dump(mode="json", exclude={"features_source"}))


def scalars(values: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """The finite numbers of a metrics dict (per-class lists, confusion matrices and text left out)."""
    return {f"{prefix}{k}": float(v) for k, v in (values or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def final_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's end results: validation and test metrics, timings, images through the backbone."""
    return {**scalars(record.get("val_metrics"), "val/"), **scalars(record.get("metrics"), "test/"),
            **scalars(record.get("timings"), "time/"), **scalars(record.get("backbone_passes"), "backbone_passes/")}


class RunLog:
    """One tracked run (a cell, a trial, a single run). This base logs nothing: tracking is off."""

    def __init__(self):
        self.state: str | None = None  # set by the caller for an end that is not a failure (a pruned trial)
        self._next_step = 1

    def epoch(self, figures: dict[str, Any]) -> None:
        """The loop's figures of one epoch (the listener of train/hooks.py)."""
        self.scores(scalars({k: v for k, v in figures.items() if k != "epoch"}, "epoch/"), self._step(figures))

    def result(self, record: dict[str, Any]) -> None:
        """The run's record: parameters as used, final scalars, the record itself; a reused record's history too
        (its epochs were logged, if at all, by the invocation that computed it)."""
        if record.get("reused"):
            self.tags({"reused": "true"})
            for figures in record.get("history") or []:
                self.epoch(figures)
        self.params(flat(record.get("params") or {}, "params."))
        self.params({f"selected.{k}": v for k, v in (record.get("selected") or {}).items()  # what validation chose
                     if isinstance(v, int | float | str | bool)})
        self.scores(final_scalars(record))

    def _step(self, figures: dict[str, Any]) -> int:
        # Epochs count on across phases and a final refit (each restarts at 1), and a resumed fit starts
        # where it stopped: step i is the record's history[i - 1].
        step = max(self._next_step, int(figures.get("epoch") or 0))
        self._next_step = step + 1
        return step

    def params(self, values: dict[str, Any]) -> None:
        pass

    def scores(self, values: dict[str, float], step: int | None = None) -> None:
        pass

    def tags(self, values: dict[str, Any]) -> None:
        pass

    def end(self, state: str, error: str | None) -> None:
        pass


class Tracker:
    """Where runs are logged. This base logs nothing (tracking: none, torchrun ranks > 0); the backends below
    override `_start` and `_group`."""

    def __init__(self, out_dir: str | Path | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else None

    @contextmanager
    def group(self, name: str, tags: dict[str, Any] | None = None) -> Iterator[Tracker]:
        """A parent run (a study, a search): the runs started on the tracker it yields nest in it."""
        child = self._group(name, tags or {})
        with _ending(child._finish):
            yield child

    @contextmanager
    def run(self, name: str, params: dict[str, Any], tags: dict[str, Any] | None = None, *,
            folder: str | None = None, fresh: bool = True) -> Iterator[RunLog]:
        """One run, listening to its training epochs while inside. `folder`: where TensorBoard writes it (relative
        to the log folder; default `name`); `fresh`: not resumed, so earlier event files of the run are stale."""
        log = self._start(name, params, tags or {}, folder or name, fresh)
        with _ending(lambda state, error: log.end(log.state or state, error)), listening_to_epochs(log.epoch):
            yield log

    def cell(self, spec: RunSpec, kind: str = "cell", *, fresh: bool = True):
        """`run` for a cell of the grid (or a retrained best, or a single run), named by its run id."""
        tags = {"kind": kind, "run_id": spec.run_id, "dataset": spec.data.label, "seed": spec.seed,
                "backbone": spec.backbone.label if spec.backbone else "none", "paradigm": spec.paradigm.row_label}
        return self.run(spec.run_id, spec_params(spec), tags, fresh=fresh)

    def attach(self, paths: Iterable[str | Path]) -> None:
        """Files for the group run (the report, the leaderboard); those that do not exist are left out."""

    def _group(self, name: str, tags: dict[str, Any]) -> Tracker:
        return self

    def _finish(self, state: str, error: str | None) -> None:
        pass

    def _start(self, name: str, params: dict[str, Any], tags: dict[str, Any], folder: str, fresh: bool) -> RunLog:
        return RunLog()


@contextmanager
def _ending(finish):
    """Calls finish(state, error) as the block ends: finished, failed (with the error) or killed (Ctrl-C)."""
    try:
        yield
    except KeyboardInterrupt:
        finish("killed", "interrupted")
        raise
    except Exception as exc:
        finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    finish("finished", None)


# ---------------------------------------------------------------- MLflow


MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED", "pruned": "KILLED"}


class MlflowTracker(Tracker):
    """Runs in one MLflow experiment through `MlflowClient` (explicit run ids: no global active run)."""

    def __init__(self, client, experiment_id: str, out_dir: str | Path, parent: str | None = None):
        super().__init__(out_dir)
        self.client, self.experiment_id, self.parent = client, experiment_id, parent

    @classmethod
    def open(cls, uri: str, experiment: str, out_dir: str | Path) -> MlflowTracker:
        client = _mlflow_client(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return cls(client, client.create_experiment(experiment, _artifact_location(uri)), out_dir)
            except Exception:  # noqa: BLE001 — another worker created it a moment ago
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        return cls(client, found.experiment_id, out_dir)

    def _create(self, name: str, tags: dict[str, Any]) -> str:
        tags = {f"{TAG}{k}": str(v) for k, v in tags.items()}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def _group(self, name: str, tags: dict[str, Any]) -> MlflowTracker:
        run_id = self._create(name, {**tags, "out": self.out_dir.resolve()} if self.out_dir else tags)
        return MlflowTracker(self.client, self.experiment_id, self.out_dir, run_id)

    def _finish(self, state: str, error: str | None) -> None:
        if self.parent:
            _end_mlflow_run(self.client, self.parent, state, error)

    def _start(self, name, params, tags, folder, fresh) -> RunLog:
        log = MlflowRunLog(self.client, self._create(name, tags), self.out_dir)
        log.params(params)
        return log

    def attach(self, paths: Iterable[str | Path]) -> None:
        for path in paths:
            if self.parent and Path(path).is_file():
                self.client.log_artifact(self.parent, str(path))


class MlflowRunLog(RunLog):
    def __init__(self, client, run_id: str, out_dir: Path | None):
        super().__init__()
        self.client, self.run_id, self.out_dir = client, run_id, out_dir

    def params(self, values: dict[str, Any]) -> None:
        _, Param = _mlflow_entities()
        params = [Param(k[:250], str(v)[:PARAM_LIMIT]) for k, v in values.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per request
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def scores(self, values: dict[str, float], step: int | None = None) -> None:
        Metric, _ = _mlflow_entities()
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step or 0) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def tags(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.client.set_tag(self.run_id, f"{TAG}{key}", str(value))

    def result(self, record: dict[str, Any]) -> None:
        super().result(record)
        path = record_path(self.out_dir, record["run_id"]) if self.out_dir else None
        if path is not None and path.is_file():
            self.client.log_artifact(self.run_id, str(path))

    def end(self, state: str, error: str | None) -> None:
        if state == "pruned":
            self.tags({"state": "pruned"})
        _end_mlflow_run(self.client, self.run_id, state, error)


def _end_mlflow_run(client, run_id: str, state: str, error: str | None) -> None:
    if error:
        client.set_tag(run_id, f"{TAG}error", error[:PARAM_LIMIT])
    client.set_terminated(run_id, MLFLOW_STATUS[state])


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store beside its database file (MLflow's default is ./mlruns under the current
    folder, wherever the command happens to run); a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient  # optional extra
    except ImportError:
        raise TransferlabError(f"tracking: mlflow needs the mlflow package (mlflow-skinny will do): {EXTRA}") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" notes on every new store
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # noqa: BLE001 — a bad URI or an unreachable server is the user's to fix
        raise TransferlabError(f"tracking: mlflow cannot open {uri}: {str(exc).splitlines()[0]}") from None


def _mlflow_entities():
    from mlflow.entities import Metric, Param  # optional extra

    return Metric, Param


# ---------------------------------------------------------------- TensorBoard


class TensorBoardTracker(Tracker):
    """Event files per run under one log folder (`tensorboard --logdir` on it shows every run)."""

    def __init__(self, root: Path, out_dir: str | Path):
        super().__init__(out_dir)
        self.root = root

    @classmethod
    def open(cls, root: Path, out_dir: str | Path) -> TensorBoardTracker:
        _summary_writer()  # fail now, in one line, if the extra is missing
        return cls(root, out_dir)

    def _start(self, name, params, tags, folder, fresh) -> RunLog:
        return TensorBoardRunLog(self.root / folder, params, fresh)


class TensorBoardRunLog(RunLog):
    """Scalars and, at the end, the parameters (HParams tab) of one run. The writer opens at the first scalar,
    so a reused run that already has event files gets no second, empty one."""

    def __init__(self, folder: Path, params: dict[str, Any], fresh: bool):
        super().__init__()
        self.folder, self.hparams, self.fresh = folder, dict(params), fresh
        self.finals: dict[str, float] = {}  # the end results: the HParams tab's metrics
        self.writer, self._cleared = None, False
        self.logged_before = any(folder.glob("events.out.tfevents.*"))

    def result(self, record: dict[str, Any]) -> None:
        if record.get("reused") and self.logged_before:
            return  # its events are there from the invocation that computed it
        super().result(record)

    def params(self, values: dict[str, Any]) -> None:
        self.hparams |= values

    def scores(self, values: dict[str, float], step: int | None = None) -> None:
        if not values:
            return
        writer = self._writer()
        for key, value in values.items():
            writer.add_scalar(key, value, step or 0)
        if step is None:
            self.finals |= values

    def end(self, state: str, error: str | None) -> None:
        if self.writer is None and state == "finished":
            return
        writer = self._writer()
        if self.hparams or self.finals:
            self._write_hparams(writer)
        if state != "finished":  # how a run that did not finish ended (failed, pruned, killed) and why
            writer.add_text("state", state + (f": {error}" if error else ""))
        writer.close()

    def _write_hparams(self, writer) -> None:
        hparams = _hparams_function()
        values = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in self.hparams.items()}
        for summary in hparams(values, self.finals):
            writer.file_writer.add_summary(summary)

    def _writer(self):
        if self.writer is None:
            if self.fresh and not self._cleared:
                for old in self.folder.glob("events.out.tfevents.*"):  # a recomputed run's old curves are stale
                    old.unlink()
                self._cleared = True
            self.writer = _summary_writer()(log_dir=str(self.folder))
        return self.writer


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra
    except ImportError:
        raise TransferlabError(f"tracking: tensorboard needs the tensorboard package: {EXTRA}") from None
    return SummaryWriter


def _hparams_function():
    from torch.utils.tensorboard.summary import hparams  # optional extra

    return hparams
