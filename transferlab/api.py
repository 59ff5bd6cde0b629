"""The Python API: the CLI's commands as functions (`transferlab.run`, `transferlab.study`, `transferlab.search`,
`transferlab.report`, `transferlab.api.inspect`, and after the study `transferlab.predict`, `export`, `prune`,
`quantize`, `serve`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DataSpec, RunSpec, StudySpec, load_yaml, named_entries, validated
from .core.errors import TransferlabError
from .core.names import refuse_unknown

if TYPE_CHECKING:  # the annotation only: leaderboard imports numpy, which `import transferlab` does not need
    from .leaderboard import Leaderboard

# The imports of the commands below sit inside the functions: `import transferlab` and `transferlab --help`
# stay fast (no torch, timm, optuna) until a command actually runs.

DEFAULT_RUN_DIR = Path("runs") / "single"
DEFAULT_INSPECT_DIR = Path("inspect")
NEAR_DUPLICATE_BITS = 16  # of a 256-bit perceptual hash (why 256 and not 64: transferlab/inspect.py)


def run(data: str | dict[str, Any], backbone: str | dict[str, Any] | None = None,
        paradigm: str | dict[str, Any] = "linear", *, seed: int | None = None, out: str | Path = DEFAULT_RUN_DIR,
        force: bool = False, resume: bool = False, track: str | None = None, tracking_uri: str | None = None,
        **options: Any) -> dict[str, Any]:
    """One run; returns its record (also written to `out/runs/<run id>.json`).

    `track`: also log the run to mlflow (experiment `transferlab-runs`) or tensorboard (`out/tensorboard/<run
    id>`), at `tracking_uri` if given (optional extra `track`; see `transferlab.tracking`).

    >>> transferlab.run("digits", "tf_efficientnet_lite0", "knn")            # doctest: +SKIP
    >>> transferlab.run({"source": "flowers/", "train_size": 1000}, {"name": "resnet50", "weights": "hub"},
    ...                 {"name": "rff", "C": [1, 10]}, seed=1)                   # doctest: +SKIP
    """
    given = {"data": data, "backbone": backbone, "paradigm": paradigm, "seed": seed, **options}
    spec = _run_spec(given, "transferlab.run")  # first: a bad spec answers before torch is imported
    from .runner import execute_run
    from .tracking import open_tracking

    with open_tracking(track, out, uri=tracking_uri).cell(spec, "run", fresh=not resume) as tracked:
        record = execute_run(spec, out, reuse=not force, resume=resume)
        tracked.result(record)
    return record


def lr_find(data: str | dict[str, Any], backbone: str | dict[str, Any] | None = None,
            paradigm: str | dict[str, Any] = "finetune", *, seed: int | None = None,
            out: str | Path = DEFAULT_RUN_DIR, **options: Any) -> dict[str, Any]:
    """The learning-rate range test of one cell (fastai's / Lightning's lr_find, train/lr_find.py): returns the
    lrs, smoothed losses, the suggested lr and its rule, and writes them with the loss-vs-lr plot to
    `out/lr_find/<run id>.json` / `.png`. Trains nothing.

    >>> transferlab.lr_find("flowers/", "tf_efficientnet_lite0", {"name": "finetune", "optimizer": "adamw"})
    ... # doctest: +SKIP
    """
    given = {"data": data, "backbone": backbone, "paradigm": paradigm, "seed": seed, **options}
    spec = _run_spec(given, "transferlab.lr_find")
    from .core.paths import atomic_write
    from .report.plots import lr_find_curve
    from .runner import find_learning_rate

    found = find_learning_rate(spec, out)
    folder = Path(out) / "lr_find"
    folder.mkdir(parents=True, exist_ok=True)
    plot, data_file = folder / f"{spec.run_id}.png", folder / f"{spec.run_id}.json"
    found["run_id"] = spec.run_id  # the cell's, as given (the test itself ran it with lr: find)
    atomic_write(plot, lambda tmp: tmp.write_bytes(lr_find_curve(found, spec.run_id)))
    atomic_write(data_file, lambda tmp: tmp.write_text(json.dumps(found, indent=1)))
    return {**found, "plot_path": str(plot), "json_path": str(data_file)}


def study(spec: str | Path | dict[str, Any] | StudySpec, out: str | Path | None = None, *,
          skip_bad: bool = False, force: bool = False, resume: bool = False, mini: bool = False,
          storage: str | None = None, worker: bool = False, study_name: str | None = None, track: str | None = None,
          tracking_uri: str | None = None) -> Leaderboard:
    """Run a study spec (a YAML path, a dict, or a StudySpec): its grid, then its `search:` and `prune:`
    steps if it has them; returns the run records as a `Leaderboard` (a list of them that shows itself as the
    leaderboard in Jupyter, with `.to_pandas()`, `.report_path` and `.open_report()`).

    Cells whose records are up to date are reused; `force=True` recomputes them; `resume=True` continues
    interrupted training runs from their last epoch checkpoint; `mini=True` runs the spec's offline
    miniature (its `mini:` block) into runs/<name>-mini.

    `storage` (an Optuna RDB URL, e.g. postgresql://user@host/db) spreads the cells over every process that
    runs the same call with it (`search.cells`): `worker=True` runs cells until none is left and returns;
    the call without it runs cells too, waits for the last, then writes the leaderboard and report. `out`
    and $TRANSFERLAB_CACHE must then be on a file system every worker sees.

    `track` (mlflow | tensorboard | none) and `tracking_uri` override the spec's `tracking` / `tracking_uri`:
    the study becomes a parent run with a nested run per cell (`transferlab.tracking`). With `storage`, the
    call without `worker` logs every cell, from its record, once all have run.

    >>> transferlab.study("examples/studies/flowers-heads.yaml", mini=True)   # doctest: +SKIP
    """
    spec = _study_spec(spec, "transferlab.study", datasets=not mini)  # first: a bad spec answers before torch
    if (worker or study_name) and not storage:
        raise TransferlabError(f"{'worker' if worker else 'study_name'} needs storage: the URL of the database "
                               "the workers share (e.g. postgresql://user@host/db)")
    from .core.progress import log
    from .leaderboard import Leaderboard
    from .mini import miniature
    from .report import build_report
    from .search import search_and_retrain
    from .search.cells import run_cells
    from .study import publish_leaderboard, run_study
    from .tracking import Tracker

    if mini:
        spec, swaps = miniature(spec)
        for line in swaps:
            log.info(line)
    out_dir = Path(out) if out else Path("runs") / spec.name
    if skip_bad:
        spec = spec.model_copy(update={"datasets": [d.model_copy(update={"skip_bad": True}) for d in spec.datasets]})
    spec = _tracking_chosen(spec, track, tracking_uri)
    # opened first, so that a missing extra fails before any cell runs; cell workers leave logging to the main call
    tracking = Tracker() if worker else _open_tracking(spec, out_dir)
    if storage:  # the cells run wherever a worker asks for them; then every record below is up to date
        ran = run_cells(spec, out_dir, storage, name=study_name, worker=worker, force=force, resume=resume)
        if worker:
            log.info(f"worker done: {len(ran)} cells run here; the command without --worker writes the "
                     "leaderboard and report")
            return Leaderboard(ran)
        force = resume = False
    with tracking.group(spec.name, {"kind": "study"}) as tracker:
        records, summary = run_study(spec, out_dir, force=force, resume=resume, tracker=tracker)
        if spec.search is not None:  # the searched rows join the grid's (the report finds them through search/)
            with tracker.group(f"{spec.name}-search", {"kind": "search"}) as searched:
                records += search_and_retrain(spec, out_dir, storage=storage, tracker=searched)[1]
        if not _is_main():  # under torchrun rank 0 alone writes the study's files
            return Leaderboard(records)
        publish_leaderboard(spec, records, out_dir)
        if spec.prune is not None:
            _prune_winners(spec, records, out_dir)
        log.info(f"{summary['computed']} runs computed, {summary['reused']} reused, "
                 f"{summary['backbone_passes']} backbone passes, {summary['seconds']:.1f}s")
        report_path = build_report(out_dir)
        tracker.attach([report_path, out_dir / "leaderboard.csv", out_dir / "study.yaml"])
    log.info(f"records in {out_dir / 'runs'}, leaderboard {out_dir / 'leaderboard.csv'}, report {report_path}")
    return Leaderboard(records, report_path)


def _tracking_chosen(spec: StudySpec, track: str | None, uri: str | None) -> StudySpec:
    """The spec with the command's --track / --tracking-uri in place of its own (study.yaml then says what ran)."""
    given = {k: v for k, v in {"tracking": track, "tracking_uri": uri}.items() if v is not None}
    return spec.model_copy(update=given)  # the value is checked where it is used (tracking.open_tracking)


def _open_tracking(spec: StudySpec, out_dir: Path):
    from .tracking import open_tracking

    return open_tracking(spec.tracking, out_dir, uri=spec.tracking_uri, experiment=spec.name)


def _study_spec(spec, where: str, *, datasets: bool = True) -> StudySpec:
    """A StudySpec from a YAML path, a dict, or a StudySpec (checked against the registries either way).
    The file, its YAML and its structure (unknown keys, types) are checked first with `config` alone, so a
    missing file or a misspelt key answers without importing torch; the registry checks (paradigm and
    backbone names, a paradigm's params) come second (`_checked`)."""
    if isinstance(spec, str | Path):
        spec, where = load_yaml(spec), str(spec)
    if isinstance(spec, dict):
        spec = validated(StudySpec, spec, where)
    return _checked(spec, where, datasets=datasets)


def _run_spec(given: dict[str, Any], where: str) -> RunSpec:
    """A RunSpec from `run`'s arguments (None: the default), checked like a study's spec (`_study_spec`)."""
    return _checked(validated(RunSpec, {k: v for k, v in given.items() if v is not None}, where), where)


def _checked(spec: Any, where: str, *, datasets: bool = True) -> Any:
    """`spec` after the registry checks: first against the names the last process that imported the
    registries left on disk (core.names; a misspelt name answers at once, torch not imported), then the
    registries themselves (resolve.checked). `datasets`: the dataset sources too (not for a miniature, whose
    full-size data may be absent)."""
    refuse_unknown(named_entries(spec, datasets=datasets), where)
    from .resolve import checked

    return checked(spec, where)


def _is_main() -> bool:
    from .core.distributed import is_main

    return is_main()


def _prune_winners(spec: StudySpec, records: list[dict[str, Any]], out_dir: Path) -> None:
    """The spec's `prune:` step on each dataset's winner (the best non-reference row by mean validation score,
    its first seed's run); a winner that cannot be pruned is one line, and the report still comes."""
    from .core.errors import TransferlabError
    from .core.progress import log
    from .leaderboard import winners

    for record in winners(records):
        try:
            prune_winner(spec, record, out_dir)
        except TransferlabError as exc:  # e.g. a winner with no dense layer to prune
            log.info(f"prune: skipped the winner {record['run_id']}: {exc}")


def prune_winner(spec: StudySpec, record: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """`transferlab prune` with the spec's `prune:` settings on one winning run."""
    from .core.progress import results
    from .deploy import load_run
    from .deploy.prune import prune_run

    p = spec.prune
    summary = prune_run(load_run(record["run_id"], out_dir), p.sparsity, scope=p.scope, structured=p.structured,
                        recover_epochs=p.recover_epochs)
    dense = summary["dense"]
    for result in summary["results"]:
        results.print(f"pruned {result['reached']:.0%} of the {p.scope} weights of the winner {record['run_id']}: "
                      f"{summary['metric']} val {dense['val']:.4f} → {result['val']:.4f}, test {dense['test']:.4f} → "
                      f"{result['test']:.4f}")
    return summary


def search(spec: str | Path | dict[str, Any] | StudySpec, out: str | Path | None = None, *, trials: int | None = None,
           timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
           worker: bool = False, resume: bool = False, track: str | None = None,
           tracking_uri: str | None = None) -> dict[str, Any]:
    """Search the spec's `search:` space with Optuna (validation only), retrain the best configuration and
    score it once on test; returns the summary written to `out/search/<name>.json`.

    `storage` defaults to a SQLite file under `out` (a killed search continues with the same call); give a
    PostgreSQL URL and run the same call with `worker=True` on other machines to share the budget.

    `track` / `tracking_uri` (override the spec's `tracking`): the search becomes a parent run with a nested run
    per trial (its sampled values and validation metrics) and per retrained seed; each worker logs the trials it
    ran under a parent run of its own.

    >>> transferlab.search("examples/search.yaml", trials=50)                 # doctest: +SKIP
    """
    spec = _study_spec(spec, "transferlab.search")  # first: a bad spec answers before torch is imported
    from .core.progress import log
    from .report import build_report
    from .search import search_and_retrain

    out_dir = Path(out) if out else Path("runs") / spec.name
    spec = _tracking_chosen(spec, track, tracking_uri)
    name = f"{study_name or spec.name}-search" + (" (worker)" if worker else "")
    with _open_tracking(spec, out_dir).group(name, {"kind": "search", "worker": worker}) as tracker:
        summary, _ = search_and_retrain(spec, out_dir, trials=trials, timeout=timeout, storage=storage,
                                        study_name=study_name, worker=worker, resume=resume, tracker=tracker)
        if not worker and _is_main():
            report_path = build_report(out_dir)
            tracker.attach([report_path])
            log.info(f"report {report_path}")
    return summary


def report(study_dir: str | Path) -> Path:
    """Rebuild `study_dir/report.html` from the run records alone."""
    from .report import build_report

    return build_report(study_dir)


def inspect(data: str | dict[str, Any], *, val: str | None = None, test: str | None = None, seed: int = 0,
            out: str | Path | None = None, limit: int | None = None, augment: str | Sequence[str] = "light",
            threshold: int = NEAR_DUPLICATE_BITS) -> dict[str, Any]:
    """Look at a dataset before training on it; returns the summary written to `out/inspect.json` (beside
    `out/inspect.html`, default out: `inspect/<dataset name>`).

    Splits are cut as `run` cuts them for `seed`. Per split: images per class, sizes, modes, unreadable
    files (listed, never fatal); across splits: near-duplicate pairs (perceptual hash within `threshold`
    bits). `limit` analyses a seeded sample of that many images per split; `augment`: the preset(s) (or
    YAML files of transforms) previewed on the page.

    >>> transferlab.api.inspect("flowers/", test="flowers-test/")["duplicates"]["total"]   # doctest: +SKIP
    """
    from .inspect import inspect_data
    from .report.inspect import write_page

    fields = {"source": data} if isinstance(data, str) else dict(data)
    fields.update({k: v for k, v in {"val": val, "test": test}.items() if v is not None})
    # skip_bad: inspect lists unreadable images instead of stopping, and must also see empty class folders.
    spec = validated(DataSpec, {**fields, "skip_bad": True}, "transferlab.inspect")
    presets = (augment,) if isinstance(augment, str) else tuple(augment)
    out = Path(out) if out is not None else DEFAULT_INSPECT_DIR / spec.label
    inspection = inspect_data(spec, out, seed=seed, limit=limit, augment=presets, threshold=threshold)
    write_page(inspection, out, presets, seed)
    return inspection.summary


# ---------------------------------------------------------------- after the study (transferlab/deploy)
# `run` is a run record path, a model file OUT/models/<id>.safetensors, a folder holding one run, or a run id
# found under `runs` (default ./runs).


def predict(run: str | Path, images: str | Path | Sequence[str | Path], *, top_k: int = 5,
            out: str | Path | None = None, runs: str | Path = "runs", explain: bool | str | Path = False):
    """Classify image files / folders / globs with a run's model; returns `Predictions` (rows, unreadable);
    `out` also writes them (.csv or .json). `explain`: also a Grad-CAM overlay per image, `<stem>.gradcam.png`, in
    that folder (True: `explain/` beside `out`, else OUT/deploy/<run id>/explain/), its path in each row's `gradcam`
    (needs `pip install 'transferlab[explain]'`).

    >>> transferlab.api.predict("runs/quickstart/runs/<id>.json", ["photos/"]).rows[0]["prediction"]  # doctest: +SKIP
    """
    from .deploy import load_run
    from .deploy.explain import default_folder
    from .deploy.predict import predict_images, write_predictions

    images = [images] if isinstance(images, str | Path) else list(images)  # one path, not its characters
    model = load_run(run, runs)
    folder = default_folder(model, out) if explain is True else (Path(explain) if explain else None)
    predictions = predict_images(model, images, top_k=top_k, explain=folder)
    if out is not None:
        write_predictions(predictions, Path(out))
    return predictions


def export(run: str | Path, format: str = "onnx", *, out: str | Path | None = None,
           runs: str | Path = "runs") -> dict[str, Any]:
    """Export a run's model (onnx | torchscript | safetensors) to `out` (default OUT/deploy/<run id>/) with its
    model card; fails unless the file reproduces the PyTorch scores on the run's test images. Returns the card."""
    from .deploy import load_run
    from .deploy.export import export_model

    return export_model(load_run(run, runs), format, out)


def prune(run: str | Path, sparsity: float | Sequence[float] = 0.8, *, scope: str = "head", structured: bool = False,
          recover_epochs: int = 0, out: str | Path | None = None, runs: str | Path = "runs") -> dict[str, Any]:
    """Magnitude-prune a run's model at one or several sparsities; returns the summary (accuracy on val and
    test, non-zero parameters, compressed size, before and after) also written to OUT/deploy/<run id>/prune.json."""
    from .deploy import load_run
    from .deploy.prune import prune_run

    sparsities = [sparsity] if isinstance(sparsity, int | float) else list(sparsity)
    return prune_run(load_run(run, runs), sparsities, scope=scope, structured=structured,
                     recover_epochs=recover_epochs, out=out)


def quantize(run: str | Path, *, mode: str = "dynamic", calibration: int = 200, out: str | Path | None = None,
             runs: str | Path = "runs") -> dict[str, Any]:
    """int8 ONNX through ONNX Runtime (dynamic, or static calibrated on `calibration` train images); returns
    accuracy and latency before/after, also written to OUT/deploy/<run id>/quantize.json."""
    from .deploy import load_run
    from .deploy.quantize import quantize_run

    return quantize_run(load_run(run, runs), mode=mode, calibration=calibration, out=out)


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 20.0,
          runs: str | Path = "runs") -> None:
    """Serve a run's model over HTTP until interrupted: POST /predict, GET / (a page), GET /health."""
    from .deploy.serve import serve as serve_run

    serve_run(run, host=host, port=port, runs=runs, max_upload_mb=max_upload_mb)


def cache_info() -> list[dict[str, Any]]:
    """What each kind of cache under $TRANSFERLAB_CACHE holds: kind, path, files, bytes, newest (mtime)."""
    from .core.caches import cache_usage

    return [vars(use) for use in cache_usage()]


def cache_clear(kinds: Sequence[str] | None = None, *, older_than_days: float | None = None) -> dict[str, int]:
    """Remove cached files (of `kinds`, default all; only those older than `older_than_days`, default all);
    everything there is rebuilt when needed. Returns {files, bytes} removed."""
    from .core.caches import clear_cache

    files, size = clear_cache(list(kinds) if kinds else None, older_than_days)
    return {"files": files, "bytes": size}
