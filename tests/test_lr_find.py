"""The learning-rate range test: `lr: find` inside a run, `transferlab lr-find` on its own, on real digits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from transferlab.core.errors import TransferlabError
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.train.lr_find import END_LR, START_LR, STEPS, find_lr, suggested_lr


@pytest.fixture(scope="module")
def digits(digits16):
    """300 digits for training, 150 for validation."""
    return digits16


def cnn(**params):
    return create_paradigm("simple-cnn", {"epochs": 3, "image_size": 16, "augment": "none", "optimizer": "adamw",
                                          "lr": "find", **params}, n_classes=10, seed=0)


def test_lr_find_in_a_run_trains_with_the_suggestion_and_records_the_curve(digits):
    x, y = digits
    paradigm = cnn().bind(TrainingContext(None, torch.device("cpu")))
    paradigm.fit(x[:300], y[:300], x[300:], y[300:])
    found = paradigm.selected_["lr_find"]
    lrs, losses = np.array(found["lrs"]), np.array(found["losses"])
    assert lrs[0] == pytest.approx(START_LR) and np.all(np.diff(np.log(lrs)) > 0)  # exponential growth
    assert np.allclose(np.diff(np.log(lrs)), np.log(END_LR / START_LR) / (STEPS - 1), rtol=1e-6)
    assert np.isfinite(losses).all() and len(lrs) == found["steps"] <= STEPS
    lowest = lrs[losses.argmin()]
    assert START_LR < found["suggested_lr"] < lowest  # read off the descent, before the loss turns up
    assert found["suggested_lr"] == suggested_lr(found["lrs"], found["losses"])
    assert paradigm.used_params().lr == found["suggested_lr"] == paradigm.final_params()["lr"]
    accuracy = (paradigm.predict_proba(x[300:]).argmax(1) == y[300:]).mean()
    assert accuracy > 0.5  # it trained with the lr it found (chance: 0.1)


def test_the_range_test_leaves_the_model_as_it_came(digits):
    x, y = digits
    paradigm = cnn()
    model = paradigm.bind(TrainingContext(None, torch.device("cpu"))).build_model((16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = find_lr(model, [(list(model.parameters()), 1.0)], x[:300], torch.as_tensor(y[:300]), paradigm.params,
                    n_classes=10, seed=0, device=torch.device("cpu"))
    assert found["steps"] > 20
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_valley_rule_needs_a_loss_that_falls():
    lrs = list(np.geomspace(START_LR, END_LR, 30))
    with pytest.raises(TransferlabError, match="the loss never kept falling over the 30 steps"):
        suggested_lr(lrs, list(np.linspace(2.0, 3.0, 30)))


def test_bit_keeps_its_rule_and_feature_paradigms_have_no_lr_to_find(tmp_path):
    with pytest.raises(ValueError, match="BiT-HyperRule decides lr for bit"):
        create_paradigm("bit", {"lr": "find"}, n_classes=3, seed=0)
    result = subprocess.run([sys.executable, "-m", "transferlab", "lr-find", "--data", "digits", "--backbone",
                             "tf_efficientnet_lite0", "--paradigm", "knn", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "transferlab: error: lr-find: paradigm knn has no learning rate to find; use one that trains weights with "
        "lr (finetune, head, scratch, simple-cnn)")


def test_cli_lr_find_writes_the_curve_and_says_the_suggestion(image_folder, tmp_path):
    train, test = image_folder
    result = subprocess.run([sys.executable, "-m", "transferlab", "lr-find", "--data", train, "--test", test,
                             "--backbone", "none", "--paradigm", "simple-cnn", "-p", "image_size=16", "--out",
                             tmp_path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = json.loads(next((tmp_path / "lr_find").glob("*.json")).read_text())
    assert f"suggested lr {saved['suggested_lr']:.2e} (fastai's valley" in result.stdout
    assert (tmp_path / "lr_find" / f"{saved['run_id']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing recorded
