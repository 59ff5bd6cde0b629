"""Hyper-parameter search: Optuna explores a space over any run option; each trial is one run on the shared
feature cache, scored on validation only; the best configuration is then retrained and scored once on test
as an ordinary run record, beside the study's other rows.

Scale-out is Optuna's: trials live in its RDB storage (a SQLite file under the output folder by default,
PostgreSQL for many workers on many machines) and every worker asks the storage for its next trial;
heartbeats fail and retry the trial of a worker that died. transferlab adds only what `study.optimize` lacks
for an exact budget shared by many workers:
- a worker asks for a trial only while finished + running trials are below the budget, and a trial that
  still finds the budget full when it starts (two workers asked at once) gives its slot back
  (Optuna's MaxTrialsCallback checks only when a trial ends, so N workers overshoot by up to N − 1);
- a grid is enqueued point by point when the search is created: the storage hands each waiting trial to
  exactly one worker (GridSampler's random pick of an unvisited point can give two workers one point).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from .config import BackboneSpec, ParadigmSpec, RunSpec, SearchSpec, SpaceParam, StudySpec
from .core.distributed import broadcast_from_main, is_main, world_size
from .core.errors import TransferlabError
from .core.paths import atomic_write
from .core.progress import console, progress_bar, results
from .data import open_pools
from .evaluate import SCALAR_METRICS, primary_metric
from .features import FeatureStore
from .paradigms import PARADIGMS, get_paradigm_class
from .record import write_record
from .resolve import (
    SPLIT_ONLY_FIELDS,
    apply_overrides,
    backbones_of,
    base_cell,
    find_backbones,
    load_study_spec,
    resolved,
)
from .runner import execute_run, headline
from .train.hooks import listening_to_epochs

DEFAULT_TRIALS = 20
MINIMIZED = frozenset({"log_loss", "ece", "hamming_loss"})  # validation metrics where lower is better
SPACE_ATTR, READY_ATTR, BUDGET_ATTR = "transferlab:space", "transferlab:ready", "transferlab:grid_points"
RUN_FIELDS = ("batch_size", "threshold", "engine", "device")  # top-level run options a space may set


class TrialFailed(Exception):
    """A trial that cannot give a score (bad configuration, NaN loss): recorded as failed, the search goes on."""


# ------------------------------------------------------------------------------------------------ the space

@dataclass(frozen=True)
class Dimension:
    """One searched option: its path in a run (`paradigm.lr`), its Optuna distribution, and `when` it applies."""

    path: str
    param: SpaceParam

    @property
    def when(self) -> dict[str, tuple]:
        return {k: tuple(v) if isinstance(v, list) else (v,) for k, v in self.param.when.items()}

    def active(self, values: dict[str, Any]) -> bool:
        return all(key in values and values[key] in allowed for key, allowed in self.when.items())

    def distribution(self):
        p = self.param
        if p.choices is not None:
            return optuna.distributions.CategoricalDistribution(p.choices)
        if p.is_int:
            return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)

    def suggest(self, trial) -> Any:
        p, d = self.param, self.distribution()
        if p.choices is not None:
            return trial.suggest_categorical(self.path, p.choices)
        if p.is_int:
            return trial.suggest_int(self.path, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.path, d.low, d.high, step=d.step, log=d.log)

    def grid_values(self) -> list[Any]:
        p = self.param
        if p.choices is not None:
            return list(p.choices)
        if p.is_int:
            return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        if p.step is None:
            raise TransferlabError(f"search.space.{self.path}: a grid needs a finite set; give a step or a list "
                                   "of values")
        count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
        return [round(p.low + i * p.step, 12) for i in range(count)]


def parse_space(spec: StudySpec) -> list[Dimension]:
    """The study's search space as dimensions, conditions first; every mistake is one line naming the key.

    `paradigm` / `backbone` default to the study's lists when those hold more than one entry."""
    search = _search_block(spec)
    space = dict(search.space)
    for key, listed in (("paradigm", _names(spec.paradigms, lambda p: p.label or p.name, lambda p: p.row_label)),
                        ("backbone", _names(spec.backbones, lambda b: b.name, lambda b: b.label))):
        if key not in space and len(listed) > 1:
            space[key] = SpaceParam(choices=listed)
    if not space:
        raise TransferlabError(f"study '{spec.name}': search.space is empty; declare at least one parameter, e.g. "
                               "search: {space: {paradigm.lr: {low: 1e-4, high: 1e-1, log: true}}}")
    dims = [Dimension(path, param) for path, param in space.items()]
    dims.sort(key=lambda d: bool(d.when))  # conditions are decided before what depends on them
    by_path = {d.path: d for d in dims}
    for dim in dims:
        _check_path(spec, dim, by_path)
    if search.sampler == "grid":
        for dim in dims:
            dim.grid_values()
    return dims


def _names(entries, short, full) -> list[str]:
    """How the study's paradigms / backbones are named as choices: short names unless two entries share one."""
    names = [short(e) for e in entries]
    return names if len(set(names)) == len(names) else [full(e) for e in entries]


def _search_block(spec: StudySpec) -> SearchSpec:
    if spec.search is None:
        raise TransferlabError(f"study '{spec.name}': no search: block; add one, e.g. search: {{space: "
                               "{paradigm.hidden: [128, 512], paradigm.lr: {low: 1e-4, high: 1e-2, log: true}}}")
    if len(spec.datasets) != 1:
        raise TransferlabError(f"study '{spec.name}': a search tunes on one dataset, the spec lists "
                               f"{len(spec.datasets)}; keep one under datasets:")
    return spec.search


def _check_path(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension]) -> None:
    where = f"study '{spec.name}': search.space.{dim.path}"
    for key, allowed in dim.when.items():
        other = by_path.get(key)
        if other is None or other.param.choices is None:
            raise TransferlabError(f"{where}: when: {key} must name another categorical dimension of the space "
                                   f"(declared: {', '.join(p for p, d in by_path.items() if d.param.choices)})")
        unknown = [v for v in allowed if v not in other.param.choices]
        if unknown:
            raise TransferlabError(f"{where}: when: {key} = {unknown[0]!r} is not one of its choices "
                                   f"{other.param.choices}")
    head, _, field = dim.path.partition(".")
    valid = valid_paths(spec)
    if dim.path in ("paradigm", "backbone"):
        for choice in dim.param.choices or []:
            (resolve_paradigm if head == "paradigm" else resolve_backbone)(spec, choice, where)
        if dim.param.choices is None:
            raise TransferlabError(f"{where}: give a list of {head} names")
    elif head == "paradigm" and field:
        names = {resolve_paradigm(spec, c, where).name for c in _paradigm_choices(spec, dim, by_path)}
        lacking = sorted(n for n in names if field not in get_paradigm_class(n).Params.model_fields)
        if len(lacking) == len(names):
            _unknown(where, dim.path, valid)
        if lacking:
            raise TransferlabError(f"{where}: {', '.join(lacking)} has no parameter '{field}'; add when: "
                                   f"{{paradigm: {sorted(names - set(lacking))[0]}}} or drop it")
    elif dim.path not in valid:
        _unknown(where, dim.path, valid)
    _check_extremes(spec, dim, by_path, where)


def _unknown(where: str, path: str, valid: list[str]) -> None:
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5)
    close += [v for v in valid if v.endswith("." + path) and v not in close]
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    raise TransferlabError(f"{where}: unknown parameter{hint}; keys are paradigm, backbone, paradigm.<param>, "
                           f"backbone.<field>, data.<field> or {', '.join(RUN_FIELDS)}")


def valid_paths(spec: StudySpec) -> list[str]:
    paradigm_fields = {f for p in PARADIGMS.values() for f in p.Params.model_fields}
    return ["paradigm", "backbone", *(f"paradigm.{f}" for f in sorted(paradigm_fields)),
            *(f"backbone.{f}" for f in BackboneSpec.model_fields if f != "name"),
            *(f"data.{f}" for f in sorted(SPLIT_ONLY_FIELDS - {"name"})), *RUN_FIELDS]


def _paradigm_choices(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension]) -> list[str]:
    """The paradigms a `paradigm.<param>` dimension can meet: those its `when` allows, else all candidates."""
    if "paradigm" in dim.when:
        return list(dim.when["paradigm"])
    if "paradigm" in by_path:
        return list(by_path["paradigm"].param.choices)
    return [spec.paradigms[0].row_label]


def _check_extremes(spec: StudySpec, dim: Dimension, by_path: dict[str, Dimension], where: str) -> None:
    """Each end of a range and each choice, alone on the base run, must be a valid run (caught now, not
    as failed trials): e.g. dropout up to 1.5, or an image size the backbone refuses."""
    if dim.path in ("paradigm", "backbone"):
        return
    values = dim.grid_values() if dim.param.choices is not None else [dim.param.low, dim.param.high]
    context = {k: allowed[0] for k, allowed in dim.when.items()}
    if "paradigm" not in context and dim.path.startswith("paradigm.") and "paradigm" in by_path:
        context["paradigm"] = _paradigm_choices(spec, dim, by_path)[0]
    for value in values:
        if dim.param.choices is None and dim.param.is_int:
            value = int(value)
        try:
            trial_spec(spec, {**context, dim.path: value}, seed=spec.seeds[0])
        except TransferlabError as exc:
            raise TransferlabError(f"{where}: the value {value!r} makes an invalid run: {exc}") from None


# ------------------------------------------------------------------------------------- trial → run spec

def resolve_paradigm(spec: StudySpec, choice: Any, where: str = "search"):
    """A paradigm choice: a study paradigm's row label or name (its params come along), or any registered name."""
    for paradigm in spec.paradigms:
        if choice in (paradigm.row_label, paradigm.label):
            return paradigm
    for paradigm in spec.paradigms:
        if choice == paradigm.name:
            return paradigm
    if choice not in PARADIGMS:
        close = difflib.get_close_matches(str(choice), list(PARADIGMS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TransferlabError(f"{where}: unknown paradigm '{choice}'{hint}; available: {', '.join(sorted(PARADIGMS))}")
    return ParadigmSpec(name=choice)


def resolve_backbone(spec: StudySpec, choice: Any, where: str = "search"):
    """A backbone choice: a study backbone's label or name (its weights come along), or any timm model name."""
    found = find_backbones(spec.backbones, choice)
    if found:
        return found[0]
    return resolved(BackboneSpec, {"name": choice}, f"{where}: backbone {choice}")


def trial_spec(spec: StudySpec, values: dict[str, Any], *, seed: int, label: str | None = None) -> RunSpec:
    """The run a trial's values describe: the study's base cell for the chosen paradigm and backbone, its
    overrides, then each value at its path."""
    data = spec.datasets[0]
    paradigm = resolve_paradigm(spec, values.get("paradigm", spec.paradigms[0].row_label))
    backbone = None
    if get_paradigm_class(paradigm.name).needs_backbone:
        if "backbone" not in values and not spec.backbones:
            raise TransferlabError(f"study '{spec.name}': paradigm '{paradigm.name}' needs a backbone; add one "
                                   "under backbones:")
        default = backbones_of(spec, paradigm)[0].label if spec.backbones else None  # its own, if it names some
        backbone = resolve_backbone(spec, values.get("backbone", default))
    cell = apply_overrides(spec, base_cell(spec, data, backbone, paradigm, seed), data, backbone, paradigm)
    for path, value in values.items():
        head, _, field = path.partition(".")
        if not field:
            if head not in ("paradigm", "backbone"):
                cell[head] = value
        elif cell.get(head) is not None:  # backbone.* of a paradigm that uses none does not apply
            cell[head] = {**cell[head], field: value}
    if label:
        cell["paradigm"] = {**cell["paradigm"], "label": label}
    return resolved(RunSpec, cell, f"study '{spec.name}', search trial {json.dumps(values, default=str)}")


def grid_points(dims: list[Dimension]) -> list[dict[str, Any]]:
    """Every distinct combination, a conditional dimension only where its condition holds."""
    points: list[dict[str, Any]] = [{}]
    for dim in dims:  # conditions come first (parse_space sorted them)
        grown = []
        for point in points:
            grown += [{**point, dim.path: v} for v in dim.grid_values()] if dim.active(point) else [point]
        points = grown
    unique = {json.dumps(p, sort_keys=True): p for p in points}
    return list(unique.values())


def space_digest(spec: StudySpec, dims: list[Dimension]) -> str:
    """What must match for a stored search to be continued: the space, objective and base runs."""
    described = {"space": {d.path: d.param.model_dump(mode="json") for d in dims},
                 "objective": objective_of(spec)[0], "sampler": spec.search.sampler,
                 "datasets": [d.model_dump(mode="json") for d in spec.datasets],
                 "paradigms": [p.model_dump(mode="json") for p in spec.paradigms],
                 "backbones": [b.model_dump(mode="json") for b in spec.backbones],
                 "overrides": [o.model_dump(mode="json") for o in spec.overrides]}
    return json.dumps(described, sort_keys=True)


def objective_of(spec: StudySpec, multi_label: bool | None = None) -> tuple[str, str]:
    """(validation metric, direction). The default follows the task: accuracy, or multi-label micro_f1."""
    multi_label = bool(multi_label if multi_label is not None else spec.datasets[0].multi_label)
    name = (spec.search.objective or primary_metric(multi_label)).removeprefix("val_")
    known = SCALAR_METRICS[multi_label]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        task = "multi-label" if multi_label else "single-label"
        raise TransferlabError(f"study '{spec.name}': search.objective '{name}' is not a {task} validation "
                               f"metric{hint}; choose from {', '.join(known)}")
    return name, "minimize" if name in MINIMIZED else "maximize"


# ------------------------------------------------------------------------------------------- storage

def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'search.db').resolve()}"


def open_storage(url: str, heartbeat: int):
    """Optuna's RDB storage with heartbeats: a trial whose worker went silent for 2 × `heartbeat` seconds is
    failed, and retried once with the same parameters, by the next worker that looks."""
    # heartbeats and their retry callback are "experimental" in Optuna since 2.8, i.e. stable in practice
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # SQLAlchemy's default driver is psycopg2
        kwargs = {"connect_args": {"connect_timeout": 10}}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            except sqlalchemy.exc.IntegrityError:
                # Two workers on a fresh database create Optuna's tables at the same moment and one loses
                # (duplicate type "studydirection"); the tables exist now, so the next attempt opens them.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ModuleNotFoundError as exc:
        raise TransferlabError(f"--storage {redact(url)}: needs the database driver {exc.name}; "
                               "pip install 'psycopg[binary]' for PostgreSQL") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise TransferlabError(_storage_problem(url, exc)) from None


def _storage_problem(url: str, exc: Exception) -> str:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 — an unparsable URL is itself the problem to report
        return f"--storage {url}: not a database URL; give e.g. postgresql://user@host:5432/db or sqlite:///file.db"
    reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if parsed.get_backend_name() == "sqlite":
        return f"--storage {url}: cannot open the SQLite file ({reason}); check the folder exists and is writable"
    return (f"--storage {redact(url)}: cannot reach the database at {parsed.host or 'localhost'}:"
            f"{parsed.port or 5432} ({reason}); check the server is running, the host and port, the user and "
            "database exist, and that pg_hba.conf lets this machine in")


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def make_sampler(search: SearchSpec, worker: bool):
    """Optuna's samplers. Workers draw unseeded: seeded alike, two workers would propose the same points."""
    seed = None if worker else search.seed
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # running trials count as pending
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every point is enqueued, the sampler never draws


def make_pruner(search: SearchSpec):
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def open_search(spec: StudySpec, dims: list[Dimension], storage, name: str, *, worker: bool, resume: bool,
                multi_label: bool):
    """Create the Optuna study (and enqueue a grid), or join the existing one after checking its space."""
    _, direction = objective_of(spec, multi_label)
    digest = space_digest(spec, dims)
    sampler, pruner = make_sampler(spec.search, worker), make_pruner(spec.search)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        _wait_until_ready(study, name)
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored != digest and not resume:
            raise TransferlabError(f"search '{name}' already exists in this storage with a different space, "
                                   "objective or base runs; add --resume to continue it with this spec, or give "
                                   "--study-name a new name") from None
        if study.direction.name.lower() != direction:
            raise TransferlabError(f"search '{name}' {study.direction.name.lower()}s, this spec's objective "
                                   f"{direction}s; give --study-name a new name") from None
        return study
    if spec.search.sampler == "grid":
        points = grid_points(dims)
        budget = min(spec.search.trials or len(points), len(points))
        if budget < len(points):
            order = np.random.default_rng(spec.search.seed).permutation(len(points))
            points = [points[i] for i in sorted(order[:budget])]
        for point in points:
            study.enqueue_trial(point)
        study.set_user_attr(BUDGET_ATTR, len(points))
    study.set_user_attr(SPACE_ATTR, digest)
    study.set_user_attr(READY_ATTR, True)  # workers that found the study wait for this
    return study


def _wait_until_ready(study, name: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise TransferlabError(f"search '{name}' exists but was never set up (its creator died while "
                                   "enqueuing); give --study-name a new name")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ the trials

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
    feature store; epochs report to the pruner; failures become failed trials with their reason."""

    def __init__(self, spec: StudySpec, dims: list[Dimension], pools, store: FeatureStore, trial_dir: Path,
                 budget: int, metric: str, direction: str):
        self.spec, self.dims, self.pools, self.store, self.trial_dir = spec, dims, pools, store, trial_dir
        self.budget, self.metric, self.direction = budget, metric, direction

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


def run_trials(study, objective: Objective, budget: int, *, timeout: float | None, heartbeat: int) -> None:
    """Ask the storage for trials until the budget is used up (by every worker together) or `timeout`.

    A worker that finds the remaining budget in other workers' hands waits while they run: if one of them
    dies, its trial is failed by its heartbeat and retried here."""
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
                           callbacks=[_print_trial])
            ran = True


def _print_trial(study, trial) -> None:
    reason = trial.user_attrs.get("fail_reason")
    if trial.user_attrs.get("surplus"):
        return
    what = (f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower() +
            (f" ({reason})" if reason else ""))
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    console.print(f"[bold]trial {trial.number}[/] {what}  {params}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -------------------------------------------------------------------------------------------- the search

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
                       worker: bool = False, resume: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`run_search`, returning the retrained best's records too (a study adds them to its leaderboard)."""
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
                            multi_label=multi_label)
        budget = study.user_attrs.get(BUDGET_ATTR) or trials or search.trials or DEFAULT_TRIALS
        objective = Objective(spec, dims, pools, FeatureStore(), out_dir / "search" / "trials", budget, metric,
                              direction)
        started = time.perf_counter()
        run_trials(study, objective, budget, timeout=timeout or search.timeout, heartbeat=search.heartbeat)
        console.print(f"search {name}: {budget_status(study)[0]}/{budget} trials done, "
                      f"{time.perf_counter() - started:.1f}s in this process{_ranks()}")
        best = None if worker else best_configuration(study, metric)
    finally:
        broadcast_from_main({"kind": "stop", "best": best})  # the other ranks retrain with this one, or exit
    if worker:
        return summarize(study, spec, dims, url, budget, metric, final_records=[]), []
    records = retrain(spec, best, out_dir, pools)
    summary = summarize(study, spec, dims, url, budget, metric, final_records=records)
    console.print(f"search summary {write_summary(summary, out_dir)}")
    return summary, records


def _ranks() -> str:
    return f" ({world_size()} torchrun processes per trial)" if world_size() > 1 else ""


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


def best_configuration(study, metric: str) -> dict[str, Any]:
    """The best completed trial: its number, parameters and validation value (one line if there is none)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = [t.user_attrs.get("fail_reason") for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("fail_reason") and not t.user_attrs.get("surplus")]
        first = f"; the first failure: {reasons[0]}" if reasons else ""
        raise TransferlabError(f"search '{study.study_name}': no trial completed{first}")
    best = study.best_trial
    return {"study": study.study_name, "trial": best.number, "params": best.params, "objective": metric,
            "value": best.value}


def retrain(spec: StudySpec, best: dict[str, Any], out_dir: Path, pools) -> list[dict[str, Any]]:
    """The best configuration, retrained (train, or train + val with `final`) and scored once on test for
    every study seed; ordinary run records under out/runs, labelled `<paradigm>-searched`, with `search`
    saying which trial they come from."""
    final = spec.search.final if spec.search.final is not None else spec.final
    paradigm = resolve_paradigm(spec, best["params"].get("paradigm", spec.paradigms[0].row_label))
    store, records = FeatureStore(), []
    for seed in spec.seeds:
        run = trial_spec(spec, best["params"], seed=seed, label=f"{paradigm.label or paradigm.name}-searched")
        run = run.model_copy(update={"final": final})
        record = execute_run(run, out_dir, study=spec.name, pools=pools, store=store)
        if record.get("search") != best and is_main():
            record = {**record, "search": best}
            write_record({k: v for k, v in record.items() if k != "reused"}, out_dir)
        if is_main():
            results.print(f"best trial {best['trial']} ({best['objective']} {best['value']:.4f} on validation), "
                          f"seed {seed}: {headline(record)}")
        records.append(record)
    return records


def summarize(study, spec: StudySpec, dims: list[Dimension], url: str, budget: int, metric: str,
              final_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows about a search, from the storage: trials, best, importances."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:
            continue
        trials.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "distributions": {k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()},
            "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
            "seconds": t.duration.total_seconds() if t.duration else None,
            "fail_reason": t.user_attrs.get("fail_reason") or (
                None if t.state != TrialState.FAIL else "interrupted; queued again" if t.user_attrs.get(
                    "interrupted") else "its worker stopped sending heartbeats (killed?); retried"),
            "worker": t.user_attrs.get("worker"), "backbone_passes": t.user_attrs.get("backbone_passes"),
            "val_metrics": t.user_attrs.get("val_metrics")})
    complete = [t for t in trials if t["state"] == "complete"]
    best = study.best_trial if complete else None
    return {
        "name": study.study_name, "storage": redact(url), "objective": metric,
        "direction": study.direction.name.lower(), "sampler": spec.search.sampler, "pruner": spec.search.pruner,
        "budget": budget, "space": {d.path: d.param.model_dump(mode="json", exclude_defaults=True) for d in dims},
        "counts": {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail", "running")},
        "best": {"number": best.number, "value": best.value, "params": best.params} if best else None,
        "importances": importances(study) if len(complete) >= 2 else None,
        "top": spec.search.top, "trials": trials,
        "final_run_ids": [r["run_id"] for r in final_records],
        "final_metrics": [{k: v for k, v in r["metrics"].items() if isinstance(v, int | float) or v is None}
                          for r in final_records]}


def importances(study) -> dict[str, float] | None:
    """Optuna's parameter importances (fANOVA), or None when the completed trials cannot support them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return None
    return {k: float(v) for k, v in found.items()} or None


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in summary["name"])  # a file name, whatever NAME is
    return atomic_write(out_dir / "search" / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))

