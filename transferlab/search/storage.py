"""The search's Optuna study in an RDB storage: a SQLite file under the output folder by default, PostgreSQL
for many workers on many machines (every worker asks the storage for its next trial; heartbeats fail and retry
the trial of a worker that died).

A grid is enqueued point by point when the search is created: the storage hands each waiting trial to exactly
one worker (GridSampler's random pick of an unvisited point can give two workers one point). A study joined
later is checked against the spec's space, objective and base runs.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from ..config import SearchSpec, StudySpec
from ..core.errors import TransferlabError
from .space import Dimension, grid_points, objective_of, space_digest

SPACE_ATTR, READY_ATTR, BUDGET_ATTR = "transferlab:space", "transferlab:ready", "transferlab:budget"
DEFAULT_TRIALS = 20  # random and TPE searches given no budget


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
        return (f"--storage {redact(url)}: not a database URL; give e.g. postgresql://user@host:5432/db or "
                "sqlite:///file.db")
    reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if parsed.get_backend_name() == "sqlite":
        return (f"--storage {redact(url)}: cannot open the SQLite file ({reason}); check the folder exists and is "
                "writable")
    return (f"--storage {redact(url)}: cannot reach the database at {parsed.host or 'localhost'}:"
            f"{parsed.port or 5432} ({reason}); check the server is running, the host and port, the user and "
            "database exist, and that pg_hba.conf lets this machine in")


def redact(url: str) -> str:
    """`url` with its password shown as ***, parsable or not."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL may still carry user:password@
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


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
                multi_label: bool, trials: int | None):
    """Create the Optuna study (and enqueue a grid), or join the existing one after checking its space. The
    creator stores the trial budget (`trials`; none: the whole grid, or DEFAULT_TRIALS) in the study, so that
    every worker that joins it counts to the same budget whatever its own --trials."""
    _, direction = objective_of(spec, multi_label)
    digest = space_digest(spec, dims)
    sampler, pruner = make_sampler(spec.search, worker), make_pruner(spec.search)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        wait_until_ready(study, name)
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored != digest and not resume:
            raise TransferlabError(f"search '{name}' already exists in this storage with a different space, "
                                   "objective or base runs; add --resume to continue it with this spec, or give "
                                   "--study-name a new name") from None
        if study.direction.name.lower() != direction:
            raise TransferlabError(f"search '{name}' {study.direction.name.lower()}s, this spec's objective "
                                   f"{direction}s; give --study-name a new name") from None
        return study
    budget = trials or DEFAULT_TRIALS
    if spec.search.sampler == "grid":
        points = grid_points(dims)
        budget = min(trials or len(points), len(points))
        if budget < len(points):
            order = np.random.default_rng(spec.search.seed).permutation(len(points))
            points = [points[i] for i in sorted(order[:budget])]
        for point in points:
            study.enqueue_trial(point)
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(SPACE_ATTR, digest)
    study.set_user_attr(READY_ATTR, True)  # workers that found the study wait for this
    return study


def wait_until_ready(study, name: str, seconds: float = 120.0) -> None:
    """Until the study's creator has enqueued what it enqueues and marked it ready (search or cell queue)."""
    deadline = time.monotonic() + seconds
    while not study.user_attrs.get(READY_ATTR):
        if time.monotonic() > deadline:
            raise TransferlabError(f"'{name}' exists in the storage but was never set up (its creator died "
                                   "while enqueuing); give --study-name a new name")
        time.sleep(0.5)
