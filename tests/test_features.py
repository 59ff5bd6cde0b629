"""The feature store: one backbone pass per image ever, verified on read, ONNX equal to PyTorch."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from transferlab import engines
from transferlab.config import BackboneSpec, DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import decode, open_pools
from transferlab.engines import make_encoder
from transferlab.features import BackboneEncoder, FeatureStore
from transferlab.models import load_backbone

from .conftest import SMALL_SIZE


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=SMALL_SIZE))


def encoder(backbone, engine="onnx"):
    return BackboneEncoder(backbone, torch.device("cpu"), engine)


def test_onnx_features_equal_pytorch_features_on_real_images(backbone, fashion_pools):
    indices = np.arange(24)
    onnx = FeatureStore(root=None).get(fashion_pools.test, indices, encoder(backbone, "onnx"))
    model = backbone.feature_model()
    transform = backbone.eval_transform()
    with torch.no_grad():
        eager = model(torch.stack([transform(fashion_pools.test.load(int(i))) for i in indices])).numpy()
    assert onnx.features.shape == (24, 1280)
    assert np.abs(onnx.features - eager).max() < 1e-4


def test_torch_engine_matches_onnx_engine(backbone):
    batch = torch.randint(0, 256, (4, 3, SMALL_SIZE, SMALL_SIZE), dtype=torch.uint8)
    onnx_fn, used_onnx = make_encoder(backbone.feature_model(), (3, SMALL_SIZE, SMALL_SIZE), torch.device("cpu"),
                                      "onnx", cache_key=backbone.key)
    torch_fn, used_torch = make_encoder(backbone.feature_model(), (3, SMALL_SIZE, SMALL_SIZE), torch.device("cpu"),
                                        "torch", cache_key=backbone.key)
    assert (used_onnx, used_torch) == ("onnx", "torch")
    assert np.abs(onnx_fn(batch) - torch_fn(batch)).max() < 1e-4


def test_second_request_is_served_from_cache_and_overlapping_requests_share_images(backbone, fashion_pools, tmp_path):
    store = FeatureStore(tmp_path)
    first = store.get(fashion_pools.train, np.arange(0, 40), encoder(backbone))
    again = store.get(fashion_pools.train, np.arange(0, 40), encoder(backbone))
    overlap = store.get(fashion_pools.train, np.arange(20, 60), encoder(backbone))
    assert (first.encoded, again.encoded, overlap.encoded) == (40, 0, 20)
    assert np.array_equal(first.features, again.features)
    assert np.array_equal(first.features[20:], overlap.features[:20])


def test_corrupt_chunk_is_rebuilt_not_trusted(backbone, fashion_pools, tmp_path):
    store = FeatureStore(tmp_path)
    good = store.get(fashion_pools.train, np.arange(16), encoder(backbone))
    (chunk,) = tmp_path.rglob("*.safetensors")
    raw = bytearray(chunk.read_bytes())
    raw[-64:] = bytes(64)  # flip the tail of the features
    chunk.write_bytes(bytes(raw))
    rebuilt = store.get(fashion_pools.train, np.arange(16), encoder(backbone))
    assert rebuilt.encoded == 16
    assert np.allclose(rebuilt.features, good.features, atol=1e-5)


def test_truncated_image_is_one_line_naming_the_file_or_skipped_on_request(backbone, copy_folder, tmp_path):
    victim = sorted(copy_folder.glob("Sneaker/*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])
    (copy_folder / "Sneaker" / "notes.jpg").write_text("not an image")
    source = open_pools(DataSpec(source=str(copy_folder))).train
    all_images = np.arange(len(source))
    with pytest.raises(TransferlabError, match=r"Sneaker/.*: cannot read image.*--skip-bad") as err:
        FeatureStore(tmp_path / "a").get(source, all_images, encoder(backbone))
    assert "\n" not in str(err.value)
    got = FeatureStore(tmp_path / "b").get(source, all_images, encoder(backbone), skip_bad=True)
    assert sorted(v.split(":")[0].rsplit("/", 1)[1] for v in got.bad.values()) == sorted(["notes.jpg", victim.name])
    assert np.isnan(got.features).any(axis=1).sum() == 2  # only the bad rows are missing
    assert np.isfinite(got.features[~np.isnan(got.features).any(axis=1)]).all()


def test_auto_on_cpu_measures_both_engines_keeps_the_faster_and_remembers_it(backbone, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "decision_file", lambda key: tmp_path / f"{key}.json")
    measured = []
    fake = {"onnx": 100.0, "torch": 300.0}  # as if PyTorch ran this network 3x faster on this machine

    def speeds(encoders, input_size):
        measured.append(sorted(encoders))
        return {name: fake[name] for name in encoders}

    monkeypatch.setattr(engines, "engine_speeds", speeds)
    batch = torch.zeros(2, 3, SMALL_SIZE, SMALL_SIZE, dtype=torch.uint8)
    first = encoder(backbone, "auto")
    first.encode(batch)
    assert first.engine == "torch" and measured == [["onnx", "torch"]]
    decision = json.loads((tmp_path / f"tf_efficientnet_lite0-3x{SMALL_SIZE}x{SMALL_SIZE}.json").read_text())
    assert decision["engine"] == "torch" and decision["images_per_second"] == fake
    untrained = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=SMALL_SIZE, weights="random",
                                           init_seed=0))
    second = BackboneEncoder(untrained, torch.device("cpu"), "auto")  # same architecture, other weights
    second.encode(batch)
    assert second.engine == "torch" and len(measured) == 1  # remembered, not measured again
    fake.update(onnx=500.0)
    for path in tmp_path.glob("*.json"):
        path.unlink()
    third = encoder(backbone, "auto")
    third.encode(batch)
    assert third.engine == "onnx" and len(measured) == 2


def test_engine_speeds_are_real_timings_of_the_same_batch(backbone):
    calls = []

    def slow(batch):
        calls.append(len(batch))
        time.sleep(0.02)
        return np.zeros((len(batch), 4), dtype=np.float32)

    def fast(batch):
        calls.append(len(batch))
        return np.zeros((len(batch), 4), dtype=np.float32)

    speeds = engines.engine_speeds({"slow": slow, "fast": fast}, (3, SMALL_SIZE, SMALL_SIZE))
    assert calls == [engines.MEASURE_BATCH] * 8  # a warm-up and three timed calls each
    assert speeds["slow"] <= engines.MEASURE_BATCH / 0.02 < speeds["fast"]


def test_decoding_uses_one_thread_per_allowed_core_and_keeps_batch_order(backbone, fashion_pools, monkeypatch):
    monkeypatch.setattr(decode.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    deterministic = backbone.eval_transform()
    random_view = v2.Compose([deterministic, v2.RandomHorizontalFlip()])
    assert decode.decoding_threads(deterministic) == 3
    assert decode.decoding_threads(random_view) == 1  # its draws must come in the same order every run
    indices = np.arange(40)
    seen = [good for _, good, _ in decode.decoded_batches(fashion_pools.test, indices, deterministic, 7, "t")]
    assert [i for batch in seen for i in batch] == list(range(40))  # three threads, batches still in order
    single = decode.decode_batch(fashion_pools.test, indices[:7], deterministic)[0]
    batches = decode.decoded_batches(fashion_pools.test, indices, deterministic, 7, "t")
    assert torch.equal(next(iter(batches))[0], single)
