"""`transferlab prune` on the shared tiny study (a private copy): sparsity reached, unstructured and structured,
scores before / after on the run's real val and test images, compressed sizes, recovery with the masks kept,
the saved bundles reloaded, one-line refusals, and the report's pruning section."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch

from transferlab.core.errors import TransferlabError
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split, to_probabilities
from transferlab.deploy.export import load_bundle
from transferlab.deploy.prune import prune_run

LINEAR = "fm3__tf_efficientnet_lite0@64__linear-C=-0.1,-1.0-__seed0"
KNN = "fm3__tf_efficientnet_lite0@64__knn__seed0"
CNN = "fm3__none__cnn__seed0"
SPARSITIES = [0.1, 0.5, 0.9, 0.995]


@pytest.fixture(scope="module")
def study(finished_study, tmp_path_factory):
    """A private copy of the shared study (pruning writes under its deploy/)."""
    return shutil.copytree(finished_study[0], tmp_path_factory.mktemp("prune") / "study")


@pytest.fixture(scope="module")
def linear(study):
    return load_run(study / "runs" / f"{LINEAR}.json")


@pytest.fixture(scope="module")
def cnn(study):
    return load_run(study / "runs" / f"{CNN}.json")


@pytest.fixture(scope="module")
def swept(linear):
    """The linear run's head pruned (global L1, unstructured) at four sparsities, no recovery."""
    return prune_run(linear, SPARSITIES)


def zero_fraction(weights: list[torch.Tensor]) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_unstructured_sweep_reaches_each_sparsity_and_shrinks_the_compressed_model(swept, linear, study):
    dense, results = swept["dense"], swept["results"]
    assert [r["sparsity"] for r in results] == SPARSITIES
    assert dense["test"] == pytest.approx(linear.record["metrics"]["accuracy"])  # the same images, the same model
    assert dense["params_scope"] == 3 * 1280  # the logistic regression's weight (3 classes × lite0's features)
    for r in results:
        assert r["reached"] == pytest.approx(r["sparsity"], abs=1 / r["params_scope"])
        assert r["params_total"] == dense["params_total"] and r["size"]["raw"] == dense["size"]["raw"]  # dense zeros
    for a, b in zip([dense, *results], results, strict=False):
        assert b["nonzero_scope"] < a["nonzero_scope"] and b["nonzero_total"] < a["nonzero_total"]
        assert b["size"]["scope_gzip"] < a["size"]["scope_gzip"] and b["size"]["gzip"] < a["size"]["gzip"]
    mild, extreme = results[0], results[-1]
    assert abs(mild["val"] - dense["val"]) <= 1 / 24 and abs(mild["test"] - dense["test"]) <= 1 / 60
    assert extreme["val"] < dense["val"] - 0.1 and extreme["test"] < dense["test"] - 0.1
    on_disk = json.loads((study / "deploy" / LINEAR / "prune.json").read_text())
    assert on_disk["results"] == pytest.approx(results) and on_disk["choose_on"] == "val"


def test_a_pruned_bundle_reloads_and_reproduces_its_recorded_accuracy(swept, linear, study):
    record = next(r for r in swept["results"] if r["sparsity"] == 0.9)
    module = load_bundle(study / "deploy" / LINEAR / record["file"])
    weight = module.steps[-1].weight.detach()
    assert int(torch.count_nonzero(weight)) == record["nonzero_scope"]
    images, labels = decoded_split(linear, "test")
    with torch.no_grad():
        proba = to_probabilities(module(images), linear.activation).numpy()
    assert float((proba.argmax(1) == labels).mean()) == pytest.approx(record["test"])


def test_recovery_keeps_the_masks_and_does_not_lose_validation_accuracy(linear, tmp_path):
    """At 99.5 % of the head gone, pruning alone costs validation images; two epochs on train win some back."""
    summary = prune_run(linear, [0.995], recover_epochs=2, out=tmp_path)
    (r,) = summary["results"]
    assert (tmp_path / "prune.json").is_file() and (tmp_path / r["file"]).is_file()
    assert r["nonzero_scope"] <= round(0.005 * r["params_scope"])  # the pruned weights stayed zero
    assert len(r["history"]) == 2 and summary["images"]["train"] > 0
    assert r["pruned"]["val"] < summary["dense"]["val"]
    assert r["val"] >= r["pruned"]["val"]


def test_structured_pruning_of_the_output_layer_zeroes_whole_columns_not_classes(cnn, tmp_path):
    summary = prune_run(cnn, [0.5], structured=True, out=tmp_path)  # scope head: the classifier, 128 → 3
    net = load_bundle(tmp_path / "pruned-0.50.safetensors").steps[0].net.model
    weight = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight.detach()
    assert int((weight.abs().sum(0) == 0).sum()) == 64 and bool((weight.abs().sum(1) > 0).all())  # every class left
    assert summary["results"][0]["reached"] == pytest.approx(0.5)


def test_structured_pruning_of_a_cnn_silences_whole_channels_and_the_classifier_follows(cnn, tmp_path):
    prune_run(cnn, [0.5], scope="all", structured=True, out=tmp_path)
    net = load_bundle(tmp_path / "pruned-0.50.safetensors").steps[0].net.model
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        silent = (conv.weight.detach().flatten(1).abs().sum(1) == 0).numpy()
        assert silent.sum() == round(0.5 * conv.out_channels)
    classifier = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight.detach()
    last_silent = (convs[-1].weight.detach().flatten(1).abs().sum(1) == 0).numpy()
    np.testing.assert_array_equal((classifier.abs().sum(0) == 0).numpy(), last_silent)
    assert bool((classifier.abs().sum(1) > 0).all())


def test_knn_head_and_bad_inputs_are_refused_in_one_line(study, linear):
    knn = load_run(study / "runs" / f"{KNN}.json")
    with pytest.raises(TransferlabError, match=rf"run {re.escape(KNN)}: nothing to prune.*--scope backbone") as info:
        prune_run(knn, [0.5])
    assert "\n" not in str(info.value)
    for bad, match in (([1.0], "strictly between 0 and 1"), ([0.0], "strictly between 0 and 1"), ([], "at least one")):
        with pytest.raises(TransferlabError, match=match):
            prune_run(linear, bad)
    with pytest.raises(TransferlabError, match="prune: scope: Input should be 'head', 'backbone' or 'all'"):
        prune_run(linear, [0.5], scope="neck")
    with pytest.raises(TransferlabError, match="no trainable weights"):
        prune_run(knn, [0.5], scope="backbone", recover_epochs=1)


def test_the_report_shows_the_pruning_curve_and_table(swept, study, finished_study):
    from PIL import Image

    from transferlab.report import build_report
    from transferlab.report.deploy import prune_context

    assert prune_context(finished_study[0]) == []  # a study never pruned: no section
    html = build_report(study).read_text()
    assert 'id="pruning"' in html and 'href="#pruning"' in html
    assert "Choose a sparsity on the <strong>validation</strong> scores" in html
    section = html[html.index('id="pruning"'):html.index('<h2 id="runs">')]
    (curve,) = re.findall(r'class="prune-curve" alt="[^"]*" src="data:image/png;base64,([^"]+)"', section)
    assert Image.open(io.BytesIO(base64.b64decode(curve))).size[0] > 300
    assert len(re.findall(r'class="prune-row"', section)) == len(SPARSITIES)
    assert f'href="deploy/{LINEAR}/pruned-0.90.safetensors"' in section
