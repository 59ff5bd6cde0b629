"""Where transferlab keeps its caches, how it writes files (atomically) and how it shows names read from disk."""

import os
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$TRANSFERLAB_CACHE`, else `~/.cache/transferlab` (created on first use)."""
    root = Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def name_bytes(text: str) -> bytes:
    """UTF-8 bytes of a file or class name, where a name read from disk that was not UTF-8 (Python holds its
    bytes as surrogates, PEP 383) becomes those bytes again instead of an encoding error."""
    return text.encode("utf-8", "surrogateescape")


def printable(text: str) -> str:
    """`text` with the bytes of names that were not UTF-8 shown as \\xNN escapes, so that it can be shown,
    plotted and written as UTF-8 (the file itself is still opened by its own name)."""
    return name_bytes(text).decode("utf-8", "backslashreplace")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)`, fsync, then rename onto `path`: a run killed mid-write leaves the old file or none, never
    half; a write that fails removes its temporary file and leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """`atomic_write` of UTF-8 text (names that were not UTF-8 shown as escapes)."""
    return atomic_write(Path(path), lambda tmp: tmp.write_text(printable(text), encoding="utf-8"))
