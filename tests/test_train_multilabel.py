"""Multi-label training in the one loop: BCE / MSE on independent sigmoids, micro-F1 per epoch, balancing,
MixUp, refusals, the `final` refit's params, and torchrun's reduced counts.

Data are real: 2×2 mosaics of Fashion-MNIST garments with empty tiles (tests/mosaics.py), so an image has
zero to four of the four labels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from transferlab.config import BackboneSpec
from transferlab.core.errors import TransferlabError
from transferlab.data.balance import sampled_order
from transferlab.data.decode import decode_images
from transferlab.data.sources import ArraySource
from transferlab.models import load_backbone
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.base import validate_params
from transferlab.paradigms.trained import TrainingContext
from transferlab.train.optim import make_loss
from transferlab.train.params import TrainParams

from .mosaics import fashion_mosaics

N_TRAIN, N_VAL = 400, 100  # the rest (100) is test
CNN = {"image_size": 28, "widths": [16, 32], "augment": "none", "batch_size": 32}


@pytest.fixture(scope="module")
def mosaics(fashion_pools):
    images, labels, classes = fashion_mosaics(fashion_pools.train, 600, seed=0)
    return ArraySource("mosaics", images, labels, classes)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=32))


def bound(name, params, backbone=None, multi_label=True):
    paradigm = create_paradigm(name, params, n_classes=4, seed=0, multi_label=multi_label)
    return paradigm.bind(TrainingContext(backbone if paradigm.needs_backbone else None, torch.device("cpu")))


def splits(paradigm, source, n_train=N_TRAIN):
    """(x, Y) for train (its first `n_train`), val, test, decoded at the paradigm's view as the runner does."""
    x, _, _ = decode_images(source, np.arange(len(source)), paradigm.view())
    Y = source.labels
    cuts = [slice(0, n_train), slice(N_TRAIN, N_TRAIN + N_VAL), slice(N_TRAIN + N_VAL, None)]
    return [(x[c], Y[c]) for c in cuts]


def trained(name, params, source, backbone=None, n_train=N_TRAIN):
    paradigm = bound(name, params, backbone)
    train, val, test = splits(paradigm, source, n_train)
    return paradigm.fit(*train, *val), val, test


def micro_f1(Y, proba) -> float:
    return float(f1_score(Y, proba >= 0.5, average="micro", zero_division=0))


def test_bce_trains_independent_sigmoids_that_beat_the_all_negative_baseline(mosaics):
    paradigm, (x_val, Y_val), (x_test, Y_test) = trained("simple-cnn", {**CNN, "epochs": 6}, mosaics)
    proba = paradigm.predict_proba(x_test)
    assert proba.shape == (100, 4) and proba.min() >= 0 and proba.max() <= 1
    assert not np.allclose(proba.sum(axis=1), 1.0)  # one sigmoid per class, not a softmax
    assert micro_f1(Y_test, np.zeros_like(proba)) == 0.0  # the all-negative baseline
    assert micro_f1(Y_test, proba) > 0.5
    history = paradigm.history_
    assert {"train_micro_f1", "val_micro_f1", "train_loss", "val_loss", "lr"} <= set(history[0])
    assert "val_accuracy" not in history[0] and "train_accuracy" not in history[0]
    best = history[paradigm.selected_["best_epoch"] - 1]  # the model holds the best epoch: its val score
    assert best["val_micro_f1"] == max(h["val_micro_f1"] for h in history)
    assert best["val_micro_f1"] == pytest.approx(micro_f1(Y_val, paradigm.predict_proba(x_val)), abs=1e-12)


def test_mse_on_the_sigmoids_trains_too(mosaics):
    paradigm, _, (x_test, Y_test) = trained("simple-cnn", {**CNN, "epochs": 6, "loss": "mse"}, mosaics)
    assert micro_f1(Y_test, paradigm.predict_proba(x_test)) > 0.5
    assert "val_micro_f1" in paradigm.history_[-1]


@pytest.mark.parametrize("name", ["simple-cnn", "finetune", "scratch", "head", "bit"])
def test_what_needs_one_label_per_image_is_refused_in_one_line_naming_the_option(name):
    for params, option in (({"loss": "ce"}, "loss: ce"), ({"sampler": "undersample"}, "sampler: undersample"),
                           ({"oversample_to": 50}, "oversample_to")):
        with pytest.raises(TransferlabError, match=f"^{name}: {option} needs one label per image") as error:
            bound(name, params)
        assert "\n" not in str(error.value)
    bound(name, {"loss": "bce"})  # and what works on a 0/1 matrix is accepted
    bound(name, {"loss": "mse"})
    bound(name, {"sampler": "weighted", "class_weights": "balanced"})


def test_labels_and_the_paradigms_multi_label_flag_must_agree(mosaics):
    paradigm = bound("simple-cnn", {**CNN, "epochs": 1}, multi_label=False)
    (x, Y), (x_val, Y_val), _ = splits(paradigm, mosaics)
    with pytest.raises(TransferlabError, match="labels are an N × C 0/1 matrix, but .* multi_label=False"):
        paradigm.fit(x, Y, x_val, Y_val)


def test_bce_smooths_both_ways_and_weights_positives_per_class(mosaics):
    Y = torch.as_tensor(mosaics.labels[:64])
    logits = torch.linspace(-3, 3, Y.numel()).reshape(Y.shape)
    smooth = make_loss(TrainParams(loss="bce", label_smoothing=0.2), Y.numpy(), 4)(logits, Y)
    targets = Y.float() * 0.8 + 0.1  # 1 → 0.9, 0 → 0.1
    assert smooth == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)))
    weighted = make_loss(TrainParams(class_weights="balanced"), Y.numpy(), 4)(logits, Y)  # loss unset: bce
    positives = Y.float().sum(0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, Y.float(),
                                                                    pos_weight=(len(Y) - positives) / positives)
    assert weighted == pytest.approx(float(expected))
    mse = make_loss(TrainParams(loss="mse"), Y.numpy(), 4)(logits, Y)
    assert mse == pytest.approx(float(((logits.sigmoid() - Y.float()) ** 2).mean()))
    # single-label bce smooths its one-hot targets the same way; mse refuses smoothing it would not apply
    y = Y.argmax(1)
    single = make_loss(TrainParams(loss="bce", label_smoothing=0.2), y.numpy(), 4)(logits, y)
    one_hot = torch.nn.functional.one_hot(y, 4).float() * 0.8 + 0.1
    assert single == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, one_hot)))
    with pytest.raises(ValueError, match="label_smoothing applies to loss ce and bce, not mse"):
        TrainParams(loss="mse", label_smoothing=0.1)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum above 0"):  # once silently dropped
        TrainParams(optimizer="sgd", schedule="constant", momentum=0.0, nesterov=True)


def test_weighted_sampler_draws_images_of_a_rare_label_more_often(mosaics):
    Y = mosaics.labels
    bag = Y[:, 3] == 1
    keep = np.concatenate([np.flatnonzero(~bag), np.flatnonzero(bag)[:15]])  # 'bag' made rare
    rare = Y[keep][:, 3] == 1
    drawn = np.concatenate([sampled_order(Y[keep], "weighted", seed=0, epoch=e).numpy() for e in range(20)])
    assert rare[drawn].mean() > 2 * rare.mean()
    assert torch.equal(sampled_order(Y[keep], "weighted", 0, 3), sampled_order(Y[keep], "weighted", 0, 3))


def test_balancing_mixup_cutmix_and_smoothing_run_on_a_label_matrix(mosaics):
    params = {**CNN, "epochs": 2, "sampler": "weighted", "class_weights": "effective", "mixup": 0.4,
              "cutmix": 1.0, "label_smoothing": 0.1, "augment": "light", "augment_copies": 1}
    paradigm, _, (x_test, _) = trained("simple-cnn", params, mosaics)
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["train_micro_f1"] <= 1 for h in paradigm.history_)
    assert paradigm.selected_["train_images"] == 2 * N_TRAIN  # originals + one augmented copy each
    assert paradigm.predict_proba(x_test).shape == (100, 4)


def test_head_with_views_tiles_the_label_matrix(mosaics, backbone):
    paradigm, _, (x_test, Y_test) = trained("head", {"epochs": 3, "views": 2, "lr": 0.01}, mosaics, backbone,
                                            n_train=200)
    assert paradigm.passes_["train"] == 2 * 200  # two views of every image, labels tiled alike
    assert micro_f1(Y_test, paradigm.predict_proba(x_test)) > 0


def test_two_phase_finetune_final_params_fix_each_phases_best_epoch(mosaics, backbone):
    params = {"head_epochs": 2, "epochs": 2, "patience": 1, "from_stage": -1, "augment": "none", "lr": 0.02,
              "monitor": "val_loss"}
    paradigm, _, _ = trained("finetune", params, mosaics, backbone, n_train=200)
    assert [h["phase"] for h in paradigm.history_][0] == "head" and "val_micro_f1" in paradigm.history_[-1]
    final = paradigm.final_params()
    assert final["head_epochs"] == paradigm.selected_["head_best_epoch"]
    assert final["epochs"] == paradigm.selected_["finetune_best_epoch"]
    assert final["patience"] is None and final["restore_best"] is False and final["monitor"] == "val_loss"
    assert "stage_lrs" not in final and "best_epoch" not in final  # records, not params
    validate_params("finetune", final)


def test_bit_final_params_leave_the_epochs_to_the_rule(mosaics, backbone, monkeypatch):
    # BiT's smallest schedule is 500 steps; 4 (two epochs of two batches) show the same contract
    monkeypatch.setattr("transferlab.train.hyperrule.schedule_supports", lambda n: [1, 2, 3, 4, 4])
    params = {"max_resolution": 32, "patience": 2, "batch_size": 50}
    paradigm, _, (x_test, _) = trained("bit", params, mosaics, backbone, n_train=100)
    assert paradigm.predict_proba(x_test).shape == (100, 4) and "val_micro_f1" in paradigm.history_[0]
    final = paradigm.final_params()
    assert "epochs" not in final and final["patience"] is None and final["restore_best"] is False
    validate_params("bit", final)  # restore_best is not one of the rule's fields


DDP_SCRIPT = """
import json, sys
import numpy as np, torch
from torch import nn
from transferlab.core.distributed import init_from_env, rank, shutdown
from transferlab.train.loop import Images, fit
from transferlab.train.optim import param_groups
from transferlab.train.params import TrainParams

class Net(nn.Module):  # a plain small CNN: importing the paradigms (timm, ONNX) would cost each rank seconds
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.body(x.float() / 255)

init_from_env()
data = np.load(sys.argv[1])
x, Y = torch.from_numpy(data["x"]), torch.from_numpy(data["Y"])
p = TrainParams(epochs=2, lr=0.01, optimizer="adamw", augment="none", batch_size=50)  # the global batch: 25 per rank
torch.manual_seed(0)
model = Net()
result = fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), Images(x[:200], Y[:200]),
             Images(x[200:], Y[200:]), p, n_classes=4, seed=0, device=torch.device("cpu"))
with open(f"{sys.argv[2]}/rank{rank()}.json", "w") as f:
    json.dump(result.history, f)
shutdown()
"""


@pytest.mark.slow  # two torchrun processes (~16 s), with the other torchrun checks
def test_two_torchrun_ranks_pool_their_micro_f1_counts(mosaics, tmp_path):
    x = torch.from_numpy(mosaics.images[:300, None, ::2, ::2].repeat(3, axis=1).copy())  # 28 px, as the view would
    np.savez(tmp_path / "data.npz", x=x.numpy(), Y=mosaics.labels[:300])
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(tmp_path / "ddp.py"), str(tmp_path / "data.npz"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    histories = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in history] for history in histories]
    assert strip[0] == strip[1] and len(strip[0]) == 2  # all-reduced train figures, rank 0's val figures
    assert all(0 < h["train_micro_f1"] <= 1 and 0 <= h["val_micro_f1"] <= 1 for h in strip[0])
