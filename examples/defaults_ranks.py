"""Rank the fine-tuning recipes of examples/defaults.yaml on validation, per dataset and on average.

    python examples/defaults_ranks.py runs/defaults

Prints a Markdown table (the one docs/concepts.md shows): each recipe's mean validation score per dataset
(accuracy; micro-F1 for the multi-label mosaics) with its rank among the recipes, then its mean rank; and
the test figures of `linear` and `head` (the bar a fine-tune must clear), the default fine-tune and the recipe
with the best mean rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from transferlab.leaderboard import leaderboard, ranked_by_validation


def main(out: Path) -> None:
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    ranking, by_row = ranked_by_validation(records)
    datasets = list(ranking)
    bars = {row["paradigm"] for row in ranking[datasets[0]] if row["paradigm"] == "linear" or
            row["paradigm"].startswith("head")}  # the references a fine-tune must clear, not recipes
    recipes = [row["paradigm"] for row in ranking[datasets[0]] if row["paradigm"] not in bars]
    val = {(d, row["paradigm"]): np.mean([r["val_metrics"][row["primary"]] for r in by_row[tuple(
        row[k] for k in ("dataset", "backbone", "paradigm"))]]) for d in datasets for row in ranking[d]}
    ranks = {d: dict(zip(recipes, rankdata([-val[d, r] for r in recipes]), strict=True)) for d in datasets}
    mean_rank = {r: np.mean([ranks[d][r] for d in datasets]) for r in recipes}
    print("| recipe | " + " | ".join(datasets) + " | mean rank |")
    print("|---|" + "---|" * (len(datasets) + 1))
    for recipe in sorted(recipes, key=mean_rank.get):
        cells = [f"{val[d, recipe]:.3f} ({ranks[d][recipe]:g})" for d in datasets]
        print(f"| `{recipe}` | " + " | ".join(cells) + f" | {mean_rank[recipe]:.1f} |")
    print()
    rows = {(row["dataset"], row["paradigm"]): row for row in leaderboard(records)}
    print("| test, mean ± std over seeds | " + " | ".join(datasets) + " |")
    print("|---|" + "---|" * len(datasets))
    best = min(recipes, key=mean_rank.get)
    for paradigm in [*sorted(bars), "default", *([best] if best != "default" else [])]:
        cells = []
        for d in datasets:
            row = rows[d, paradigm]
            metric = row["primary"]
            cells.append(f"{row[metric + '_mean']:.3f} ± {row[metric + '_std']:.3f}")
        print(f"| `{paradigm}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/defaults"))
