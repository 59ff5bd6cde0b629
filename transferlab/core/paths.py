"""Where transferlab keeps its caches."""

import os
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$TRANSFERLAB_CACHE`, else `~/.cache/transferlab` (created on first use)."""
    root = Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` then rename onto `path`: a run killed mid-write leaves the old file or none, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path
