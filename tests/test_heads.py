"""One head spec for every paradigm that trains a head (models/heads.py): pooling, dense layers, activation,
dropout, L1/L2 penalties and initialisation; on a network's classifier place (finetune, scratch, bit), on the
frozen engine's feature map (head) and on cached pooled features (mlp); saved and loaded back exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.deploy.artifact import load_run
from transferlab.models.heads import ClassifierHead, HeadSpec, head_penalty, with_head
from transferlab.models.torchvision_nets import create as create_torchvision
from transferlab.paradigms import create_paradigm
from transferlab.stats import decode_outcomes

from .conftest import SMALL_SIZE, needs_fashion_mnist
from .test_deploy import reproduced_outcomes


def test_the_dense_layers_follow_the_spec_in_order():
    head = ClassifierHead(HeadSpec(hidden=[16, 8], activation="gelu", dropout=0.3), (32,), 5)
    kinds = [type(m).__name__ for m in head.dense]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [m.out_features for m in head.dense if isinstance(m, nn.Linear)] == [16, 8, 5]
    assert head.dense[2].p == 0.3
    assert [type(m).__name__ for m in ClassifierHead(HeadSpec(dropout=0.2), (32,), 5).dense] == ["Dropout", "Linear"]
    per_layer = ClassifierHead(HeadSpec(hidden=[16, 8], dropout=[0.1, 0.4]), (32,), 5)
    assert [m.p for m in per_layer.dense if isinstance(m, nn.Dropout)] == [0.1, 0.4]
    with pytest.raises(ValueError, match=r"dropout: a list gives one rate per hidden layer \(2\), not 1"):
        HeadSpec(hidden=[16, 8], dropout=[0.1])
    with pytest.raises(ValueError, match=r"dropout rates are in \[0, 1\)"):
        HeadSpec(dropout=1.5)
    zeros = ClassifierHead(HeadSpec(hidden=[4], init="zeros"), (8,), 3)  # BiT's zero-initialised head
    assert all(torch.count_nonzero(q) == 0 for q in zeros.parameters())


@pytest.mark.parametrize(("pool", "features"), [("max", 12), ("max-flatten", 12 * 2 * 3), ("flatten", 12 * 5 * 7)])
def test_the_pools_of_a_feature_map(pool, features):
    head = ClassifierHead(HeadSpec(pool=pool), (12, 5, 7), 3)
    assert head.dense[-1].in_features == features
    x = torch.randn(4, 12, 5, 7)
    pooled = head.pool(x)
    if pool == "max":
        assert torch.equal(pooled, x.amax(dim=(2, 3)))
    elif pool == "max-flatten":  # Keras's MaxPool2D(2) (valid padding drops the odd row / column) then Flatten
        assert torch.equal(pooled, x[:, :, :4, :6].reshape(4, 12, 2, 2, 3, 2).amax(dim=(3, 5)).flatten(1))
    assert head(x).shape == (4, 3)


def test_penalties_are_l1_and_l2_of_the_dense_weights_only():
    head = ClassifierHead(HeadSpec(hidden=[6], l1=1e-3, l2=1e-2), (4,), 3)
    weights = [head.dense[0].weight, head.dense[3].weight]
    expected = 1e-3 * sum(w.abs().sum() for w in weights) + 1e-2 * sum((w ** 2).sum() for w in weights)
    assert torch.allclose(head_penalty(head)(), expected)
    assert head_penalty(ClassifierHead(HeadSpec(hidden=[6]), (4,), 3)) is None


@pytest.mark.parametrize("init", ["glorot", "he"])
def test_initialisation_of_the_dense_layers(init):
    torch.manual_seed(0)
    head = ClassifierHead(HeadSpec(hidden=[256], init=init), (512,), 128)
    first = head.dense[0]
    assert torch.count_nonzero(first.bias) == 0
    expected = math.sqrt(2 / (512 + 256)) if init == "glorot" else math.sqrt(2 / 512)  # Glorot / He std
    assert first.weight.std().item() == pytest.approx(expected, rel=0.05)
    if init == "glorot":  # uniform within ±√(6 / (fan_in + fan_out))
        assert first.weight.abs().max() <= math.sqrt(6 / (512 + 256))


def test_heads_take_the_classifier_place_of_timm_networks():
    """avg: the network's pooled features (timm's ResNetV2 hands its conv-style classifier N×C×1×1); other pools:
    the last feature map; the head's parameters sit under the classifier's name."""
    for name, pool, in_shape in [("resnetv2_18", "avg", (512, 1, 1)), ("resnetv2_18", "max-flatten", (512, 2, 2)),
                                 ("tf_efficientnet_lite0", "flatten", (1280, 2, 2))]:
        net = with_head(timm.create_model(name, pretrained=False), HeadSpec(pool=pool, hidden=[8]), 3, (64, 64))
        assert net.get_classifier().in_shape == in_shape
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
        classifier = net.default_cfg["classifier"]
        assert {n for n, _ in net.named_parameters() if n.startswith(classifier + ".")} == {
            f"{classifier}.dense.{i}.{kind}" for i in (0, 3) for kind in ("weight", "bias")}


def test_a_pool_without_a_feature_map_is_refused_in_one_line():
    with pytest.raises(TransferlabError, match=r"head.pool: max needs a C×H×W feature map, but the network gives "
                                               r"features of shape \[197, 192\]; use pool: avg"):
        with_head(timm.create_model("vit_tiny_patch16_224", pretrained=False), HeadSpec(pool="max"), 3, (224, 224))
    with pytest.raises(TransferlabError, match=r"head.pool: flatten needs the last feature map, which transferlab "
                                               r"takes from timm models only \(ResNet is torchvision's\)"):
        with_head(create_torchvision("torchvision/resnet18"), HeadSpec(pool="flatten"), 3, (64, 64))


def test_the_head_forms_of_head_and_mlp():
    head = create_paradigm("head", {"hidden": 8}, n_classes=3, seed=0).params
    assert head.head_spec == HeadSpec(hidden=[8], dropout=0.2)  # the shorthands are a head spec
    mlp = create_paradigm("mlp", {"head": {"hidden": [16, 8], "activation": "tanh"}}, n_classes=3, seed=0).params
    assert mlp.head_spec.hidden == [16, 8]
    with pytest.raises(ValueError, match=r"give head: \{\.\.\.\} or the shorthand dropout, hidden, not both"):
        create_paradigm("head", {"hidden": 8, "dropout": 0.1, "head": {"hidden": [8]}}, n_classes=3, seed=0)
    with pytest.raises(ValueError, match="head.pool: max needs a feature map, but mlp trains on pooled cached "
                                         "features; use pool: avg"):
        create_paradigm("mlp", {"head": {"pool": "max"}}, n_classes=3, seed=0)
    with pytest.raises(ValueError, match="activation"):
        create_paradigm("finetune", {"head": {"activation": "swish"}}, n_classes=3, seed=0)


@pytest.fixture(scope="module")
def headed_study(image_folder, tmp_path_factory):
    train, test = image_folder
    spec = {"name": "heads", "datasets": [{"source": str(train), "test": str(test), "name": "fm3"}],
            "backbones": [{"name": "tf_efficientnet_lite0", "image_size": SMALL_SIZE}], "references": False,
            "paradigms": [
                {"name": "head", "label": "head-map", "epochs": 3, "augment": "none",
                 "head": {"pool": "max-flatten", "hidden": [16], "dropout": 0.1, "l2": 1e-3}},
                {"name": "finetune", "label": "ft-head", "epochs": 3, "augment": "none", "lr": 3.0e-3,
                 "unfreeze": {"last_layers": 3}, "head": {"pool": "max", "hidden": [8], "activation": "elu",
                                                          "init": "glorot", "l1": 1e-4}},
                {"name": "mlp", "label": "mlp-head", "max_epochs": 20, "head": {"hidden": [32, 16],
                                                                                  "activation": "gelu"}}]}
    out = tmp_path_factory.mktemp("heads")
    return out, transferlab.study(spec, out)


@needs_fashion_mnist
def test_head_specs_train_and_load_back_exactly(headed_study):
    """Each row learns (above chance on 3 classes), and its saved model makes the same call on every test image
    as the run did: the frozen feature map under a max-flatten head, a fine-tuned net with its head in the
    classifier's place, an mlp of two hidden layers."""
    out, records = headed_study
    assert {r["spec"]["paradigm"]["label"] for r in records} == {"head-map", "ft-head", "mlp-head"}
    for record in records:
        assert record["metrics"]["accuracy"] > 0.6, record["run_id"]
        model = load_run(out / "runs" / f"{record['run_id']}.json")
        expected = decode_outcomes(record["test_outcomes"])
        got = reproduced_outcomes(model)
        for key in expected:
            assert np.array_equal(got[key], expected[key]), (record["run_id"], key)
    finetuned = next(r for r in records if r["spec"]["paradigm"]["label"] == "ft-head")
    head_size = (1280 * 8 + 8) + (8 * 3 + 3)  # max-pooled 1280 channels → 8 → 3
    assert finetuned["selected"]["trainable_parameters"] > head_size  # the last layers train, and the head
