"""The training engine: schedules, freezing, two-phase, failures, and exact resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.config import BackboneSpec, DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import open_pools
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.models.backbones import create_model
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.finetune import FinetuneParams
from transferlab.paradigms.trained import TrainingContext
from transferlab.train.freeze import layers_with_weights, trainable_by_plan
from transferlab.train.loop import Images, fit
from transferlab.train.optim import make_optimizer, make_schedule
from transferlab.train.params import TrainParams


def lr_trajectory(schedule: str, steps_per_epoch=10, epochs=10, **params):
    p = TrainParams(schedule=schedule, lr=1.0, epochs=epochs, **params)
    optimizer = make_optimizer([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0}], p)
    sched = make_schedule(optimizer, p, steps_per_epoch, epochs)
    lrs, momenta = [], []
    for _ in range(steps_per_epoch * epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0].get("momentum"))
        optimizer.step()
        sched.step()
    return np.array(lrs), momenta


def test_schedules_have_their_shapes():
    cosine, _ = lr_trajectory("cosine", warmup_epochs=1)
    assert cosine[0] < 0.01 and cosine[10] == pytest.approx(1.0, rel=1e-3) and cosine[-1] < 0.01
    step, _ = lr_trajectory("step", step_epochs=3, gamma=0.1)
    assert step[29] == pytest.approx(1.0) and step[30] == pytest.approx(0.1) and step[60] == pytest.approx(0.01)
    multistep, _ = lr_trajectory("multistep", milestones=[0.5], gamma=0.5)
    assert multistep[49] == pytest.approx(1.0) and multistep[50] == pytest.approx(0.5)
    expo, _ = lr_trajectory("exponential", gamma=0.5)
    assert expo[10] == pytest.approx(0.5) and expo[20] == pytest.approx(0.25)
    onecycle, momenta = lr_trajectory("onecycle", pct_start=0.3)
    peak = int(np.argmax(onecycle))
    assert 25 <= peak <= 32 and onecycle[0] < 0.05 and onecycle[-1] < 1e-3
    assert momenta[peak] < momenta[0]  # momentum cycles against the learning rate


def test_cyclic_rises_from_min_lr_to_lr_and_back_with_momentum_opposite():
    lrs, momenta = lr_trajectory("cyclic", optimizer="sgd", min_lr=1e-7)  # one cycle over 100 steps
    assert lrs[0] == pytest.approx(1e-7) and lrs[50] == pytest.approx(1.0) and lrs[99] < 0.03
    assert momenta[0] == pytest.approx(0.95) and momenta[50] == pytest.approx(0.85)
    two, _ = lr_trajectory("cyclic", cycle_epochs=5, momentum_range=(0.8, 0.9))  # 50 steps per cycle
    assert two[25] == pytest.approx(1.0) and two[50] == pytest.approx(two[0]) and two[75] == pytest.approx(1.0)


def test_betas_and_eps_reach_the_adam_family_and_rmsprop():
    param = [nn.Parameter(torch.zeros(1))]
    for name in ("adam", "adamw", "amsgrad"):
        group = make_optimizer([{"params": param}], TrainParams(optimizer=name, betas=(0.8, 0.99), eps=1e-6,
                                                                schedule="cosine")).param_groups[0]
        assert group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6
    rmsprop = make_optimizer([{"params": param}], TrainParams(optimizer="rmsprop", eps=1e-3)).param_groups[0]
    assert rmsprop["eps"] == 1e-3


@pytest.mark.parametrize(("options", "message"), [
    ({"warmup_epochs": 1}, "warmup_epochs applies to schedule constant / step / multistep / cosine / exponential, "
                           "not onecycle"),
    ({"betas": [0.9, 0.99]}, "betas applies to optimizer adam / adamw / amsgrad, not sgd"),
    ({"optimizer": "adam", "momentum": 0.9, "schedule": "cosine"}, "momentum applies to optimizer sgd / rmsprop"),
    ({"nesterov": True, "optimizer": "adamw"}, "nesterov applies to optimizer sgd, not adamw"),
    ({"step_epochs": 5}, "step_epochs applies to schedule step, not onecycle"),
    ({"schedule": "cosine", "pct_start": 0.2}, "pct_start applies to schedule onecycle, not cosine"),
    ({"min_lr": 1e-6}, "min_lr applies to schedule cyclic / plateau"),
    ({"momentum": 0.8}, "momentum: schedule onecycle cycles it over momentum_range"),
    ({"schedule": "plateau", "warmup_epochs": 1}, "warmup_epochs applies to schedule"),
])
def test_an_option_the_optimizer_or_schedule_would_ignore_is_refused_naming_both(options, message):
    with pytest.raises(ValueError, match=message):
        TrainParams(**options)


def test_plateau_multiplies_the_lr_by_gamma_once_the_monitored_figure_stops_improving(digit_images):
    _, x, y = digit_images
    features = x[:300].float().flatten(1) / 255
    net = nn.Linear(features.shape[1], 10)
    p = TrainParams(epochs=10, lr=0.5, optimizer="sgd", schedule="plateau", gamma=0.5, plateau_patience=0,
                    augment="none", monitor="val_loss")
    train, val = (Images(features[part], torch.as_tensor(y[part])) for part in (slice(200), slice(200, None)))
    history = fit(net, [{"params": list(net.parameters()), "lr": p.lr}], train, val, p, n_classes=10, seed=0,
                  device=torch.device("cpu")).history
    lrs, losses = [h["lr"] for h in history], [h["val_loss"] for h in history]
    best = np.minimum.accumulate(losses)
    for epoch in range(1, len(history)):  # halved right after an epoch that did not beat the best so far
        improved = losses[epoch - 1] < (best[epoch - 2] if epoch > 1 else np.inf)
        assert lrs[epoch] == pytest.approx(lrs[epoch - 1] * (1 if improved else 0.5), rel=1e-6)
    assert lrs[0] == 0.5 and lrs[-1] < 0.5  # steps per epoch, not per batch; and it did reduce


@pytest.fixture(scope="module")
def digit_images():
    source = open_pools(DataSpec(source="digits")).train
    backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=32))
    x, _, _ = decode_images(source, np.arange(300), backbone.eval_transform())
    return backbone, x, source.labels[:300]


def test_finetune_from_the_last_stage_leaves_earlier_stages_and_their_bn_statistics_untouched(digit_images):
    backbone, x, y = digit_images
    paradigm = create_paradigm("finetune", {"epochs": 1, "from_stage": -1, "augment": "none", "bn": "train"},
                               n_classes=10, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
    before, after = backbone.model.state_dict(), paradigm.model_.model.state_dict()
    assert torch.equal(before["blocks.4.0.conv_pw.weight"], after["blocks.4.0.conv_pw.weight"])
    assert torch.equal(before["blocks.4.0.bn1.running_mean"], after["blocks.4.0.bn1.running_mean"])
    assert not torch.equal(before["blocks.6.0.conv_pw.weight"], after["blocks.6.0.conv_pw.weight"])
    assert not torch.equal(before["blocks.6.0.bn1.running_mean"], after["blocks.6.0.bn1.running_mean"])
    assert after["classifier.weight"].shape == (10, 1280)  # 1000 ImageNet classes → 10, no fuss


def test_backbone_passes_count_what_ran_through_the_backbone(digit_images):
    """Cached activations: one pass per image, not one per epoch; head encodes validation once."""
    backbone, x, y = digit_images
    runs = {"cached": ("finetune", {"epochs": 3, "from_stage": -1, "augment": "none"}, (200, 100)),
            "full": ("finetune", {"epochs": 3, "from_stage": -1, "augment": "none", "cache_activations": False},
                     (600, 300)),
            "head-online": ("head", {"epochs": 3, "augment": "none"}, (600, 100)),
            "head-views": ("head", {"epochs": 3, "views": 2}, (400, 100))}
    for name, params, (train, val) in runs.values():
        paradigm = create_paradigm(name, params, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
        assert paradigm.passes_ == {"train": train, "val": val}, (name, params)


def test_two_phase_trains_the_head_first_then_unfreezes_with_lower_spread_rates(digit_images):
    backbone, x, y = digit_images
    paradigm = create_paradigm("finetune", {"epochs": 1, "head_epochs": 1, "augment": "none", "lr": 0.02},
                               n_classes=10, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
    assert [h["phase"] for h in paradigm.history_] == ["head", "finetune"]
    assert paradigm.selected_["trainable_parameters"] == sum(p.numel() for p in paradigm.model_.parameters())
    rates = paradigm.selected_["stage_lrs"]  # fastai: base lr halved, spread from base/100 (input) to base
    assert rates[-1] == pytest.approx(0.01) and rates[0] == pytest.approx(0.0001)
    assert rates == sorted(rates) and len(rates) == 9  # stem, 7 block stages, head


def test_bn_frozen_keeps_every_pretrained_statistic_while_the_scales_and_shifts_train(digit_images):
    backbone, x, y = digit_images
    pretrained = backbone.model.state_dict()

    def finetuned(bn):
        paradigm = create_paradigm("finetune", {"epochs": 1, "augment": "none", "bn": bn}, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
        return paradigm.model_.model.state_dict()

    frozen, trained = finetuned("frozen"), finetuned("train")
    statistics = [k for k in pretrained if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 50
    assert all(torch.equal(frozen[k], pretrained[k]) for k in statistics)
    assert not torch.equal(frozen["bn1.weight"], pretrained["bn1.weight"])  # the affine parameters still train
    assert sum(not torch.equal(trained[k], pretrained[k]) for k in statistics) == len(statistics)


def test_bn_auto_freezes_the_statistics_of_a_short_epoch_and_the_record_says_why(digit_images):
    """200 images in batches of 32 are 7 batches an epoch: auto keeps the pretrained statistics; batches of 4
    (50 an epoch) train them. bn_affine: false freezes the scale and shift too."""
    backbone, x, y = digit_images
    pretrained = backbone.model.state_dict()

    def fitted(**params):
        paradigm = create_paradigm("finetune", {"epochs": 1, "augment": "none", **params}, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
        return paradigm.selected_["batchnorm"], paradigm.model_.model.state_dict()

    (short, state), (long, trained) = fitted(), fitted(batch_size=4)
    assert short == {"policy": "frozen", "affine": True, "why": "auto: 7 batches per epoch (< 50); running "
                     "statistics of so few batches would drift from the pretrained ones"}
    assert torch.equal(state["bn1.running_mean"], pretrained["bn1.running_mean"])
    assert not torch.equal(state["bn1.weight"], pretrained["bn1.weight"])  # the scale still trains
    assert long["policy"] == "train" and long["why"].startswith("auto: 50 batches per epoch")
    assert not torch.equal(trained["bn1.running_mean"], pretrained["bn1.running_mean"])
    (fixed, still) = fitted(bn="frozen", bn_affine=False)
    assert fixed == {"policy": "frozen", "affine": False, "why": "bn: frozen"}
    assert torch.equal(still["bn1.weight"], pretrained["bn1.weight"]) and torch.equal(still["bn1.bias"],
                                                                                      pretrained["bn1.bias"])
    with pytest.raises(ValueError, match="bn_affine applies when BatchNorm statistics are frozen"):
        create_paradigm("finetune", {"bn": "train", "bn_affine": False}, n_classes=10, seed=0)
    with pytest.raises(ValueError, match="bn_affine applies to frozen pretrained statistics"):
        create_paradigm("scratch", {"bn_affine": False}, n_classes=10, seed=0)


def test_recompute_batchnorm_sets_exact_statistics_of_the_layers_that_train_only():
    """PreciseBN: the statistics of a BatchNorm that trains become the exact mean / variance of its input over
    the images (not a running average), with dropout off; a frozen BatchNorm keeps its own."""
    from transferlab.train.loop import recompute_batchnorm

    torch.manual_seed(0)
    frozen, trained = nn.BatchNorm2d(3), nn.BatchNorm2d(4)
    frozen.requires_grad_(False)
    frozen.running_mean.fill_(0.5)
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(frozen, nn.Dropout(0.9), conv, trained, nn.Flatten())
    x = torch.rand(40, 3, 8, 8) * 4  # equal batches: the average of batch means is the mean
    recompute_batchnorm(model, x, batch_size=10, device=torch.device("cpu"))
    with torch.no_grad():
        inputs = conv(frozen.eval()(x))  # what the trained BatchNorm sees, dropout off
    assert torch.allclose(trained.running_mean, inputs.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(trained.running_var, inputs.var((0, 2, 3)), rtol=2e-2)  # per-batch unbiased, averaged
    assert torch.equal(frozen.running_mean, torch.full((3,), 0.5)) and trained.momentum == 0.1


def test_a_network_from_scratch_on_few_batches_is_evaluated_with_recomputed_statistics(digit_images):
    """simple-cnn on 7 batches an epoch (bn_recompute: auto) ends with its statistics recomputed over the
    training images, says so in the record, and scores well above the same fit judged with running averages."""
    from transferlab.train.loop import recompute_batchnorm

    _, x, y = digit_images

    def fitted(**params):
        paradigm = create_paradigm("simple-cnn", {"epochs": 3, "image_size": 16, "augment": "none", "lr": 0.05,
                                                  "restore_best": False, **params}, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(None, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
        return paradigm

    precise, running = fitted(), fitted(bn_recompute=False)
    assert precise.selected_["batchnorm"]["recomputed"] == "over the training images before each evaluation"
    assert "recomputed" not in running.selected_["batchnorm"]
    norm = next(m for m in precise.model_.modules() if isinstance(m, nn.BatchNorm2d))
    after_fit = norm.running_mean.clone()
    recompute_batchnorm(precise.model_, x[:200], 32, torch.device("cpu"))
    assert torch.allclose(norm.running_mean, after_fit, atol=1e-5)  # already the exact statistics
    accuracy = {name: (p.predict_proba(x[200:]).argmax(1) == y[200:]).mean() for name, p in
                (("precise", precise), ("running", running))}
    assert accuracy["precise"] > accuracy["running"] + 0.1, accuracy
    with pytest.raises(ValueError, match="bn_recompute recomputes the statistics of BatchNorm layers that train, "
                                         "and bn: frozen trains none"):
        create_paradigm("finetune", {"bn": "frozen", "bn_recompute": True}, n_classes=10, seed=0)


def test_a_network_from_scratch_refuses_frozen_batchnorm_statistics_in_one_line():
    for name in ("scratch", "simple-cnn"):
        with pytest.raises(ValueError, match="bn: frozen keeps pretrained BatchNorm statistics, but this "
                                                   "network starts from random weights"):
            create_paradigm(name, {"bn": "frozen"}, n_classes=3, seed=0)


def test_min_delta_makes_a_gain_smaller_than_it_no_gain(digit_images):
    _, x, y = digit_images
    features = x[:300].float().flatten(1) / 255

    def fit_mlp(min_delta):
        net = nn.Linear(features.shape[1], 10)
        p = TrainParams(epochs=6, lr=0.05, augment="none", monitor="val_loss", patience=2, min_delta=min_delta)
        train, val = (Images(features[part], torch.as_tensor(y[part])) for part in (slice(200), slice(200, None)))
        return fit(net, [{"params": list(net.parameters()), "lr": p.lr}], train, val, p, n_classes=10, seed=0,
                   device=torch.device("cpu"))

    plain, demanding = fit_mlp(0.0), fit_mlp(10.0)  # no validation loss can fall by 10
    assert plain.best_epoch > 1
    assert demanding.best_epoch == 1 and len(demanding.history) == 3  # patience 2 counted from epoch 1


def test_oversample_classes_repeats_only_the_named_classes_images_factor_times(digit_images):
    _, x, y = digit_images
    images = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    names = [str(d) for d in range(10)]  # scikit-learn's digits are named by their digit

    def trained(options):
        paradigm = create_paradigm("simple-cnn", {"epochs": 1, "image_size": 16, "augment": "none", **options},
                                   n_classes=10, seed=0)
        paradigm.bind(TrainingContext(None, torch.device("cpu"), classes=names))
        return paradigm.fit(images[:200], y[:200], images[200:], y[200:])

    before = np.bincount(y[:200], minlength=10)
    after = trained({"oversample_classes": {"classes": ["3", "7"], "factor": 3}}).selected_
    expected = before.copy()
    expected[[3, 7]] *= 3
    assert after["train_images_per_class"] == expected.tolist() and after["train_images"] == expected.sum()
    with pytest.raises(TransferlabError, match="oversample_classes: 'seven' is not a class of these data"):
        trained({"oversample_classes": {"classes": ["seven"]}})
    with pytest.raises(ValueError, match="give oversample_to .* or oversample_classes .*, not both"):
        TrainParams(oversample_to=50, oversample_classes={"classes": ["3"]})
    with pytest.raises(TransferlabError, match="oversample_classes needs one label per image"):
        TrainParams(oversample_classes={"classes": ["3"]}).check_multi_label("finetune")


def plan_of(model, **plan):
    return trainable_by_plan(model, FinetuneParams(unfreeze=plan).plan)


def test_unfreeze_plans_count_layers_as_keras_does_and_match_globs_on_timm_and_torchvision_nets():
    resnet = create_model("resnet18", num_classes=5)
    layers = layers_with_weights(resnet)  # conv1, bn1, layer1.0.conv1, ... , fc
    assert layers[:2] == ["conv1", "bn1"] and layers[-3:] == ["layer4.1.conv2", "layer4.1.bn2", "fc"]
    assert {n.rpartition(".")[0] for n in plan_of(resnet, last_layers=3)} == set(layers[-3:])
    assert {n.rpartition(".")[0] for n in plan_of(resnet, first_layers=2, last_layers=1)} == {"conv1", "bn1", "fc"}
    assert {n.split(".")[0] for n in plan_of(resnet, modules=["layer4.*"])} == {"layer4", "fc"}  # + the new head
    assert plan_of(resnet, last_layers=0) == {"fc.weight", "fc.bias"}
    stage = FinetuneParams(from_stage=-1).plan  # the shorthand is the plan spelled out
    assert trainable_by_plan(resnet, stage) == plan_of(resnet, stage=-1)
    alexnet = create_model("torchvision/alexnet", num_classes=5)  # 001's "conv only": its FC layers stay frozen
    conv_only = plan_of(alexnet, frozen=["classifier.*"])
    assert {n.rpartition(".")[0] for n in conv_only} == {"features.0", "features.3", "features.6", "features.8",
                                                           "features.10", "classifier.6"}


def test_a_plan_that_cannot_apply_is_one_line():
    resnet = create_model("resnet18", num_classes=5)
    assert len(layers_with_weights(resnet)) == 41  # 20 convolutions, 20 BatchNorms, fc
    with pytest.raises(TransferlabError, match=r"unfreeze.modules: 'layer9\.\*' matches no parameter of ResNet"):
        plan_of(resnet, modules=["layer9.*"])
    with pytest.raises(TransferlabError, match=r"first_layers \+ last_layers = 900, but ResNet has 41 layers"):
        plan_of(resnet, first_layers=450, last_layers=450)
    with pytest.raises(ValueError, match=r"give one of unfreeze, from_stage, from_fraction \(found unfreeze, "
                                         r"from_stage\)"):
        FinetuneParams(unfreeze={"last_layers": 2}, from_stage=-1)
    with pytest.raises(ValueError, match=r"give one of stage, fraction, last_layers, modules, frozen \(found "
                                         r"last_layers, modules\)"):
        FinetuneParams(unfreeze={"last_layers": 2, "modules": ["fc"]})
    with pytest.raises(ValueError, match="first_layers goes with last_layers"):
        FinetuneParams(unfreeze={"first_layers": 2})


def test_finetune_with_a_layer_count_plan_trains_exactly_those_layers(digit_images):
    backbone, x, y = digit_images
    paradigm = create_paradigm("finetune", {"epochs": 1, "augment": "none", "unfreeze": {"last_layers": 4}},
                               n_classes=10, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:200], y[:200], x[200:], y[200:])
    before, after = backbone.model.state_dict(), paradigm.model_.model.state_dict()
    trained = set(layers_with_weights(paradigm.model_.model)[-4:])  # conv_head, bn2, classifier and one before
    for name, value in after.items():
        module = name.rpartition(".")[0]
        if module.startswith("classifier") or "running" in name or "num_batches" in name:
            continue
        assert torch.equal(value, before[name]) == (module not in trained), name


def test_a_diverging_loss_stops_with_one_line_naming_epoch_step_and_lr(digit_images):
    backbone, x, y = digit_images
    paradigm = create_paradigm("simple-cnn", {"epochs": 2, "lr": 1e12, "optimizer": "sgd", "image_size": 16},
                               n_classes=10, seed=0)
    paradigm.bind(TrainingContext(None, torch.device("cpu")))
    images = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    with pytest.raises(TransferlabError, match=r"epoch \d+/2, step \d+: the loss became .*lower the learning rate"):
        paradigm.fit(images[:200], y[:200], images[200:], y[200:])


def test_resume_continues_nothing_once_finished_and_refuses_another_runs_checkpoint(digit_images, tmp_path):
    from transferlab.train.optim import param_groups

    _, x, y = digit_images
    images = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    train, val = Images(images[:200], torch.as_tensor(y[:200])), Images(images[200:], torch.as_tensor(y[200:]))
    p = TrainParams(epochs=30, patience=1, lr=0.05, optimizer="adamw", augment="none", schedule="constant")

    def go(key, resume):
        torch.manual_seed(0)
        model = create_paradigm("simple-cnn", {"image_size": 16}, n_classes=10, seed=0).build_model((16, 16))
        return fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), train, val, p, n_classes=10,
                   seed=0, device=torch.device("cpu"), checkpoints=tmp_path, resume=resume, run_key=key)

    first = go("run-a", resume=False)
    assert len(first.history) < 30  # stopped early
    again = go("run-a", resume=True)
    assert again.history == first.history and again.best_epoch == first.best_epoch
    with pytest.raises(TransferlabError, match="belongs to another version of the run"):
        go("run-b", resume=True)


def run_cli(out, *extra, wait=True):
    args = [sys.executable, "-m", "transferlab", "run", "--data", "digits", "--paradigm", "simple-cnn", "--seed", "1",
            "-p", "epochs=8", "-p", "image_size=32", "-p", "augment=light", "--out", str(out), *extra]
    if wait:
        return subprocess.run(args, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def only_record(out):
    (path,) = (out / "runs").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow  # ~2 min (three CLI runs of 8 epochs); CI runs it with the slow checks
def test_kill_9_mid_training_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    victim = run_cli(tmp_path / "killed", wait=False)
    checkpoint = None
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed" / "checkpoints").glob("*/last.pt"))
        if found and len(torch.load(found[0], weights_only=True)["history"]) >= 2:
            checkpoint = found[0]
            break
        time.sleep(0.05)
    assert checkpoint is not None and victim.poll() is None, "training ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)  # during epoch 3
    victim.wait()
    assert not (tmp_path / "killed" / "runs").exists()

    resumed = run_cli(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = run_cli(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a, b = only_record(tmp_path / "killed"), only_record(tmp_path / "straight")
    assert 2 <= a["selected"]["resumed_from_epoch"] <= 3  # lost at most the epoch it was killed in
    assert a["metrics"] == b["metrics"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]


def small_digits(digit_images):
    from transferlab.train.loop import Images

    _, x, y = digit_images
    images = torch.nn.functional.interpolate(x.float(), size=16).to(torch.uint8)
    return Images(images[:200], torch.as_tensor(y[:200])), Images(images[200:], torch.as_tensor(y[200:]))


def test_restore_best_false_keeps_the_last_epochs_weights_after_the_same_training(digit_images):
    from transferlab.train.loop import evaluate, fit
    from transferlab.train.optim import make_loss, param_groups

    train, val = small_digits(digit_images)

    def go(restore_best):
        p = TrainParams(epochs=8, lr=0.02, optimizer="adamw", augment="none", schedule="constant",
                        restore_best=restore_best)
        torch.manual_seed(0)
        model = create_paradigm("simple-cnn", {"image_size": 16}, n_classes=10, seed=0).build_model((16, 16))
        result = fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), train, val, p, n_classes=10,
                     seed=0, device=torch.device("cpu"))
        val_loss, _ = evaluate(model, val, make_loss(p, train.y.numpy(), 10), p.batch_size, torch.device("cpu"))
        return result, val_loss

    (best, best_loss), (last, last_loss) = go(True), go(False)
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (best, last)]
    assert strip[0] == strip[1]  # keeping the last epoch changes no training step, only what is kept
    assert best.best_epoch < 8, "this lr should make a middle epoch the best (else the test shows nothing)"
    assert last.best_epoch == 8 and last.best_score == last.history[-1]["val_accuracy"]
    assert last_loss == pytest.approx(last.history[-1]["val_loss"], abs=1e-6)
    assert best_loss == pytest.approx(best.history[best.best_epoch - 1]["val_loss"], abs=1e-6)


def test_final_params_fix_the_best_epoch_and_the_refit_trains_exactly_that_many(digit_images):
    from transferlab.paradigms.base import validate_params

    train, val = small_digits(digit_images)
    params = {"image_size": 16, "epochs": 30, "patience": 2, "lr": 0.05, "optimizer": "adamw", "augment": "none",
              "schedule": "constant"}
    paradigm = create_paradigm("simple-cnn", params, n_classes=10, seed=0)
    paradigm.bind(TrainingContext(None, torch.device("cpu"))).fit(train.x, train.y, val.x, val.y)
    assert len(paradigm.history_) < 30  # stopped early, so validation chose the epoch count
    final = paradigm.final_params()
    assert final == {**params, "epochs": paradigm.selected_["best_epoch"], "patience": None, "restore_best": False}
    refit = create_paradigm("simple-cnn", final, n_classes=10, seed=0)  # validates, as the runner's refit does
    assert validate_params("simple-cnn", final).restore_best is False
    both = torch.cat([train.x, val.x]), torch.cat([train.y, val.y])
    refit.bind(TrainingContext(None, torch.device("cpu"))).fit(*both, val.x, val.y)
    assert len(refit.history_) == final["epochs"] == refit.selected_["best_epoch"]


class Killed(BaseException):
    """Stands for a SIGKILL at one point of a checkpoint write."""


@pytest.mark.parametrize("kill_after", ["last weights", "best weights", "mid-epoch"])
def test_a_kill_between_the_checkpoint_writes_resumes_exactly_like_an_uninterrupted_run(digit_images, tmp_path,
                                                                                        monkeypatch, kill_after):
    """Killed mid-epoch, or after an epoch's weights (its last weights, or a new best's) are on disk and before
    its last.pt is: resume goes on from the previous epoch's complete checkpoint and ends with the history, best
    epoch and weights of a straight run (the old two-file checkpoint paired new weights with the old state)."""
    from transferlab.train import loop
    from transferlab.train.optim import param_groups

    train, val = small_digits(digit_images)
    p = TrainParams(epochs=6, lr=0.003, optimizer="adamw", augment="light", schedule="cosine", bn="train")

    def go(folder, resume=False):
        torch.manual_seed(0)
        model = create_paradigm("simple-cnn", {"image_size": 16}, n_classes=10, seed=0).build_model((16, 16))
        result = loop.fit(model, param_groups([(list(model.parameters()), p.lr)], 0.0), train, val, p,
                          n_classes=10, seed=0, device=torch.device("cpu"), checkpoints=folder, resume=resume,
                          run_key="k")
        return result, model.state_dict()

    straight, straight_weights = go(tmp_path / "straight")
    real_write = loop.atomic_write
    written: list[str] = []

    def dying(path, write):
        previous = written[-1] if written else ""
        written.append(path.name)
        if kill_after == "last weights" and path.name == "last.pt" and previous == "last-3.safetensors":
            raise Killed
        if kill_after == "best weights" and path.name.startswith("last-") and previous.startswith("best-") \
                and int(previous.split("-")[1].split(".")[0]) >= 3:
            raise Killed
        return real_write(path, write)

    real_augment, batches = loop.augment_batch, []

    def dying_mid_epoch(x, augment):  # the second batch of epoch 3 (7 batches an epoch)
        batches.append(1)
        if len(batches) == 2 * 7 + 2:
            raise Killed
        return real_augment(x, augment)

    if kill_after == "mid-epoch":
        monkeypatch.setattr(loop, "augment_batch", dying_mid_epoch)
    else:
        monkeypatch.setattr(loop, "atomic_write", dying)
    with pytest.raises(Killed):
        go(tmp_path / "killed")
    monkeypatch.undo()
    # the epoch that was being written or trained when killed
    killed_in = 3 if kill_after == "mid-epoch" else int(written[-2].split("-")[1].split(".")[0])
    resumed, resumed_weights = go(tmp_path / "killed", resume=True)
    assert resumed.resumed_from == killed_in - 1
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (resumed, straight)]
    assert strip[0] == strip[1] and resumed.best_epoch == straight.best_epoch
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)


def test_deterministic_cuda_sets_torchs_and_cudnns_deterministic_modes_and_restores_them(monkeypatch):
    """What `deterministic: true` (the default) does around a fit on CUDA; nothing on CPU. (The flags can be
    set without a GPU; their effect on CUDA kernels is checked by benchmarks/gpu.py on a GPU machine.)"""
    from transferlab.core.seeding import deterministic_cuda

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_cuda(True, "cpu"):
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic_cuda(True, "cuda"):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with deterministic_cuda(False, "cuda"):
        assert not torch.are_deterministic_algorithms_enabled()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
