"""Hyper-parameter search on the shared feature cache vs naive trials that re-extract, in the same run.

`mlp` on Fashion-MNIST (builtin, 1000 training images, 500 validation images carved from the training pool;
test is never touched: every trial is `execute_run(validation_only=True)`), tf_efficientnet_lite0 (offline
ImageNet weights) frozen at 96 px by default (`--image-size`; at its native 224 px the frozen pass runs
~100 img/s on 2 cores, so the naive arm alone would take ~15 min). Space: hidden width × dropout ×
weight_decay (L2) × lr, sampled by Optuna's TPE (seeded).
  cached:  transferlab's search path (`open_search` on a temporary SQLite storage, `Objective`, `run_trials`)
           with one FeatureStore in one empty cache: the first trial extracts, the others read the cache.
  naive:   the same `Objective` and `run_trials`, replaying the cached arm's parameter sets in order
           (`study.enqueue_trial`), but every trial gets a fresh, empty cache folder and FeatureStore, so it
           re-extracts the features of its 1500 images.
The two arms run the same configurations on the same features; the only difference is the cache. Prints
each arm's total and per-trial seconds and backbone passes, a check that both arms scored alike, and the
ratio (naive / cached) last.

    python benchmarks/search.py [--trials 50] [--image-size 96] [--train-size 1000] [--val-size 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from transferlab.config import StudySpec, validated
from transferlab.data import make_splits, open_pools
from transferlab.features import BackboneEncoder, FeatureStore
from transferlab.models import load_backbone
from transferlab.search import Objective, objective_of, open_search, open_storage, parse_space, run_trials

BACKBONE = "tf_efficientnet_lite0"
SPACE = {"paradigm.hidden": {"choices": [0, 128, 256, 512, 1024]},
         "paradigm.dropout": {"low": 0.0, "high": 0.7},
         "paradigm.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
         "paradigm.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def study_spec(args) -> StudySpec:
    # pruner none: every trial fits to its own early stop in both arms, so the arms do the same paradigm work
    return validated(StudySpec, {
        "name": "bench-search",
        "datasets": [{"source": "fashion-mnist", "train_size": args.train_size, "val_size": args.val_size}],
        "backbones": [{"name": BACKBONE, "image_size": args.image_size}],
        "paradigms": ["mlp"],
        "search": {"space": SPACE, "sampler": "tpe", "seed": 0, "pruner": "none", "trials": args.trials}},
        "benchmarks/search.py")


def export_onnx(spec: StudySpec, cache: Path) -> Path:
    """Build the backbone's ONNX export (~10 s) once, outside the timing; returns the cache's onnx/ folder.

    Both arms get a copy of it in every cache folder they use: the export is a per-backbone, per-size cost
    that any rerun would also find on disk, while what this benchmark measures is feature extraction per
    trial. Without the copy the naive arm would pay the export 50 times and flatter the ratio."""
    os.environ["TRANSFERLAB_CACHE"] = str(cache)
    backbone = load_backbone(spec.backbones[0])
    encoder = BackboneEncoder(backbone, torch.device("cpu"), spec.engine)
    encoder.encode(torch.zeros(2, *backbone.data_config["input_size"], dtype=torch.uint8))
    return cache / "onnx"


def fresh_cache(root: Path, onnx: Path) -> Path:
    """An empty cache folder holding only the ONNX export, and TRANSFERLAB_CACHE pointing at it."""
    cache = Path(tempfile.mkdtemp(dir=root))
    shutil.copytree(onnx, cache / "onnx")
    os.environ["TRANSFERLAB_CACHE"] = str(cache)  # read by FeatureStore() and by the ONNX engine (cache_root)
    return cache


class NaiveObjective(Objective):
    """transferlab's trial, but on a fresh empty cache (and a new FeatureStore) every time: it re-extracts."""

    def __init__(self, *args, cache_root: Path, onnx: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache_root, self.onnx = cache_root, onnx

    def __call__(self, trial) -> float:
        cache = fresh_cache(self.cache_root, self.onnx)
        self.store = FeatureStore()
        try:
            return super().__call__(trial)
        finally:
            shutil.rmtree(cache, ignore_errors=True)  # ~8 MB of features per trial; keeps the disk small


def arm(spec, dims, pools, storage, name: str, objective_class, work: Path, replay=None, **extra):
    """Run `spec.search.trials` trials through transferlab's search loop; (seconds, finished trials)."""
    from optuna.trial import TrialState

    metric, direction = objective_of(spec, pools.train.multi_label)
    study = open_search(spec, dims, storage, name, worker=False, resume=False, multi_label=pools.train.multi_label,
                        trials=spec.search.trials)
    for params in replay or []:
        study.enqueue_trial(params)  # the same configurations, in the same order
    budget = spec.search.trials
    objective = objective_class(spec, dims, pools, FeatureStore(), work / name, budget, metric, direction, **extra)
    started = time.perf_counter()
    run_trials(study, objective, budget, timeout=None, heartbeat=spec.search.heartbeat)
    seconds = time.perf_counter() - started
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    if len(trials) != budget:
        raise SystemExit(f"{name}: {len(trials)} of {budget} trials completed; see the failures above")
    return seconds, trials


def passes(trials) -> int:
    return sum(sum(t.user_attrs["backbone_passes"].values()) for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=500)
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    spec = study_spec(args)
    dims = parse_space(spec)
    pools = open_pools(spec.datasets[0])
    sizes = {name: len(split) for name, split in make_splits(pools, spec.datasets[0], spec.seeds[0]).items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = export_onnx(spec, tmp / "export")
        storage = open_storage(f"sqlite:///{tmp / 'search.db'}", spec.search.heartbeat)
        fresh_cache(tmp, onnx)  # the cached arm: one empty cache for all its trials, as a real search has
        cached_s, cached = arm(spec, dims, pools, storage, "cached", Objective, tmp)
        naive_root = tmp / "naive"
        naive_root.mkdir()
        naive_s, naive = arm(spec, dims, pools, storage, "naive", NaiveObjective, tmp,
                             replay=[t.params for t in cached], cache_root=naive_root, onnx=onnx)

    n = args.trials
    same_params = [t.params for t in cached] == [t.params for t in naive]
    score_gap = max(abs(a.value - b.value) for a, b in zip(cached, naive, strict=True))
    arms = {"cached": cached, "naive": naive}
    extract = {k: np.mean([t.user_attrs["timings"]["inputs_s"] for t in ts]) for k, ts in arms.items()}
    fit = {k: np.mean([t.user_attrs["timings"]["fit_s"] for t in ts]) for k, ts in arms.items()}
    print(f"mlp on Fashion-MNIST: {sizes['train']} train / {sizes['val']} validation images (test: "
          f"{sizes['test']}, never encoded), {BACKBONE} @ {args.image_size} px, {n} TPE trials per arm, "
          f"{torch.get_num_threads()} threads")
    for label, key, seconds in (("cached (one feature cache):", "cached", cached_s),
                                ("naive (re-extract):        ", "naive", naive_s)):
        print(f"{label} {seconds:7.1f} s  {seconds / n:6.2f} s/trial  {passes(arms[key]):6d} backbone passes  "
              f"features {extract[key]:.2f} s/trial  mlp fit {fit[key]:.2f} s/trial")
    print(f"same {n} configurations: {'yes' if same_params else 'NO'}; largest validation accuracy "
          f"difference: {score_gap:.1e}")
    print(f"ratio: {naive_s / cached_s:.2f}x")


if __name__ == "__main__":
    main()
