"""The feature store: one backbone pass per image ever, verified on read, ONNX equal to PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlab.config import BackboneSpec, DataSpec
from transferlab.core.errors import TransferlabError
from transferlab.data import open_pools
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
