"""What transferlab keeps under its cache root, and trimming it: `transferlab cache info | clear`.

Everything here is derived and rebuilt on demand (a removed feature chunk is encoded again, a removed export
exported again), so clearing only costs time. A process reading a file while another clears it sees the file
disappear and rebuilds it, as after any stale or corrupt cache entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TransferlabError
from .paths import cache_root

KINDS = {  # folder under the cache root → what it holds
    "features": "frozen-backbone features, per backbone and image source",
    "decoded": "decoded images at a backbone's view, for training",
    "onnx": "ONNX exports of frozen backbones (the CPU engine)",
    "engines": "which engine ran each architecture faster on this machine",
    "torchvision": "datasets downloaded through torchvision",
}
DAY = 86_400.0


@dataclass
class CacheUse:
    kind: str
    path: Path
    files: int
    bytes: int
    newest: float | None  # mtime of the newest file, None when empty


def cache_usage(root: Path | None = None) -> list[CacheUse]:
    """Size and file count of each kind, in KINDS order (kinds never written show as empty)."""
    root = root or cache_root()
    usage = []
    for kind in KINDS:
        files = _files(root / kind)
        stats = [f.stat() for f in files]
        usage.append(CacheUse(kind, root / kind, len(files), sum(s.st_size for s in stats),
                              max((s.st_mtime for s in stats), default=None)))
    return usage


def clear_cache(kinds: list[str] | None = None, older_than_days: float | None = None,
                root: Path | None = None) -> tuple[int, int]:
    """Remove the files of `kinds` (default: all) last written more than `older_than_days` ago (default: all
    of them), then the folders left empty; returns (files removed, bytes freed)."""
    unknown = [k for k in kinds or [] if k not in KINDS]
    if unknown:
        raise TransferlabError(f"cache clear {unknown[0]}: not a cache kind; choose from {', '.join(KINDS)}")
    if older_than_days is not None and older_than_days < 0:
        raise TransferlabError(f"--older-than {older_than_days}: give a number of days, 0 or more")
    root = root or cache_root()
    cutoff = None if older_than_days is None else time.time() - older_than_days * DAY
    removed = freed = 0
    for kind in kinds or list(KINDS):
        for path in _files(root / kind):
            stat = path.stat()
            if cutoff is None or stat.st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed, freed = removed + 1, freed + stat.st_size
        _remove_empty_folders(root / kind)
    return removed, freed


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def _remove_empty_folders(folder: Path) -> None:
    """Deepest first, the kind's own folder included."""
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()
