"""`calibrate: temperature`: fitted on validation with scikit-learn, kept in the record with its effect, applied by
the saved model (predict, export, serve); the reliability diagram's bins behind ECE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

import transferlab
from transferlab.calibration import apply_temperature, fit_temperature
from transferlab.core.errors import TransferlabError
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split
from transferlab.deploy.export import export_model
from transferlab.evaluate import expected_calibration_error, log_loss_of, reliability_bins
from transferlab.models.modules import Temperature

from .conftest import SMALL_SIZE


@pytest.fixture(scope="module")
def overconfident():
    """A barely regularised logistic regression on real digits: confident far beyond its accuracy on new images."""
    X, y = load_digits(return_X_y=True)
    model = LogisticRegression(C=100, max_iter=5000).fit(X[:500], y[:500])
    return model, model.predict_proba(X[500:900]), y[500:900], model.predict_proba(X[900:]), y[900:]


def test_temperature_fitted_on_validation_helps_new_images_and_keeps_the_ranking(overconfident):
    _, val, y_val, test, y_test = overconfident
    beta = fit_temperature(val, y_val)
    assert 0 < beta < 0.8  # an overconfident model is cooled: temperature 1/β above 1
    calibrated = apply_temperature(test, beta)
    assert log_loss_of(y_test, calibrated, 10) < 0.7 * log_loss_of(y_test, test, 10)
    assert expected_calibration_error(y_test, calibrated) < 0.7 * expected_calibration_error(y_test, test)
    assert np.array_equal(calibrated.argmax(1), test.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1.0)


def test_the_formula_is_scikit_learns_and_the_torch_step_is_the_same(overconfident):
    X, y = load_digits(return_X_y=True)
    naive_bayes = GaussianNB().fit(X[:500], y[:500])  # probabilities only: scikit-learn takes log(p + 1e-12) too
    theirs = CalibratedClassifierCV(FrozenEstimator(naive_bayes), method="temperature").fit(X[500:900], y[500:900])
    ours = apply_temperature(naive_bayes.predict_proba(X[900:]),
                             fit_temperature(naive_bayes.predict_proba(X[500:900]), y[500:900]))
    np.testing.assert_allclose(ours, theirs.predict_proba(X[900:]), atol=1e-6)
    model, val, y_val, test, _ = overconfident
    beta = fit_temperature(val, y_val)
    as_probabilities = Temperature(beta, "probabilities")(torch.from_numpy(test).float()).double().softmax(1)
    np.testing.assert_allclose(as_probabilities.numpy(), apply_temperature(test, beta), atol=1e-5)
    logits = torch.from_numpy(model.decision_function(X[900:]))  # what a network outputs: softmax gives `test`
    as_logits = Temperature(beta, "logits")(logits + 3.0).double().softmax(1)  # any shift: the same probabilities
    np.testing.assert_allclose(as_logits.numpy(), apply_temperature(test, beta), atol=1e-5)


def test_reliability_bins_are_what_ece_averages(overconfident):
    _, _, _, test, y_test = overconfident
    bins = reliability_bins(y_test, test)
    count = np.array(bins["count"])
    assert count.sum() == len(y_test) and len(bins["edges"]) == len(count) + 1
    filled = count > 0
    gaps = np.abs(np.array(bins["accuracy"], dtype=float)[filled] - np.array(bins["confidence"], dtype=float)[filled])
    assert expected_calibration_error(y_test, test) == pytest.approx((count[filled] * gaps).sum() / count.sum())
    assert all(a is None for a, c in zip(bins["accuracy"], count, strict=True) if c == 0)


def test_a_calibrated_run_records_the_effect_and_its_model_applies_it(image_folder, tmp_path):
    train, test = image_folder
    data = {"source": str(train), "test": str(test)}
    backbone = {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}
    paradigm = {"name": "mlp", "hidden": 64, "max_epochs": 30}
    plain = transferlab.run(data, backbone, paradigm, out=tmp_path / "plain")
    record = transferlab.run(data, backbone, paradigm, out=tmp_path / "calibrated", calibrate="temperature")
    effect = record["calibration"]
    assert effect["method"] == "temperature" and effect["temperature"] > 0 and plain["calibration"] is None
    assert effect["val"]["log_loss_after"] <= effect["val"]["log_loss_before"] + 1e-9  # fitted to minimise it
    assert effect["test"]["log_loss_before"] == pytest.approx(plain["metrics"]["log_loss"])
    assert record["metrics"]["log_loss"] == pytest.approx(effect["test"]["log_loss_after"])
    assert record["metrics"]["ece"] == pytest.approx(effect["test"]["ece_after"])
    assert record["metrics"]["accuracy"] == plain["metrics"]["accuracy"]  # the ranking of classes is untouched
    assert record["model"]["activation"] == "softmax" and record["model"]["pipeline"]["steps"][-1]["kind"] == \
        "Temperature"
    model = load_run(tmp_path / "calibrated" / "runs" / f"{record['run_id']}.json")
    images, labels = decoded_split(model, "test")
    assert log_loss_of(labels, model.probabilities(images), len(record["classes"])) == pytest.approx(
        record["metrics"]["log_loss"], rel=1e-4)
    assert export_model(model, "onnx", tmp_path / "onnx")["parity"]["passed"]  # ONNX Runtime keeps the temperature


def test_knn_vote_shares_calibrate_too_and_multi_label_is_refused(image_folder, mosaic_manifest, tmp_path):
    train, test = image_folder
    backbone = {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}
    record = transferlab.run({"source": str(train), "test": str(test)}, backbone, {"name": "knn", "k": 5},
                             out=tmp_path, calibrate="temperature")
    model = load_run(tmp_path / "runs" / f"{record['run_id']}.json")
    assert record["model"]["scores"] == "logits"  # vote shares in, calibrated logits out
    images, labels = decoded_split(model, "test")
    assert log_loss_of(labels, model.probabilities(images), 3) == pytest.approx(record["metrics"]["log_loss"],
                                                                                 rel=1e-4)
    with pytest.raises(TransferlabError, match="calibrate: temperature is for single-label data"):
        transferlab.run({"source": str(mosaic_manifest)}, backbone, "knn", out=tmp_path, calibrate="temperature")


def test_the_report_draws_the_reliability_diagram_and_says_what_calibration_did(image_folder, tmp_path):
    train, test = image_folder
    spec = {"name": "calibrated", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": [{"name": "mlp", "hidden": 64, "max_epochs": 30}], "references": False,
            "calibrate": "temperature"}
    board = transferlab.study(spec, tmp_path)
    page = board.report_path.read_text()
    effect = board[0]["calibration"]
    assert 'alt="reliability diagram of ' in page
    assert (f"Calibrated: temperature {effect['temperature']:.3g}, fitted on validation. On test, ECE "
            f"{effect['test']['ece_before']:.4f} → {effect['test']['ece_after']:.4f}") in page
    assert len(effect["test"]["reliability_before"]["count"]) == len(board[0]["metrics"]["reliability"]["count"])
