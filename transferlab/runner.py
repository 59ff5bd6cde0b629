"""One run, top to bottom: data → splits → encoder → feature store → paradigm → metrics → run record.

The record is the run's only output and everything downstream (leaderboard, report) reads it alone.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import apply_temperature, calibration_effect, fit_temperature
from .config import DataSpec, RunSpec
from .core.distributed import barrier, is_main, world_size
from .core.errors import TransferlabError
from .data import Pools, Split, UnreadableImage, make_splits, open_pools, split_sizes
from .data.balance import class_counts
from .data.decode import decode_images
from .data.splits import split_indices
from .engines import resolve_device
from .evaluate import headline_metrics, image_outcomes, predicted_labels, score, tune_thresholds
from .features import BackboneEncoder, Encoder, FeatureStore
from .gallery import explain_mistakes, mistakes
from .model_file import save_run_model, trained_backbone
from .models import Backbone, forward_cost, load_backbone
from .paradigms import Paradigm, create_paradigm, get_paradigm_class
from .paradigms.trained import LrFound, TrainingContext
from .record import (
    RECORD_VERSION,
    RunRecord,
    cell_key,
    environment,
    is_multi_label,
    library_versions,
    read_record,
    record_path,
    write_record,
)
from .resolve import SPLIT_ONLY_FIELDS
from .stats import encode_outcomes


class PoolsByData:
    """Each dataset of a study opened once, for the grid's expansion and for its runs: datasets that differ
    only in how they are split (sizes, seeds) share one set of pools."""

    def __init__(self):
        self._pools: dict[str, Pools] = {}

    def __call__(self, data: DataSpec) -> Pools:
        key = data.model_dump_json(exclude=SPLIT_ONLY_FIELDS)
        if key not in self._pools:
            self._pools[key] = open_pools(data)
        return self._pools[key]


@dataclass
class Prepared:
    """A run ready to compute: its data split, its paradigm (bound, for training paradigms), backbone and
    encoder, and the `cell_key` that says whether a record already there is up to date."""

    pools: Pools
    splits: dict[str, Split]
    classes: list[str]
    multi_label: bool
    paradigm: Paradigm
    backbone: Backbone | None
    encoder: Encoder | None
    key: str


def execute_run(spec: RunSpec, out_dir: str | Path, *, study: str | None = None, pools: Pools | None = None,
                store: FeatureStore | None = None, reuse: bool = True, resume: bool = False,
                validation_only: bool = False) -> dict[str, Any]:
    """Run `spec`, write `out_dir/runs/<run id>.json`, return the record. `pools` / `store` may be shared.

    Like make: when the record already there was computed from the same inputs (same `cell_key`), it is
    returned as it is (marked `reused`) and nothing is recomputed; `reuse=False` recomputes. `resume`
    continues a training paradigm from its last epoch checkpoint (under `out_dir/checkpoints/<run id>`).

    `validation_only` (a search trial): fit and score validation, and stop there — the test split is never
    encoded, predicted or scored, and no record is written; returns {val_metrics, selected, history,
    backbone_passes, timings}.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    device = resolve_device(spec.device)
    with _timed(timings, "data_s"):
        run = prepare(spec, out_dir, pools, device, resume=resume, validation_only=validation_only)
    previous = None if validation_only else read_record(record_path(out_dir, spec.run_id))
    if reuse and previous and previous.get("cell_key") == run.key:
        return {**previous, "reused": True}
    with _timed(timings, "inputs_s"):
        inputs, encoded, skipped = _inputs(spec, run, store or FeatureStore())

    paradigm, splits = run.paradigm, run.splits
    y = {name: split.labels for name, split in splits.items()}
    with _timed(timings, "fit_s"):
        paradigm.fit(inputs["train"], y["train"], inputs["val"], y["val"])
    with _timed(timings, "predict_s"):
        val_proba = paradigm.predict_proba(inputs["val"])
    # Everything chosen on validation is chosen before test is looked at: the temperature, thresholds, then
    # (final) the refit, which keeps the temperature the first fit's validation gave (nothing is held out from it).
    beta = _temperature(spec, run, val_proba, y["val"])
    uncalibrated = {"val": val_proba}
    if beta is not None:
        val_proba = apply_temperature(val_proba, beta)
    thresholds = tune_thresholds(y["val"], val_proba, spec.threshold) if run.multi_label else None
    val_metrics = score(y["val"], val_proba, run.classes, multi_label=run.multi_label, thresholds=thresholds,
                        detailed=False)
    if validation_only:
        timings["total_s"] = time.perf_counter() - started
        return {"val_metrics": val_metrics, "selected": paradigm.selected_,
                "backbone_passes": _backbone_passes(spec, splits, encoded, paradigm, run.encoder),
                "history": getattr(paradigm, "history_", None), "timings": _rounded(timings)}
    final, scored = None, paradigm
    if spec.final:
        with _timed(timings, "final_fit_s"):
            scored, final = _refit_on_train_and_val(spec, paradigm, inputs, y, len(run.classes), run.multi_label)
    with _timed(timings, "predict_s"):
        test_proba = scored.predict_proba(inputs["test"])  # the one time test is touched
    calibration = None
    if beta is not None:
        uncalibrated["test"], test_proba = test_proba, apply_temperature(test_proba, beta)
        calibration = calibration_effect(y, uncalibrated, {"val": val_proba, "test": test_proba}, beta,
                                         len(run.classes))
    timings["total_s"] = time.perf_counter() - started

    record = RunRecord(
        **_identity(spec, run, study), **_data_facts(spec, run),
        backbone=_backbone_info(run.backbone, run.encoder),
        params=paradigm.used_params().model_dump(mode="json"),  # every hyper-parameter as used (defaults, files read)
        selected=paradigm.selected_, final=final,
        thresholds={"mode": spec.threshold, "values": thresholds} if run.multi_label else None,
        calibration=calibration, val_metrics=val_metrics,
        **_test_results(run, scored, y["test"], test_proba, thresholds, device),
        encoded=encoded,  # images encoded (features) or decoded (training) in this run; 0 = from the cache
        backbone_passes=_backbone_passes(spec, splits, encoded, paradigm, run.encoder),
        cost=forward_cost(run.backbone, _input_size(paradigm, run.backbone, inputs["train"])),
        history=getattr(paradigm, "history_", None), skipped=_source_notes(run.pools) + skipped,
        world_size=world_size(),  # processes that trained it (torchrun)
        timings=_rounded(timings), versions=library_versions(), environment=environment(device),
        model=save_run_model(scored, run.backbone, spec.run_id, out_dir, beta) if is_main() else None,  # predict uses
    ).as_dict()
    if is_main():
        write_record(record, out_dir)
    barrier()  # under torchrun nobody reads the run folder before rank 0 has written it
    return record


def find_learning_rate(spec: RunSpec, out_dir: str | Path) -> dict[str, Any]:
    """`transferlab lr-find`: the run's data and paradigm made ready as for a run, then only the learning-rate range
    test on its first training phase (train/lr_find.py); returns what the test found. Nothing is recorded."""
    if "lr" not in get_paradigm_class(spec.paradigm.name).Params.model_fields:
        raise TransferlabError(f"lr-find: paradigm {spec.paradigm.name} has no learning rate to find; use one that "
                               "trains weights with lr (finetune, head, scratch, simple-cnn)")
    spec = spec.model_copy(update={"paradigm": spec.paradigm.model_copy(
        update={"params": {**spec.paradigm.params, "lr": "find"}})})
    run = prepare(spec, out_dir, None, resolve_device(spec.device))
    inputs, _, _ = _inputs(spec, run, FeatureStore())
    run.paradigm.stop_after_lr_find = True
    y = {name: split.labels for name, split in run.splits.items()}
    try:
        run.paradigm.fit(inputs["train"], y["train"], inputs["val"], y["val"])
    except LrFound as found:
        return {"run_id": spec.run_id, "spec": spec.model_dump(mode="json"), **found.found}
    raise TransferlabError(f"lr-find: {spec.paradigm.name} finished without a training phase to test")


def _temperature(spec: RunSpec, run: Prepared, val_proba, y_val) -> float | None:
    """`calibrate: temperature`'s inverse temperature, fitted on validation (None without it)."""
    if spec.calibrate == "none":
        return None
    if run.multi_label:
        raise TransferlabError(f"calibrate: temperature is for single-label data, and {spec.data.label} is "
                               "multi-label (its per-class thresholds are tuned on validation); use calibrate: none")
    return fit_temperature(val_proba, y_val)


def prepare(spec: RunSpec, out_dir: str | Path, pools: Pools | None, device: torch.device, *, resume: bool = False,
            validation_only: bool = False) -> Prepared:
    """Open and split the data, make the paradigm, load the backbone, and key the run by everything it reads."""
    pools = pools or open_pools(spec.data)
    splits = make_splits(pools, spec.data, spec.seed)
    if validation_only:
        del splits["test"]  # a search never looks at test: not even its features are computed
    classes, multi_label = pools.train.classes, pools.train.multi_label
    paradigm = create_paradigm(spec.paradigm.name, spec.paradigm.params, n_classes=len(classes), seed=spec.seed,
                               multi_label=multi_label)
    backbone = _backbone(spec, out_dir) if paradigm.needs_backbone else None
    encoder, input_key = _encoder(spec, paradigm, backbone, pools, splits, device, out_dir, resume)
    key = cell_key(spec, pools, f"{input_key}|{paradigm.params.model_dump_json()}")  # resolved: YAML files read
    if paradigm.input == "images":
        # a checkpoint resumes only the run that wrote it, with as many processes (their data shards and RNGs)
        paradigm.context.run_key = f"{key}|{world_size()}"
    return Prepared(pools, splits, classes, multi_label, paradigm, backbone, encoder, key)


def _inputs(spec: RunSpec, run: Prepared, store: FeatureStore):
    """(inputs per split, images encoded or decoded per split, skipped files): what the paradigm fits on."""
    if run.paradigm.input == "labels":  # reference rows that look at no image
        return {name: np.zeros((len(split), 0)) for name, split in run.splits.items()}, dict.fromkeys(run.splits, 0), []
    if run.encoder is None:
        return _decoded_images(spec, run.splits, run.paradigm.view())
    return _cached_features(spec, run.splits, run.encoder, store)


def _identity(spec: RunSpec, run: Prepared, study: str | None) -> dict[str, Any]:
    """Which run this is: its id, key, spec, task and leaderboard row."""
    return {"record_version": RECORD_VERSION, "run_id": spec.run_id, "cell_key": run.key, "study": study,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "spec": spec.model_dump(mode="json"),
            "task": "multi-label" if run.multi_label else "single-label", "reference": spec.reference,
            "labels": {"dataset": spec.data.label, "backbone": spec.backbone.label if spec.backbone else "none",
                       "paradigm": spec.paradigm.row_label},
            "seed": spec.seed}


def _data_facts(spec: RunSpec, run: Prepared) -> dict[str, Any]:
    """What the run was trained and scored on: classes, split sizes and images (to reproduce it), fingerprints."""
    n_classes = len(run.classes)
    return {"classes": run.classes, "splits": split_sizes(run.splits),
            "data_fingerprints": {name: pool.fingerprint for name, pool in vars(run.pools).items() if pool is not None},
            "class_counts": {name: _class_counts(split.labels, n_classes) for name, split in run.splits.items()},
            "split_indices": split_indices(run.splits),
            "fold": spec.seed % spec.data.folds if spec.data.folds else None}


def _test_results(run: Prepared, scored: Paradigm, y_test, test_proba, thresholds,
                  device: torch.device) -> dict[str, Any]:
    """The one test score: metrics, per-image outcomes (paired comparisons) and the mistakes gallery, with Grad-CAM
    overlays from the fitted model while it is at hand (the report reads records only)."""
    test_pred = predicted_labels(test_proba, multi_label=run.multi_label, thresholds=thresholds)
    metrics = score(y_test, test_proba, run.classes, multi_label=run.multi_label, thresholds=thresholds)
    examples = mistakes(run.splits["test"], test_proba, test_pred, run.classes, metrics, multi_label=run.multi_label)
    return {"metrics": metrics,
            "test_outcomes": encode_outcomes(image_outcomes(y_test, test_pred, multi_label=run.multi_label)),
            "examples": examples,
            "gradcam": explain_mistakes(examples, run.splits["test"], run.classes, scored, run.backbone,
                                        device)}


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}


def _backbone(spec: RunSpec, out_dir: str | Path) -> Backbone:
    """The run's backbone; random init is seeded by `init_seed` when given (the untrained reference row);
    `features_from`: the network its source run trained."""
    if spec.paradigm.features_from:
        return _trained_backbone(spec, out_dir)
    init_seed = spec.backbone.init_seed
    return load_backbone(spec.backbone, seed=spec.seed if init_seed is None else init_seed)


def _trained_backbone(spec: RunSpec, out_dir: str | Path) -> Backbone:
    source = spec.features_source
    row = f"{spec.paradigm.row_label}: features_from {spec.paradigm.features_from}"
    if source is None:
        raise TransferlabError(f"{row}: a features_from row runs inside its study, after the row it names; run "
                               "the study (a search trial cannot chain rows)")
    path = record_path(out_dir, source.run_id)
    record = read_record(path)
    if record is None:
        raise TransferlabError(f"{row}: {path} is missing — the study trains {source.run_id} first; run the "
                               "whole study")
    return trained_backbone(record, path)


def _encoder(spec: RunSpec, paradigm, backbone, pools: Pools, splits, device, out_dir, resume):
    """(the encoder of a feature paradigm or None, the key of what the paradigm's inputs are)."""
    if paradigm.input == "labels":
        return None, "labels"
    if paradigm.input == "images":
        checkpoints = Path(out_dir) / "checkpoints" / spec.run_id
        paradigm.bind(TrainingContext(backbone, device, checkpoints=checkpoints, resume=resume,
                                      sample_hw=_sample_hw(pools.train, splits["train"]), engine=spec.engine,
                                      classes=pools.train.classes))
        return None, f"{backbone.key if backbone else 'none'}|{paradigm.view()}"
    encoder = BackboneEncoder(backbone, device, spec.engine) if backbone else paradigm.encoder(pools.train)
    return encoder, encoder.key


def _refit_on_train_and_val(spec: RunSpec, chosen, inputs, y, n_classes: int, multi_label: bool):
    """`final`: a fresh paradigm with every validation choice fixed, fitted on train + val (test untouched)."""
    params = chosen.final_params()
    refit = create_paradigm(spec.paradigm.name, params, n_classes=n_classes, seed=spec.seed,
                            multi_label=multi_label)
    if refit.input == "images":
        refit.bind(replace(chosen.context, checkpoints=None, resume=False))
    X = _concat(inputs["train"], inputs["val"])
    refit.fit(X, np.concatenate([y["train"], y["val"]]), inputs["val"], y["val"])
    if refit.input == "images":  # the refit's passes count too
        chosen.passes_ = {k: chosen.passes_[k] + refit.passes_.get(k, 0) for k in chosen.passes_}
    return refit, {"params": refit.params.model_dump(mode="json"), "selected": refit.selected_,
                   "train_images": int(len(X))}


def _concat(a, b):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])

    return torch.cat([a, b])


def _class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    """Images per class (multi-label: images carrying each label)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.sum(axis=0).astype(int).tolist()
    return class_counts(labels, n_classes)


def _input_size(paradigm, backbone, train_inputs) -> int | None:
    """The side of the images that enter the backbone (a training paradigm's own view may differ)."""
    if backbone is None:
        return None
    if paradigm.input == "images" and getattr(train_inputs, "ndim", 0) == 4:
        return int(train_inputs.shape[-1])
    return int(backbone.data_config["input_size"][-1])


def _source_notes(pools: Pools) -> list[str]:
    """What was skipped or dropped while listing the images (bad manifest rows, empty class folders)."""
    return [note for pool in (pools.train, pools.val, pools.test) if pool is not None for note in pool.notes]


def _sample_hw(source, split: Split) -> tuple[int, int] | None:
    """(H, W) of the first readable training image (BiT's resolution rule), or None."""
    for index in split.indices[:20]:
        try:
            image = source.load(int(index))
            return image.height, image.width
        except UnreadableImage:
            continue
    return None


def _cached_features(spec: RunSpec, splits: dict[str, Split], encoder: Encoder, store: FeatureStore):
    """Features of every split from the store (encoding only what it lacks); unreadable images dropped."""
    features, encoded, skipped = {}, {}, []
    for name, split in splits.items():
        got = store.get(split.source, split.indices, encoder, batch_size=spec.batch_size,
                        skip_bad=spec.data.skip_bad, label=f"{name:>5} · {encoder_label(spec)}")
        keep = ~np.isin(split.indices, list(got.bad))  # skip-and-report: only unreadable images go
        if not keep.any():
            raise TransferlabError(f"{name} split of {spec.data.label}: no readable image left "
                                   f"({len(got.bad)} skipped, e.g. {next(iter(got.bad.values()))})")
        splits[name] = Split(split.source, split.indices[keep])
        features[name], encoded[name] = got.features[keep], got.encoded
        skipped += sorted(got.bad.values())
    return features, encoded, skipped


def _decoded_images(spec: RunSpec, splits: dict[str, Split], view):
    """Every split decoded once into a uint8 tensor at the paradigm's view (training paradigms)."""
    images, decoded, skipped = {}, {}, []
    for name, split in splits.items():
        x, kept, bad = decode_images(split.source, split.indices, view, batch_size=spec.batch_size,
                                     skip_bad=spec.data.skip_bad, label=f"{name:>5} · decode")
        splits[name] = Split(split.source, kept)
        images[name], decoded[name] = x, len(kept)
        skipped += sorted(bad.values())
    return images, decoded, skipped


def _backbone_passes(spec, splits, encoded, paradigm, encoder) -> dict[str, int]:
    """Images that went through a backbone in this run: features encoded (0 when cached), or for training
    paradigms what they counted while fitting plus the final val and test predictions."""
    if spec.backbone is None:
        return dict.fromkeys(splits, 0)
    if encoder is not None:
        return encoded
    fitted = paradigm.passes_
    return {"train": fitted["train"], "val": fitted["val"] + len(splits["val"]),
            "test": len(splits["test"]) if "test" in splits else 0}


def _backbone_info(backbone: Backbone | None, encoder: Encoder | None) -> dict[str, Any]:
    if backbone is None:
        return {"name": None, "encoder": encoder.key if encoder else None}
    engine = encoder.engine if isinstance(encoder, BackboneEncoder) else "torch (training)"
    return {"name": backbone.name, "weights": vars(backbone.weights),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
            "feature_key": backbone.key, "engine": engine or "cache"}


def encoder_label(spec: RunSpec) -> str:
    return spec.backbone.label if spec.backbone else spec.paradigm.name


def headline(record: dict[str, Any]) -> str:
    m = record["metrics"]
    return " ".join(f"{k}={m[k]:.4f}" if m.get(k) is not None else f"{k}=–"
                    for k in headline_metrics(is_multi_label(record)))


@contextmanager
def _timed(timings: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


