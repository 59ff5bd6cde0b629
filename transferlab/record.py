"""The run record: the one output of a run, and everything downstream (leaderboard, report, deploy) reads it alone.

`RunRecord` is its typed form (pydantic): the runner builds one, `write_record` stores it as JSON under
`OUT/runs/<run id>.json`, `read_record` reads it back (a record that does not parse or does not fit the
schema is recomputed, never trusted). Consumers take the plain dict (`RunRecord.as_dict`), which is what
the JSON holds; `is_multi_label` is the one place that reads the task. Also here: the `cell_key` that
decides whether a record is up to date, and the environment and library versions every record carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from .config import RunSpec
from .core.names import code_digest
from .core.paths import atomic_write
from .data import Pools

RECORD_VERSION = 4  # 2: split_indices, fold; 3: task, reference, final, thresholds, outcomes, examples, cost; 4: model
VERSIONED_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "scikit-learn", "numpy", "onnxruntime")
Task = Literal["single-label", "multi-label"]


class RunRecord(BaseModel):
    """What one run measured, chose and used; the fields of `OUT/runs/<run id>.json`, in that order."""

    model_config = ConfigDict(extra="allow")  # a search adds `search` to its retrained records

    record_version: int
    run_id: str
    cell_key: str
    study: str | None
    created: str
    spec: dict[str, Any]
    task: Task
    reference: str | None
    labels: dict[str, str]  # dataset, backbone, paradigm: the leaderboard row
    seed: int
    classes: list[str]
    splits: dict[str, int]
    data_fingerprints: dict[str, str]
    class_counts: dict[str, list[int]]
    split_indices: dict[str, Any]
    fold: int | None
    backbone: dict[str, Any]
    params: dict[str, Any]  # every hyper-parameter as used (defaults, files read)
    selected: dict[str, Any]  # what the paradigm chose on validation
    final: dict[str, Any] | None  # the refit on train + val, when `final`
    thresholds: dict[str, Any] | None  # multi-label decision thresholds tuned on validation
    calibration: dict[str, Any] | None = None  # `calibrate: temperature`: the temperature, ECE / log-loss before, after
    val_metrics: dict[str, Any]
    metrics: dict[str, Any]  # the one test score
    test_outcomes: dict[str, Any] | str  # per-image outcomes (base64), for paired comparisons
    examples: list[dict[str, Any]]
    encoded: dict[str, int]  # images encoded (features) or decoded (training) in this run; 0 = from the cache
    backbone_passes: dict[str, int]
    cost: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    skipped: list[str]
    world_size: int  # processes that trained it (torchrun)
    timings: dict[str, float]
    versions: dict[str, str]
    environment: dict[str, Any]
    model: dict[str, Any] | None = None  # the model file (deploy); None for reference rows

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def is_multi_label(record: dict[str, Any]) -> bool:
    """Whether a record (the dict the JSON holds) is of a multi-label run."""
    return record.get("task") == "multi-label"


def cell_key(spec: RunSpec, pools: Pools, input_key: str) -> str:
    """Everything a run's result depends on: its spec, the data's content, its inputs, the record format, the
    code. Not the number of torchrun processes: `batch_size` is the global batch, so they give an equivalent
    result (not bit-identical: another data order, BatchNorm per rank; the record says how many made it), and a
    study's coordinator reuses what torchrun workers ran."""
    parts = [spec.model_dump_json(), input_key, str(RECORD_VERSION), code_digest(),
             *(pool.fingerprint for pool in (pools.train, pools.val, pools.test) if pool is not None)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / f"{run_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when there is none, it does not parse or it does not fit `RunRecord`
    (then it is recomputed)."""
    try:
        return RunRecord.model_validate_json(path.read_bytes()).as_dict()
    except (OSError, ValueError, ValidationError):
        return None


def write_record(record: dict[str, Any], out_dir: str | Path) -> Path:
    return atomic_write(record_path(out_dir, record["run_id"]),
                        lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def environment(device) -> dict[str, Any]:
    """Where the run ran: CPU model, cores, torch threads, GPU."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu or "unknown", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "gpu": gpu, "platform": platform.platform()}
