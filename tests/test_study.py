"""A study end to end on a real image folder: records, leaderboard.csv, report, reuse, overrides."""

from __future__ import annotations

import csv
import json
import webbrowser

import pytest

import transferlab
from transferlab.config import StudySpec, validated
from transferlab.core.errors import TransferlabError
from transferlab.leaderboard import Leaderboard
from transferlab.report import build_report
from transferlab.resolve import expand, resolved

from .conftest import SMALL_SIZE, study_spec


def test_study_writes_one_record_per_cell_with_the_promised_fields(finished_study):
    out, records = finished_study
    # (knn, linear) × 2 seeds + (pixels, cnn) × 2 seeds: those need no backbone; then the reference rows
    # majority and untrained-backbone linear × 2 seeds (pixels, listed by hand, is the third)
    assert len(records) == 12
    files = sorted((out / "runs").glob("*.json"))
    assert len(files) == 12
    record = json.loads(files[0].read_text())
    for key in ("spec", "seed", "metrics", "timings", "versions", "splits", "selected", "backbone_passes"):
        assert key in record
    for metric in ("accuracy", "top3_accuracy", "macro_f1", "log_loss", "per_class"):
        assert metric in record["metrics"]
    assert record["splits"]["test"] == 60 and record["versions"]["torch"]


def test_leaderboard_csv_has_the_documented_columns_and_mean_std(finished_study):
    out, records = finished_study
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["dataset", "backbone", "paradigm", "reference", "n_seeds",
                             *(f"{m}_{s}" for m in ("accuracy", "top3_accuracy", "macro_f1", "log_loss")
                               for s in ("mean", "std", "ci95")), "fit_seconds_mean", "gflops"]
    assert {(r["backbone"], r["paradigm"], r["reference"]) for r in rows} == {
        (f"tf_efficientnet_lite0@{SMALL_SIZE}", "knn", ""),
        (f"tf_efficientnet_lite0@{SMALL_SIZE}", "linear(C=[0.1, 1.0])", ""), ("none", "pixels", "pixels"),
        ("none", "cnn", ""), ("none", "majority", "majority"),
        (f"tf_efficientnet_lite0@{SMALL_SIZE} (random init)", "linear-untrained", "untrained")}
    knn = next(r for r in rows if r["paradigm"] == "knn")
    accs = [r["metrics"]["accuracy"] for r in records if r["labels"]["paradigm"] == "knn"]
    assert float(knn["accuracy_mean"]) == pytest.approx(sum(accs) / 2, abs=1e-5)
    assert knn["n_seeds"] == "2"
    floors = {"cnn": 0.5, "untrained": 0.5}  # 3 epochs from scratch at 16 px on 80 images; random-init features
    learned = [r for r in rows if r["paradigm"] != "majority"]
    assert all(float(r["accuracy_mean"]) > floors.get(r["reference"] or r["paradigm"], 0.8) for r in learned)
    majority = next(r for r in rows if r["paradigm"] == "majority")
    assert float(majority["accuracy_mean"]) == pytest.approx(1 / 3)  # balanced test folder: one class in three
    # the 95 % t-interval over 2 seeds: t(0.975, 1) · std / √2
    assert float(knn["accuracy_ci95"]) == pytest.approx(12.7062 * float(knn["accuracy_std"]) / 2 ** 0.5, rel=1e-3)


def test_trained_runs_record_their_learning_curve(finished_study):
    _, records = finished_study
    cnn = [r for r in records if r["labels"]["paradigm"] == "cnn"]
    assert len(cnn) == 2 and all(len(r["history"]) == 3 for r in cnn)
    assert {"train_loss", "val_accuracy", "lr"} <= set(cnn[0]["history"][0])
    assert all(r["history"] is None for r in records if r["labels"]["paradigm"] != "cnn")


def test_rerun_reuses_every_record_and_does_no_backbone_pass(finished_study, image_folder):
    out, records = finished_study
    again = transferlab.study(study_spec(image_folder), out)
    assert all(r.get("reused") for r in again)
    summary = json.loads((out / "last_invocation.json").read_text())
    assert summary == {**summary, "computed": 0, "reused": 12, "backbone_passes": 0}
    assert [r["metrics"]["accuracy"] for r in again] == [r["metrics"]["accuracy"] for r in records]


def test_force_recomputes_from_cached_features_with_the_same_numbers(finished_study, image_folder, tmp_path):
    out, records = finished_study
    fresh = transferlab.study(study_spec(image_folder), tmp_path, force=True)
    assert not any(r.get("reused") for r in fresh)
    assert sum(sum(r["backbone_passes"].values()) for r in fresh) == 0  # features came from the cache
    assert [r["metrics"] for r in fresh] == [r["metrics"] for r in records]  # same seed, same numbers


def test_report_is_rebuilt_from_records_alone(finished_study, tmp_path, monkeypatch):
    out, _ = finished_study
    (out / "report.html").unlink()
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "empty-cache"))
    html = build_report(out).read_text()
    assert "Leaderboard" in html and "fm3" in html and "Learning curves" in html
    assert html.count("data:image/png;base64,") >= 3  # plots (accuracy, learning curves, confusion) + thumbnails
    assert not list((tmp_path / "empty-cache").rglob("*.safetensors"))


def test_overrides_change_only_the_cells_they_select(image_folder):
    spec = validated(StudySpec, study_spec(image_folder, overrides=[
        {"where": {"paradigm": "knn"}, "set": {"paradigm": {"k": 3}, "seed": 7}}]), "test")
    cells = expand(spec)
    knn = [c for c in cells if c.paradigm.name == "knn"]
    # both seeds' knn cells became the same cell (seed 7): it runs, and counts as a seed, once
    assert [c.paradigm.params for c in knn] == [{"k": 3}] and {c.seed for c in knn} == {7}
    assert all(c.paradigm.params == {"C": [0.1, 1.0]} for c in cells if c.paradigm.name == "linear" and not c.reference)
    assert {c.reference for c in cells} == {None, "majority", "pixels", "untrained"}


def test_structured_params_get_short_distinct_row_labels():
    from transferlab.config import ParadigmSpec

    rotate = [{"name": "RandomRotation", "degrees": 10}]
    a = ParadigmSpec(name="finetune", params={"augment": rotate, "milestones": [0.5]}).row_label
    b = ParadigmSpec(name="finetune", params={"augment": [{"name": "RandomRotation", "degrees": 20}]}).row_label
    assert a.startswith("finetune(augment=#") and a.endswith(",milestones=[0.5])") and len(a) < 45
    assert b.split(")")[0] != a.split(",")[0]


@pytest.mark.parametrize("change, message", [
    ({"seedz": [1]}, "unknown key 'seedz' \\(did you mean 'seeds'\\?\\); allowed: name, datasets"),
    ({"backbones": ["tf_efficientnet_lite_0"]}, "backbones.0.name: .*unknown timm model.*did you mean"),
    ({"paradigms": ["linaer"]}, "unknown paradigm 'linaer' \\(did you mean 'linear'\\?\\)"),
    ({"paradigms": [{"name": "knn", "k": "many"}]}, "paradigm 'knn': k"),
    ({"overrides": [{"where": {"paradigm": "knn"}, "set": {"paradigm": {"kk": 1}}}]}, "cell 1: .*unknown key 'kk'"),
    ({"paradigms": [{"name": "knn", "k": 3}, {"name": "knn", "k": 3, "metric": "euclidean", "label": "knn(k=3)"}]},
     "two cells are both named .*distinct `label:`s"),
])
def test_bad_specs_fail_before_any_work_with_one_line(image_folder, change, message):
    with pytest.raises(TransferlabError, match=message) as err:
        expand(resolved(StudySpec, study_spec(image_folder, **change), "spec.yaml"))
    assert "\n" not in str(err.value)


def test_reference_rows_take_data_wide_overrides_once_each_and_keep_their_own_ids(image_folder):
    spec = validated(StudySpec, study_spec(image_folder, references=["majority", "majority", "untrained"],
                                           paradigms=["linear", "pixels"],
                                           backbones=[{"name": "tf_efficientnet_lite0", "weights": "random"}],
                                           overrides=[{"set": {"data": {"train_size": 30}}},
                                                      {"where": {"paradigm": "knn"}, "set": {"seed": 5}}]), "test")
    cells = expand(spec)
    references = [c for c in cells if c.reference in ("majority", "untrained")]
    assert len([c for c in references if c.reference == "majority"]) == 2  # once per seed, though listed twice
    assert all(c.data.train_size == 30 for c in references) and {c.seed for c in references} == {0, 1}
    ids = [c.run_id for c in cells]
    assert len(ids) == len(set(ids))  # the grid's random-init linear and the untrained reference differ


def test_a_study_mixing_single_and_multi_label_datasets_gets_every_metric_column(finished_study, multilabel_study,
                                                                                   tmp_path):
    from transferlab.leaderboard import leaderboard, leaderboard_table, write_leaderboard_csv

    rows = leaderboard(finished_study[1] + multilabel_study[1])
    write_leaderboard_csv(rows, tmp_path / "mixed.csv")
    with open(tmp_path / "mixed.csv") as f:
        table = list(csv.DictReader(f))
    assert {"accuracy_mean", "micro_f1_mean", "mAP_mean"} <= set(table[0])
    assert all(r["accuracy_mean"] for r in table if r["dataset"] == "fm3")
    assert all(r["micro_f1_mean"] and not r["accuracy_mean"] for r in table if r["dataset"] == "mosaics")
    assert leaderboard_table(rows, "mixed").row_count == len(rows)


def test_study_skip_bad_skips_bad_manifest_rows_and_lists_them(copy_folder, tmp_path):
    images = sorted(copy_folder.rglob("*.png"))
    manifest = copy_folder / "listed.csv"
    manifest.write_text("path,label\n" + "".join(f"{p.relative_to(copy_folder)},{p.parent.name}\n" for p in images)
                        + f"gone.png,{images[0].parent.name}\n")
    spec = validated(StudySpec, {"name": "skips", "datasets": [{"source": str(manifest)}], "paradigms": ["pixels"],
                                 "references": ["majority"]}, "test")
    with pytest.raises(TransferlabError, match="gone.png"):
        transferlab.study(spec, tmp_path / "strict")
    records = transferlab.study(spec, tmp_path / "lenient", skip_bad=True)
    assert len(records) == 2 and all(any("gone.png" in note for note in r["skipped"]) for r in records)


def test_all_negative_on_single_label_data_is_refused_before_any_run(image_folder):
    with pytest.raises(TransferlabError, match="'all-negative' is a multi-label baseline.*use 'majority'"):
        expand(validated(StudySpec, study_spec(image_folder, paradigms=["all-negative"]), "test"))


def test_study_returns_a_leaderboard_for_notebooks(finished_study, monkeypatch):
    out, records = finished_study
    assert isinstance(records, list) and len(records) == 12  # still the run records, for code that iterates
    frame = records.to_pandas()
    with open(out / "leaderboard.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert list(frame.columns) == list(written[0])  # the CSV's columns, its rows, in its order
    assert list(frame["paradigm"]) == [row["paradigm"] for row in written]
    assert frame["accuracy_mean"].tolist() == pytest.approx([float(row["accuracy_mean"]) for row in written],
                                                            rel=1e-5)
    page = records._repr_html_()
    assert page.count("<tr") == len(written) + 1  # the header and one per row
    best = frame.iloc[0]
    assert f"{best['accuracy_mean']:.4f} ± {best['accuracy_std']:.4f}" in page
    assert 'style="color:gray"' in page  # reference rows set apart
    assert records.report_path == out / "report.html" and records.report_path.is_file()
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert records.open_report() and opened == [records.report_path.resolve().as_uri()]
    assert repr(records).startswith(f"Leaderboard({len(written)} rows over 1 dataset, 12 run records")


def test_leaderboard_escapes_names_and_needs_a_report_to_open():
    record = {"labels": {"dataset": "<b>x</b>", "backbone": "net", "paradigm": "knn"}, "run_id": "r",
              "reference": None, "metrics": {"accuracy": 0.5}, "timings": {"fit_s": 1.0}, "spec": {}}
    board = Leaderboard([record])
    assert "<b>x</b>" not in board._repr_html_() and "&lt;b&gt;x&lt;/b&gt;" in board._repr_html_()
    with pytest.raises(TransferlabError, match="no report to open"):
        board.open_report()
