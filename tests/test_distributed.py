"""torchrun on CPU: two gloo processes train one run with DistributedDataParallel, rank 0 writes it."""

from __future__ import annotations

import json
import subprocess
import sys


def run(out, *launcher):
    args = [*launcher, "-m", "transferlab", "run", "--data", "digits", "--paradigm", "simple-cnn", "--seed", "0",
            "-p", "epochs=6", "-p", "image_size=16", "-p", "augment=none", "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = (out / "runs").glob("*.json")
    return json.loads(record.read_text())


def test_two_process_ddp_run_matches_the_single_process_run_within_noise(tmp_path):
    single = run(tmp_path / "single", sys.executable)
    ddp = run(tmp_path / "ddp", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert len(ddp["history"]) == 6 and ddp["splits"] == single["splits"]  # every rank saw the whole task
    assert ddp["metrics"]["accuracy"] > 0.8 and single["metrics"]["accuracy"] > 0.8
    assert abs(ddp["metrics"]["accuracy"] - single["metrics"]["accuracy"]) < 0.08
