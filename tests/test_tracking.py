"""Experiment tracking read back with the tools' own readers (MLflow's client, TensorBoard's EventAccumulator) on
a real study — a linear probe and a 2-epoch CNN on the Fashion-MNIST folder —, a search, and single runs."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

import transferlab
from transferlab.cli import app
from transferlab.core.errors import TransferlabError

from .conftest import SMALL_SIZE

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator

EPOCHS = 2
CNN = {"name": "simple-cnn", "label": "cnn", "epochs": EPOCHS, "image_size": 16, "augment": "none"}


def tracked_spec(folder, tracking: str, paradigms=None, **extra):
    train, test = folder
    return {"name": "tracked", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": paradigms or [{"name": "linear", "C": [0.1, 1.0]}, CNN], "references": False,
            "tracking": tracking, **extra}


def client_of(db) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def runs_in(client, experiment: str):
    """Every run of the experiment, oldest first."""
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def children(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def kind(run) -> str | None:
    return run.data.tags.get("transferlab.kind")


def history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def record_curve(record, key: str) -> list[tuple[int, float]]:
    return [(i, pytest.approx(epoch[key], rel=1e-6)) for i, epoch in enumerate(record["history"], 1)]


@pytest.fixture(scope="module")
def mlflow_study(image_folder, tmp_path_factory):
    """(out, records by run id, client, the study's first parent run, its cells) of the study tracked in MLflow."""
    out = tmp_path_factory.mktemp("mlflow-study")
    records = {r["run_id"]: r for r in transferlab.study(tracked_spec(image_folder, "mlflow"), out)}
    client = client_of(out / "mlflow.db")
    runs = runs_in(client, "tracked")
    parent = next(r for r in runs if kind(r) == "study")
    return out, records, client, parent, children(runs, parent)


def test_a_study_is_a_parent_run_with_one_nested_run_per_cell(mlflow_study):
    _, records, _, parent, cells = mlflow_study
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in cells) == sorted(records)
    assert all(kind(r) == "cell" and r.info.status == "FINISHED" for r in cells)
    cnn = next(r for r in cells if r.data.tags["transferlab.paradigm"] == "cnn")
    assert {"data.name": "fm3", "paradigm.name": "simple-cnn", "paradigm.params.epochs": "2", "seed": "0",
            "params.epochs": "2", "params.optimizer": "adamw"}.items() <= cnn.data.params.items()
    linear = next(r for r in cells if r.data.tags["transferlab.paradigm"].startswith("linear"))
    record = records[linear.info.run_name]
    assert linear.data.params["backbone.name"] == "tf_efficientnet_lite0"
    assert float(linear.data.params["selected.C"]) == record["selected"]["C"]  # what validation chose


def test_each_cell_logs_its_epochs_and_the_records_final_metrics(mlflow_study):
    _, records, client, _, cells = mlflow_study
    for run in cells:
        record = records[run.info.run_name]
        assert run.data.metrics["test/accuracy"] == pytest.approx(record["metrics"]["accuracy"])
        assert run.data.metrics["val/log_loss"] == pytest.approx(record["val_metrics"]["log_loss"])
        assert run.data.metrics["time/fit_s"] == pytest.approx(record["timings"]["fit_s"])
        if record["history"] is None:  # a frozen-feature paradigm has no epochs
            assert not any(key.startswith("epoch/") for key in run.data.metrics)
            continue
        assert len(record["history"]) == EPOCHS
        for key in ("val_accuracy", "train_loss", "lr"):
            assert history(client, run, f"epoch/{key}") == record_curve(record, key)


def test_the_record_and_the_report_are_artifacts(mlflow_study, tmp_path):
    out, records, client, parent, cells = mlflow_study
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"report.html", "leaderboard.csv",
                                                                           "study.yaml"}
    run = cells[0]
    name = f"{run.info.run_name}.json"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [name]
    copy = client.download_artifacts(run.info.run_id, name, str(tmp_path))
    assert json.loads(open(copy).read())["cell_key"] == records[run.info.run_name]["cell_key"]
    assert (out / "mlartifacts").is_dir()  # the artifacts live beside the SQLite store, not in the working folder


def test_a_rerun_logs_the_reused_cells_from_their_records(mlflow_study, image_folder):
    out, records, client, first, _ = mlflow_study
    transferlab.study(tracked_spec(image_folder, "mlflow"), out)
    runs = runs_in(client, "tracked")
    parents = [r for r in runs if kind(r) == "study"]
    assert parents[0].info.run_id == first.info.run_id and len(parents) == 2
    again = children(runs, parents[-1])
    assert sorted(r.info.run_name for r in again) == sorted(records)
    assert all(r.data.tags.get("transferlab.reused") == "true" for r in again)
    cnn = next(r for r in again if r.data.tags["transferlab.paradigm"] == "cnn")
    assert history(client, cnn, "epoch/val_loss") == record_curve(records[cnn.info.run_name], "val_loss")


def event_scalars(folder, key: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)]


def test_tensorboard_writes_event_files_per_run_that_match_the_records(image_folder, tmp_path):
    # the spec asks for mlflow; the call's track wins
    records = transferlab.study(tracked_spec(image_folder, "mlflow"), tmp_path, track="tensorboard")
    assert not (tmp_path / "mlflow.db").exists()
    board = tmp_path / "tensorboard"
    assert sorted(p.name for p in board.iterdir()) == sorted(r["run_id"] for r in records)
    for record in records:
        folder = board / record["run_id"]
        assert event_scalars(folder, "test/accuracy") == [(0, pytest.approx(record["metrics"]["accuracy"]))]
        if record["history"]:
            for key in ("val_accuracy", "train_loss"):
                assert event_scalars(folder, f"epoch/{key}") == [
                    (step, pytest.approx(value, rel=1e-6)) for step, value in record_curve(record, key)]
        events = EventAccumulator(str(folder))
        events.Reload()
        assert "_hparams_/experiment" in events.PluginTagToContent("hparams")  # the HParams tab's parameters
    files = sorted(board.rglob("events.out.tfevents.*"))
    transferlab.study(tracked_spec(image_folder, "tensorboard"), tmp_path)  # all reused: their events are there
    assert sorted(board.rglob("events.out.tfevents.*")) == files


def test_a_search_is_a_parent_run_with_its_trials_and_the_retrained_best(mlflow_study, image_folder, tmp_path):
    db = mlflow_study[0] / "mlflow.db"  # one store for the file's tests (each new SQLite store takes seconds to set up)
    spec = tracked_spec(image_folder, "mlflow", paradigms=[CNN], name="tracked-search", tracking_uri=f"sqlite:///{db}",
                        search={"trials": 2, "sampler": "random", "space": {"paradigm.lr": {"low": 1e-3, "high": 1e-2,
                                                                                            "log": True}}})
    summary = transferlab.search(spec, tmp_path)
    client = client_of(db)
    runs = runs_in(client, "tracked-search")
    (parent,) = [r for r in runs if kind(r) == "search"]
    assert parent.info.run_name == "tracked-search-search"
    assert {"report.html", "tracked-search.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    nested = children(runs, parent)
    trials = {int(r.data.tags["transferlab.trial"]): r for r in nested if kind(r) == "trial"}
    assert sorted(trials) == [t["number"] for t in summary["trials"]]
    for trial in summary["trials"]:
        run = trials[trial["number"]]
        assert float(run.data.params["paradigm.lr"]) == pytest.approx(trial["params"]["paradigm.lr"])
        assert run.data.metrics["val/accuracy"] == pytest.approx(trial["value"])
        # the tracker and the pruner both heard every epoch (train/hooks.py tells every listener)
        assert len(history(client, run, "epoch/val_accuracy")) == len(trial["intermediate"]) == EPOCHS
    (retrained,) = [r for r in nested if kind(r) == "retrained"]
    assert retrained.info.run_name == summary["final_run_ids"][0]
    assert retrained.data.metrics["test/accuracy"] == pytest.approx(summary["final_metrics"][0]["accuracy"])


def cli(*args):
    """The command line, in this process (tests/test_cli.py runs it as its own process)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def test_track_on_the_command_line_overrides_the_spec_and_logs_single_runs(mlflow_study, tmp_path):
    spec = tmp_path / "spec.yaml"  # small and backbone-free: what is checked here is the command line
    spec.write_text("name: digits-pixels\ndatasets: [{source: digits}]\nparadigms: [pixels]\nreferences: []\n"
                    "tracking: mlflow\n")
    result = cli("study", spec, "--out", tmp_path / "study", "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "study" / "mlflow.db").exists()
    (folder,) = (tmp_path / "study" / "tensorboard").iterdir()
    record = json.loads((tmp_path / "study" / "runs" / f"{folder.name}.json").read_text())
    assert event_scalars(folder, "test/accuracy") == [(0, pytest.approx(record["metrics"]["accuracy"]))]

    db = mlflow_study[0] / "mlflow.db"  # elsewhere than the run's output folder
    result = cli("run", "--data", "digits", "--paradigm", "pixels", "--out", tmp_path / "single", "--track", "mlflow",
                 "--tracking-uri", f"sqlite:///{db}")
    assert result.exit_code == 0, result.output
    (record_file,) = (tmp_path / "single" / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    client = client_of(db)
    (run,) = runs_in(client, "transferlab-runs")
    assert run.info.run_name == record["run_id"] and kind(run) == "run" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["test/accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [record_file.name]
    assert not (tmp_path / "single" / "mlflow.db").exists()


@pytest.mark.parametrize("tracking, module", [("mlflow", "mlflow.tracking"),
                                              ("tensorboard", "torch.utils.tensorboard")])
def test_without_the_extra_the_study_stops_in_one_line_before_any_run(image_folder, tmp_path, monkeypatch,
                                                                      tracking, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(TransferlabError, match=r"pip install 'transferlab\[track\]'") as error:
        transferlab.study(tracked_spec(image_folder, tracking), tmp_path)
    assert "\n" not in str(error.value) and tracking in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_tracker_is_named_with_the_close_match(image_folder, tmp_path):
    with pytest.raises(TransferlabError, match="tracking: mlfow .*did you mean 'mlflow'"):
        transferlab.study(tracked_spec(image_folder, "none"), tmp_path, track="mlfow")
    with pytest.raises(TransferlabError, match="tracking: Input should be 'none', 'mlflow' or 'tensorboard'"):
        transferlab.study(tracked_spec(image_folder, "tensorbord"), tmp_path)


def test_torchrun_ranks_other_than_0_log_nothing(tmp_path, monkeypatch):
    from transferlab import tracking

    monkeypatch.setattr(tracking, "is_main", lambda: False)
    tracker = tracking.open_tracking("mlflow", tmp_path)
    assert type(tracker) is tracking.Tracker  # the one that does nothing
    with tracker.group("s") as group, group.run("r", {"a": 1}) as run:
        run.epoch({"epoch": 1, "val_loss": 0.5})
    assert list(tmp_path.iterdir()) == []
