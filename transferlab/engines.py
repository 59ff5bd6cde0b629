"""Run a frozen model as fast as this machine allows. The choice lives in `select_engine` alone.

Measured on the 2-core CPU machine (tf_efficientnet_lite0, batch 32; see benchmarks/feature_throughput.py):
eager 23 img/s, eager channels_last 42, ONNX Runtime 161 (torch.onnx dynamo exporter; the legacy
TorchScript exporter gives 85), torch.compile 55 after a 50 s first compile; at 96 px: 235 / 306 / 787.
ONNX Runtime won on those machines, but not for every network on every CPU, so `auto` on CPU measures: both
engines run a batch of the network, the faster one is kept, and the choice is remembered per machine and
architecture (`$TRANSFERLAB_CACHE/engines/`), so only the first run pays (~2 s). The ONNX export (~10 s) is
cached on disk too. On CUDA, PyTorch (channels_last) is the engine.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import platform
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .core.errors import TransferlabError
from .core.paths import atomic_write, cache_root
from .core.progress import log

EncodeFn = Callable[[torch.Tensor], np.ndarray]  # batch N×3×H×W uint8 → N×D float32 features

PARITY_TOLERANCE = 1e-3  # max |Δfeature| accepted between ONNX Runtime and PyTorch (measured: ~1e-5)
MEASURE_BATCH = 16  # images per timed call when `auto` measures the engines


def resolve_device(device: str) -> torch.device:
    """`device:` → the torch device, refused in one line when this machine does not have it."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not visible:
            raise TransferlabError(f"device: {device} was asked for but no CUDA GPU is visible; use device: cpu or "
                                   "auto")
        if resolved.index is not None and resolved.index >= visible:
            raise TransferlabError(f"device: {device}, but {visible} CUDA GPU(s) are visible (cuda:0 to "
                                   f"cuda:{visible - 1}); pick one of them")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise TransferlabError("device: mps (Apple silicon) is not available here; use device: cpu or auto")
    return resolved


def select_engine(requested: str, device: torch.device) -> str:
    """`torch` on GPU; on CPU `measure` (the faster of ONNX Runtime and PyTorch on this machine); or what the
    user asked for."""
    if requested != "auto":
        return requested
    return "torch" if device.type != "cpu" else "measure"


def make_encoder(model: torch.nn.Module, input_size: tuple[int, int, int], device: torch.device,
                 engine: str, cache_key: str, speed_key: str | None = None) -> tuple[EncodeFn, str]:
    """A function that runs `model` (frozen, eval) on a batch; returns it and the engine actually used.

    `measure` picks the faster engine for the architecture `speed_key` names (measured once per machine,
    then remembered). An ONNX export that fails or disagrees with PyTorch falls back to PyTorch with a
    warning: a slower run is better than a wrong or failed one.
    """
    if engine == "measure":
        known = remembered_engine(speed_key or cache_key)
        if known is None:
            return _measured_encoder(model, input_size, device, cache_key, speed_key or cache_key)
        log.debug(f"engine for {speed_key or cache_key}: {known} (measured before on this machine)")
        engine = known
    if engine == "onnx" and (onnx_encode := _onnx_or_none(model, input_size, cache_key)):
        return onnx_encode, "onnx"
    return _torch_encoder(model, device), "torch"


def _onnx_or_none(model: torch.nn.Module, input_size: tuple[int, int, int], cache_key: str) -> EncodeFn | None:
    """The ONNX Runtime encoder, or None with a note when the export fails or disagrees with PyTorch."""
    try:
        return _onnx_encoder(model, input_size, cache_key)
    except Exception as exc:  # noqa: BLE001 - any export problem means: use PyTorch
        log.warning(f"[yellow]note:[/] ONNX Runtime not used for this backbone "
                    f"({type(exc).__name__}: {str(exc)[:200]}); running PyTorch")
        return None


def _measured_encoder(model: torch.nn.Module, input_size: tuple[int, int, int], device: torch.device,
                      cache_key: str, speed_key: str) -> tuple[EncodeFn, str]:
    """Both engines on the same batch; the faster one is returned and remembered for `speed_key`."""
    onnx_encode = _onnx_or_none(model, input_size, cache_key)
    if onnx_encode is None:  # not remembered: a later export of this architecture may work
        return _torch_encoder(model, device), "torch"
    # its own copy: PyTorch's encoder turns the module channels_last, which the ONNX side must not see
    encoders = {"onnx": onnx_encode, "torch": _torch_encoder(copy.deepcopy(model), device)}
    speeds = engine_speeds(encoders, input_size)
    chosen = max(speeds, key=speeds.get)
    log.debug(f"engine for {speed_key}: {chosen} (" + ", ".join(f"{k} {v:.0f} img/s" for k, v in speeds.items())
              + f" on a batch of {MEASURE_BATCH})")
    decision = {"engine": chosen, "images_per_second": {k: round(v, 1) for k, v in speeds.items()},
                "batch": MEASURE_BATCH, "input_size": list(input_size), "machine": machine_description()}
    atomic_write(decision_file(speed_key), lambda tmp: tmp.write_text(json.dumps(decision, indent=1)))
    return encoders[chosen], chosen


def engine_speeds(encoders: dict[str, EncodeFn], input_size: tuple[int, int, int]) -> dict[str, float]:
    """img/s of each encoder on one batch: a warm-up call, then the best of three (the least disturbed)."""
    batch = _example_images(MEASURE_BATCH, input_size)
    speeds = {}
    for name, encode in encoders.items():
        encode(batch)
        best = min(_seconds(encode, batch) for _ in range(3))
        speeds[name] = MEASURE_BATCH / best
    return speeds


def _seconds(encode: EncodeFn, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    encode(batch)
    return time.perf_counter() - started


def remembered_engine(speed_key: str) -> str | None:
    """This machine's measured choice for the architecture, if any (an unreadable file is measured again)."""
    try:
        engine = json.loads(decision_file(speed_key).read_text())["engine"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return engine if engine in ("onnx", "torch") else None


def decision_file(speed_key: str) -> Path:
    """Per machine (CPU model, cores, threads, torch and ONNX Runtime versions) and architecture."""
    machine = hashlib.sha256(machine_description().encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", speed_key)
    return cache_root() / "engines" / machine / f"{safe}.json"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty there
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}; {os.cpu_count()} cpus; {torch.get_num_threads()} threads; torch {torch.__version__}; "
            f"onnxruntime {ort.__version__}")


def _torch_encoder(model: torch.nn.Module, device: torch.device) -> EncodeFn:
    # channels_last: 1.8× faster than contiguous for these convnets on CPU (measured), and the fast path on GPU.
    model = model.to(device=device, memory_format=torch.channels_last).eval()

    @torch.no_grad()
    def encode(batch: torch.Tensor) -> np.ndarray:
        x = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        # No TF32 convolutions: features are cached by content for every engine and device alike, and TF32 moved
        # lite0's features by up to 3.4e-2 from the CPU's (1.8e-5 without it, measured on an H200).
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return model(x).float().cpu().numpy()

    return encode


def _onnx_encoder(model: torch.nn.Module, input_size: tuple[int, int, int], cache_key: str) -> EncodeFn:
    path = cache_root() / "onnx" / f"{cache_key}.onnx"
    if not path.is_file():
        _export_onnx(model, input_size, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def encode(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {input_name: batch.numpy()})[0]

    _check_parity(model, encode, input_size, path)
    return encode


def _export_onnx(model: torch.nn.Module, input_size: tuple[int, int, int], path: Path) -> None:
    example = _example_images(2, input_size)  # batch 2: a batch of 1 would be specialised away

    def export(tmp: Path) -> None:
        # The exporter prints its progress and warnings; a user needs none of it.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().eval(), (example,), str(tmp), input_names=["images"],
                              output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, optimize=True, verbose=False, external_data=False)

    atomic_write(path, export)


def _check_parity(model: torch.nn.Module, encode: EncodeFn, input_size: tuple[int, int, int], path: Path) -> None:
    """Features from ONNX Runtime must equal PyTorch's; a cached export that does not is deleted."""
    x = _example_images(3, input_size)
    with torch.no_grad():
        expected = model.cpu().eval()(x).numpy()
    diff = float(np.abs(encode(x) - expected).max())
    if not diff <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX features differ from PyTorch by {diff:.1e}")


def _example_images(n: int, input_size: tuple[int, int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *input_size), dtype=torch.uint8, generator=generator)
