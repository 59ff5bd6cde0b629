"""Where transferlab keeps its caches."""

import os
from pathlib import Path


def cache_root() -> Path:
    """`$TRANSFERLAB_CACHE`, else `~/.cache/transferlab` (created on first use)."""
    root = Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab")
    root.mkdir(parents=True, exist_ok=True)
    return root
