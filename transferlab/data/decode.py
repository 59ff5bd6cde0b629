"""Decoding images in a thread beside the model: shared by the feature store and the training paradigms."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from ..core.errors import TransferlabError
from ..core.progress import progress_bar
from .cache import DecodedCache, fixed_shape
from .sources import ImageSource, UnreadableImage

Decoded = tuple[torch.Tensor | None, list[int], dict[int, str]]  # batch of the good images, their indices, bad ones


def decode_batch(source: ImageSource, indices: np.ndarray, transform) -> Decoded:
    """Decode and transform a batch; unreadable images are reported, not raised."""
    tensors, good, bad = [], [], {}
    for index in map(int, indices):
        try:
            tensors.append(transform(source.load(index)))
            good.append(index)
        except UnreadableImage as exc:
            bad[index] = str(exc)
    return (torch.stack(tensors) if tensors else None), good, bad


def prefetched(batches: list[np.ndarray], decode: Callable, threads: int = 1) -> Iterator:
    """`decode(batch)` for each batch, in order, run ahead in `threads` threads so decoding overlaps the encoder.

    Threads, not DataLoader worker processes: PIL and ONNX Runtime release the GIL, and once images
    reach the encoder as uint8 a decode costs ~0.7 ms, less than shipping the tensor between processes
    (measured on 2 cores: 155 img/s with one thread, 130 with one worker process).
    """
    lookahead = threads + 2  # every thread busy, and one batch ready when the encoder asks
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = deque(pool.submit(decode, b) for b in batches[:lookahead])
        for batch in batches[lookahead:]:
            yield pending.popleft().result()
            pending.append(pool.submit(decode, batch))
        while pending:
            yield pending.popleft().result()


def bad_image_error(bad: dict[int, str]) -> TransferlabError:
    return TransferlabError(f"{next(iter(bad.values()))}; fix or delete the file, or pass --skip-bad "
                            "(skip_bad: true) to skip unreadable images")


def decode_images(source: ImageSource, indices: np.ndarray, transform, *, batch_size: int = 64,
                  skip_bad: bool = False, label: str = "decode",
                  cache: bool = True) -> tuple[torch.Tensor, np.ndarray, dict[int, str]]:
    """All images of `indices` as one uint8 tensor (for training), with the indices kept and the unreadable ones.

    Through the decoded-image cache (`cache.py`) unless `cache=False` or the view cannot be cached: only images
    never decoded at this view before are decoded, and only they show a progress bar.
    """
    store = DecodedCache.open(source, transform) if cache else None
    wanted = list(dict.fromkeys(map(int, indices)))  # each image once, in request order
    images = store.lookup(np.asarray(wanted, dtype=np.int64)) if store is not None else {}
    known_bad = store.bad if store is not None else {}
    bad = {i: known_bad[i] for i in wanted if i in known_bad}
    if bad and not skip_bad:
        raise bad_image_error(bad)
    missing = np.asarray([i for i in wanted if i not in images and i not in bad], dtype=np.int64)
    try:
        for batch, good, batch_bad in decoded_batches(source, missing, transform, batch_size, label):
            if store is not None:
                store.remember_bad(batch_bad)  # before raising: a rerun with skip_bad then decodes nothing
            if batch_bad and not skip_bad:
                raise bad_image_error(batch_bad)
            bad.update(batch_bad)
            if batch is not None:
                pixels = batch.numpy()
                if store is not None:
                    store.put(good, pixels)
                images.update(zip(good, pixels, strict=True))
    finally:
        if store is not None:
            store.commit()  # also on an error: what was decoded before it is kept
    kept = [i for i in map(int, indices) if i not in bad]
    if not kept:
        raise TransferlabError(f"{source.name}: no readable image among {len(indices)}; check the files")
    return torch.from_numpy(np.stack([images[i] for i in kept])), np.asarray(kept, dtype=np.int64), bad


def decoding_threads(transform) -> int:
    """One decoding thread per core this process may use (its affinity, not the machine's count: a container or
    `taskset` gives fewer), but a single one for a view that draws at random, whose draws must come in the same
    order on every run (`fixed_shape` is None for those)."""
    return len(os.sched_getaffinity(0)) if fixed_shape(transform) is not None else 1


def decoded_batches(source: ImageSource, indices: np.ndarray, transform, batch_size: int,
                     label: str) -> Iterator[Decoded]:
    """`decode_batch` over `indices` in decoding threads, in order, with a progress bar (none when there is
    nothing)."""
    if not len(indices):
        return
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    decode = partial(decode_batch, source, transform=transform)
    with progress_bar(label, total=len(indices), unit="img") as advance:
        for batch, good, bad in prefetched(batches, decode, threads=decoding_threads(transform)):
            yield batch, good, bad
            advance(len(good) + len(bad))
