"""The Python API: the CLI's commands as functions (`transferlab.run`, `transferlab.study`, `transferlab.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunSpec, StudySpec, validated

DEFAULT_RUN_DIR = Path("runs") / "single"


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


def report(study_dir: str | Path) -> Path:
    """Rebuild `study_dir/report.html` from the run records alone."""
    from .report import build_report

    return build_report(study_dir)
