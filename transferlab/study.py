"""A study's grid: datasets × backbones × paradigms × seeds → one run record per cell.

Cells share everything cacheable: each dataset is opened once, and the feature store gives every
paradigm, seed and rerun the features already computed. Paradigms that need no backbone (the `pixels`
reference row) run once per dataset and seed, not once per backbone. The cells themselves come from
`resolve.expand`; what happens after the grid (search, leaderboard, pruning the winner, the report) is
put together by `api.study`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from .config import StudySpec
from .core.distributed import is_main
from .core.paths import atomic_write
from .core.progress import log, results
from .features import FeatureStore
from .leaderboard import compare_best, comparison_text, leaderboard, leaderboard_table, write_leaderboard_csv
from .resolve import expand
from .runner import PoolsByData, execute_run, headline
from .tracking import Tracker


def run_study(spec: StudySpec, out_dir: str | Path, *, force: bool = False, resume: bool = False,
              tracker: Tracker | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every cell of the grid into `out_dir` (records under runs/, the spec as study.yaml, what this
    invocation cost in last_invocation.json); returns (the records, that summary).

    Cells whose record is up to date are reused (see `execute_run`); `force` recomputes every cell;
    `resume` continues interrupted training runs from their last epoch checkpoint. `tracker` (tracking.py) logs
    each cell as a run of its own, reused ones from their records.
    """
    out_dir = Path(out_dir)
    pools_of = PoolsByData()  # for the expansion (which reference rows apply) and the runs
    cells = expand(spec, is_multi_label=lambda data: pools_of(data).train.multi_label)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        atomic_write(out_dir / "study.yaml",
                     lambda tmp: tmp.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)))

    started = time.perf_counter()
    store, records, tracker = FeatureStore(), [], tracker or Tracker()
    for number, cell in enumerate(cells, 1):
        with tracker.cell(cell, fresh=not resume) as tracked:
            record = execute_run(cell, out_dir, study=spec.name, pools=pools_of(cell.data), store=store,
                                 reuse=not force, resume=resume)
            tracked.result(record)
        how = ("reused: record up to date" if record.get("reused") else
               f"fit {record['timings']['fit_s']:.1f}s, backbone passes {sum(record['backbone_passes'].values())}")
        log.info(f"[bold]run {number}/{len(cells)}[/] {cell.run_id}: {headline(record)} ({how})")
        records.append(record)
    summary = invocation_summary(records, time.perf_counter() - started)
    if is_main():
        atomic_write(out_dir / "last_invocation.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return records, summary


def publish_leaderboard(spec: StudySpec, records: list[dict[str, Any]], out_dir: str | Path) -> list[dict[str, Any]]:
    """leaderboard.csv, the table on the console and, per dataset, how the two best rows compare."""
    rows = leaderboard(records)
    write_leaderboard_csv(rows, Path(out_dir) / "leaderboard.csv")
    results.print(leaderboard_table(rows, title=f"{spec.name}: test metrics, mean ± std over seeds"))
    for dataset, comparison in compare_best(records).items():
        results.print(f"{dataset}: {comparison_text(comparison)['sentence']}")
    return rows


def invocation_summary(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What this invocation cost: runs computed vs reused, and images that went through a backbone."""
    computed = [r for r in records if not r.get("reused")]
    return {"computed": len(computed), "reused": len(records) - len(computed), "seconds": round(seconds, 2),
            "backbone_passes": sum(sum(r["backbone_passes"].values()) for r in computed),
            "run_ids": [r["run_id"] for r in records]}  # the study's cells: what its report shows


