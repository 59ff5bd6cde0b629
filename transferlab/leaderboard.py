"""Records → leaderboard rows, ranking by validation, the paired comparison of the two best rows, the winners
and the CSV / console table. Pure functions of run records: the study, the search, pruning and the report all
read the same rows from here.
"""

from __future__ import annotations

import csv
import html
import webbrowser
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from .core.errors import TransferlabError
from .core.paths import atomic_write
from .evaluate import headline_metrics, primary_metric
from .record import is_multi_label
from .stats import interval95, paired_comparison

GROUP = ("dataset", "backbone", "paradigm")


def leaderboard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset × backbone × paradigm: mean, std (ddof=1) and 95 % t-interval over seeds of each
    headline metric; per dataset the rows are sorted by the primary metric, best first, reference rows
    (what transfer buys) among them, tagged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record["labels"][k] for k in GROUP)].append(record)
    rows = []
    for key, group in groups.items():
        multi = any(is_multi_label(r) for r in group)
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["task"] = "multi-label" if multi else "single-label"
        row["reference"] = group[0].get("reference")
        row["n_seeds"] = len(group)
        for metric in headline_metrics(multi):
            values = np.array([np.nan if r["metrics"].get(metric) is None else r["metrics"][metric] for r in group],
                              dtype=float)
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            row[f"{metric}_ci95"] = interval95(values)
        row["primary"] = primary_metric(multi)
        row["score"] = row[f"{row['primary']}_mean"]
        row["fit_seconds_mean"] = float(np.mean([r["timings"]["fit_s"] + r["timings"].get("final_fit_s", 0)
                                                 for r in group]))
        row["gflops"] = (group[0].get("cost") or {}).get("gflops")
        row["run_ids"] = [r["run_id"] for r in group]
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], -np.nan_to_num(r["score"], nan=-np.inf)))
    return rows


def ranked_by_validation(records: list[dict[str, Any]]) -> tuple[dict[str, list[dict]], dict[tuple, list[dict]]]:
    """Per dataset, its non-reference leaderboard rows ordered by mean *validation* score (best first), and
    each row's records. Choosing rows on validation keeps their test scores unbiased."""
    by_row: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        by_row[tuple(record["labels"][k] for k in GROUP)].append(record)

    def validation_score(row) -> float:
        values = [r["val_metrics"].get(row["primary"]) for r in by_row[tuple(row[k] for k in GROUP)]]
        return float(np.mean([np.nan if v is None else v for v in values]))

    rows, ranked = leaderboard(records), {}
    for dataset in dict.fromkeys(r["labels"]["dataset"] for r in records):
        candidates = [row for row in rows if row["dataset"] == dataset and not row["reference"]]
        ranked[dataset] = sorted(candidates, key=lambda row: -np.nan_to_num(validation_score(row), nan=-np.inf))
    return ranked, by_row


def compare_best(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset: the two best non-reference rows (by validation, `ranked_by_validation`), and which is
    better on test with what confidence (stats.paired_comparison on their per-image test outcomes)."""
    out, (ranking, by_row) = {}, ranked_by_validation(records)
    for dataset, ranked in ranking.items():
        if len(ranked) < 2:
            continue
        first, second = ranked[:2]
        comparison = paired_comparison(by_row[tuple(first[k] for k in GROUP)], by_row[tuple(second[k] for k in GROUP)],
                                       first["primary"])
        if comparison is not None:
            out[dataset] = {"a": {k: first[k] for k in GROUP}, "b": {k: second[k] for k in GROUP}, **comparison}
    return out


def winners(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, the first-seed run of the best non-reference row by validation (what `prune:` prunes)."""
    ranking, by_row = ranked_by_validation(records)
    return [min(by_row[tuple(ranked[0][k] for k in GROUP)], key=lambda r: r["seed"])
            for ranked in ranking.values() if ranked]


def study_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The headline metrics of rows that may mix single- and multi-label datasets: the union, in order."""
    tasks = [False] * any(r.get("task") != "multi-label" for r in rows) + [True] * any(
        r.get("task") == "multi-label" for r in rows)
    return list(dict.fromkeys(m for multi in tasks for m in headline_metrics(multi)))


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    metrics = study_metrics(rows)
    return [*GROUP, "reference", "n_seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95")),
            "fit_seconds_mean", "gflops"]


def write_leaderboard_csv(rows: list[dict[str, Any]], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=csv_columns(rows), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not np.isnan(v) else
                                     "" if isinstance(v, float) or v is None else v) for k, v in row.items()})

    atomic_write(Path(path), write)


def format_mean_std(row: dict[str, Any], metric: str) -> str:
    mean, std = row.get(f"{metric}_mean", np.nan), row.get(f"{metric}_std", np.nan)
    if np.isnan(mean):
        return "–"
    return f"{mean:.4f}" + ("" if np.isnan(std) else f" ± {std:.4f}")


def leaderboard_table(rows: list[dict[str, Any]], title: str) -> Table:
    metrics = study_metrics(rows)
    table = Table(title=title)
    for column in (*GROUP, "seeds", *metrics, "95% CI", "fit s"):
        table.add_column(column, justify="right" if column not in GROUP else "left")
    for row in rows:
        ci = row[f"{row['primary']}_ci95"]
        paradigm = row["paradigm"] + (f" [dim](reference: {row['reference']})[/]" if row["reference"] else "")
        table.add_row(row["dataset"], row["backbone"], paradigm, str(row["n_seeds"]),
                      *(format_mean_std(row, m) for m in metrics), "" if np.isnan(ci) else f"± {ci:.4f}",
                      f"{row['fit_seconds_mean']:.1f}")
    return table


def row_label(row: dict[str, Any]) -> str:
    """How a leaderboard row is named in sentences and figures: paradigm (backbone)."""
    backbone = row.get("backbone")
    return row["paradigm"] if backbone in (None, "none") else f"{row['paradigm']} ({backbone})"


def comparison_text(comparison: dict[str, Any]) -> dict[str, Any]:
    """`compare_best`'s result for one dataset as one sentence: "A beats B by 0.012 accuracy (95 % CI
    [...], paired bootstrap over the N test images; better in 99.1 % of resamples; paired t-test ...)"."""
    a, b = row_label(comparison["a"]), row_label(comparison["b"])
    metric, diff, ci = comparison["metric"], comparison["difference"], comparison["ci95"]
    verb = "ties with" if diff == 0 else "beats" if diff > 0 else "trails"
    head = f"{a} {verb} {b}" + (f" by {abs(diff):.3f} {metric}" if diff else f" on {metric}")  # verb has the sign
    method = comparison["method"].replace("test images", f"the {comparison['n_images']} test images")
    details = [f"95 % CI [{ci[0]:.3f}, {ci[1]:.3f}], {method}",
               f"better in {100 * comparison['p_better']:.1f} % of {comparison['resamples']} resamples"]
    t_test = comparison.get("seeds_t_test")
    if t_test:
        over = f"over {len(t_test['seeds'])} seeds"
        p = t_test["p_value"]
        details.append(f"paired t-test {over} p = {p:.3g}" if p is not None else
                       f"paired t-test {over} undefined: the per-seed differences do not vary")
    return {"sentence": f"{head} ({'; '.join(details)})", "unclear": ci[0] <= 0 <= ci[1]}


class Leaderboard(list):
    """What `transferlab.study(...)` returns: the study's run records (a list, as before) that shows itself as the
    leaderboard — a table in Jupyter (`_repr_html_`) and in a rich console, `to_pandas()` for the rows as a
    DataFrame (the columns of leaderboard.csv), `report_path` and `open_report()` for the HTML report.

    A list subclass, not a new container, so code that iterates over the records keeps working."""

    def __init__(self, records: list[dict[str, Any]], report_path: Path | None = None):
        super().__init__(records)
        self.report_path = report_path

    @property
    def rows(self) -> list[dict[str, Any]]:
        return leaderboard(list(self))

    def to_pandas(self):
        """The leaderboard rows as a pandas DataFrame, one row per dataset × backbone × paradigm, best first."""
        try:
            import pandas  # optional extra: transferlab[notebook]
        except ImportError as exc:
            raise TransferlabError("to_pandas needs pandas: pip install 'transferlab[notebook]' (or pandas)") from exc
        rows = self.rows
        return pandas.DataFrame([{column: row.get(column) for column in csv_columns(rows)} for row in rows],
                                columns=csv_columns(rows))

    def open_report(self) -> bool:
        """Open the study's HTML report in the default browser (what `webbrowser.open` returns)."""
        if self.report_path is None or not Path(self.report_path).is_file():
            raise TransferlabError(f"no report to open ({self.report_path or 'this call wrote none'}); run "
                                   "`transferlab report OUT` on the study's folder")
        return webbrowser.open(Path(self.report_path).resolve().as_uri())

    def __repr__(self) -> str:
        rows = self.rows
        datasets = len({row["dataset"] for row in rows})
        return (f"Leaderboard({len(rows)} rows over {datasets} dataset{'s' * (datasets != 1)}, {len(self)} run "
                f"records; report: {self.report_path or 'none'})")

    def __rich__(self) -> Table:
        return leaderboard_table(self.rows, "leaderboard")

    def _repr_html_(self) -> str:
        rows = self.rows
        metrics = study_metrics(rows)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in (*GROUP, "seeds", *metrics, "95% CI", "fit s"))
        body = "".join(_html_row(row, metrics) for row in rows)
        report = (f"<p>report: <code>{html.escape(str(self.report_path))}</code> (<code>.open_report()</code>)</p>"
                  if self.report_path else "")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{report}"


def _html_row(row: dict[str, Any], metrics: list[str]) -> str:
    ci = row[f"{row['primary']}_ci95"]
    paradigm = html.escape(row["paradigm"]) + (f" <i>(reference: {html.escape(row['reference'])})</i>"
                                               if row["reference"] else "")
    cells = [html.escape(row["dataset"]), html.escape(row["backbone"]), paradigm, str(row["n_seeds"]),
             *(format_mean_std(row, m) for m in metrics), "" if np.isnan(ci) else f"± {ci:.4f}",
             f"{row['fit_seconds_mean']:.1f}"]
    style = ' style="color:gray"' if row["reference"] else ""
    return f"<tr{style}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
