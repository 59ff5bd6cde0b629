"""Every random stream of a run comes from its seed, and none leaks into anyone else's.

`derived_seed(seed, "purpose", ...)` gives an independent seed for a named stream (numpy's SeedSequence mixes
the parts); `seeded_generator` is a torch.Generator on such a stream; `torch_seeded(seed)` runs a block on
torch's global RNG seeded with `seed` (what dropout, timm's init and torchvision's random transforms draw from)
and puts the caller's RNG state back afterwards, so building a head or fitting a paradigm never reseeds the
process as a side effect.
"""

from __future__ import annotations

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
