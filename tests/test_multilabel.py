"""Multi-label end to end on real images (2×2 Fashion-MNIST mosaics, many with no garment), and the selection
discipline: thresholds and choices on validation, test scored once, `final` refits on train + val."""

from __future__ import annotations

import pytest

from transferlab.config import RunSpec
from transferlab.leaderboard import leaderboard
from transferlab.resolve import resolved
from transferlab.runner import execute_run

from .conftest import SMALL_SIZE

BACKBONE = {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}


def test_a_multilabel_study_trains_with_bce_and_beats_the_all_negative_baseline(multilabel_study):
    out, records = multilabel_study
    assert {r["task"] for r in records} == {"multi-label"}
    rows = {r["paradigm"]: r for r in leaderboard(records)}
    assert set(rows) == {"mlp", "knn(k=[5, 15])", "all-negative", "majority"}
    assert rows["all-negative"]["reference"] == "all-negative" and rows["all-negative"]["micro_f1_mean"] == 0.0
    assert rows["mlp"]["micro_f1_mean"] > rows["majority"]["micro_f1_mean"] + 0.2
    assert rows["mlp"]["micro_f1_mean"] > 0.7  # 4 garment classes, most tiles easy
    mlp = next(r for r in records if r["labels"]["paradigm"] == "mlp")
    assert mlp["metrics"]["n_images_without_label"] > 0  # the empty mosaics are in the test split
    assert {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss", "mAP"} <= set(mlp["metrics"])
    thresholds = mlp["thresholds"]
    assert thresholds["mode"] == "per_class" and len(thresholds["values"]) == 4
    assert [c["threshold"] for c in mlp["metrics"]["per_class"]] == thresholds["values"]
    assert mlp["val_metrics"]["thresholds"] == thresholds["values"]  # validation scored at what it chose
    assert len(mlp["examples"]) > 0 and isinstance(mlp["examples"][0]["true"], list)
    assert open(out / "leaderboard.csv").readline().startswith("dataset,backbone,paradigm,reference,n_seeds,micro_f1")


def _spy_on_predictions(monkeypatch, paradigm_cls):
    """Record the length of every input the paradigm predicts, in order."""
    calls = []
    original = paradigm_cls.predict_proba

    def spy(self, X):
        calls.append((id(self), len(X)))
        return original(self, X)

    monkeypatch.setattr(paradigm_cls, "predict_proba", spy)
    return calls


@pytest.mark.parametrize("final", [False, True])
def test_test_is_scored_once_after_every_choice_and_final_refits_on_train_and_val(
        image_folder, tmp_path, monkeypatch, final):
    from transferlab.paradigms.mlp import Mlp

    train, test = image_folder
    calls = _spy_on_predictions(monkeypatch, Mlp)
    spec = resolved(RunSpec, {"data": {"source": str(train), "test": str(test)}, "backbone": BACKBONE,
                               "paradigm": {"name": "mlp"}, "final": final}, "test")
    record = execute_run(spec, tmp_path)
    n = record["splits"]
    assert [length for _, length in calls] == [n["val"], n["test"]]  # val for the choices, then test once
    if not final:
        assert record["final"] is None and calls[0][0] == calls[1][0]
        return
    assert calls[0][0] != calls[1][0]  # test is scored by the refit model, not the one validation chose with
    assert record["final"]["train_images"] == n["train"] + n["val"]
    chosen = record["selected"]["best_epoch"]
    assert record["final"]["params"]["max_epochs"] == chosen and record["final"]["params"]["patience"] is None
    assert record["final"]["selected"]["epochs_run"] == chosen
    assert record["run_id"].endswith("__final")
