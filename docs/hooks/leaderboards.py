"""MkDocs hook: a miniature's leaderboard on its study page, from the leaderboard.csv that run wrote.

The marker `<!-- leaderboard: NAME -->` becomes a table of `docs/studies/leaderboards/NAME.csv`, a copy of
`runs/NAME/leaderboard.csv` (`transferlab study examples/studies/<study>.yaml --mini` writes it; copy it
over to refresh the page). The numbers on the page are therefore a run's, never typed by hand.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

MARKER = re.compile(r"<!-- leaderboard: ([A-Za-z0-9._-]+) -->")
FOLDER = Path(__file__).resolve().parent.parent / "studies" / "leaderboards"


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda m: table(FOLDER / f"{m.group(1)}.csv"), markdown)


def table(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = [c.removesuffix("_mean") for c in rows[0] if c.endswith("_mean") and c != "fit_seconds_mean"
               and any(r[c] for r in rows)]
    header = ["paradigm", "backbone", "seeds", *metrics, "fit s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paradigm = row["paradigm"] + (f" *(reference: {row['reference']})*" if row["reference"] else "")
        cells = [paradigm, row["backbone"], row["n_seeds"], *(mean_std(row, m) for m in metrics),
                 f"{float(row['fit_seconds_mean']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(row: dict[str, str], metric: str) -> str:
    mean, std = row.get(f"{metric}_mean") or "", row.get(f"{metric}_std") or ""
    if not mean:
        return "–"
    return f"{float(mean):.3f}" + (f" ± {float(std):.3f}" if std and not math.isnan(float(std)) else "")
