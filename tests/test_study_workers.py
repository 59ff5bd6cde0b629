"""A study's cells spread over worker processes through one PostgreSQL server (`transferlab study --storage
... --worker`): a real server on loopback, real processes sharing an output folder and a feature cache, one
worker killed with SIGKILL mid-cell. Slow (three processes each import torch): `pytest -m slow`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .test_search_postgres import postgres  # noqa: F401 — the module-scoped server fixture

pytestmark = pytest.mark.slow

SPEC = {"name": "spread", "datasets": [{"source": "digits"}],
        "backbones": [{"name": "tf_efficientnet_lite0", "image_size": 64}],
        "paradigms": ["knn", "linear"], "seeds": [0, 1]}
CELLS = 10  # knn, linear, pixels, majority, untrained linear × 2 seeds
DIGITS = 1797  # images in scikit-learn's digits: each goes through each backbone once, whoever encodes it


def transferlab_study(spec: Path, storage: str, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferlab", "study", str(spec), "--storage", storage,
                             "--out", str(out), *extra],
                            env={**os.environ, "TRANSFERLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cell_trials(storage: str, name: str):
    import optuna

    from transferlab.search import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage, 10)).get_trials(deepcopy=False)


def finish(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    return output


def spec_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "name": name}))
    return path


def test_two_workers_share_the_cells_and_the_cache_and_the_coordinator_writes_the_report(postgres, tmp_path):  # noqa: F811
    spec, out, cache = spec_file(tmp_path, "spread"), tmp_path / "shared-out", tmp_path / "shared-cache"
    workers = [transferlab_study(spec, postgres, out, cache, "--worker") for _ in range(2)]
    for worker in workers:
        finish(worker)
    output = finish(transferlab_study(spec, postgres, out, cache))

    complete = [t for t in cell_trials(postgres, "spread-cells") if t.state.name == "COMPLETE"]
    assert len(complete) == CELLS and len({t.params["cell"] for t in complete}) == CELLS  # each cell once
    assert len({t.user_attrs["worker"] for t in complete}) >= 2, "both workers ran cells"
    # the coordinator found every record up to date; its leaderboard holds the grid's five rows, 2 seeds each
    assert "0 runs computed, 10 reused" in output
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(row["n_seeds"] == "2" for row in rows)
    assert (out / "report.html").is_file()
    # the shared cache: both workers began with cells on the same features (knn and linear, seed 0), and still
    # no image went through a backbone twice: the second waited for the first's features (features.py's lock)
    passes: dict[str, int] = {}
    for path in (out / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        if record["spec"].get("backbone"):
            key = json.dumps(record["spec"]["backbone"], sort_keys=True)
            passes[key] = passes.get(key, 0) + sum(record["backbone_passes"].values())
    assert sorted(passes.values()) == [DIGITS, DIGITS], passes


def test_a_worker_killed_mid_cell_has_its_cell_run_by_another(postgres, tmp_path):  # noqa: F811
    spec, out, cache = spec_file(tmp_path, "killed"), tmp_path / "shared-out", tmp_path / "shared-cache"
    victim = transferlab_study(spec, postgres, out, cache, "--worker")
    survivor = transferlab_study(spec, postgres, out, cache, "--worker")
    deadline, killed = time.monotonic() + 180, None
    try:
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                running = [t for t in cell_trials(postgres, "killed-cells") if t.state.name == "RUNNING"
                           and "cell" in t.params and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
            except KeyError:  # the queue is not created yet
                continue
            if running:
                time.sleep(1.0)  # mid-cell: decoding or encoding
                victim.send_signal(signal.SIGKILL)
                killed = running[0]
        assert killed is not None, "the victim never started a cell"
        finish(survivor)
        output = finish(transferlab_study(spec, postgres, out, cache))
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
    victim.wait()

    trials = {t.number: t for t in cell_trials(postgres, "killed-cells")}
    assert trials[killed.number].state.name == "FAIL" and "fail_reason" not in trials[killed.number].user_attrs
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert len(complete) == CELLS and len({t.params["cell"] for t in complete}) == CELLS
    assert killed.params["cell"] in {t.params["cell"] for t in complete}  # the dead worker's cell ran elsewhere
    assert "0 runs computed, 10 reused" in output and len(list((out / "runs").glob("*.json"))) == CELLS
