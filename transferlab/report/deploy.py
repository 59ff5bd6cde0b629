"""The report's pruning section: one entry per `<study dir>/deploy/<run id>/prune.json` (`transferlab prune`).

Like the rest of the report it reads files only — the summary `deploy.prune.prune_run` wrote, never the
dataset or the model: the accuracy-vs-sparsity curve (validation and test, the dense model's as dashed
lines) and a table of each sparsity's scores, non-zero weights and compressed size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from .plots import REFERENCE_GREY, _png, data_uri, plt
from .search import read_summary

REQUIRED = ("run_id", "metric", "scope", "dense", "results")
COLOURS = {"val": "tab:blue", "test": "tab:orange"}


def prune_context(study_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per pruning summary under `study_dir/deploy/*/`, in run-id order; none without that folder."""
    paths = sorted(Path(study_dir).glob("deploy/*/prune.json"))
    return [prune_entry(load_prune_summary(path), path, Path(study_dir)) for path in paths]


def load_prune_summary(path: Path) -> dict[str, Any]:
    return read_summary(path, REQUIRED, "prune", "deploy/")


def prune_entry(summary: dict[str, Any], path: Path, study_dir: Path) -> dict[str, Any]:
    """What the template shows of one pruned run: a title line, the curve and the table."""

    results = sorted(summary["results"], key=lambda r: r["sparsity"])
    labels = summary.get("labels") or {}
    folder = path.parent.relative_to(study_dir).as_posix()
    recovered = bool(summary.get("recover_epochs"))
    return {
        "run_id": summary["run_id"], "anchor": "prune-" + quote(summary["run_id"], safe=""),
        "label": run_label(labels) or summary["run_id"], "metric": summary["metric"], "scope": summary["scope"],
        "method": summary.get("method") or ("structured" if summary.get("structured") else "unstructured"),
        "recover_epochs": summary.get("recover_epochs") or 0, "lr": summary.get("lr"),
        "images": summary.get("images") or {}, "dense": table_row(summary["dense"], None), "recovered": recovered,
        "rows": [table_row(r, folder) for r in results],
        "curve": data_uri(curve(summary, results)) if results else None,
    }


def run_label(labels: dict[str, Any]) -> str | None:
    paradigm, backbone = labels.get("paradigm"), labels.get("backbone")
    if not paradigm:
        return None
    return paradigm if backbone in (None, "none") else f"{paradigm} ({backbone})"


def table_row(result: dict[str, Any], folder: str | None) -> dict[str, Any]:
    """A table row (the dense model's too, without a folder): its figures with the sizes as text."""
    size = result.get("size") or {}
    file = result.get("file")
    return {**result, "before": result.get("pruned") or {}, "gzip_text": size_text(size.get("gzip")),
            "scope_gzip_text": size_text(size.get("scope_gzip")),
            "href": f"{quote(folder, safe='/@=,+-_.')}/{quote(file, safe='-_.')}" if file and folder else None}


def size_text(size: Any) -> str:
    if not isinstance(size, int | float):
        return "—"
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def curve(summary: dict[str, Any], results: list[dict[str, Any]]) -> bytes:
    """Validation and test score against sparsity; the dense model's as dashed lines; with a recovery
    fine-tune, the scores before it as thin dotted lines."""
    metric, dense = summary["metric"], summary["dense"]
    xs = [r["sparsity"] for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for split, colour in COLOURS.items():
        ys = [r.get(split) for r in results]
        if any(y is not None for y in ys):
            after = " after recovery" if summary.get("recover_epochs") else ""
            ax.plot(xs, ys, "o-", color=colour, label=f"{split}{after}", zorder=3)
        before = [(r.get("pruned") or {}).get(split) for r in results]
        if any(y is not None for y in before):
            ax.plot(xs, before, ":", marker=".", color=colour, alpha=0.7, linewidth=1, label=f"{split}, pruned only")
        if dense.get(split) is not None:
            ax.axhline(dense[split], color=colour, linestyle="--", linewidth=1, alpha=0.6,
                       label=f"{split}, dense {dense[split]:.3f}")
    kind = "structured" if summary.get("structured") else "unstructured"
    where = {"head": "the head's", "backbone": "the backbone's", "all": "all"}.get(summary["scope"], summary["scope"])
    ax.set(xlabel=f"sparsity (fraction of {where} weights set to zero, {kind})", ylabel=metric,
           title=f"{run_label(summary.get('labels') or {}) or summary['run_id']}: {metric} vs sparsity")
    ax.set_xlim(min(0.0, min(xs)) - 0.02, 1.0)
    ax.grid(alpha=0.3, color=REFERENCE_GREY)
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)
