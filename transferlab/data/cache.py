"""The decoded-image cache: each image is decoded and resized at a view once, ever; later epochs and runs read it.

Keyed by content, like the feature store:

    $TRANSFERLAB_CACHE/decoded/<view key>/<source fingerprint>/slots.npy   one row per image of the source
                                                               /bad.json    unreadable images → reason

`slots.npy` is a memory-mapped numpy array (the .npy format, so its header records the shape and numpy checks
it) with one row (filled, crc32, image C×H×W uint8) per image of the whole source. The file is sparse: a
60 000-image pool costs disk only for the rows decoded, and seeds drawing different subsets fill it image by image.
Flag, checksum and pixels share one row of one file, so a flag can never vouch for another file's pixels
(two processes rebuilding at once). Rows are written pixels first, flushed to disk, then marked filled: a
process killed (or a machine losing power) mid-write leaves an unmarked row, never a marked one with garbage;
the crc32 checked on every read catches what happens to the file afterwards. A file of the wrong shape or
size is deleted and rebuilt, never trusted.

The view key hashes `repr(view)` (what the runner keys records on) with the torchvision and PIL versions
(their resampling defines the pixels). Views whose output is not one fixed uint8 size, that draw at random,
or whose repr cannot describe them (lambdas) are not cached: decode_images then decodes as it always did.
Under torchrun only rank 0 writes; other ranks read what is there and decode the rest themselves.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import random
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
import torchvision
from PIL import Image

from ..core.distributed import is_main
from ..core.errors import TransferlabError
from ..core.paths import atomic_write, cache_root
from .sources import ImageSource

FORMAT = "decoded-v1"  # part of the key: a new row layout gets new folders instead of misreading old ones
SLOTS, BAD = "slots.npy", "bad.json"
# Rows are marked filled in groups, after one flush each: an msync per 64-image batch cost 0.17-0.35 s per 3 000
# images at 96 px, one per 1 024 rows 0.13-0.15 s (measured). A killed process loses at most this many decodes.
MARK_EVERY = 1024
PROBE_SIZES = ((61, 97), (97, 61))  # (width, height): two aspect ratios, so a view that keeps the input's shows it
PROBE_DRAWS = 8  # each of a random view's coin flips shows up in 8 draws with probability 1 - 2**-7
# A repr naming a Lambda or an object address says nothing of what the code does (two lambdas print alike).
_OPAQUE = re.compile(r"\bLambda\(|<lambda>|<function | at 0x[0-9a-fA-F]+")


def view_key(view) -> str | None:
    """A content key for what `view` does, or None when its repr does not describe it (lambdas, bare objects)."""
    text = repr(view)
    if _OPAQUE.search(text):
        return None
    versions = f"{torchvision.__version__}|{PIL.__version__}|{timm.__version__}"  # their resizing defines the pixels
    return hashlib.sha256(f"{FORMAT}|{versions}|{text}".encode()).hexdigest()[:20]


def fixed_shape(view) -> tuple[int, int, int] | None:
    """The C×H×W uint8 shape `view` gives every image, or None when that depends on the image or on chance.

    Found by running the view on two noise images of different aspect ratios (what geometry transforms depend
    on), the first one twice: surer than reading sizes out of arbitrary transform objects, and ~1 ms.
    """
    rng = np.random.default_rng(0)
    probes = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in PROBE_SIZES]
    with _rng_untouched():
        try:
            outputs = [view(probes[1])]
            for draw in range(PROBE_DRAWS):  # a coin-flip transform repeats itself half the time: try several
                torch.default_generator.manual_seed(draw)
                random.seed(draw)
                outputs.append(view(probes[0]))
        except Exception:  # noqa: BLE001 - a view that fails on a probe is just not cached; real images will tell
            return None
    first = outputs[1]
    if not all(isinstance(o, torch.Tensor) and o.dtype == torch.uint8 and o.shape == first.shape for o in outputs):
        return None
    if first.ndim != 3 or not all(torch.equal(first, o) for o in outputs[2:]):
        return None  # not an image, or random: caching would freeze one draw of it
    return tuple(first.shape)


@contextmanager
def _rng_untouched() -> Iterator[None]:
    """Probing a random view must not shift the draws that training makes afterwards."""
    state = random.getstate()  # timm's random crops draw from Python's RNG, torchvision's from torch's
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(state)


def slot_dtype(shape: tuple[int, int, int]) -> np.dtype:
    return np.dtype([("filled", "u1"), ("crc32", "<u4"), ("image", "u1", shape)])


class DecodedCache:
    """One source's decoded images at one view. `open` gives None when the view cannot be cached."""

    def __init__(self, folder: Path, slots: np.ndarray, writable: bool):
        self.folder, self.slots, self.writable = folder, slots, writable
        self.shape: tuple[int, int, int] = slots.dtype["image"].shape
        self.bad = _read_bad(folder / BAD, len(slots))  # source index → "path: reason"
        self._unmarked: list[np.ndarray] = []  # rows written but not yet flushed and marked

    @classmethod
    def open(cls, source: ImageSource, view, *, root: Path | None = None) -> DecodedCache | None:
        key, shape = view_key(view), fixed_shape(view)
        if key is None or shape is None:
            return None
        folder = Path(root or cache_root() / "decoded") / key / source.fingerprint
        path, dtype, writable = folder / SLOTS, slot_dtype(shape), is_main()
        slots = _open_slots(path, len(source), dtype, writable)
        if slots is None and writable:
            _create_slots(path, len(source), dtype)
            slots = _open_slots(path, len(source), dtype, writable)
        return cls(folder, slots, writable) if slots is not None else None  # other ranks never create one

    def lookup(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """The images of `indices` that are filled and still match their crc32; the rest must be decoded."""
        indices = np.asarray(indices, dtype=np.int64)
        marked = indices[self.slots["filled"][indices] == 1]
        # Views into the mapping, not copies: the caller's np.stack is then the only copy of a big request.
        images, crcs = self.slots["image"], self.slots["crc32"][marked]
        return {int(i): images[i] for i, crc in zip(marked, crcs, strict=True) if zlib.crc32(images[i]) == crc}

    def put(self, indices: list[int], images: np.ndarray) -> None:
        """Store freshly decoded images (N×C×H×W uint8) in their rows."""
        if images.shape[1:] != self.shape:
            raise TransferlabError(f"decode: the view gave a {'×'.join(map(str, images.shape[1:]))} image after "
                                   f"{'×'.join(map(str, self.shape))} ones; give it a fixed output size "
                                   "(e.g. Resize((h, w)) or CenterCrop)")
        if not self.writable:
            return
        rows = np.asarray(indices, dtype=np.int64)
        self.slots["image"][rows] = images
        self.slots["crc32"][rows] = [zlib.crc32(image) for image in images]
        self._unmarked.append(rows)
        if sum(map(len, self._unmarked)) >= MARK_EVERY:
            self.commit()

    def commit(self) -> None:
        """Mark the rows put so far as filled, once their pixels are on disk."""
        if not self._unmarked:
            return
        # The pixels reach the disk before the flags that vouch for them are even written. The flags are synced
        # by the next commit or by the kernel: one lost in a power cut only costs a decode again.
        self._flush()
        self.slots["filled"][np.concatenate(self._unmarked)] = 1
        self._unmarked.clear()

    def _flush(self) -> None:
        self.slots.base.flush()  # msync of the mapping (MS_SYNC)

    def remember_bad(self, bad: dict[int, str]) -> None:
        """Unreadable images, with their reasons, so later calls report them without decoding again."""
        if not bad or not self.writable:
            return
        self.bad.update(bad)
        text = json.dumps({str(k): v for k, v in sorted(self.bad.items())}, indent=0)
        atomic_write(self.folder / BAD, lambda tmp: tmp.write_text(text))


def _open_slots(path: Path, n: int, dtype: np.dtype, writable: bool) -> np.ndarray | None:
    """The rows of the slots file if it is whole and of this shape; a damaged one is deleted, never trusted."""
    try:
        header = np.load(path, mmap_mode="r")  # numpy parses the .npy header; "r+" would extend a truncated file
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        header = None  # not a .npy file, a damaged header, or shorter than its header says
    whole = (isinstance(header, np.memmap) and header.shape == (n,) and header.dtype == dtype
             and path.stat().st_size == header.offset + header.nbytes)
    if whole:
        return _map_rows(path, header, writable)
    if writable:  # the writer (rank 0) clears it; other ranks just decode without it
        path.unlink(missing_ok=True)
    return None


def _map_rows(path: Path, header: np.memmap, writable: bool) -> np.ndarray:
    # Our own mapping rather than numpy's memmap, which cannot be told that access is random: without MADV_RANDOM
    # the kernel reads ahead around every first touch of a sparse page, and 3 000 scattered rows of a fresh file
    # took 0.6-3 s instead of 15 ms (measured, ext4).
    with open(path, "r+b" if writable else "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    if hasattr(mapping, "madvise"):  # not on Windows
        mapping.madvise(mmap.MADV_RANDOM)
    return np.ndarray(header.shape, header.dtype, buffer=mapping, offset=header.offset)


def _create_slots(path: Path, n: int, dtype: np.dtype) -> None:
    # Built under a temporary name and renamed into place, so no process opens a half-written header. numpy
    # writes only the header and the last byte: the file is sparse until rows are filled.
    atomic_write(path, lambda tmp: np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n,)))


def _read_bad(path: Path, n: int) -> dict[int, str]:
    try:
        stored = json.loads(path.read_text())
        return {int(k): str(v) for k, v in stored.items() if 0 <= int(k) < n}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # missing or damaged: those images are decoded again and fail again; nothing is lost
