"""A run's saved model: its torch form equals the fitted paradigm, it reproduces the run's test outcomes, it
predicts new files, exports with a parity check, and loading it never unpickles and refuses tampering."""

from __future__ import annotations

import csv
import json
import pickle
import re
import shutil
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import onnxruntime as ort
import pytest
import timm
import timm.data
import torch
from huggingface_hub import ModelCard
from sklearn.datasets import load_digits

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.deploy import export as export_module
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split, run_split, to_probabilities
from transferlab.deploy.export import export_model, load_bundle
from transferlab.deploy.predict import predict_images, write_predictions
from transferlab.evaluate import image_outcomes, predicted_labels
from transferlab.models.backbones import file_sha256
from transferlab.models.heads import ClassifierHead
from transferlab.models.modules import Pipeline
from transferlab.paradigms import create_paradigm
from transferlab.stats import decode_outcomes

from .conftest import SMALL_SIZE

# ---------------------------------------------------------------- torch forms == the fitted paradigms


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as 64-d feature vectors (real data), split 600 / 300 / 300."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return X[:600], y[:600], X[600:900], y[600:900], X[900:1200]


CASES = [("linear", {"C": [0.1, 1.0]}), ("rff", {"n_components": 256, "C": [1.0], "gamma_scale": [1.0]}),
         ("knn", {"k": 5}), ("knn", {"k": 7, "metric": "euclidean", "weights": "distance"}),
         ("mlp", {"hidden": 32, "max_epochs": 15})]


@pytest.mark.parametrize("multi_label", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_torch_form_gives_the_paradigms_probabilities(digits, name, params, multi_label):
    X, y, X_val, y_val, X_new = digits
    if multi_label:  # real labels of several kinds at once: the digit is even, > 4, a 0, one of 1 and 7
        as_matrix = lambda d: np.column_stack([d % 2 == 0, d > 4, d == 0, np.isin(d, [1, 7])]).astype(np.uint8)  # noqa: E731
        y, y_val, n_classes = as_matrix(y), as_matrix(y_val), 4
    else:
        keep = y != 9  # a class the training split lacks still gets a column (probability 0)
        X, y, n_classes = X[keep], y[keep], 10
    paradigm = create_paradigm(name, params, n_classes=n_classes, seed=0, multi_label=multi_label)
    paradigm.fit(X, y, X_val, y_val)
    steps, frozen_features = paradigm.deploy_steps()
    assert frozen_features
    activation = "none" if paradigm.scores == "probabilities" else "sigmoid" if multi_label else "softmax"
    with torch.no_grad():
        ours = to_probabilities(Pipeline(steps).eval()(torch.from_numpy(X_new)), activation).double().numpy()
    np.testing.assert_allclose(ours, paradigm.predict_proba(X_new), atol=2e-5)


def test_a_binary_logistic_regression_becomes_two_logits(digits):
    X, y, X_val, y_val, X_new = digits
    keep, keep_val = np.isin(y, [3, 8]), np.isin(y_val, [3, 8])
    paradigm = create_paradigm("linear", {"C": [1.0]}, n_classes=10, seed=0).fit(X[keep], y[keep], X_val[keep_val],
                                                                                    y_val[keep_val])
    steps, _ = paradigm.deploy_steps()
    with torch.no_grad():
        ours = Pipeline(steps)(torch.from_numpy(X_new)).softmax(1).double().numpy()
    np.testing.assert_allclose(ours, paradigm.predict_proba(X_new), atol=1e-6)
    assert set(np.flatnonzero(ours.sum(0) > 0)) == {3, 8}


# ---------------------------------------------------------------- saved models reproduce their runs


def deployable(records):
    return [r for r in records if r.get("model")]


def reproduced_outcomes(model):
    images, labels = decoded_split(model, "test")
    proba = model.probabilities(images)
    return image_outcomes(labels, predicted_labels(proba, multi_label=model.multi_label, thresholds=model.thresholds),
                          multi_label=model.multi_label)


def test_every_saved_model_reproduces_its_runs_test_outcomes(finished_study, multilabel_study):
    """Loaded back from disk alone (record + model file + offline backbone), each model makes the same call
    on every test image as the run did: knn, linear, the untrained reference, the CNN; multi-label mlp and
    knn with their tuned per-class thresholds."""
    records = [r for r in finished_study[1] if r["seed"] == 0] + multilabel_study[1]  # seed 1: the same code paths
    runs = deployable(records)
    paradigms = {r["spec"]["paradigm"]["name"] for r in runs}
    assert {"knn", "linear", "simple-cnn", "mlp"} <= paradigms
    assert not any(r["spec"]["paradigm"]["name"] in ("pixels", "majority", "all-negative") for r in runs)
    for record in runs:
        out = finished_study[0] if record in finished_study[1] else multilabel_study[0]
        model = load_run(out / "runs" / f"{record['run_id']}.json")
        expected = decode_outcomes(record["test_outcomes"])
        got = reproduced_outcomes(model)
        for key in expected:
            assert np.array_equal(got[key], expected[key]), (record["run_id"], key)


# ---------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def linear_run(finished_study):
    out, records = finished_study
    record = next(r for r in records if r["spec"]["paradigm"]["name"] == "linear" and not r["reference"])
    return out / "runs" / f"{record['run_id']}.json", record


def test_predict_takes_files_folders_and_globs_and_lists_unreadable_files(linear_run, image_folder, tmp_path):
    path, record = linear_run
    test = image_folder[1]
    broken = tmp_path / "broken.png"
    broken.write_bytes(next(test.rglob("*.png")).read_bytes()[:60])  # a truncated real PNG
    one_file = sorted((test / "Trouser").glob("*.png"))[0]
    predictions = predict_images(load_run(path), [test / "Sneaker", str(test / "T-shirt-top" / "*.png"), one_file,
                                                  broken], top_k=2)
    n_expected = len(list((test / "Sneaker").glob("*.png"))) + len(list((test / "T-shirt-top").glob("*.png"))) + 1
    assert len(predictions.rows) == n_expected
    assert len(predictions.unreadable) == 1 and str(broken) in predictions.unreadable[0]
    truth = [row["path"].split("/")[-2] for row in predictions.rows]
    accuracy = np.mean([row["prediction"] == t for row, t in zip(predictions.rows, truth, strict=True)])
    assert accuracy >= 0.9
    assert all(len(row["top"]) == 2 and row["top"][0]["probability"] >= row["top"][1]["probability"]
               for row in predictions.rows)
    write_predictions(predictions, tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in predictions.rows]
    write_predictions(predictions, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["unreadable"] == predictions.unreadable
    with pytest.raises(TransferlabError, match="no such file"):
        predict_images(load_run(path), [tmp_path / "nothing-here"])


def test_predict_on_the_test_folder_scores_what_the_run_scored(linear_run, image_folder):
    path, record = linear_run
    predictions = predict_images(load_run(path), [image_folder[1]])
    truth = [row["path"].split("/")[-2] for row in predictions.rows]
    accuracy = np.mean([row["prediction"] == t for row, t in zip(predictions.rows, truth, strict=True)])
    assert accuracy == pytest.approx(record["metrics"]["accuracy"])


def test_multilabel_predict_applies_the_runs_tuned_thresholds(multilabel_study):
    """Predicting the run's test files one by one from their paths gives the run's micro-F1 exactly."""
    out, records = multilabel_study
    record = next(r for r in records if r["spec"]["paradigm"]["name"] == "mlp")
    model = load_run(out / "runs" / f"{record['run_id']}.json")
    assert record["thresholds"]["mode"] == "per_class" and len(set(model.thresholds)) > 1
    split = run_split(record, "test")
    paths = [split.source.paths[i] for i in split.indices]
    predictions = predict_images(model, paths)
    chosen = np.array([[c in row["labels"] for c in model.classes] for row in predictions.rows])
    truth = split.source.labels[split.indices].astype(bool)
    tp, fp, fn = (chosen & truth).sum(), (chosen & ~truth).sum(), (~chosen & truth).sum()
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(record["metrics"]["micro_f1"])


# ---------------------------------------------------------------- export


def test_exports_load_in_their_own_runtimes_and_pass_parity(finished_study, linear_run, tmp_path):
    path, record = linear_run
    model = load_run(path)
    images, labels = decoded_split(model, "test")
    expected = model.scores(images).numpy()

    card = export_model(model, "torchscript", tmp_path / "ts")
    assert card["parity"]["passed"] and card["parity"]["images"] == len(images)
    assert card["classes"] == record["classes"] and card["input"]["shape"] == ["batch", *model.input_size]
    assert card["metrics"]["test"]["accuracy"] == record["metrics"]["accuracy"]
    assert card["data"]["fingerprints"]["train"] and card["versions"]["torch"] == version("torch")
    saved = json.loads((tmp_path / "ts" / "model.json").read_text())
    assert saved["sha256"] == file_sha256(tmp_path / "ts" / "model.torchscript.pt")
    scripted = torch.jit.load(str(tmp_path / "ts" / "model.torchscript.pt"))
    np.testing.assert_allclose(scripted(images[:5]).detach().numpy(), expected[:5], atol=1e-4)
    assert_readable_card(card["readme_path"], path, record, finished_study[1])

    export_model(model, "safetensors", tmp_path / "st")
    np.testing.assert_allclose(load_bundle(tmp_path / "st" / "model.safetensors")(images).detach().numpy(), expected,
                               atol=1e-5)

    cnn = next(r for r in finished_study[1] if r["spec"]["paradigm"]["name"] == "simple-cnn")
    cnn_model = load_run(finished_study[0] / "runs" / f"{cnn['run_id']}.json")
    card = export_model(cnn_model, "onnx", tmp_path / "onnx")
    assert card["parity"]["max_abs_diff"] <= 1e-4 and card["parity"]["top1_agreement"] == 1.0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    cnn_images, _ = decoded_split(cnn_model, "test")
    for batch in (1, 7):  # the batch axis is dynamic
        scores = session.run(None, {"images": cnn_images[:batch].numpy()})[0]
        np.testing.assert_allclose(scores, cnn_model.scores(cnn_images[:batch]).numpy(), atol=1e-4)


def assert_readable_card(readme_path, record_path, record, study_records):
    """README.md beside model.json: Hub metadata, the test figures with accuracy's interval, the classes, the
    study's reference rows, how to run it."""
    readme = ModelCard.load(readme_path)
    assert readme.data.library_name == "transferlab" and "image-classification" in readme.data.tags
    accuracy = record["metrics"]["accuracy"]
    low, high = map(float, re.search(rf"\| accuracy \| {accuracy:.4f} \| \[([0-9.]+), ([0-9.]+)\] over "
                                     rf"{record['splits']['test']} images", readme.text).groups())
    assert low < accuracy < high and high - low < 0.3
    assert all(name in readme.text for name in record["classes"])
    references = {r["reference"] for r in study_records if r["reference"]}
    assert references and all(f"| {kind} |" in readme.text for kind in references)
    assert f"transferlab predict {record_path}" in readme.text


def test_an_export_that_fails_parity_is_refused_and_removed(linear_run, tmp_path, monkeypatch):
    def drifting(path, model=None):
        module = load_bundle(path)
        return lambda images: module(images).detach().numpy() + 3e-4  # a runtime that is slightly off

    model = load_run(linear_run[0])
    monkeypatch.setitem(export_module.LOADERS, "safetensors", drifting)
    with pytest.raises(TransferlabError, match=r"failed its parity check: max \|Δscore\| 3\.0\de-04"):
        export_model(model, "safetensors", tmp_path)
    assert not list(tmp_path.iterdir())
    # a re-export that fails leaves the last good export and its card exactly as they were
    monkeypatch.undo()
    good = export_model(model, "safetensors", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"model.safetensors", "model.json", "README.md"} and good["parity"]["passed"]
    monkeypatch.setitem(export_module.LOADERS, "safetensors", drifting)
    with pytest.raises(TransferlabError, match="failed its parity check"):
        export_model(model, "safetensors", tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- safety and bad input


def test_loading_predicting_and_exporting_never_unpickle(linear_run, image_folder, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", weights_only_load)
    model = load_run(linear_run[0])
    assert predict_images(model, [image_folder[1] / "Trouser"]).rows
    export_model(model, "safetensors", tmp_path)
    load_bundle(tmp_path / "model.safetensors")


def copied_run(finished_study, record, tmp_path):
    out = tmp_path / "study"
    (out / "runs").mkdir(parents=True)
    (out / "models").mkdir()
    shutil.copy(finished_study[0] / "runs" / f"{record['run_id']}.json", out / "runs")
    shutil.copy(finished_study[0] / record["model"]["file"], out / "models")
    return out / "runs" / f"{record['run_id']}.json", out / record["model"]["file"]


def test_a_tampered_model_or_changed_backbone_is_refused_in_one_line(finished_study, linear_run, tmp_path):
    record_path, model_path = copied_run(finished_study, linear_run[1], tmp_path)
    assert load_run(record_path).classes == linear_run[1]["classes"]
    data = bytearray(model_path.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    model_path.write_bytes(bytes(data))
    with pytest.raises(TransferlabError, match=r"sha256 differs from its run record.*rerun the run with --force"):
        load_run(record_path)
    data[-1] ^= 1
    model_path.write_bytes(bytes(data))
    record = json.loads(record_path.read_text())
    record["backbone"]["weights"]["sha256"] = "0" * 64  # the run was made with other backbone weights
    record_path.write_text(json.dumps(record))
    with pytest.raises(TransferlabError, match="weights changed since the run"):
        load_run(record_path)


def test_what_is_not_a_run_says_so(finished_study, tmp_path):
    with pytest.raises(TransferlabError, match="not a run"):
        load_run(tmp_path)
    with pytest.raises(TransferlabError, match="no-such-run: not a run"):
        load_run("no-such-run", runs=finished_study[0].parent)
    with pytest.raises(TransferlabError, match="study folder with .* runs; name one"):
        load_run(finished_study[0])
    reference = next(r for r in finished_study[1] if r["spec"]["paradigm"]["name"] == "majority")
    with pytest.raises(TransferlabError, match="has no saved model \\(a reference row"):
        load_run(finished_study[0] / "runs" / f"{reference['run_id']}.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(TransferlabError, match="not a transferlab run record"):
        load_run(tmp_path / "x.json")


@pytest.mark.slow  # two CLI processes (~20 s); the API it wraps is tested above
def test_cli_predict_and_its_one_line_error(linear_run, image_folder, tmp_path):
    out = tmp_path / "p.json"
    done = subprocess.run([sys.executable, "-m", "transferlab", "predict", str(linear_run[0]),
                           str(image_folder[1] / "Sneaker"), "--out", str(out), "--top-k", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "predicted, 0 unreadable" in done.stdout
    assert all(row["prediction"] == "Sneaker" for row in json.loads(out.read_text())["predictions"])
    done = subprocess.run([sys.executable, "-m", "transferlab", "predict", str(tmp_path), "x.png"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a run" in done.stderr


def test_calibration_and_parity_samples_cover_every_class_in_proportion():
    """A split is ordered by class, so its first N images hold one or two classes: samples are stratified."""
    from transferlab.deploy.artifact import stratified_sample

    indices = np.arange(100, 220)  # 3 classes × 40, class-ordered like a split
    labels = np.repeat([0, 1, 2], 40)
    sample = stratified_sample(indices, labels, 24)
    assert len(sample) == 24 and list(sample) == sorted(sample)
    assert np.bincount(labels[sample - 100]).tolist() == [8, 8, 8]
    assert np.array_equal(sample, stratified_sample(indices, labels, 24))  # seeded
    assert np.array_equal(stratified_sample(indices, labels, 500), indices)  # all of them when there are fewer
    few = stratified_sample(indices, labels, 2)  # fewer than the classes: a seeded random draw
    assert len(few) == 2 and len(set(few)) == 2
    multi = stratified_sample(indices, np.eye(3, dtype=np.uint8)[labels], 30)
    assert len(multi) == 30 and len(np.unique(labels[multi - 100])) == 3


# ---------------------------------------------------------------- timm's own layout


@pytest.mark.parametrize("paradigm", [{"name": "finetune", "epochs": 1, "head": {"dropout": 0.2}, "from_stage": -1},
                                      {"name": "head", "epochs": 1}], ids=["finetune", "head"])
def test_a_trained_timm_network_loads_into_plain_timm(image_folder, tmp_path, paradigm):
    train, test = image_folder
    record = transferlab.run({"source": str(train), "test": str(test)},
                             {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}, paradigm, out=tmp_path)
    model = load_run(tmp_path / "runs" / f"{record['run_id']}.json")
    card = export_model(model, "timm", tmp_path / "export")
    assert card["parity"]["passed"] and card["file"] == "timm/model.safetensors"
    folder = tmp_path / "export" / "timm"
    assert card["sha256"] == file_sha256(folder / "model.safetensors")
    # what a timm user writes, with nothing of transferlab: the architecture, classes and preprocessing come along
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert net.pretrained_cfg["label_names"] == record["classes"] and net.num_classes == len(record["classes"])
    config = timm.data.resolve_data_config(model=net)
    assert config["input_size"] == model.input_size
    images, _ = decoded_split(model, "test")
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        theirs = net((images.float() / 255 - mean) / std).numpy()
    np.testing.assert_allclose(theirs, model.scores(images).numpy(), atol=1e-4)
    head = next(m for m in model.module.modules() if isinstance(m, ClassifierHead))
    assert net.drop_rate == head.spec.rates()[0] == paradigm.get("head", {}).get("dropout", net.drop_rate)
    assert "local-dir:timm" in ModelCard.load(card["readme_path"]).text


def test_timm_export_refuses_what_timm_cannot_hold(linear_run, image_folder, tmp_path):
    refusal = r"--format timm: run .* \(linear\(C=.*\)\) cannot load into timm.create_model: it is not a network"
    with pytest.raises(TransferlabError, match=refusal):
        export_model(load_run(linear_run[0]), "timm", tmp_path / "linear")
    train, test = image_folder
    record = transferlab.run({"source": str(train), "test": str(test)},
                             {"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE},
                             {"name": "head", "epochs": 1, "head": {"hidden": [16]}}, out=tmp_path)
    with pytest.raises(TransferlabError, match=r"its head \(pool avg, hidden \[16\]\) has no place in timm"):
        export_model(load_run(tmp_path / "runs" / f"{record['run_id']}.json"), "timm", tmp_path / "hidden")
    assert not (tmp_path / "hidden" / "timm" / "model.safetensors").exists()
