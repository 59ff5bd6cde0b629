"""Many search workers on one PostgreSQL study (Optuna's RDB storage does the coordination): a real server on
loopback, real `transferlab search --worker` processes, one of them killed with SIGKILL mid-trial.

Slow (two worker processes each import torch and run trials): `pytest -m slow`, which `.ci/run` runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .conftest import needs_fashion_mnist, search_spec

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

PG_BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
               if (p / "initdb").is_file()), None) if Path("/usr/lib/postgresql").is_dir() else None
GRID = {"paradigm.hidden": [16, 32, 64, 128], "paradigm.lr": [3e-3, 1e-2]}  # 8 points
WORKER_ENV = {"OMP_NUM_THREADS": "1"}  # two workers share two cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a free loopback port (initdb refuses root: run it as `postgres`, in a
    folder it owns outside pytest's root-only temp tree)."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL binaries missing: apt-get install postgresql (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="transferlab-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    port = _free_port()
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data.parent / "log"), "-w", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {data.parent}", "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _spec_file(folder, tmp_path, name: str, **search) -> Path:
    spec = search_spec(folder, sampler="grid", pruner="none", objective="log_loss", space=GRID, heartbeat=1,
                       **search)
    spec["name"] = name
    spec["paradigms"] = [{"name": "mlp", "max_epochs": 60, "patience": None}]  # ~1-2 s per trial
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _worker(spec: Path, storage: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferlab", "search", str(spec), "--storage", storage,
                             "--worker", "--out", str(out)], env={**os.environ, **WORKER_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(storage: str, name: str):
    import optuna

    from transferlab.search import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage, 1)).get_trials(deepcopy=False)


def _finish(spec: Path, storage: str, out: Path) -> dict:
    """The command without --worker: finds the budget used up, retrains the best, writes the summary."""
    from transferlab.search import run_search

    return run_search(spec, out, storage=storage)


@pytest.fixture(scope="module")
def two_worker_search(postgres, image_folder, finished_search, tmp_path_factory):
    """Two workers on one grid search (features already cached by the session's `finished_search`)."""
    tmp = tmp_path_factory.mktemp("pg-search")
    spec = _spec_file(image_folder, tmp, "grid-two")
    workers = [_worker(spec, postgres, tmp / f"w{i}") for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    return spec, _trials(postgres, "grid-two"), _finish(spec, postgres, tmp / "leader")


def test_two_workers_share_the_budget_exactly_and_run_no_grid_point_twice(two_worker_search):
    _, trials, summary = two_worker_search
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) == len(complete) == summary["budget"] == 8
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 8  # every grid point once
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2, f"both workers contributed: {workers}"
    assert summary["final_run_ids"] and summary["best"]["number"] in {t.number for t in complete}


def test_a_worker_killed_mid_trial_is_failed_by_its_heartbeat_and_the_other_finishes(
        postgres, image_folder, two_worker_search, tmp_path):
    spec = _spec_file(image_folder, tmp_path, "grid-kill")
    victim, survivor = _worker(spec, postgres, tmp_path / "victim"), _worker(spec, postgres, tmp_path / "survivor")
    deadline, killed = time.monotonic() + 180, None
    try:
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                # mid-trial = its grid point already drawn (the worker names itself a moment before it draws)
                running = [t for t in _trials(postgres, "grid-kill") if t.state.name == "RUNNING"
                           and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                           and set(t.params) == set(GRID)]
            except KeyError:  # the study is not created yet
                continue
            if running:
                victim.send_signal(signal.SIGKILL)
                killed = running[0]
        assert killed is not None, "the victim never ran a trial"
        out = survivor.communicate(timeout=300)[0]
        assert survivor.returncode == 0, out
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
    victim.wait()

    trials = {t.number: t for t in _trials(postgres, "grid-kill")}
    assert trials[killed.number].state.name == "FAIL"  # by the heartbeat: no reason of its own
    assert "fail_reason" not in trials[killed.number].user_attrs
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert len(complete) == 8 and len({json.dumps(t.params, sort_keys=True) for t in complete}) == 8
    assert any(t.params == killed.params for t in complete)  # the killed point was retried

    summary = _finish(spec, postgres, tmp_path / "leader")
    _, _, undisturbed = two_worker_search
    assert summary["best"]["params"] == undisturbed["best"]["params"]
    assert summary["best"]["value"] == pytest.approx(undisturbed["best"]["value"], abs=1e-6)
