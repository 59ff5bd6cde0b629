"""`features_from`: a feature paradigm on the network another row of the same study fine-tuned (study 002's
quasi-SVM on its fine-tuned InceptionV3): same backbone, seed and data; the source row trains first; the
features are keyed by the source model file's hash; the saved model loads back with the fine-tuned network."""

from __future__ import annotations

import numpy as np
import pytest

import transferlab
from transferlab.config import StudySpec, validated
from transferlab.core.errors import TransferlabError
from transferlab.deploy.artifact import load_run
from transferlab.resolve import expand
from transferlab.stats import decode_outcomes

from .conftest import SMALL_SIZE, needs_fashion_mnist
from .test_deploy import reproduced_outcomes


def spec(paradigms, **extra) -> dict:
    return {"name": "chain", "datasets": ["digits"], "backbones": ["tf_efficientnet_lite0", "tf_efficientnet_lite1"],
            "paradigms": paradigms, "references": False, **extra}


def test_a_chained_cell_carries_its_source_cell():
    cells = expand(validated(StudySpec, spec(
        [{"name": "finetune", "label": "ft", "epochs": 2}, {"name": "rff", "label": "qsvm", "features_from": "ft"}],
        seeds=[0, 1], overrides=[{"where": {"paradigm": "ft"}, "set": {"paradigm": {"lr": 0.05}}}]), "t"))
    chained = [c for c in cells if c.paradigm.features_from]
    assert len(chained) == 4  # 2 backbones × 2 seeds
    for cell in chained:
        source = cell.features_source
        assert (source.paradigm.row_label, source.backbone, source.seed) == ("ft", cell.backbone, cell.seed)
        assert source.paradigm.params["lr"] == 0.05  # the source cell as the study runs it, overrides applied
        assert cells.index(source) < cells.index(cell)  # trained first


@pytest.mark.parametrize(("paradigms", "message"), [
    ([{"name": "finetune", "label": "ft"}, {"name": "rff", "features_from": "fine"}],
     r"features_from: no row is labelled 'fine' \(rows: ft, rff on fine\)"),
    ([{"name": "head", "label": "h"}, {"name": "linear", "features_from": "h"}],
     "row 'h' is head, which trains no backbone network; name a finetune or scratch row"),
    ([{"name": "finetune", "label": "ft"}, {"name": "scratch", "features_from": "ft"}],
     r"scratch is not a feature paradigm; features_from applies to paradigms on cached features"),
    ([{"name": "linear", "features_from": "ft"}, {"name": "finetune", "label": "ft"}],
     "row 'ft' has no cell on backbone tf_efficientnet_lite0 listed before this row; list it first"),
    ([{"name": "finetune", "label": "ft", "backbones": ["tf_efficientnet_lite1"]},
      {"name": "linear", "features_from": "ft"}],
     "row 'ft' has no cell on backbone tf_efficientnet_lite0 listed before this row"),
])
def test_a_wrong_chain_is_refused_in_one_line(paradigms, message):
    with pytest.raises(TransferlabError, match=message):
        expand(validated(StudySpec, spec(paradigms), "t"))


def test_a_chain_whose_source_is_split_differently_is_refused():
    wrong = spec([{"name": "finetune", "label": "ft"}, {"name": "linear", "label": "lin", "features_from": "ft"}],
                 overrides=[{"where": {"paradigm": "ft"}, "set": {"data": {"val_size": 0.1}}}])
    with pytest.raises(TransferlabError, match="row 'ft' is split or refitted differently on digits"):
        expand(validated(StudySpec, wrong, "t"))


@needs_fashion_mnist
def test_features_from_uses_the_fine_tuned_network(image_folder, tmp_path):
    train, test = image_folder
    study = {"name": "chain", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
             "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}], "references": False,
             "paradigms": [{"name": "finetune", "label": "ft", "epochs": 2, "augment": "none"}, "linear",
                           {"name": "linear", "label": "linear-on-ft", "features_from": "ft"}]}
    records = {r["spec"]["paradigm"]["label"] or "linear": r for r in transferlab.study(study, tmp_path)}
    source, chained, plain = records["ft"], records["linear-on-ft"], records["linear"]
    weights = chained["backbone"]["weights"]
    assert weights == {"source": "trained", "detail": f"run {source['run_id']}", "sha256": source["model"]["sha256"]}
    assert chained["backbone"]["feature_key"] != plain["backbone"]["feature_key"]
    assert chained["split_indices"] == source["split_indices"]
    assert chained["metrics"]["accuracy"] > 0.8
    # saved and loaded back: the fine-tuned network's features, then the linear model
    model = load_run(tmp_path / "runs" / f"{chained['run_id']}.json")
    expected, got = decode_outcomes(chained["test_outcomes"]), reproduced_outcomes(model)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    # a rerun reuses both; retraining the source recomputes the chained row (its features changed)
    again = {r["spec"]["paradigm"]["label"] or "linear": r for r in transferlab.study(study, tmp_path)}
    assert again["ft"].get("reused") and again["linear-on-ft"].get("reused")
    study["paradigms"][0]["lr"] = 0.02
    changed = {r["spec"]["paradigm"]["label"] or "linear": r for r in transferlab.study(study, tmp_path)}
    assert not changed["linear-on-ft"].get("reused") and changed["linear"].get("reused")
    assert changed["linear-on-ft"]["backbone"]["weights"]["sha256"] == changed["ft"]["model"]["sha256"]
