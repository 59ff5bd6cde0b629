"""The decoded-image cache (data/cache.py) behind decode_images, on real Fashion-MNIST images.

What is observed is what matters: whether the source's `load` ran (= an image was decoded), and whether the
pixels returned are the ones a plain decode gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from transferlab.core.errors import TransferlabError
from transferlab.data import FolderSource
from transferlab.data import cache as cache_module
from transferlab.data.cache import DecodedCache, fixed_shape, view_key
from transferlab.data.decode import decode_images

VIEW = v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True)])


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test starts from an empty cache (the session's shared one would hold other tests' images)."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def pool(fashion_pools):
    return fashion_pools.train  # 60 000 images: the slots file covers all, only requested ones are decoded


def count_loads(source, monkeypatch) -> list[int]:
    """The indices `source.load` is called with from now on (each call is one decode)."""
    calls, load = [], source.load
    monkeypatch.setattr(source, "load", lambda index: calls.append(index) or load(index))
    return calls


def plain(source, indices, view=VIEW, **kwargs):
    return decode_images(source, indices, view, cache=False, **kwargs)


def slots_file(cache_dir):
    (path,) = (cache_dir / "decoded").glob("*/*/slots.npy")
    return path


def test_a_second_decode_of_the_same_images_decodes_nothing(pool, monkeypatch, fresh_cache):
    monkeypatch.setattr(cache_module, "MARK_EVERY", 100)  # rows are marked in groups mid-call too, not only at the end
    indices = np.random.default_rng(0).choice(len(pool), 300, replace=False)
    calls = count_loads(pool, monkeypatch)
    first, kept, bad = decode_images(pool, indices, VIEW)
    assert sorted(calls) == sorted(indices.tolist()) and bad == {}
    calls.clear()
    again, kept_again, _ = decode_images(pool, indices, VIEW)
    assert calls == []
    assert torch.equal(again, first) and np.array_equal(kept_again, kept) and np.array_equal(kept, indices)
    assert torch.equal(first, plain(pool, indices)[0])
    path = slots_file(fresh_cache)
    slots = np.load(path, mmap_mode="r")
    assert slots.shape == (len(pool),) and int(slots["filled"].sum()) == 300
    assert path.stat().st_blocks * 512 < path.stat().st_size / 20  # sparse: only decoded rows take disk


def test_a_different_subset_decodes_only_the_new_images(pool, monkeypatch):
    first, second = np.arange(0, 200), np.arange(100, 400)[::-1]  # half shared; another order
    decode_images(pool, first, VIEW)
    calls = count_loads(pool, monkeypatch)
    got, kept, _ = decode_images(pool, second, VIEW)
    assert sorted(calls) == list(range(200, 400))
    assert np.array_equal(kept, second) and torch.equal(got, plain(pool, second)[0])


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def scribble_on_pixels(path):
    """Garbage over filled rows' pixels, flags and checksums left as they were (what bit rot looks like)."""
    slots = np.load(path, mmap_mode="r+")
    filled = np.flatnonzero(slots["filled"])[:20]
    slots["image"][filled] = np.random.default_rng(1).integers(0, 256, (len(filled), *slots.dtype["image"].shape))
    slots.flush()


def wrong_shape(path):
    np.save(path, np.zeros(10, dtype=cache_module.slot_dtype((3, 32, 32))))


@pytest.mark.parametrize("damage", [truncate, scribble_on_pixels, wrong_shape])
def test_a_damaged_cache_is_rebuilt_not_trusted(pool, monkeypatch, fresh_cache, damage):
    indices = np.arange(0, 300, 3)
    truth = plain(pool, indices)[0]
    decode_images(pool, indices, VIEW)
    damage(slots_file(fresh_cache))
    calls = count_loads(pool, monkeypatch)
    got, _, _ = decode_images(pool, indices, VIEW)
    assert torch.equal(got, truth)
    assert calls  # what was damaged was decoded again
    if damage is scribble_on_pixels:
        assert len(calls) == 20  # only the damaged rows: the crc32 finds them one by one
    calls.clear()
    assert torch.equal(decode_images(pool, indices, VIEW)[0], truth) and calls == []  # and stored again


def test_a_crash_between_pixels_and_flag_leaves_nothing_marked(pool, monkeypatch, fresh_cache):
    """The flag is written only after the pixels are flushed: a process dying at that flush marks nothing."""
    def die(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(DecodedCache, "_flush", die)
        with pytest.raises(KeyboardInterrupt):
            decode_images(pool, np.arange(64), VIEW)
    assert int(np.load(slots_file(fresh_cache), mmap_mode="r")["filled"].sum()) == 0
    calls = count_loads(pool, monkeypatch)
    got, _, _ = decode_images(pool, np.arange(64), VIEW)
    assert sorted(calls) == list(range(64)) and torch.equal(got, plain(pool, np.arange(64))[0])


def test_unreadable_images_are_remembered_and_reported_as_before(copy_folder, monkeypatch):
    source = FolderSource(copy_folder)
    broken = [3, 50]
    for index in broken:
        source.paths[index].write_bytes(b"not an image")
    source = FolderSource(copy_folder)  # listed after the damage: the fingerprint covers it
    everything = np.arange(len(source))
    with pytest.raises(TransferlabError, match="skip-bad"):
        decode_images(source, everything, VIEW)
    x, kept, bad = decode_images(source, everything, VIEW, skip_bad=True)
    plain_x, plain_kept, plain_bad = plain(source, everything, skip_bad=True)
    assert sorted(bad) == broken and bad == plain_bad and str(source.paths[3]) in bad[3]
    assert np.array_equal(kept, plain_kept) and torch.equal(x, plain_x) and len(kept) == len(source) - 2

    calls = count_loads(source, monkeypatch)
    assert decode_images(source, everything, VIEW, skip_bad=True)[2] == bad
    with pytest.raises(TransferlabError, match="skip-bad"):
        decode_images(source, everything, VIEW)
    assert calls == []  # known bad images are reported from the cache, not decoded again


@pytest.mark.parametrize("view", [
    v2.Compose([v2.PILToTensor(), v2.Resize(40, antialias=True)]),  # keeps the aspect ratio: size varies
    v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(32, antialias=True)]),  # random
    v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True), v2.ToDtype(torch.float32, scale=True)]),
    v2.Compose([v2.PILToTensor(), v2.Resize((32, 32)), v2.Lambda(lambda x: x.flip(-1))]),  # reprs of lambdas
    # cannot tell two apart
], ids=["aspect", "random", "float", "lambda"])
def test_a_view_that_cannot_be_cached_is_decoded_without_cache(pool, monkeypatch, fresh_cache, view):
    assert DecodedCache.open(pool, view) is None
    calls = count_loads(pool, monkeypatch)
    torch.manual_seed(0)
    first = decode_images(pool, np.arange(50), view)[0]
    torch.manual_seed(0)
    assert torch.equal(decode_images(pool, np.arange(50), view)[0], first)
    assert len(calls) == 100 and not (fresh_cache / "decoded").exists()


def test_the_probe_reads_fixed_geometry_and_leaves_the_rng_alone():
    assert fixed_shape(VIEW) == (3, 32, 32)
    assert fixed_shape(v2.Compose([v2.PILToTensor(), v2.Resize(40), v2.CenterCrop(36)])) == (3, 36, 36)
    state = torch.get_rng_state()
    assert fixed_shape(v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(32)])) is None
    for seed in range(4):  # a coin flip repeats itself half the time; the probe must still see it
        torch.manual_seed(seed)
        assert fixed_shape(v2.Compose([v2.PILToTensor(), v2.Resize((32, 32)), v2.RandomHorizontalFlip()])) is None
    torch.set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), state)
    assert view_key(VIEW) == view_key(v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True)]))
    assert view_key(VIEW) != view_key(v2.Compose([v2.PILToTensor(), v2.Resize((33, 33), antialias=True)]))


def test_only_rank_0_writes(pool, monkeypatch, fresh_cache):
    """Under torchrun other ranks read what rank 0 stored and decode the rest themselves, writing nothing."""
    decode_images(pool, np.arange(100), VIEW)  # rank 0's earlier work
    before = slots_file(fresh_cache).read_bytes()
    monkeypatch.setattr(cache_module, "is_main", lambda: False)
    calls = count_loads(pool, monkeypatch)
    got, _, _ = decode_images(pool, np.arange(50, 150), VIEW)
    assert sorted(calls) == list(range(100, 150)) and torch.equal(got, plain(pool, np.arange(50, 150))[0])
    assert slots_file(fresh_cache).read_bytes() == before
    other = v2.Compose([v2.PILToTensor(), v2.Resize((24, 24), antialias=True)])
    decode_images(pool, np.arange(10), other)  # nothing cached at this view: decoded, and no file created
    assert len(list((fresh_cache / "decoded").glob("*/*/slots.npy"))) == 1
