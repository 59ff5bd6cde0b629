"""Grad-CAM on real runs: heatmaps of a frozen-feature linear probe (lite0) and of a trained CNN, overlays written by
`predict --explain` and listed with the predictions, the refusals (k-NN, a vision transformer, the extra missing) and
the overlays beside the report's mistakes."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import timm
from PIL import Image
from typer.testing import CliRunner

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split
from transferlab.deploy.explain import explained_network
from transferlab.models import gradcam
from transferlab.models.backbones import Normalized
from transferlab.report import build_report

from .conftest import SMALL_SIZE


@pytest.fixture(scope="module")
def explain_study(image_folder, tmp_path_factory):
    """(output folder, {paradigm: record}): a linear probe and k-NN on lite0 features, and a CNN trained one epoch
    (weak on purpose: its test mistakes fill the gallery), one seed."""
    train, test = image_folder
    spec = {"name": "explain", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}],
            "paradigms": [{"name": "linear", "C": [1.0]}, "knn",
                          {"name": "simple-cnn", "epochs": 1, "image_size": 32, "augment": "none"}],
            "seeds": [0], "references": False}
    out = tmp_path_factory.mktemp("explain")
    records = transferlab.study(spec, out)
    return out, {r["spec"]["paradigm"]["name"]: r for r in records}


def record_file(study, paradigm):
    out, records = study
    return out / "runs" / f"{records[paradigm]['run_id']}.json"


@pytest.mark.parametrize("paradigm", ["linear", "simple-cnn"])
def test_heatmaps_have_the_image_size_lie_in_0_1_and_depend_on_the_class(explain_study, paradigm):
    model = load_run(record_file(explain_study, paradigm))
    images, _ = decoded_split(model, "test", limit=6)
    cam = gradcam.GradCam(explained_network(model.module))
    predicted = model.probabilities(images).argmax(axis=1)
    other = (predicted + 1) % len(model.classes)
    shown, alternative = cam.heatmaps(images, predicted), cam.heatmaps(images, other)
    assert shown.shape == (len(images), *images.shape[-2:]) and shown.dtype == np.float32
    assert shown.min() >= 0 and shown.max() <= 1
    assert sum(h.std() > 0.05 for h in shown) >= len(shown) // 2  # a map, not a constant (ReLU may zero a few)
    assert np.abs(shown - alternative).mean() > 0.05  # another class's evidence lies elsewhere
    assert cam.target.map_size[0] > 1
    # the frozen features' last map (lite0: bn2 after its activation) and the CNN's last ReLU before pooling
    assert ("bn2" in cam.target.name) if paradigm == "linear" else "ReLU" in cam.target.name


def test_predict_explain_writes_an_overlay_per_image_and_lists_it(explain_study, image_folder, tmp_path):
    test = image_folder[1]
    images = [test / "Sneaker", test / "Trouser"]  # both folders number their files alike: stems collide
    predictions = transferlab.api.predict(record_file(explain_study, "linear"), images, out=tmp_path / "p.csv",
                                          explain=True)
    overlays = [row["gradcam"] for row in predictions.rows]
    assert len(overlays) == len(set(overlays)) == 40
    assert all(path.startswith(str(tmp_path / "explain")) and path.endswith(".gradcam.png") for path in overlays)
    picture = Image.open(overlays[0])
    assert picture.size == (SMALL_SIZE, SMALL_SIZE) and picture.mode == "RGB"  # the image as the model saw it
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["gradcam"] for r in rows] == overlays

    chosen = tmp_path / "cams"
    predictions = transferlab.api.predict(record_file(explain_study, "simple-cnn"), test / "Sneaker",
                                          out=tmp_path / "p.json", explain=chosen)
    written = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert sorted(chosen.iterdir()) == sorted(map(type(chosen), (row["gradcam"] for row in written)))
    assert len(written) == 20


def test_the_cli_writes_overlays_to_the_default_or_a_chosen_folder(explain_study, image_folder, tmp_path):
    from transferlab.cli import app

    record, images = record_file(explain_study, "linear"), image_folder[1] / "Trouser"
    done = CliRunner().invoke(app, ["predict", str(record), str(images), "--out", str(tmp_path / "p.csv"),
                                    "--explain"])
    assert done.exit_code == 0, done.output
    assert len(list((tmp_path / "explain").glob("*.gradcam.png"))) == 20
    done = CliRunner().invoke(app, ["predict", str(record), str(images), "--explain-dir", str(tmp_path / "here")])
    assert done.exit_code == 0, done.output
    assert len(list((tmp_path / "here").glob("*.gradcam.png"))) == 20


def test_knn_a_vision_transformer_and_the_missing_extra_are_refused_in_one_line(explain_study, image_folder,
                                                                                 tmp_path, monkeypatch):
    images = image_folder[1] / "Trouser"
    with pytest.raises(TransferlabError, match="k-NN vote is not differentiable") as refused:
        transferlab.api.predict(record_file(explain_study, "knn"), images, explain=tmp_path / "cams")
    assert "\n" not in str(refused.value) and not (tmp_path / "cams").exists()
    assert "k-NN vote" in explain_study[1]["knn"]["gradcam"]["note"]  # the record says so too (the report shows it)

    vit = Normalized(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32),
                     (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(gradcam.NotExplainable, match="convolutional feature map"):
        gradcam.GradCam(vit).heatmaps(np_images(2, 32), [0, 1])

    monkeypatch.setattr(gradcam, "GradCAM", None)
    with pytest.raises(TransferlabError, match=r"pip install 'transferlab\[explain\]'"):
        transferlab.api.predict(record_file(explain_study, "linear"), images, explain=True)


def np_images(n, size):
    import torch

    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_the_report_shows_an_overlay_beside_each_mistake(explain_study, tmp_path):
    out, records = explain_study
    cnn = records["simple-cnn"]
    examples = cnn["examples"]
    assert examples and all(e["gradcam"].startswith("data:image/png;base64,") for e in examples)
    assert all(e["gradcam_class"] == e["predicted"] for e in examples)  # single-label: the class it wrongly called
    assert cnn["gradcam"]["layer"] and len(json.dumps(cnn)) < 400_000  # ≤ 24 small PNGs of each kind
    # a folder holding the CNN run alone, so it is the best run whose mistakes the report shows
    alone = tmp_path / "alone"
    (alone / "runs").mkdir(parents=True)
    shutil.copy(out / "runs" / f"{cnn['run_id']}.json", alone / "runs")
    html = build_report(alone).read_text()
    assert html.count('class="gradcam"') == len(examples)
    assert all(e["gradcam"] in html for e in examples)
    assert "Grad-CAM: where the network found the evidence" in html
