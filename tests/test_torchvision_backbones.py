"""torchvision backbones (`torchvision/alexnet`, ...) through timm's interface: names, fc7 features, stages for
`finetune from_stage`, torchvision state-dict files, the hub offline, and a run end to end that reloads."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from transferlab.config import BackboneSpec, DataSpec, RunSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import open_pools
from transferlab.data.decode import decode_images
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split
from transferlab.evaluate import image_outcomes, predicted_labels
from transferlab.models import load_backbone
from transferlab.models.backbones import check_model_name, create_model, file_sha256
from transferlab.paradigms import create_paradigm
from transferlab.paradigms.trained import TrainingContext
from transferlab.resolve import resolved
from transferlab.runner import execute_run
from transferlab.stats import decode_outcomes
from transferlab.train.freeze import layer_groups, trainable_from_stage

from .conftest import FOLDER_CLASSES, SMALL_SIZE, take_per_class

ALEXNET = {"name": "torchvision/alexnet", "weights": "random", "image_size": SMALL_SIZE}
FC7_AND_CLASSIFIER = {"classifier.4.weight", "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"}


@pytest.fixture(scope="module")
def alexnet():
    return load_backbone(BackboneSpec(**ALEXNET))


@pytest.fixture(scope="module")
def garments(fashion_pools, alexnet):
    """Real Fashion-MNIST images of 3 classes at the backbone's view: 42 train, 18 validation."""
    source = fashion_pools.train
    indices = take_per_class(source.labels, FOLDER_CLASSES, 20)
    x, _, _ = decode_images(source, indices, alexnet.eval_transform())
    y = np.searchsorted(FOLDER_CLASSES, source.labels[indices])
    train = np.r_[0:14, 20:34, 40:54]
    val = np.setdiff1d(np.arange(60), train)
    return x[train], y[train], x[val], y[val]


def test_torchvision_names_are_checked_and_unknown_ones_get_close_matches():
    for name in ("torchvision/alexnet", "torchvision/vgg16_bn", "torchvision/resnet50", "torchvision/resnext50_32x4d"):
        check_model_name(name)
    with pytest.raises(TransferlabError, match=r"unknown torchvision model 'torchvision/alexnett'; did you mean "
                       r"torchvision/alexnet\?"):
        check_model_name("torchvision/alexnett")
    with pytest.raises(TransferlabError, match="unknown timm model 'alexnet'; did you mean torchvision/alexnet"):
        check_model_name("alexnet")  # timm lacks it; torchvision has it
    with pytest.raises(TransferlabError) as err:
        resolved(BackboneSpec, {"name": "torchvision/vgg16bn"}, "study.yaml")
    assert "torchvision/vgg16_bn" in str(err.value) and "\n" not in str(err.value)


def test_a_weights_version_is_named_as_timm_names_its_tags():
    """`torchvision/resnet50.IMAGENET1K_V1`: the 2017 weights and their view (resize 256), not DEFAULT's V2 (232)."""
    v1 = load_backbone(BackboneSpec(name="torchvision/resnet50.IMAGENET1K_V1", weights="random"))
    default = load_backbone(BackboneSpec(name="torchvision/resnet50", weights="random"))
    assert v1.model.pretrained_cfg["tag"] == "ResNet50_Weights.IMAGENET1K_V1"
    assert v1.data_config["crop_pct"] == pytest.approx(224 / 256)
    assert default.data_config["crop_pct"] == pytest.approx(224 / 232)
    with pytest.raises(TransferlabError, match=r"torchvision/resnet50.V9: torchvision has no weights V9 for resnet50 "
                                               r"\(it has IMAGENET1K_V1, IMAGENET1K_V2"):
        check_model_name("torchvision/resnet50.V9")


def test_alexnet_gives_fc7_features_and_timm_stages(alexnet, garments):
    model = alexnet.model
    assert model.num_features == 4096 and model.default_cfg["classifier"] == "classifier.6"
    assert model.get_classifier() is model.classifier[6]
    assert [s["module"] for s in model.feature_info] == ["features.2", "features.5", "features.12", "classifier.2",
                                                         "classifier.5"]  # 3 conv blocks, fc6, fc7
    config = alexnet.data_config  # torchvision's AlexNet transforms, at the asked size
    assert config["input_size"] == (3, SMALL_SIZE, SMALL_SIZE) and config["interpolation"] == "bilinear"
    assert config["crop_pct"] == 224 / 256 and config["mean"] == (0.485, 0.456, 0.406)
    with torch.no_grad():
        features = alexnet.feature_model()(garments[0][:8])
    assert features.shape == (8, 4096) and features.min() >= 0  # fc7 after its ReLU
    assert model.classifier[6].out_features == 1000  # the feature model was a copy
    # "conv part frozen, classifier trains" and "only the last stage trains"
    assert trainable_from_stage(model, 3) == {f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")}
    assert trainable_from_stage(model, -1) == FC7_AND_CLASSIFIER
    assert len(layer_groups(model)) == 6  # 3 conv blocks, fc6, fc7, the classifier


def test_finetune_from_the_last_stage_trains_only_fc7_and_the_new_classifier(alexnet, garments):
    x, y, x_val, y_val = garments
    paradigm = create_paradigm("finetune", {"epochs": 1, "from_stage": -1, "augment": "none", "batch_size": 20},
                               n_classes=3, seed=0)
    paradigm.bind(TrainingContext(alexnet, torch.device("cpu"))).fit(x, y, x_val, y_val)
    net = paradigm.model_.model
    assert {name for name, p in net.named_parameters() if p.requires_grad} == FC7_AND_CLASSIFIER
    before, after = alexnet.model.state_dict(), net.state_dict()
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])  # fc6 frozen
    assert not torch.equal(before["classifier.4.weight"], after["classifier.4.weight"])  # fc7 trained
    assert after["classifier.6.weight"].shape == (3, 4096)
    assert paradigm.selected_["trainable_parameters"] == 4096 * 4096 + 4096 + 3 * 4096 + 3
    assert paradigm.predict_proba(x_val).shape == (18, 3)


def run_spec(folder, backbone, paradigm):
    """A small run on `image_folder`: 30 train, 12 validation, 24 test images; engine torch, since the ONNX
    export of a new backbone alone costs 15-25 s on 2 cores (see the slow test below)."""
    train, test = folder
    data = {"source": str(train), "test": str(test), "name": "fm3", "limit_per_class": 10, "val_size": 12,
            "test_size": 24}
    return resolved(RunSpec, {"data": data, "backbone": backbone, "paradigm": paradigm, "engine": "torch"}, "test")


def test_head_and_linear_fit_on_alexnet_fc7_features(alexnet, garments):
    x, y, x_val, y_val = garments
    head = create_paradigm("head", {"epochs": 3, "views": 1, "augment": "none"}, n_classes=3, seed=0)
    head.bind(TrainingContext(alexnet, torch.device("cpu"), engine="torch")).fit(x, y, x_val, y_val)
    assert head.model_.head.dense[-1].in_features == 4096 and head.predict_proba(x_val).shape == (18, 3)
    (module,), frozen_features = head.deploy_steps()
    assert frozen_features and module.config["in_shape"] == [4096]
    with torch.no_grad():
        encode = alexnet.feature_model()
        features = [encode(images).numpy() for images in (x, x_val)]
    linear = create_paradigm("linear", {"C": [1.0]}, n_classes=3, seed=0).fit(features[0], y, features[1], y_val)
    assert (linear.predict_proba(features[1]).argmax(1) == y_val).mean() > 0.6  # random fc7 features tell 3 apart


@pytest.mark.parametrize(("arch", "suffix"), [("alexnet", ".pth"), ("resnet18", ".safetensors")])
def test_a_torchvision_state_dict_file_loads_and_reproduces_torchvisions_outputs(garments, tmp_path, arch, suffix):
    torch.manual_seed(7)
    reference = torchvision.models.get_model(arch).eval()
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    backbone = load_backbone(BackboneSpec(name=f"torchvision/{arch}", weights=str(path), image_size=SMALL_SIZE))
    assert backbone.weights.source == "file" and backbone.weights.sha256 == file_sha256(path)
    images = garments[0][:6]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    with torch.no_grad():  # torchvision's own normalisation of the same uint8 pixels
        expected = reference((images.float() / 255 - mean) / std)
        got = backbone.with_normalization(backbone.model)(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def no_torchvision_download(monkeypatch, tmp_path):
    """An empty torch.hub cache and download.pytorch.org unreachable (this machine may or may not be online)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("transferlab.models.backbones.TORCHVISION_HOST", ("127.0.0.1", 9))  # discard port: refused
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("weights", ["hub", "auto"])
def test_hub_without_internet_is_one_line_with_advice(no_torchvision_download, weights):
    with pytest.raises(TransferlabError) as err:
        load_backbone(BackboneSpec(name="torchvision/resnet18", weights=weights))
    message = str(err.value)
    assert message.startswith("torchvision/resnet18: hub weights need internet and 127.0.0.1 is unreachable")
    assert "weights: path/to/state_dict.pth" in message and "weights: random" in message and "\n" not in message


def test_offline_weights_for_torchvision_are_one_line_naming_the_registry():
    with pytest.raises(TransferlabError, match="no offline torchvision weights.*tf_efficientnet_lite0.*weights: hub"):
        load_backbone(BackboneSpec(name="torchvision/alexnet", weights="offline"))


def test_hub_weights_already_downloaded_load_without_internet(no_torchvision_download, garments):
    """The real hub path: torchvision's own loader reads the weights from torch.hub's cache."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    no_torchvision_download.mkdir(parents=True)
    torch.save(reference.state_dict(), no_torchvision_download / weights.url.rsplit("/", 1)[-1])
    backbone = load_backbone(BackboneSpec(name="torchvision/resnet18", weights="hub"))
    assert backbone.weights.source == "hub" and "ResNet18_Weights.IMAGENET1K_V1" in backbone.weights.detail
    assert backbone.data_config["input_size"] == (3, 224, 224) and backbone.data_config["crop_pct"] == 224 / 256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(x), reference(x))


def test_hub_weights_are_identified_by_their_tensors_not_their_tag(no_torchvision_download):
    """Other weights behind the same tag (a re-upload, a corrupted cache) get another hash, so the feature cache,
    the cell keys and load_run's check all see the change; the hash is computed once per file and kept beside it."""
    from transferlab.models.backbones import tensors_sha256

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    file = no_torchvision_download / weights.url.rsplit("/", 1)[-1]
    no_torchvision_download.mkdir(parents=True)
    hashes = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        state = torchvision.models.resnet18().state_dict()
        torch.save(state, file)
        os.utime(file, ns=(seed * 10**9, seed * 10**9))  # a new download: another mtime
        first = load_backbone(BackboneSpec(name="torchvision/resnet18", weights="hub")).weights
        assert first.sha256 == tensors_sha256(state)
        assert file.with_name(file.name + ".tensors-sha256").read_text().split()[1] == first.sha256
        again = load_backbone(BackboneSpec(name="torchvision/resnet18", weights="hub")).weights
        assert again == first
        hashes.append(first.sha256)
    assert hashes[0] != hashes[1]


def reproduced_outcomes(model):
    images, labels = decoded_split(model, "test")
    proba = model.probabilities(images)
    return image_outcomes(labels, predicted_labels(proba, multi_label=False, thresholds=model.thresholds),
                          multi_label=False)


@pytest.mark.slow  # ~15 s: the default suite is at its 10-minute budget
def test_resnet18_trains_extracts_and_its_saved_models_reload(image_folder, tmp_path):
    """finetune (last stage) and linear on a random-init torchvision ResNet-18, end to end; each saved model,
    loaded back from disk alone, makes the run's call on every test image."""
    backbone = {"name": "torchvision/resnet18", "weights": "random", "image_size": SMALL_SIZE}
    pools = open_pools(DataSpec(source=str(image_folder[0]), test=str(image_folder[1])))
    finetuned, linear = (execute_run(run_spec(image_folder, backbone, paradigm), tmp_path, pools=pools)
                         for paradigm in ({"name": "finetune", "epochs": 1, "from_stage": -1, "augment": "none"},
                                          {"name": "linear", "C": [1.0]}))
    layer4 = sum(p.numel() for p in torchvision.models.resnet18().layer4.parameters())
    assert finetuned["selected"]["trainable_parameters"] == layer4 + 512 * 3 + 3  # the last stage and the new head
    for record in (finetuned, linear):
        assert record["model"] and record["backbone"]["weights"]["source"] == "random"
        model = load_run(tmp_path / "runs" / f"{record['run_id']}.json")
        expected, got = decode_outcomes(record["test_outcomes"]), reproduced_outcomes(model)
        for key in expected:
            assert np.array_equal(got[key], expected[key]), (record["run_id"], key)


def test_scratch_rebuilds_a_torchvision_net_by_name(garments):
    """`scratch` (and deploy's TimmModel) build the architecture from its name, through `create_model`."""
    x, y, x_val, y_val = garments
    backbone = load_backbone(BackboneSpec(name="torchvision/resnet18", weights="random", image_size=SMALL_SIZE))
    paradigm = create_paradigm("scratch", {"epochs": 1, "augment": "none"}, n_classes=3, seed=0)
    paradigm.bind(TrainingContext(backbone, torch.device("cpu"))).fit(x, y, x_val, y_val)
    assert paradigm.model_.model.fc.out_features == 3
    assert create_model("torchvision/resnet18", 0).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_a_model_without_a_final_linear_layer_is_refused_in_one_line():
    with pytest.raises(TransferlabError, match="squeezenet1_0: its classifier is not a final Linear layer"):
        load_backbone(BackboneSpec(name="torchvision/squeezenet1_0", weights="random"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["alexnet", "resnet18"])
def test_onnx_engine_exports_torchvision_features_with_parity(arch):
    """The frozen-feature engine on CPU (ONNX Runtime; 15–25 s of export each on 2 cores)."""
    from transferlab.engines import make_encoder

    backbone = load_backbone(BackboneSpec(name=f"torchvision/{arch}", weights="random", image_size=SMALL_SIZE))
    _, engine = make_encoder(backbone.feature_model(), (3, SMALL_SIZE, SMALL_SIZE), torch.device("cpu"), "onnx",
                             cache_key=backbone.key)
    assert engine == "onnx"  # parity with PyTorch was checked on building it
