"""Backbones and weight sources: the offline weights are real, and every failure is one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from transferlab.config import BackboneSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import ArraySource
from transferlab.models import load_backbone
from transferlab.models.backbones import check_model_name

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def imagenet_top1(backbone, *images) -> list[int]:
    transform, model = backbone.eval_transform(), backbone.with_normalization(backbone.model)
    with torch.no_grad():
        return model(torch.stack([transform(Image.fromarray(im)) for im in images])).argmax(1).tolist()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_offline_weights_are_real_imagenet_weights(name):
    backbone = load_backbone(BackboneSpec(name=name, weights="offline"))
    cat, coffee = imagenet_top1(backbone, photos.chelsea(), photos.coffee())
    assert cat in IMAGENET_CATS
    assert coffee == ESPRESSO
    assert backbone.weights.source == "offline" and len(backbone.weights.sha256) == 64


def test_random_init_is_not_imagenet_and_is_seeded():
    def weights(seed):
        backbone = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", weights="random"), seed=seed)
        return backbone, backbone.model.state_dict()["conv_stem.weight"]

    (a, wa), (_, wb), (c, wc) = weights(1), weights(1), weights(2)
    offline = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa, offline.model.state_dict()["conv_stem.weight"])
    assert imagenet_top1(a, photos.coffee()) != [ESPRESSO]
    assert len({a.key, c.key, offline.key}) == 3  # different weights → different feature caches


def test_preprocessing_follows_the_pretrained_config_and_the_size_override():
    default = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    assert default.data_config["input_size"] == (3, 224, 224)
    assert default.data_config["interpolation"] == "bicubic"
    small = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=96))
    camera = ArraySource("camera", photos.camera()[None], np.array([0]), ["photo"])  # a grayscale photo
    x = small.eval_transform()(camera.load(0))
    assert x.shape == (3, 96, 96) and x.dtype == torch.uint8  # grayscale became 3-channel
    assert small.key != default.key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_the_same_weights(tmp_path, suffix):
    offline = load_backbone(BackboneSpec(name="tf_efficientnet_lite0"))
    path = tmp_path / f"lite0{suffix}"
    state = {k: v.contiguous() for k, v in offline.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    local = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", weights=str(path)))
    assert local.weights.source == "file"
    assert imagenet_top1(local, photos.coffee()) == [ESPRESSO]


def test_local_weights_for_another_architecture_is_one_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3, 3, 3)}, str(path))
    with pytest.raises(TransferlabError, match=r"other\.safetensors: does not fit"):
        load_backbone(BackboneSpec(name="tf_efficientnet_lite0", weights=str(path)))


def test_unknown_model_lists_close_matches():
    with pytest.raises(TransferlabError, match="did you mean .*tf_efficientnet_lite0"):
        check_model_name("tf_efficientnet_lite_0")


def test_offline_registry_miss_names_the_alternatives():
    with pytest.raises(TransferlabError, match="not in the offline registry.*tf_efficientnet_lite0.*weights: hub"):
        load_backbone(BackboneSpec(name="resnet18", weights="offline"))


def test_hub_unreachable_is_one_line_naming_model_and_alternatives(monkeypatch):
    monkeypatch.setattr("transferlab.models.backbones.HUB_HOST", ("127.0.0.1", 9))  # discard port: refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with pytest.raises(TransferlabError) as err:
        load_backbone(BackboneSpec(name="resnet18", weights="hub"))
    message = str(err.value)
    assert "resnet18" in message and "weights: offline (tf_efficientnet_lite0" in message and "\n" not in message
