"""The report's hyper-parameter search section, on the shared real 10-trial search (conftest `finished_search`:
mlp or linear on a 3-class Fashion-MNIST folder, validation log_loss minimised): the top-N table in the
search's order, the best trial and its retrained records, the figures, and the page in headless Chromium."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil

import pytest
from PIL import Image

from tests.test_report import images_decoded, parsed, rendered
from transferlab.core.errors import TransferlabError
from transferlab.report import build_report
from transferlab.report.search import MISSING, fmt_value, search_context, top_rows


@pytest.fixture(scope="module")
def search_report(finished_search):
    """(output folder, summary, the report's HTML, its search section alone)."""
    out, summary = finished_search
    html = build_report(out).read_text()
    section = html.split('<h2 id="search">', 1)[1].split('<h2 id="runs">', 1)[0]
    return out, summary, html, section


def ranked(summary: dict) -> list[dict]:
    """What the table must show, computed here from the summary: completed trials best first, then pruned."""
    sign = -1 if summary["direction"] == "maximize" else 1
    groups = [sorted((t for t in summary["trials"] if t["state"] == state and t["value"] is not None),
                     key=lambda t: sign * t["value"]) for state in ("complete", "pruned")]
    return (groups[0] + groups[1])[: summary["top"]]


def test_section_shows_the_search_and_its_best_trial_with_links_to_the_retrained_records(search_report):
    out, summary, html, section = search_report
    assert ">Hyper-parameter search<" in html and 'href="#search"' in html
    assert html.index('<h2 id="data">') < html.index('<h2 id="search">') < html.index('<h2 id="runs">')
    counts = summary["counts"]
    assert "minimize validation log_loss" in section and f"of a budget of {summary['budget']}" in section
    assert f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed" in section
    best = summary["best"]
    assert re.search(rf"Best: trial <strong>{best['number']}</strong>, validation log_loss\s*"
                     rf"<strong>{fmt_value(best['value'])}</strong>", section)
    hrefs = re.findall(r'<a class="record" href="([^"]+)"', section.split("search-best", 1)[1].split("</p>", 1)[0])
    assert len(hrefs) == len(summary["final_run_ids"]) >= 1
    for href, run_id in zip(hrefs, summary["final_run_ids"], strict=True):
        assert (out / href).is_file() and json.loads((out / href).read_text())["run_id"] == run_id


def test_top_table_lists_the_best_trials_first_with_a_column_per_parameter(search_report):
    _, summary, _, section = search_report
    rows = parsed(section).with_class("trial-row")
    expected = ranked(summary)
    counts = summary["counts"]
    assert len(rows) == len(expected) == min(summary["top"], counts["complete"] + counts["pruned"])
    assert [int(r["attrs"]["data-trial"]) for r in rows] == [t["number"] for t in expected]
    assert [float(r["attrs"]["data-value"]) for r in rows] == [t["value"] for t in expected]
    complete = [t["value"] for t in expected if t["state"] == "complete"]
    assert complete == sorted(complete) and complete[0] == summary["best"]["value"]  # log_loss: lowest first
    header = section.split('class="search-top"', 1)[1].split("</tr>", 1)[0]
    assert all(f">{path}<" in header for path in summary["space"])
    linear = next(t for t in expected if t["params"].get("paradigm") == "linear")  # no hidden / lr: shown as –
    row = next(r for r in rows if int(r["attrs"]["data-trial"]) == linear["number"])
    assert MISSING in row["text"] and f"{linear['params']['paradigm.C']:.4g}" in row["text"]
    assert "top" in rows[0]["attrs"]["class"] and f"data-trial=\"{summary['best']['number']}\"" in section


def test_top_table_follows_a_maximised_objective():
    """'maximize' ranks the other way round (pruned trials stay after completed ones, failed ones are left out);
    flipping the direction and the values' signs together keeps the order."""
    trials = [{"number": n, "state": s, "value": v, "params": {"paradigm.C": c}, "seconds": 1.0, "intermediate": {}}
              for n, s, v, c in ((0, "complete", 0.5, 1.0), (1, "complete", 0.9, 2.0), (2, "pruned", 0.99, 3.0),
                                 (3, "fail", None, 4.0), (4, "complete", 0.7, 5.0), (5, "pruned", 0.1, 6.0))]
    summary = {"direction": "minimize", "top": 3, "trials": trials, "best": {"number": 0}}
    assert [r["number"] for r in top_rows(summary, ["paradigm.C"])] == [0, 4, 1]
    summary["top"] = 10
    assert [r["number"] for r in top_rows(summary, ["paradigm.C"])] == [0, 4, 1, 5, 2]
    maximized = {**summary, "direction": "maximize"}
    assert [r["number"] for r in top_rows(maximized, ["paradigm.C"])] == [1, 4, 0, 2, 5]
    flipped = copy.deepcopy(maximized)
    for t in flipped["trials"]:
        t["value"] = None if t["value"] is None else -t["value"]
    assert [r["number"] for r in top_rows(flipped, ["paradigm.C"])] == [0, 4, 1, 5, 2]


def test_top_table_of_the_real_summary_flipped_to_maximize(search_report, tmp_path):
    """The fixture's log_loss summary as if it maximised −log_loss: the same trials in the same order."""
    _, summary, _, section = search_report
    flipped = copy.deepcopy(summary)
    flipped["direction"], flipped["importances"] = "maximize", None
    for t in flipped["trials"]:
        t["value"] = None if t["value"] is None else -t["value"]
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "flipped.json").write_text(json.dumps(flipped))
    (entry,) = search_context(tmp_path)
    numbers = [r["number"] for r in entry["top"]]
    assert numbers == [t["number"] for t in ranked(flipped)]
    assert numbers == [int(r["attrs"]["data-trial"]) for r in parsed(section).with_class("trial-row")]
    assert entry["importances"] is None and entry["history"] and entry["parallel"]


def test_the_three_figures_are_png_images(search_report):
    _, summary, _, section = search_report
    sources = parsed(section).images
    assert len(sources) == (3 if summary["importances"] else 2)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 100
    for alt in ("optimisation history", "parallel coordinates"):
        assert f": {alt}" in section


def test_search_images_render_in_chromium(search_report, tmp_path):
    """Only the search section (the rest of the page is test_report's): each of its figures decodes."""
    out, _, html, section = search_report
    page = out / "search-only.html"
    page.write_text(html.split('<h2 id="leaderboard">', 1)[0] + section + html[html.index("<script>"):])
    ok, total = images_decoded(rendered(page, tmp_path))
    assert ok == total == len(parsed(section).images) >= 2


def test_report_builds_without_a_completed_trial_and_names_an_unreadable_summary(finished_search, tmp_path):
    """(A study without search/ is every report of tests/test_report.py.)"""
    out, summary = finished_search
    study = tmp_path / "study"
    shutil.copytree(out / "runs", study / "runs")
    assert search_context(study) == []
    failed = {**copy.deepcopy(summary), "best": None, "importances": None, "final_run_ids": [], "final_metrics": []}
    for t in failed["trials"]:
        t.update(state="fail", value=None, fail_reason=f"boom {t['number']}")
    failed["counts"] = {"complete": 0, "pruned": 0, "fail": len(failed["trials"]), "running": 0}
    (study / "search").mkdir()
    (study / "search" / "failed.json").write_text(json.dumps(failed))
    section = build_report(study).read_text().split('<h2 id="search">', 1)[1].split('<h2 id="runs">', 1)[0]
    assert "No trial completed" in section and "<img" not in section and "trial-row" not in section
    assert f"{len(failed['trials'])} failed trials" in section and "boom 0" in section
    (study / "search" / "broken.json").write_text("{not json")
    with pytest.raises(TransferlabError, match="broken.json: unreadable search summary"):
        search_context(study)
