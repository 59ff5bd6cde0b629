"""The published quickstart targets, checked end to end (slow: about 8 minutes cold; `pytest -m slow`)."""

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
# Cold: 490–550 s measured on 2 cores (Dec 2026); README publishes "about 8½ minutes" (510 s), and a cold run
# slower than 1.5× that is a regression (the untrained-backbone reference row encodes every image a second time).
PUBLISHED_SECONDS = 510
COLD_SECONDS = 1.5 * PUBLISHED_SECONDS


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
    rerun = study(out, cache)
    with open(out / "leaderboard.csv") as f:  # rows named by paradigm, reference rows by what they are
        rows = {r["reference"] if r["reference"] in ("untrained", "majority") else r["paradigm"]: r
                for r in csv.DictReader(f)}
    accuracy = {name: float(row["accuracy_mean"]) for name, row in rows.items()}
    print(f"cold {cold:.0f}s, rerun {rerun:.1f}s, accuracy {accuracy}")
    assert accuracy["linear"] >= 0.82 and accuracy["knn"] >= 0.78
    assert accuracy["linear"] > accuracy["pixels"] and accuracy["knn"] > accuracy["pixels"]
    # what transfer buys: the same probe on the untrained backbone, and the majority class, are far behind
    assert accuracy["linear"] > accuracy["untrained"] + 0.05 and accuracy["majority"] < 0.15
    assert all(row["n_seeds"] == "3" for row in rows.values())
    assert cold <= COLD_SECONDS
    summary = json.loads((out / "last_invocation.json").read_text())
    assert summary["backbone_passes"] == 0 and summary["computed"] == 0
    assert rerun <= 0.10 * cold
    assert (out / "report.html").stat().st_size > 10_000
