"""The Python API: the CLI's commands as functions (`transferlab.run`, `transferlab.study`, `transferlab.search`,
`transferlab.report`, `transferlab.api.inspect`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DataSpec, RunSpec, StudySpec, validated

DEFAULT_RUN_DIR = Path("runs") / "single"
DEFAULT_INSPECT_DIR = Path("inspect")
NEAR_DUPLICATE_BITS = 16  # of a 256-bit perceptual hash; why 256 and not 64: transferlab/data/inspect.py


def run(data: str | dict[str, Any], backbone: str | dict[str, Any] | None = None,
        paradigm: str | dict[str, Any] = "linear", *, seed: int = 0, out: str | Path = DEFAULT_RUN_DIR,
        force: bool = False, resume: bool = False, **options: Any) -> dict[str, Any]:
    """One run; returns its record (also written to `out/runs/<run id>.json`).

    >>> transferlab.run("digits", "tf_efficientnet_lite0", "knn")            # doctest: +SKIP
    >>> transferlab.run({"source": "flowers/", "train_size": 1000}, {"name": "resnet50", "weights": "hub"},
    ...                 {"name": "rff", "C": [1, 10]}, seed=1)                   # doctest: +SKIP
    """
    from .runner import execute_run

    spec = validated(RunSpec, {"data": data, "backbone": backbone, "paradigm": paradigm, "seed": seed, **options},
                     "transferlab.run")
    return execute_run(spec, out, reuse=not force, resume=resume)


def study(spec: str | Path | dict[str, Any] | StudySpec, out: str | Path | None = None, *,
          skip_bad: bool = False, force: bool = False, resume: bool = False) -> list[dict[str, Any]]:
    """Run a study spec (a YAML path, a dict, or a StudySpec); returns the run records.

    Cells whose records are up to date are reused; `force=True` recomputes them; `resume=True` continues
    interrupted training runs from their last epoch checkpoint.
    """
    from .study import run_study

    if isinstance(spec, dict):
        spec = validated(StudySpec, spec, "transferlab.study")
    return run_study(spec, out, skip_bad=skip_bad, force=force, resume=resume)


def search(spec: str | Path | dict[str, Any] | StudySpec, out: str | Path | None = None, *, trials: int | None = None,
           timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
           worker: bool = False, resume: bool = False) -> dict[str, Any]:
    """Search the spec's `search:` space with Optuna (validation only), retrain the best configuration and
    score it once on test; returns the summary written to `out/search/<name>.json`.

    `storage` defaults to a SQLite file under `out` (a killed search continues with the same call); give a
    PostgreSQL URL and run the same call with `worker=True` on other machines to share the budget.

    >>> transferlab.search("examples/search.yaml", trials=50)                 # doctest: +SKIP
    """
    from .search import run_search

    if isinstance(spec, dict):
        spec = validated(StudySpec, spec, "transferlab.search")
    return run_search(spec, out, trials=trials, timeout=timeout, storage=storage, study_name=study_name,
                      worker=worker, resume=resume)


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
    from .data.inspect import inspect_data

    fields = {"source": data} if isinstance(data, str) else dict(data)
    fields.update({k: v for k, v in {"val": val, "test": test}.items() if v is not None})
    # skip_bad: inspect lists unreadable images instead of stopping, and must also see empty class folders.
    spec = validated(DataSpec, {**fields, "skip_bad": True}, "transferlab.inspect")
    presets = (augment,) if isinstance(augment, str) else tuple(augment)
    return inspect_data(spec, out if out is not None else DEFAULT_INSPECT_DIR / spec.label, seed=seed, limit=limit,
                        augment=presets, threshold=threshold)
