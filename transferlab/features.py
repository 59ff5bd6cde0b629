"""The feature store: each image goes through a frozen encoder once, ever, and every paradigm reuses it.

Features are cached per image, not per split: seeds that draw different training subsets from the same
pool share every image they have in common. Layout:

    $TRANSFERLAB_CACHE/features/<encoder key>/<source fingerprint>/<chunk>.safetensors

A chunk holds `indices` (positions in the source), `features` (float32) and `bad` (indices whose image
could not be decoded, with the reasons in its metadata), plus a sha256 of its tensors checked on every
read: a stale or corrupt chunk is deleted and its images encoded again, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from torchvision.transforms import v2

from .core.distributed import is_main, merged_across_ranks, rank, world_size
from .core.paths import atomic_write, cache_root
from .core.progress import log
from .data.decode import bad_image_error, decoded_batches
from .data.sources import ImageSource
from .engines import EncodeFn, make_encoder, select_engine
from .models.backbones import Backbone


class Encoder:
    """What turns images into feature vectors. `key` must change whenever the features would."""

    key: str
    transform: Callable[[Image.Image], torch.Tensor]  # runs in the decoding thread

    def encode(self, batch: torch.Tensor) -> np.ndarray:  # N×... → N×D float32
        raise NotImplementedError


class PixelEncoder(Encoder):
    """Raw pixels, resized and scaled to [0, 1]: the no-transfer reference."""

    def __init__(self, size: int, grayscale: bool):
        self.key = f"pixels-{size}-{'L' if grayscale else 'RGB'}"
        steps = [v2.Grayscale()] if grayscale else []
        self.transform = v2.Compose([v2.PILToTensor(), *steps, v2.Resize((size, size), antialias=True),
                                     v2.ToDtype(torch.float32, scale=True)])

    def encode(self, batch: torch.Tensor) -> np.ndarray:
        return batch.flatten(1).numpy()


class BackboneEncoder(Encoder):
    """Pooled features (or feature maps) of a frozen backbone; the engine is built on first use, so a cache hit
    costs nothing."""

    def __init__(self, backbone: Backbone, device: torch.device, engine: str, feature_map: bool = False):
        self.backbone, self.device, self.requested_engine = backbone, device, engine
        self.feature_map = feature_map  # the last feature map, unpooled (a head with a pool of its own)
        self.key = backbone.key + ("-map" if feature_map else "")
        self.transform = backbone.eval_transform()
        self.engine: str | None = None  # the engine actually used, once built
        self._encode: EncodeFn | None = None

    def encode(self, batch: torch.Tensor) -> np.ndarray:
        if self._encode is None:
            engine = select_engine(self.requested_engine, self.device)
            input_size = tuple(self.backbone.data_config["input_size"])
            # the engines' speed depends on the architecture and input, not on the weights: the untrained
            # reference row and a fine-tuned copy share the pretrained network's measured choice
            speed_key = f"{self.backbone.name}-{'x'.join(map(str, input_size))}" + ("-map" if self.feature_map else "")
            self._encode, self.engine = make_encoder(self.backbone.feature_model(self.feature_map), input_size,
                                                     self.device, engine, cache_key=self.key, speed_key=speed_key)
        return self._encode(batch)


@dataclass
class Extraction:
    """Features of the requested indices, in request order, and what it cost."""

    features: np.ndarray
    bad: dict[int, str] = field(default_factory=dict)  # source index → "path: reason" (rows are NaN)
    encoded: int = 0  # images that went through the encoder in this call (0 = all from cache)


class FeatureStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "features"

    def get(self, source: ImageSource, indices: np.ndarray, encoder: Encoder, *, batch_size: int = 32,
            skip_bad: bool = False, label: str = "features") -> Extraction:
        folder = self.root / encoder.key / source.fingerprint
        rows, bad = self._read(folder)
        missing = self._missing(indices, rows, bad)
        log.debug(f"{label} · {encoder.key}: {len(indices) - len(missing)} of {len(indices)} images' features "
                  "cached" + (f", encoding {len(missing)}" if len(missing) else ""))
        if len(missing):
            # Workers of a study on many machines may share this cache: one at a time encodes into a folder, and
            # the next, once in, reads what the first wrote and encodes only what is still missing. (Not under
            # torchrun: its ranks encode their shares together, and rank 0 alone writes.)
            alone = world_size() == 1
            with FileLock(self._lock_path(folder)) if alone else contextlib.nullcontext():
                if alone:
                    rows, bad = self._read(folder)
                    missing = self._missing(indices, rows, bad)
                self._encode_missing(source, missing, encoder, folder, rows, bad, batch_size, skip_bad, label)
        wanted_bad = {int(i): bad[int(i)] for i in indices if int(i) in bad}
        if wanted_bad and not skip_bad:
            raise bad_image_error(wanted_bad)
        dim = len(next(iter(rows.values()))) if rows else 0
        nan_row = np.full(dim, np.nan, dtype=np.float32)
        features = np.stack([rows.get(int(i), nan_row) for i in indices]) if len(indices) else np.zeros((0, dim))
        return Extraction(features.astype(np.float32), wanted_bad, encoded=len(missing))

    @staticmethod
    def _missing(indices: np.ndarray, rows: dict, bad: dict) -> np.ndarray:
        return np.array(sorted(set(map(int, indices)) - rows.keys() - bad.keys()), dtype=np.int64)

    @staticmethod
    def _lock_path(folder: Path) -> Path:
        """Beside the folder, which then holds chunks alone."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder.parent / f"{folder.name}.lock"

    def _encode_missing(self, source: ImageSource, missing: np.ndarray, encoder: Encoder, folder: Path,
                        rows: dict, bad: dict, batch_size: int, skip_bad: bool, label: str) -> None:
        if len(missing):
            # Under torchrun each rank encodes its share and every rank gets all of them. A rank must not stop
            # alone at a bad image (the others would wait for it forever), so the decision waits until after.
            shared = world_size() > 1
            new_rows, new_bad = _encode(source, missing[rank()::world_size()], encoder, batch_size,
                                        skip_bad or shared, label)
            if shared:
                new_rows, new_bad = merged_across_ranks(new_rows), merged_across_ranks(new_bad)
            if is_main():
                self._write(folder, new_rows, new_bad)
            rows.update(new_rows)
            bad.update(new_bad)

    def _read(self, folder: Path) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        rows: dict[int, np.ndarray] = {}
        bad: dict[int, str] = {}
        for chunk in sorted(folder.glob("*.safetensors")):
            try:
                tensors, meta = _load_chunk(chunk)
            except (OSError, ValueError, KeyError, SafetensorError):
                chunk.unlink(missing_ok=True)  # stale or corrupt: recompute, never trust
                continue
            rows.update(zip(tensors["indices"].tolist(), tensors["features"], strict=True))
            bad.update({int(k): v for k, v in json.loads(meta["bad"]).items()})
        return rows, bad

    def _write(self, folder: Path, rows: dict[int, np.ndarray], bad: dict[int, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        indices = np.array(sorted(rows), dtype=np.int64)
        features = np.stack([rows[i] for i in indices]) if len(indices) else np.zeros((0, 0))
        bad_indices = np.array(sorted(bad), dtype=np.int64)
        tensors = {"indices": indices, "features": features.astype(np.float32), "bad": bad_indices}
        meta = {"sha256": _digest(tensors), "bad": json.dumps({str(k): v for k, v in bad.items()})}
        name = hashlib.sha256(indices.tobytes() + tensors["bad"].tobytes()).hexdigest()[:16]
        atomic_write(folder / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _load_chunk(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    if meta.get("sha256") != _digest(tensors):
        raise ValueError(f"{path}: checksum mismatch")
    return tensors, meta


def _digest(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + str(tensors[name].shape).encode() + np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- the extraction loop


def _encode(source: ImageSource, indices: np.ndarray, encoder: Encoder, batch_size: int, skip_bad: bool,
            label: str) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    rows: dict[int, np.ndarray] = {}
    bad: dict[int, str] = {}
    for batch, positions, batch_bad in decoded_batches(source, indices, encoder.transform, batch_size, label):
        if batch_bad and not skip_bad:
            raise bad_image_error(batch_bad)
        bad.update(batch_bad)
        if batch is not None:
            rows.update(zip(positions, encoder.encode(batch), strict=True))
    return rows, bad
