"""Training options people expect from Lightning and timm: precision, device, gradient accumulation, an EMA of the
weights and test-time augmentation — each checked for what it does, on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import transferlab
from transferlab.config import RunSpec, validated
from transferlab.core.errors import TransferlabError
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split
from transferlab.deploy.export import export_model
from transferlab.engines import resolve_device
from transferlab.models.modules import TtaMean, TtaViews
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext

PLAIN = {"image_size": 16, "widths": [8, 16], "augment": "none", "dropout": 0.0, "batch_norm": False,
         "optimizer": "sgd", "momentum": 0.0, "schedule": "constant", "lr": 0.05, "restore_best": False}


@pytest.fixture(scope="module")
def digits(digits16):
    """256 digits for training, 128 for validation."""
    x, y = digits16
    return x[:384], y[:384]


def fitted(digits, checkpoints=None, **params):
    x, y = digits
    paradigm = create_paradigm("simple-cnn", {**PLAIN, **params}, n_classes=10, seed=0)
    paradigm.bind(TrainingContext(None, torch.device("cpu"), checkpoints=checkpoints))
    return paradigm.fit(x[:256], y[:256], x[256:], y[256:])


def test_accumulating_two_half_batches_is_one_full_batch(digits):
    """Plain SGD on a mean loss without BatchNorm or dropout: the gradient of 2 × 16 images accumulated equals
    the gradient of the 32 at once, so the weights after an epoch agree."""
    whole = fitted(digits, epochs=1, batch_size=32).model_.state_dict()
    halves = fitted(digits, epochs=1, batch_size=16, accumulate=2).model_.state_dict()
    single = fitted(digits, epochs=1, batch_size=16).model_.state_dict()  # twice the steps: not the same
    assert all(torch.allclose(whole[k], halves[k], atol=1e-5) for k in whole)
    assert not all(torch.allclose(whole[k], single[k], atol=1e-5) for k in whole)


def conv_dtypes_while_training(digits, monkeypatch, **params):
    """(the dtypes convolutions produced while training, the fitted paradigm)."""
    seen, original = set(), nn.Conv2d.forward

    def forward(self, x):
        out = original(self, x)
        if self.training:
            seen.add(out.dtype)
        return out

    with monkeypatch.context() as patch:
        patch.setattr(nn.Conv2d, "forward", forward)
        paradigm = fitted(digits, **{"epochs": 2, **params})
    return seen, paradigm


def test_precision_autocasts_the_layers_it_names(digits, monkeypatch):
    assert conv_dtypes_while_training(digits, monkeypatch)[0] == {torch.float32}  # auto on CPU: fp32
    learning = {"optimizer": "adamw", "lr": 3e-3, "batch_norm": True, "epochs": 4}
    bf16, paradigm = conv_dtypes_while_training(digits, monkeypatch, precision="bf16", **learning)
    assert bf16 == {torch.bfloat16}
    accuracy = (paradigm.predict_proba(digits[0][256:]).argmax(1) == digits[1][256:]).mean()
    assert accuracy > 0.3  # it learned under bf16 (chance: 0.1)
    fp16, paradigm = conv_dtypes_while_training(digits, monkeypatch, precision="fp16")
    assert fp16 == {torch.float16} and np.isfinite(paradigm.history_[-1]["train_loss"])


def test_ema_weights_are_what_is_evaluated_checkpointed_and_kept(digits, tmp_path):
    paradigm = fitted(digits, tmp_path / "ckpt", epochs=3, ema=0.8)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    kept = paradigm.model_.state_dict()
    assert all(torch.equal(kept[k], state["ema"][k]) for k in kept)  # the average is what the run keeps
    x, y = digits
    accuracy = float((paradigm.predict_proba(x[256:]).argmax(1) == y[256:]).mean())
    assert accuracy == pytest.approx(paradigm.history_[-1]["val_accuracy"])  # and what the last epoch scored
    plain = fitted(digits, epochs=3).model_.state_dict()
    assert not all(torch.allclose(plain[k], kept[k]) for k in kept)


def test_tta_averages_the_views_in_the_run_and_in_its_saved_model(digits, image_folder, tmp_path):
    x, y = digits
    paradigm = fitted(digits, epochs=2, tta="flip")
    net = paradigm.model_.eval()
    with torch.no_grad():
        by_hand = ((net(x[256:]) + net(x[256:].flip(-1))) / 2).softmax(1).double().numpy()
    np.testing.assert_allclose(paradigm.predict_proba(x[256:]), by_hand, atol=1e-6)
    five = TtaViews("five-crop")(x[:3])
    assert five.shape == (15, 3, 16, 16)
    assert torch.equal(TtaMean(5)(torch.arange(15.0).reshape(15, 1)), torch.tensor([[6.0], [7.0], [8.0]]))
    train, test = image_folder
    record = transferlab.run({"source": str(train), "test": str(test)}, None,
                             {"name": "simple-cnn", **PLAIN, "epochs": 2, "tta": "five-crop"}, out=tmp_path)
    model = load_run(tmp_path / "runs" / f"{record['run_id']}.json")
    assert [s["kind"] for s in record["model"]["pipeline"]["steps"]] == ["TtaViews", "SimpleCnnModel",
                                                                       "TtaMean"]
    images, labels = decoded_split(model, "test")
    assert (model.probabilities(images).argmax(1) == labels).mean() == pytest.approx(record["metrics"]["accuracy"])
    assert export_model(model, "onnx", tmp_path / "onnx")["parity"]["passed"]  # ONNX Runtime does the views too
    with pytest.raises(ValueError, match="tta is not available for head"):
        create_paradigm("head", {"tta": "flip"}, n_classes=3, seed=0)


def test_a_device_this_machine_lacks_is_one_line():
    with pytest.raises(TransferlabError, match=r"^x.yaml: device: 'gpu' is not a device: use auto, cpu, cuda, "
                                               r"cuda:N \(the N-th visible GPU\) or mps$"):
        validated(RunSpec, {"data": "digits", "paradigm": "knn", "device": "gpu"}, "x.yaml")
    assert validated(RunSpec, {"data": "digits", "paradigm": "knn", "device": "cuda:1"}, "x").device == "cuda:1"
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TransferlabError, match="device: cuda:1 was asked for but no CUDA GPU is visible"):
            resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(TransferlabError, match=r"device: mps \(Apple silicon\) is not available here"):
            resolve_device("mps")
