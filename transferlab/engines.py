"""Run a frozen model as fast as this machine allows. The choice lives in `select_engine` alone.

Measured on the 2-core CPU machine (tf_efficientnet_lite0, batch 32; see benchmarks/feature_throughput.py):
eager 23 img/s, eager channels_last 42, ONNX Runtime 161 (torch.onnx dynamo exporter; the legacy
TorchScript exporter gives 85), torch.compile 55 after a 50 s first compile; at 96 px: 235 / 306 / 787.
ONNX Runtime wins on CPU and its export (~10 s) is cached on disk, so a rerun pays nothing. On CUDA,
PyTorch (channels_last) is the engine.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .core.errors import TransferlabError
from .core.paths import atomic_write, cache_root
from .core.progress import console

EncodeFn = Callable[[torch.Tensor], np.ndarray]  # batch N×3×H×W uint8 → N×D float32 features

PARITY_TOLERANCE = 1e-3  # max |Δfeature| accepted between ONNX Runtime and PyTorch (measured: ~1e-5)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TransferlabError("device: cuda was asked for but no CUDA GPU is visible; use device: cpu or auto")
    return torch.device(device)


def select_engine(requested: str, device: torch.device) -> str:
    """`onnx` on CPU, `torch` on GPU, or what the user asked for."""
    if requested != "auto":
        return requested
    return "torch" if device.type != "cpu" else "onnx"


def make_encoder(model: torch.nn.Module, input_size: tuple[int, int, int], device: torch.device,
                 engine: str, cache_key: str) -> tuple[EncodeFn, str]:
    """A function that runs `model` (frozen, eval) on a batch; returns it and the engine actually used.

    An ONNX export that fails or disagrees with PyTorch falls back to PyTorch with a warning: a slower
    run is better than a wrong or failed one.
    """
    if engine == "onnx":
        try:
            return _onnx_encoder(model, input_size, cache_key), "onnx"
        except Exception as exc:  # noqa: BLE001 - any export problem means: use PyTorch
            console.print(f"[yellow]note:[/] ONNX Runtime not used for this backbone "
                          f"({type(exc).__name__}: {str(exc)[:200]}); running PyTorch")
    return _torch_encoder(model, device), "torch"


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
