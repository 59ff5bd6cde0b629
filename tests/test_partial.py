"""Cached activations for every unfreeze plan whose frozen part is a prefix of the network (train/partial.py):
timm and torchvision networks alike, the split checked against the full forward, and a network that is not
a chain of its own modules (ViT's position embedding, torchvision Inception's input transform) trained with
its full forward instead."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from transferlab.config import BackboneSpec, DataSpec
from transferlab.data import open_pools
from transferlab.data.decode import decode_images
from transferlab.models import load_backbone
from transferlab.models.torchvision_nets import create as create_torchvision
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.train.freeze import UnfreezePlan, set_trainable, trainable_by_plan
from transferlab.train.partial import split_at_frozen_prefix


def network(name: str, plan: UnfreezePlan):
    torch.manual_seed(0)
    net = create_torchvision(name) if name.startswith("torchvision/") else timm.create_model(name, pretrained=False)
    net.reset_classifier(5)
    set_trainable(net, trainable_by_plan(net, plan))
    return net


@pytest.mark.parametrize(("name", "plan", "first", "size"), [
    ("resnet18", UnfreezePlan(stage=3), "layer3.0", 64),
    ("resnetv2_18", UnfreezePlan(fraction=0.3), "stages.2", 64),
    ("tf_efficientnet_lite0", UnfreezePlan(last_layers=3), "conv_head", 64),  # conv_head, bn2, classifier
    ("convnext_atto", UnfreezePlan(stage=2), "stages.2", 64),
    ("torchvision/alexnet", UnfreezePlan(last_layers=3), "classifier.1", 224),  # 001's FC-only: fc6, fc7, fc8
    ("torchvision/vgg11", UnfreezePlan(frozen=["features.[0-5].*"]), "features.6", 64),
])
def test_the_frozen_prefix_runs_once_and_the_split_computes_the_same(name, plan, first, size):
    net = network(name, plan)
    bottom, top = split_at_frozen_prefix(net, (size, size))
    assert top.first == first
    assert not any(p.requires_grad for p in bottom.parameters())
    x = torch.randn(3, 3, size, size)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(top(bottom(x)), net(x), atol=1e-5)


@pytest.mark.parametrize(("name", "plan", "size"), [
    ("vit_tiny_patch16_224", UnfreezePlan(last_layers=5), 224),  # position embedding added between modules
    ("torchvision/inception_v3", UnfreezePlan(last_layers=5), 299),  # transform_input before its first module
    ("resnet18", UnfreezePlan(first_layers=1, last_layers=1), 64),  # the first layer trains: no frozen prefix
])
def test_what_is_not_a_frozen_prefix_of_a_chain_trains_with_the_full_forward(name, plan, size):
    assert split_at_frozen_prefix(network(name, plan), (size, size)) is None


def test_finetune_with_and_without_the_cache_learns_the_same_on_a_resnet():
    spec = BackboneSpec(name="resnet18", weights="random", image_size=32)
    backbone = load_backbone(spec)
    source = open_pools(DataSpec(source="digits")).train
    x, _, _ = decode_images(source, np.arange(240), backbone.eval_transform())
    y = source.labels[:240]
    fitted = {}
    for cached in (True, False):
        paradigm = create_paradigm("finetune", {"epochs": 2, "unfreeze": {"stage": 4}, "augment": "none",
                                                "cache_activations": cached}, n_classes=10, seed=0)
        paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x[:160], y[:160], x[160:], y[160:])
        fitted[cached] = paradigm
    assert fitted[True].selected_["cached_activations_from"] == "layer4.0"
    assert "cached_activations_from" not in fitted[False].selected_
    assert fitted[True].passes_ == {"train": 160, "val": 80}  # once, not once per epoch
    for a, b in zip(fitted[True].history_, fitted[False].history_, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
