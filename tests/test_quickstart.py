"""The published quickstart targets, checked end to end (slow: 5-8½ minutes cold; `pytest -m slow`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import needs_fashion_mnist

SPEC = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
# Cold on this project's 2-core machine (Dec 6 2026, the fits on one BLAS thread): 271 s, its 31 634 backbone
# passes at 145 img/s (ONNX Runtime; the engine ran 158-171 img/s on other days); an older 2-core machine ran the
# engine at 97 img/s and took 490-550 s with the slower fits. README publishes them. The
# check scales the published time by this machine's measured engine speed (from the records), so that extra
# fits, extra passes or lost caching fail it on any machine, while a slower CPU alone does not.
PUBLISHED_SECONDS = 271
PUBLISHED_IMG_S = 145
PASSES = 31_634  # 10 000 test + 3 seeds' 1000 train and 1000 val draws (overlaps counted once), two backbones


def engine_speed(runs: Path) -> float:
    """img/s of the backbone passes, from the cold run's records (seconds spent making inputs of the runs that
    encoded images)."""
    passes = seconds = 0.0
    for path in runs.glob("*.json"):
        record = json.loads(path.read_text())
        encoded = sum(record["backbone_passes"].values()) if record["backbone_passes"] else 0
        if encoded:
            passes, seconds = passes + encoded, seconds + record["timings"]["inputs_s"]
    return passes / seconds


def study(out: Path, cache: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "transferlab", "study", str(SPEC), "--out", str(out)], check=True,
                   env={**__import__("os").environ, "TRANSFERLAB_CACHE": str(cache)}, timeout=1200)
    return time.perf_counter() - started


@pytest.mark.slow
@needs_fashion_mnist
def test_quickstart_meets_its_targets_cold_and_rerun(tmp_path):
    out, cache = tmp_path / "quickstart", tmp_path / "cache"
    cold = study(out, cache)
    cold_summary = json.loads((out / "last_invocation.json").read_text())
    speed = engine_speed(out / "runs")
    rerun = study(out, cache)
    with open(out / "leaderboard.csv") as f:  # rows named by paradigm, reference rows by what they are
        rows = {r["reference"] if r["reference"] in ("untrained", "majority") else r["paradigm"]: r
                for r in csv.DictReader(f)}
    accuracy = {name: float(row["accuracy_mean"]) for name, row in rows.items()}
    print(f"cold {cold:.0f}s ({speed:.0f} img/s), rerun {rerun:.1f}s, accuracy {accuracy}")
    assert accuracy["linear"] >= 0.82 and accuracy["knn"] >= 0.78
    assert accuracy["linear"] > accuracy["pixels"] and accuracy["knn"] > accuracy["pixels"]
    # what transfer buys: the same probe on the untrained backbone, and the majority class, are far behind
    assert accuracy["linear"] > accuracy["untrained"] + 0.05 and accuracy["majority"] < 0.15
    assert all(row["n_seeds"] == "3" for row in rows.values())
    assert cold_summary["backbone_passes"] == PASSES  # each image once per backbone, none twice
    assert cold <= 1.5 * PUBLISHED_SECONDS * max(1.0, PUBLISHED_IMG_S / speed)
    summary = json.loads((out / "last_invocation.json").read_text())
    assert summary["backbone_passes"] == 0 and summary["computed"] == 0
    assert rerun <= 0.10 * cold
    assert (out / "report.html").stat().st_size > 10_000
