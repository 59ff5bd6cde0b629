"""After the search: the best configuration (`best_configuration`), retrained and scored once on test for every
study seed as ordinary run records (`retrain`), and the summary the report reads, `search/<name>.json`
(`summarize`, `importances`, `write_summary`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config import StudySpec
from ..core.distributed import is_main
from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..core.progress import results
from ..features import FeatureStore
from ..record import write_record
from ..runner import execute_run, headline
from ..tracking import Tracker
from .space import Dimension, resolve_paradigm, trial_spec
from .storage import redact


def best_configuration(study, metric: str) -> dict[str, Any]:
    """The best completed trial: its number, parameters and validation value (one line if there is none)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = [t.user_attrs.get("fail_reason") for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("fail_reason") and not t.user_attrs.get("surplus")]
        first = f"; the first failure: {reasons[0]}" if reasons else ""
        raise TransferlabError(f"search '{study.study_name}': no trial completed{first}")
    best = study.best_trial
    return {"study": study.study_name, "trial": best.number, "params": best.params, "objective": metric,
            "value": best.value}


def retrain(spec: StudySpec, best: dict[str, Any], out_dir: Path, pools,
            tracker: Tracker | None = None) -> list[dict[str, Any]]:
    """The best configuration, retrained (train, or train + val with `final`) and scored once on test for
    every study seed; ordinary run records under out/runs, labelled `<paradigm>-searched`, with `search`
    saying which trial they come from (and `tracker` logs each as a run)."""
    final = spec.search.final if spec.search.final is not None else spec.final
    paradigm = resolve_paradigm(spec, best["params"].get("paradigm", spec.paradigms[0].row_label))
    store, records, tracker = FeatureStore(), [], tracker or Tracker()
    for seed in spec.seeds:
        run = trial_spec(spec, best["params"], seed=seed, label=f"{paradigm.label or paradigm.name}-searched")
        run = run.model_copy(update={"final": final})
        with tracker.cell(run, "retrained") as tracked:
            record = execute_run(run, out_dir, study=spec.name, pools=pools, store=store)
            if record.get("search") != best and is_main():
                record = {**record, "search": best}
                write_record({k: v for k, v in record.items() if k != "reused"}, out_dir)
            tracked.result(record)
        if is_main():
            results.print(f"best trial {best['trial']} ({best['objective']} {best['value']:.4f} on validation), "
                          f"seed {seed}: {headline(record)}")
        records.append(record)
    return records


def summarize(study, spec: StudySpec, dims: list[Dimension], url: str, budget: int, metric: str,
              final_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows about a search, from the storage: trials, best, importances."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:
            continue
        trials.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "distributions": {k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()},
            "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
            "seconds": t.duration.total_seconds() if t.duration else None,
            "fail_reason": t.user_attrs.get("fail_reason") or (
                None if t.state != TrialState.FAIL else "interrupted; queued again" if t.user_attrs.get(
                    "interrupted") else "its worker stopped sending heartbeats (killed?); retried"),
            "worker": t.user_attrs.get("worker"), "backbone_passes": t.user_attrs.get("backbone_passes"),
            "val_metrics": t.user_attrs.get("val_metrics")})
    complete = [t for t in trials if t["state"] == "complete"]
    best = study.best_trial if complete else None
    return {
        "name": study.study_name, "storage": redact(url), "objective": metric,
        "direction": study.direction.name.lower(), "sampler": spec.search.sampler, "pruner": spec.search.pruner,
        "budget": budget, "space": {d.path: d.param.model_dump(mode="json", exclude_defaults=True) for d in dims},
        "counts": {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail", "running")},
        "best": {"number": best.number, "value": best.value, "params": best.params} if best else None,
        "importances": importances(study) if len(complete) >= 2 else None,
        "top": spec.search.top, "trials": trials,
        "final_run_ids": [r["run_id"] for r in final_records],
        "final_metrics": [{k: v for k, v in r["metrics"].items() if isinstance(v, int | float) or v is None}
                          for r in final_records]}


def importances(study) -> dict[str, float] | None:
    """Optuna's parameter importances (fANOVA), or None when the completed trials cannot support them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return None
    return {k: float(v) for k, v in found.items()} or None


def write_summary(summary: dict[str, Any], out_dir: Path) -> Path:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in summary["name"])  # a file name, whatever NAME is
    return atomic_write(out_dir / "search" / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
