"""One run, top to bottom: data → splits → encoder → feature store → paradigm → metrics → run record.

The record is the run's only output and everything downstream (leaderboard, report) reads it alone.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunSpec
from .data import Pools, Split, make_splits, open_pools, split_sizes
from .engines import resolve_device
from .errors import TransferlabError
from .evaluate import HEADLINE, classification_metrics
from .features import BackboneEncoder, Encoder, FeatureStore
from .models import load_backbone
from .paradigms import create_paradigm

RECORD_VERSION = 1
VERSIONED_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "scikit-learn", "numpy", "onnxruntime")


def execute_run(spec: RunSpec, out_dir: str | Path, *, study: str | None = None, pools: Pools | None = None,
                store: FeatureStore | None = None, reuse: bool = True) -> dict[str, Any]:
    """Run `spec`, write `out_dir/runs/<run id>.json`, return the record. `pools` / `store` may be shared.

    Like make: when the record already there was computed from the same inputs (same `cell_key`), it is
    returned as it is (marked `reused`) and nothing is recomputed; `reuse=False` recomputes.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    store = store or FeatureStore()

    with _timed(timings, "data_s"):
        pools = pools or open_pools(spec.data)
        splits = make_splits(pools, spec.data, spec.seed)
        classes = pools.train.classes
        paradigm = create_paradigm(spec.paradigm.name, spec.paradigm.params, n_classes=len(classes),
                                   seed=spec.seed)
        encoder, backbone_info = _encoder_for(spec, paradigm, pools)
        key = cell_key(spec, pools, encoder)
    previous = read_record(record_path(out_dir, spec.run_id))
    if reuse and previous and previous.get("cell_key") == key:
        return {**previous, "reused": True}

    features, passes, skipped = {}, {}, []
    with _timed(timings, "features_s"):
        for name, split in splits.items():
            got = store.get(split.source, split.indices, encoder, batch_size=spec.batch_size,
                            skip_bad=spec.data.skip_bad, label=f"{name:>5} · {encoder_label(spec)}")
            keep = ~np.isin(split.indices, list(got.bad))  # skip-and-report: only unreadable images go
            if not keep.any():
                raise TransferlabError(f"{name} split of {spec.data.label}: no readable image left "
                                       f"({len(got.bad)} skipped, e.g. {next(iter(got.bad.values()))})")
            splits[name] = Split(split.source, split.indices[keep])
            features[name], passes[name] = got.features[keep], got.encoded
            skipped += sorted(got.bad.values())

    y = {name: split.labels for name, split in splits.items()}
    with _timed(timings, "fit_s"):
        paradigm.fit(features["train"], y["train"], features["val"], y["val"])
    with _timed(timings, "predict_s"):
        val_proba = paradigm.predict_proba(features["val"])
        test_proba = paradigm.predict_proba(features["test"])  # the one time test is touched
    timings["total_s"] = time.perf_counter() - started

    if isinstance(encoder, BackboneEncoder) and encoder.engine:
        backbone_info["engine"] = encoder.engine
    record = {
        "record_version": RECORD_VERSION,
        "run_id": spec.run_id,
        "cell_key": key,
        "study": study,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec.model_dump(mode="json"),
        "labels": {"dataset": spec.data.label, "backbone": spec.backbone.label if spec.backbone else "none",
                   "paradigm": spec.paradigm.row_label},
        "seed": spec.seed,
        "classes": classes,
        "splits": split_sizes(splits),
        "backbone": backbone_info,
        "selected": paradigm.selected_,
        "val_metrics": classification_metrics(y["val"], val_proba, classes, detailed=False),
        "metrics": classification_metrics(y["test"], test_proba, classes),
        "encoded": passes,  # images that went through the encoder in this run (0: all from the cache)
        "backbone_passes": passes if spec.backbone else dict.fromkeys(passes, 0),
        "skipped": skipped,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": library_versions(),
    }
    write_record(record, out_dir)
    return record


def _encoder_for(spec: RunSpec, paradigm, pools: Pools) -> tuple[Encoder, dict[str, Any]]:
    if not paradigm.needs_backbone:
        encoder = paradigm.encoder(pools.train)
        return encoder, {"name": None, "encoder": encoder.key}
    backbone = load_backbone(spec.backbone, seed=spec.seed)
    encoder = BackboneEncoder(backbone, resolve_device(spec.device), spec.engine)
    info = {"name": backbone.name, "weights": vars(backbone.weights),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
            "feature_key": backbone.key, "engine": "cache"}
    return encoder, info


def encoder_label(spec: RunSpec) -> str:
    return spec.backbone.label if spec.backbone else spec.paradigm.name


def headline(record: dict[str, Any]) -> str:
    m = record["metrics"]
    return " ".join(f"{k}={m[k]:.4f}" for k in HEADLINE)


def cell_key(spec: RunSpec, pools: Pools, encoder: Encoder) -> str:
    """Everything a run's result depends on: its spec, the data's content, the encoder, the record format."""
    parts = [spec.model_dump_json(), encoder.key, str(RECORD_VERSION), library_versions()["transferlab"],
             *(pool.fingerprint for pool in (pools.train, pools.val, pools.test) if pool is not None)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / f"{run_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None when there is none or it does not parse (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(record: dict[str, Any], out_dir: str | Path) -> Path:
    path = record_path(out_dir, record["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


@contextmanager
def _timed(timings: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


