"""`transferlab cache info | clear`: what the cache root holds, and trimming it by kind and age."""

from __future__ import annotations

import os
import time

import pytest

from transferlab.core.caches import KINDS, cache_usage, clear_cache
from transferlab.core.errors import TransferlabError

from .test_cli import HEAVY, modules_loaded_by, one_error_line, transferlab

DAY = 86_400


def write(path, size: int, age_days: float = 0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def root(tmp_path):
    write(tmp_path / "features" / "lite0" / "src" / "a.safetensors", 1000, age_days=30)
    write(tmp_path / "features" / "lite0" / "src" / "b.safetensors", 500, age_days=1)
    write(tmp_path / "onnx" / "lite0.onnx", 2000, age_days=30)
    write(tmp_path / "engines" / "m" / "lite0.json", 10)
    write(tmp_path / "not-ours" / "keep.txt", 5, age_days=99)  # only the kinds transferlab writes are touched
    return tmp_path


def test_usage_counts_files_and_bytes_per_kind(root):
    usage = {u.kind: u for u in cache_usage(root)}
    assert list(usage) == list(KINDS)
    assert (usage["features"].files, usage["features"].bytes) == (2, 1500)
    assert (usage["onnx"].files, usage["onnx"].bytes, usage["decoded"].files) == (1, 2000, 0)
    assert usage["decoded"].newest is None and usage["engines"].newest > usage["onnx"].newest


def test_clear_by_age_keeps_recent_files_and_removes_emptied_folders(root):
    assert clear_cache(older_than_days=7, root=root) == (2, 3000)
    assert not (root / "onnx").exists()  # emptied, so gone
    assert (root / "features" / "lite0" / "src" / "b.safetensors").is_file()
    assert (root / "engines" / "m" / "lite0.json").is_file() and (root / "not-ours" / "keep.txt").is_file()


def test_clear_one_kind_whatever_its_age(root):
    assert clear_cache(["features"], root=root) == (2, 1500)
    assert not (root / "features").exists() and (root / "onnx" / "lite0.onnx").is_file()


@pytest.mark.parametrize(("kinds", "days", "message"), [(["feature"], None, "cache clear feature: not a cache kind"),
                                                        (None, -1, "--older-than -1")])
def test_bad_options_are_one_line(root, kinds, days, message):
    with pytest.raises(TransferlabError, match=message):
        clear_cache(kinds, days, root=root)
    assert cache_usage(root)[0].files == 2  # nothing removed


def test_the_commands_show_and_trim_the_cache_without_importing_torch(root, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(root))
    info = transferlab("cache", "info")
    assert info.returncode == 0, info.stderr
    assert all(kind in info.stdout for kind in KINDS) and "1.5 kB" in info.stdout  # features' two files
    cleared = transferlab("cache", "clear", "onnx", "features", "--older-than", "7")
    assert cleared.returncode == 0 and "removed 2 files, 3.0 kB" in cleared.stdout
    assert "not a cache kind" in one_error_line(transferlab("cache", "clear", "everything"))
    loaded, _ = modules_loaded_by("cache", "info")
    assert not set(loaded) & set(HEAVY), loaded
