"""Training options reference study specs ask for: scratch's `init` (Glorot / He) and bit's `max_epochs` cap.

Real data: the session's Fashion-MNIST image folder (3 classes × 40 training PNGs, 28 × 28).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import transferlab
from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import open_pools
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.models.modules import SimpleCnnModel
from transferlab.models.small_cnn import architecture, simple_cnn
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.train import hyperrule

from .conftest import SMALL_SIZE, take_per_class


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=SMALL_SIZE))


def scratch_net(backbone, init, seed=0):
    paradigm = create_paradigm("scratch", {"init": init}, n_classes=3, seed=seed)
    return paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).build_model((SMALL_SIZE, SMALL_SIZE)).model


def glorot_std(weight):
    receptive = weight[0, 0].numel()
    return math.sqrt(2 / (weight.shape[1] * receptive + weight.shape[0] * receptive))


def test_glorot_and_he_redraw_every_conv_and_linear_and_leave_norm_layers(backbone):
    default, glorot, he = (scratch_net(backbone, init) for init in ("default", "glorot", "he"))
    head, stem, pw = "classifier", "conv_stem", "blocks.6.0.conv_pw"  # 1280 → 3, 3 → 32 (3×3), 192 → 1152 (1×1)
    for name in (head, stem, pw):
        w = glorot.get_submodule(name).weight.detach()
        assert w.std().item() == pytest.approx(glorot_std(w), rel=0.1)
        assert w.abs().max().item() <= math.sqrt(3) * glorot_std(w) + 1e-6  # uniform: within ±sqrt(6 / fans)
        assert not torch.equal(w, default.get_submodule(name).weight)
    assert not glorot.classifier.bias.any()
    conv = he.get_submodule(pw).weight.detach()  # Kaiming-normal, fan_out, relu gain: std sqrt(2 / fan_out)
    assert conv.std().item() == pytest.approx(math.sqrt(2 / conv.shape[0]), rel=0.05)
    assert he.classifier.weight.std().item() == pytest.approx(glorot_std(he.classifier.weight), rel=0.1)
    for net in (glorot, he):  # norm layers keep timm's init
        assert torch.equal(net.bn1.weight, default.bn1.weight) and torch.equal(net.bn1.bias, default.bn1.bias)
    again = scratch_net(backbone, "glorot")  # drawn from the run seed
    assert all(torch.equal(a, b) for a, b in zip(glorot.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    assert not torch.equal(scratch_net(backbone, "glorot", seed=1).classifier.weight, glorot.classifier.weight)


def test_a_run_with_glorot_init_trains_refits_with_it_and_repeats_exactly(image_folder, tmp_path, monkeypatch):
    from transferlab.paradigms import finetune

    calls = []
    initialize = finetune.initialize
    monkeypatch.setattr(finetune, "initialize", lambda net, init: (calls.append(init), initialize(net, init)))
    # Every layer trains, twice per run: 2 images a class, 32 px, full batches (BatchNorm needs > 1 image per channel)
    spec = {"data": {"source": str(image_folder[0]), "train_size": 6, "val_size": 3, "test_size": 3},
            "backbone": {"name": "tf_efficientnet_lite0", "image_size": 32},
            "paradigm": {"name": "scratch", "init": "glorot", "epochs": 1, "augment": "none", "batch_size": 3},
            "final": True}
    first = transferlab.run(**spec, out=tmp_path / "a")
    second = transferlab.run(**spec, out=tmp_path / "b")
    assert calls == ["glorot"] * 4  # fit and the final refit, in both runs
    assert first["final"]["params"]["init"] == "glorot" and first["final"]["train_images"] == 9
    assert len(first["history"]) == 1 and math.isfinite(first["history"][0]["train_loss"])
    untimed = [[{k: v for k, v in epoch.items() if k != "seconds"} for epoch in r["history"]] for r in (first, second)]
    assert untimed[0] == untimed[1] and first["metrics"] == second["metrics"]
    assert first["test_outcomes"] == second["test_outcomes"]


def test_max_epochs_shrinks_the_rules_schedule_keeping_its_fractions():
    rule = hyperrule.decide(1000, (28, 28), batch_size=50, max_resolution=None, max_epochs=2)  # 20 steps an epoch
    assert rule["capped_by_max_epochs"] and (rule["steps"], rule["epochs"]) == (40, 2)
    assert rule["warmup_steps"] == 8 and rule["decay_steps"] == [16, 24, 32]  # 0.2, 0.4, 0.6, 0.8 of 500 steps
    assert rule["uncapped"] == {"steps": 500, "warmup_steps": 100, "decay_steps": [200, 300, 400], "epochs": 25}
    short = hyperrule.decide(1000, (28, 28), batch_size=50, max_resolution=None, max_epochs=25)  # the rule fits
    assert not short["capped_by_max_epochs"] and "uncapped" not in short and short["steps"] == 500
    assert short == hyperrule.decide(1000, (28, 28), 50, None)


def test_bit_with_max_epochs_1_trains_one_epoch_of_the_scaled_schedule(image_folder, backbone, monkeypatch):
    from transferlab.train import loop

    schedules = []
    make_schedule = loop.make_schedule
    monkeypatch.setattr(loop, "make_schedule", lambda opt, p, *a: (schedules.append(p), make_schedule(opt, p, *a))[1])
    source = open_pools(DataSpec(source=str(image_folder[0]))).train
    paradigm = create_paradigm("bit", {"max_epochs": 1, "max_resolution": 16, "batch_size": 4}, n_classes=3, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu"), sample_hw=(28, 28)))
    idx = take_per_class(source.labels, range(3), 10)
    x, _, _ = decode_images(source, idx, paradigm.view())
    train = np.arange(len(idx)) % 3 != 0
    paradigm.fit(x[train], source.labels[idx][train], x[~train], source.labels[idx][~train])  # 20 images: 5 steps
    rule = paradigm.selected_["hyperrule"]
    assert rule["capped_by_max_epochs"] and (rule["steps"], rule["epochs"]) == (5, 1)
    assert rule["uncapped"] == {"steps": 500, "warmup_steps": 100, "decay_steps": [200, 300, 400], "epochs": 100}
    assert rule["warmup_steps"] == 1 and rule["decay_steps"] == [2, 3, 4]  # 0.2; 0.4, 0.6, 0.8 of training
    (p,) = schedules  # what the loop's scheduler was given
    assert p.epochs == 1 and p.warmup_epochs == pytest.approx(1 / 5)
    assert p.milestones == pytest.approx([0.4, 0.6, 0.8])
    assert len(paradigm.history_) == 1 and paradigm.selected_["best_epoch"] == 1
    assert paradigm.history_[0]["lr"] == pytest.approx(rule["lr"] * 1e-3)  # all three decays happened in epoch 1
    assert paradigm.final_params()["max_epochs"] == 1  # the refit on train + val is capped too


# ---------------------------------------------------------------- simple-cnn and small-resnet as study 002 built them


def conv_params(c_in, c_out, k):  # bias-free convolution + BatchNorm's scale and shift
    return c_in * c_out * k * k + 2 * c_out


def test_simple_cnn_blocks_and_dense_layers_are_the_network_the_params_describe():
    vgg_like = simple_cnn([16, 32, 64], 8, 0.3, kernel=3, convs_per_block=2, dense=[64])  # 002: < 140 000
    expected = (conv_params(3, 16, 3) + conv_params(16, 16, 3) + conv_params(16, 32, 3) + conv_params(32, 32, 3)
                + conv_params(32, 64, 3) + conv_params(64, 64, 3) + 64 * 64 + 64 + 64 * 8 + 8)
    assert sum(p.numel() for p in vgg_like.parameters()) == expected < 140_000
    resnet_like = simple_cnn([16, 32], 8, 0.3, residual=True, pool="avg", kernel=5)
    shortcuts = conv_params(3, 16, 1) + conv_params(16, 32, 1)  # 1×1 projections where the width changes
    assert sum(p.numel() for p in resnet_like.parameters()) == (conv_params(3, 16, 5) + conv_params(16, 16, 5)
                                                                + conv_params(16, 32, 5) + conv_params(32, 32, 5)
                                                                + shortcuts + 32 * 8 + 8)
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in resnet_like.modules())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert resnet_like(images.float()).shape == (2, 8)
    # 004's simple ConvNet: 2, 2, 3 convolutions per block, no BatchNorm (biased convolutions), the map flattened
    plain = simple_cnn([8, 16, 32], 14, 0.5, convs_per_block=[2, 2, 3], batch_norm=False, top="flatten",
                       image_size=32, dense=[100])
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain[-4].in_features == 32 * 4 * 4  # 32 px halved three times: a 4×4 map of 32 channels
    assert plain(torch.zeros(2, 3, 32, 32)).shape == (2, 14)
    model = SimpleCnnModel([8, 16, 32], 14, 0.5, architecture(create_paradigm("simple-cnn", {
        "image_size": 32, "widths": [8, 16, 32], "convs_per_block": [2, 2, 3], "batch_norm": False, "top": "flatten",
        "dense": [100]}, n_classes=14, seed=0).params))  # saved and rebuilt from its config alone
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match=r"convs_per_block: 2 numbers for 3 blocks \(widths\)"):
        create_paradigm("simple-cnn", {"widths": [8, 16, 32], "convs_per_block": [2, 2]}, n_classes=3, seed=0)
    legacy = SimpleCnnModel([8, 16], 3, 0.1)  # a model saved before the architecture options: the default blocks
    assert legacy.config["architecture"] == {} and sum(isinstance(m, torch.nn.Conv2d) for m in legacy.modules()) == 4


def test_simple_cnn_l2_penalises_the_dense_weights_and_bad_shapes_are_refused(image_folder):
    pools = open_pools(DataSpec(source=str(image_folder[0])))
    idx = np.arange(len(pools.train))
    x, _, _ = decode_images(pools.train, idx, create_paradigm("simple-cnn", {"image_size": 16}, n_classes=3,
                                                                seed=0).view())
    y = pools.train.labels

    def dense_norm(l2):
        paradigm = create_paradigm("simple-cnn", {"image_size": 16, "widths": [8, 16], "dense": [32], "l2": l2,
                                                  "epochs": 6, "batch_size": 8, "augment": "none"}, n_classes=3,
                                   seed=0)
        paradigm.bind(TrainingContext(None, torch.device("cpu"))).fit(x[::2], y[::2], x[1::2], y[1::2])
        return sum(float(m.weight.detach().pow(2).sum()) for m in paradigm.model_.modules()
                   if isinstance(m, torch.nn.Linear))

    assert dense_norm(1.0) < 0.8 * dense_norm(0.0)
    with pytest.raises(ValueError, match="5 blocks halve the image 5 times, more than image_size 16 allows"):
        create_paradigm("simple-cnn", {"image_size": 16, "widths": [8, 8, 8, 8, 8]}, n_classes=3, seed=0)
    with pytest.raises(ValueError, match="small-resnet has skip connections by definition"):
        create_paradigm("small-resnet", {"residual": False}, n_classes=3, seed=0)
