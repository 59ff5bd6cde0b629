"""torchrun on CPU: two gloo processes train one run with DistributedDataParallel, rank 0 writes it.

Slow (each test starts three Python processes that import torch, about a minute each): `pytest -m slow`,
which `.ci/run` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
SIMPLE_CNN = ("--paradigm", "simple-cnn", "-p", "epochs=6", "-p", "image_size=16", "-p", "augment=none")


def run(out, *launcher, args=SIMPLE_CNN, cache=None, data="digits"):
    args = [*launcher, "-m", "transferlab", "run", "--data", data, "--seed", "0", *args, "--out", str(out)]
    env = {**os.environ, "TRANSFERLAB_CACHE": str(cache)} if cache else None
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = (out / "runs").glob("*.json")
    assert result.stdout.count("record:") == 1  # only rank 0 prints its result
    return json.loads(record.read_text())


@pytest.mark.slow
def test_two_process_ddp_run_matches_the_single_process_run_within_noise(tmp_path):
    single = run(tmp_path / "single", sys.executable)
    ddp = run(tmp_path / "ddp", sys.executable, *TORCHRUN)
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert len(ddp["history"]) == 6 and ddp["splits"] == single["splits"]  # every rank saw the whole task
    assert ddp["metrics"]["accuracy"] > 0.8 and single["metrics"]["accuracy"] > 0.8
    assert abs(ddp["metrics"]["accuracy"] - single["metrics"]["accuracy"]) < 0.02
    assert ddp["selected"]["batch_per_process"] == {"processes": 2, "images": 16}  # batch_size 32 is the global batch


# The run issue 21 measured: a partial fine-tune of a pretrained network with frozen BatchNorm statistics (few
# batches an epoch). Each rank used to take a whole batch_size, so the run made half the optimizer steps: 0.708
# alone, 0.502 under torchrun.
PARTIAL_FINETUNE = ("--backbone", "tf_efficientnet_lite0", "--image-size", "96", "--paradigm", "finetune",
                    "-p", "from_stage=-1", "-p", "optimizer=adamw", "-p", "lr=0.001", "-p", "epochs=4",
                    "-d", "train_size=100", "-d", "val_size=100", "-d", "test_size=1920")


@pytest.mark.slow
def test_torchrun_gives_the_one_process_result_of_a_partial_finetune(tmp_path):
    single = run(tmp_path / "single", sys.executable, args=PARTIAL_FINETUNE, data="fashion-mnist")
    ddp = run(tmp_path / "ddp", sys.executable, *TORCHRUN, args=PARTIAL_FINETUNE, data="fashion-mnist")
    assert single["metrics"]["accuracy"] > 0.6
    assert abs(ddp["metrics"]["accuracy"] - single["metrics"]["accuracy"]) < 0.01


@pytest.mark.slow
def test_two_processes_share_the_feature_encoding_and_get_the_single_process_result(tmp_path):
    """Each rank encodes half of the missing images (fresh caches for both runs); together they hold all."""
    linear = ("--backbone", "tf_efficientnet_lite0", "--image-size", "32", "--engine", "torch", "--paradigm", "linear")
    single = run(tmp_path / "single", sys.executable, args=linear, cache=tmp_path / "cache-single")
    ddp = run(tmp_path / "ddp", sys.executable, *TORCHRUN, args=linear, cache=tmp_path / "cache-ddp")
    assert ddp["encoded"] == single["encoded"] == {k: n for k, n in single["splits"].items()}
    assert abs(ddp["metrics"]["accuracy"] - single["metrics"]["accuracy"]) < 0.01
    chunks = (tmp_path / "cache-ddp" / "features").rglob("*.safetensors")  # rank 0 wrote the merged rows
    assert sum(len(load_file(str(chunk))["indices"]) for chunk in chunks) == sum(single["splits"].values())


@pytest.mark.slow
def test_a_search_worker_can_be_a_torchrun_job(tmp_path):
    """Rank 0 asks the storage for trials and the other rank trains each one with it (DDP); the best is
    retrained by both and written once."""
    import yaml

    spec = {"name": "ddp-search", "datasets": ["digits"], "references": False,
            "paradigms": [{"name": "simple-cnn", "epochs": 2, "image_size": 16, "augment": "none"}],
            "search": {"sampler": "grid", "pruner": "median", "space": {"paradigm.lr": [0.01, 0.05]}}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([sys.executable, *TORCHRUN, "-m", "transferlab", "search", str(path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "search" / "ddp-search.json").read_text())
    assert summary["counts"]["complete"] == 2 and len({t["worker"] for t in summary["trials"]}) == 1
    (record,) = (tmp_path / "out" / "runs").glob("*.json")
    record = json.loads(record.read_text())
    assert record["world_size"] == 2 and record["search"]["trial"] == summary["best"]["number"]
    assert len(record["history"]) == 2


@pytest.mark.slow
def test_a_study_worker_can_be_a_torchrun_job(tmp_path):
    """Rank 0 takes cells from the queue and the other rank trains each one with it (DDP); the coordinator
    started afterwards finds every cell done and writes the leaderboard and report."""
    import yaml

    spec = {"name": "ddp-cells", "datasets": ["digits"], "references": False, "seeds": [0, 1],
            "paradigms": [{"name": "simple-cnn", "epochs": 2, "image_size": 16, "augment": "none"}]}
    path, out, storage = tmp_path / "cells.yaml", tmp_path / "out", f"sqlite:///{tmp_path / 'queue.db'}"
    path.write_text(yaml.safe_dump(spec))
    study = ["-m", "transferlab", "study", str(path), "--out", str(out), "--storage", storage]
    worker = subprocess.run([sys.executable, *TORCHRUN, *study, "--worker"], capture_output=True, text=True,
                            timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert sorted(r["spec"]["seed"] for r in records) == [0, 1]
    assert all(r["world_size"] == 2 and len(r["history"]) == 2 for r in records)
    coordinator = subprocess.run([sys.executable, *study], capture_output=True, text=True, timeout=600)
    assert coordinator.returncode == 0, coordinator.stderr[-2000:]
    summary = json.loads((out / "last_invocation.json").read_text())
    assert summary["computed"] == 0 and (out / "report.html").is_file() and (out / "leaderboard.csv").is_file()
