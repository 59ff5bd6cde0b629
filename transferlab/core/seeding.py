"""Every random stream of a run comes from its seed, and none leaks into anyone else's.

`derived_seed(seed, "purpose", ...)` gives an independent seed for a named stream (numpy's SeedSequence mixes
the parts); `seeded_generator` is a torch.Generator on such a stream; `torch_seeded(seed)` runs a block on
torch's global RNG seeded with `seed` (what dropout, timm's init and torchvision's random transforms draw from)
and puts the caller's RNG state back afterwards, so building a head or fitting a paradigm never reseeds the
process as a side effect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derived_seed(seed: int, *stream: str | int) -> int:
    """An independent seed for a named random stream of a run, e.g. derived_seed(seed, "sampler", epoch)."""
    words = [seed % 2**64, *(int.from_bytes(s.encode(), "little") if isinstance(s, str) else s for s in stream)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seeded_generator(seed: int, *stream: str | int) -> torch.Generator:
    """A CPU torch.Generator on `seed` itself, or on the stream `derived_seed(seed, *stream)` names."""
    return torch.Generator().manual_seed(derived_seed(seed, *stream) if stream else seed)


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG (CPU and every CUDA device) seeded with `seed` inside the block, restored after it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def deterministic_cuda(enabled: bool, device_type: str) -> Iterator[None]:
    """On CUDA with `enabled`: torch's deterministic algorithms (warn-only, for the few ops that have no
    deterministic kernel), cuDNN's deterministic mode without autotuning, and cuBLAS's fixed workspace, all
    restored after the block. CPU training is deterministic without them."""
    if not (enabled and device_type == "cuda"):
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
