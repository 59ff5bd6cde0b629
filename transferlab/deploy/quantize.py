"""`transferlab quantize RUN --mode dynamic|static [--calibration N]`: an int8 copy of the run's ONNX export
through ONNX Runtime's quantization, measured against the fp32 export on the run's own images.

  dynamic  `quantize_dynamic`: weights int8 ahead of time, activations quantized per batch at run time
           (DynamicQuantizeLinear → ConvInteger / MatMulInteger); depthwise convolutions and the head stay
           fp32 (why: `kept_fp32`). No data needed. On CPU usually slower than fp32 for convolutional nets.
  static   `quantize_static`, QDQ format: activation ranges calibrated on N images of the run's *train*
           split (the mean of each batch's min / max, ONNX Runtime's CalibMovingAverage: one outlier image
           does not stretch a range), weights int8 per output channel, activations uint8. Weights use all 8
           bits where this CPU multiplies u8·s8 without saturating (ARM; x86 with VNNI or AMX), else 7 bits
           (ONNX Runtime's advice for older x86); `settings.weights` says which. Measured on a lite0 linear
           run (1000 Fashion-MNIST test images): top-1 agreement with fp32 91.2 % (7-bit, min/max) → 94.7 %.

Both start from the fp32 export `OUT/deploy/<run id>/model.onnx`: reused when it reproduces the run's PyTorch
scores on its test images (export's own parity check), else exported again (`export_model`: file + card).
Writes `model.int8.onnx` and `quantize.json`: the primary metric (accuracy; micro-F1 multi-label) on the
validation and test splits for both files, how far the int8 scores are from fp32 (max |Δ|, cosine, top-1
agreement), batch-1 median latency and batch-32 throughput (the two files timed alternately, so machine
noise hits both alike), and file sizes.
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
from onnxruntime.quantization import quantize_static as ort_quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..core.errors import TransferlabError
from ..core.paths import atomic_write
from ..core.progress import progress_bar
from ..evaluate import PRIMARY, score
from .artifact import RunModel, decoded_split, to_probabilities
from .export import FILE_NAMES, check_parity, default_export_dir, export_model, load_onnx, quiet

MODES = ("dynamic", "static")
FILE_NAME = "model.int8.onnx"
SUMMARY_NAME = "quantize.json"
CALIBRATION_BATCH = 16
LATENCY_RUNS = 30  # batch-1 calls per file (after WARMUP), alternating between the files
THROUGHPUT_ROUNDS = 5  # batch-32 calls per file, alternating
THROUGHPUT_BATCH = 32
WARMUP = 3
REUSE_CHECK_IMAGES = 16  # test images an existing export must reproduce (a stale one misses by ≫ 1e-4)
ROOT_LOGGER = ("",)  # the quantizer logs its advice through the root logger
CPUINFO = Path("/proc/cpuinfo")  # Linux's CPU flags: where VNNI / AMX show
DROP_WARNING = 0.05  # an int8 test metric this far below fp32 gets a note saying what to try


def quantize_run(model: RunModel, *, mode: str = "dynamic", calibration: int = 200,
                 out: str | Path | None = None) -> dict[str, Any]:
    """Write `model.int8.onnx` and `quantize.json` under `out` (default OUT/deploy/<run id>/); returns the summary."""
    check_options(mode, calibration)
    folder = Path(out) if out else default_export_dir(model)
    splits = {name: decoded_split(model, name) for name in ("val", "test")}
    fp32, reused = fp32_export(model, folder, splits["test"][0][:REUSE_CHECK_IMAGES])
    reader = calibration_reader(model, calibration) if mode == "static" else None
    int8 = folder / FILE_NAME
    kept = quantize_file(model, fp32, int8, mode, reader)
    runners = {"fp32": load_onnx(fp32), "int8": load_int8(model, int8, mode)}
    summary = {
        "run_id": model.record["run_id"], "mode": mode,
        "settings": static_settings() if mode == "static" else DYNAMIC_SETTINGS,
        "kept_fp32": kept, "metric": primary_metric(model),
        "files": {"fp32": file_entry(fp32, reused=reused), "int8": file_entry(int8)},
        "calibration": None if reader is None else {"split": "train", "requested": calibration,
                                                    "images": reader.images_read},
        "splits": {name: compare_split(model, runners, *data) for name, data in splits.items() if len(data[0])},
        "speed": measure_speed(runners, speed_images(splits["test"][0], model)),
    }
    return write_summary(summary, folder)


def write_summary(summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    summary["files"]["ratio"] = summary["files"]["int8"]["bytes"] / summary["files"]["fp32"]["bytes"]
    summary["notes"] = notes(summary)
    summary["text"] = summary_text(summary)
    atomic_write(folder / SUMMARY_NAME, lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    return summary


def check_options(mode: str, calibration: int) -> None:
    if mode not in MODES:
        raise TransferlabError(f"--mode {mode}: choose one of {', '.join(MODES)}")
    if calibration < 1:
        raise TransferlabError(f"--calibration {calibration}: give at least 1 training image (200 is a good start)")


DYNAMIC_SETTINGS = {"weights": "int8 per tensor (depthwise convolutions and the head after the pool stay fp32)",
                    "activations": "uint8, ranges computed per batch at run time"}


def static_settings() -> dict[str, str]:
    bits = 7 if reduce_weight_range() else 8
    why = "this CPU lacks VNNI / AMX, where u8·s8 products can saturate" if bits == 7 else \
        "this CPU multiplies u8·s8 without saturating (VNNI / AMX / ARM)"
    return {"format": "QDQ", "weights": f"int8 per channel, {bits}-bit range ({why})",
            "activations": "uint8, calibrated ranges (moving average of each batch's min / max)"}


def reduce_weight_range() -> bool:
    """7-bit weights only on x86 without an int8 dot product (VNNI, AMX): there AVX2's u8·s8 multiply-add
    saturates at int16 and full-range weights lose accuracy. Read from /proc/cpuinfo (no library exposes it);
    an x86 machine whose flags cannot be read gets the safe 7 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return True
    return not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


# ---------------------------------------------------------------- the fp32 export


def fp32_export(model: RunModel, folder: Path, parity_images: torch.Tensor) -> tuple[Path, bool]:
    """(the fp32 ONNX file, whether an existing one was reused). An existing `model.onnx` is reused only if it
    passes export's parity check against the run's current model (a rerun with --force leaves a stale one)."""
    path = folder / FILE_NAMES["onnx"]
    if path.is_file() and len(parity_images):
        with contextlib.suppress(Exception):  # unreadable or from another model: export again
            if check_parity(model, load_onnx(path), parity_images)["passed"]:
                return path, True
    with progress_bar("export · onnx fp32", 1, "file") as bar:
        export_model(model, "onnx", folder)
        bar()
    return path, False


# ---------------------------------------------------------------- quantization


def calibration_reader(model: RunModel, calibration: int) -> CalibrationImages:
    """`calibration` images of the run's train split, stratified over classes and seeded: the data the model
    was fitted on, never the validation or test images the summary scores."""
    images, _ = decoded_split(model, "train", limit=calibration)
    return CalibrationImages(images, CALIBRATION_BATCH)


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader over the calibration images, counting what it hands out."""

    def __init__(self, images: torch.Tensor, batch_size: int):
        self.batches = list(images.split(batch_size))
        self.images_read = 0
        self._next = 0
        self.bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.batches):
            return None
        batch = self.batches[self._next]
        self._next += 1
        self.images_read += len(batch)
        if self.bar:
            self.bar(len(batch))
        return {"images": batch.numpy()}

    def rewind(self) -> None:
        self._next, self.images_read = 0, 0


def quantize_file(model: RunModel, fp32: Path, target: Path, mode: str,
                  reader: CalibrationImages | None) -> list[str]:
    """fp32 ONNX → int8 ONNX (written atomically); returns the nodes left in fp32 on purpose. Any failure of
    ONNX Runtime's tools is one line."""
    with tempfile.TemporaryDirectory(prefix="transferlab-quantize-") as tmp:
        try:
            prepared = prepare(fp32, Path(tmp))
            kept = kept_fp32(prepared) if mode == "dynamic" else []
            if mode == "dynamic":
                atomic_write(target, lambda out: quantize_dynamic(prepared, out, kept))
            else:
                total = sum(len(b) for b in reader.batches)
                with progress_bar("static · calibrate", total, "img") as bar:
                    reader.bar = bar
                    atomic_write(target, lambda out: quantize_static(prepared, out, reader))
        except TransferlabError:
            raise
        except Exception as exc:  # noqa: BLE001 — ONNX Runtime's tools raise anything from ValueError to KeyError
            raise failed(model, mode, exc) from None
    return kept


def failed(model: RunModel, mode: str, exc: BaseException) -> TransferlabError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    other = "static" if mode == "dynamic" else "dynamic"
    hint = "more --calibration images or " if mode == "static" else ""
    return TransferlabError(f"{mode} int8 quantization of {model.record['run_id']} failed ({type(exc).__name__}: "
                            f"{first}); try {hint}--mode {other}, or deploy the fp32 model.onnx")


def prepare(fp32: Path, tmp: Path) -> Path:
    """The fp32 model as the quantizer wants it: at an opset whose QuantizeLinear / DequantizeLinear ONNX
    Runtime implements (the exporter writes the installed onnx's newest, 28, which ORT 1.32 cannot run for
    them), then ONNX Runtime's recommended pre-processing (shape inference, graph optimisation)."""
    proto = onnx.load(str(fp32))
    opset = default_opset(proto)
    target = quantizable_opset(opset)
    if target != opset:
        proto = version_converter.convert_version(proto, target)
    converted, prepared = tmp / "fp32.onnx", tmp / "prepared.onnx"
    onnx.save(proto, str(converted))
    # The symbolic shape inference cannot follow the dynamo exporter's graphs (it fails on outputs with no
    # type); ONNX's own shape inference, which the pre-processing still runs, is enough for the quantizer.
    with quiet(ROOT_LOGGER):
        quant_pre_process(str(converted), str(prepared), skip_symbolic_shape=True)
    return prepared


def default_opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def quantizable_opset(opset: int) -> int:
    """The newest opset ≤ `opset` at which ONNX Runtime runs QuantizeLinear → DequantizeLinear (probed: a
    two-node model per opset, milliseconds)."""
    for candidate in range(opset, 12, -1):  # 13: the first with per-channel (axis) quantization
        if _runs_qdq(candidate):
            return candidate
    raise TransferlabError(f"this ONNX Runtime runs no QuantizeLinear / DequantizeLinear at opset ≤ {opset}; "
                           "upgrade onnxruntime")


def _runs_qdq(opset: int) -> bool:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])
    zero = helper.make_tensor("zero", TensorProto.UINT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [scale, zero])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 — NOT_IMPLEMENTED, or an opset this ORT does not know
        return False
    return True


def quantize_dynamic(prepared: Path, out: Path, kept: list[str]) -> None:
    with quiet(ROOT_LOGGER):
        # it first rewrites each Gemm as MatMul "<name>_MatMul" + Add, then matches node names
        ort_quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8,
                             nodes_to_exclude=kept + [f"{name}_MatMul" for name in kept])


def kept_fp32(path: Path) -> list[str]:
    """What dynamic mode leaves in fp32, because its one-scale-per-tensor int8 ruins it (lite0 linear runs,
    test accuracy fp32 → all quantized → these kept: 0.83 → 0.69 → 0.805 at 224 px, 0.98 → 0.40 → 0.95 at 64):
      - depthwise convolutions: ConvInteger has one weight scale per tensor, and each depthwise channel is its
        own filter with BatchNorm folded in, their scales orders of magnitude apart; one scale zeroes most;
      - the head: MatMul / Gemm after the backbone's global average pool. Its input (standardised features)
        has outliers, and one activation range per batch, set by them, leaves the rest a few levels.
    Both are small (lite0: 3.5 → 4.0 MB). Static mode calibrates per-channel weights and clipped ranges instead."""
    graph = onnx.load(str(path), load_external_data=False).graph
    depthwise = [n.name for n in graph.node if n.op_type == "Conv" and _attribute(n, "group", 1) > 1]
    return depthwise + [n.name for n in after_global_pool(graph) if n.op_type in ("MatMul", "Gemm")]


def after_global_pool(graph) -> list:
    """Nodes downstream of a global average pool over H×W (GlobalAveragePool, or ReduceMean on axes 2, 3):
    the graph's nodes are in topological order, so one pass carries the mark forward."""
    constants = {t.name: t for t in graph.initializer}
    marked: set[str] = set()
    found = []
    for node in graph.node:
        if any(name in marked for name in node.input):
            found.append(node)
            marked.update(node.output)
        elif node.op_type == "GlobalAveragePool" or (node.op_type == "ReduceMean" and _spatial(node, constants)):
            marked.update(node.output)
    return found


def _spatial(node, constants) -> bool:
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in constants:
        axes = np.atleast_1d(numpy_helper.to_array(constants[node.input[1]])).tolist()
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def _attribute(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints) if attribute.ints else attribute.i
    return default


def quantize_static(prepared: Path, out: Path, reader: CalibrationImages) -> None:
    reader.rewind()
    with quiet(ROOT_LOGGER):
        ort_quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_weight_range(), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibMovingAverage": True})


def load_int8(model: RunModel, path: Path, mode: str):
    """The int8 session; a graph ONNX Runtime quantized but cannot run is a failed quantization too."""
    try:
        run = load_onnx(path)
        run(torch.zeros(1, *model.input_size, dtype=torch.uint8))
    except Exception as exc:  # noqa: BLE001
        path.unlink(missing_ok=True)
        raise failed(model, mode, exc) from None
    return run


# ---------------------------------------------------------------- accuracy and score differences


def primary_metric(model: RunModel) -> str:
    return PRIMARY[model.multi_label]


def split_scores(run, images: torch.Tensor) -> np.ndarray:
    return np.concatenate([np.asarray(run(chunk)) for chunk in images.split(THROUGHPUT_BATCH)])


def compare_split(model: RunModel, runners: dict[str, Any], images: torch.Tensor,
                  labels: np.ndarray) -> dict[str, Any]:
    """Both files on one split: the primary metric each, and how far int8's scores are from fp32's."""
    metric = primary_metric(model)
    scores = {}
    with progress_bar("score · fp32 / int8", 2 * len(images), "img") as bar:
        for name, run in runners.items():
            scores[name] = split_scores(run, images)
            bar(len(images))
    entry: dict[str, Any] = {"images": int(len(images))}
    for name, values in scores.items():
        proba = to_probabilities(torch.from_numpy(values), model.activation).double().numpy()
        metrics = score(labels, proba, model.classes, multi_label=model.multi_label, thresholds=model.thresholds,
                        detailed=False)
        entry[name] = float(metrics[metric])
    entry.update(score_difference(scores["fp32"], scores["int8"]))
    return entry


def score_difference(fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    a, b = fp32.astype(np.float64), int8.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-300), 1.0)
    return {"max_abs_diff": float(np.abs(a - b).max()), "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean())}


# ---------------------------------------------------------------- speed


def speed_images(test: torch.Tensor, model: RunModel) -> torch.Tensor:
    """A batch of 32 real test images (repeated if the split is smaller; random pixels if it is empty)."""
    if not len(test):
        return torch.randint(0, 256, (THROUGHPUT_BATCH, *model.input_size), dtype=torch.uint8)
    repeats = -(-THROUGHPUT_BATCH // len(test))
    return test.repeat(repeats, 1, 1, 1)[:THROUGHPUT_BATCH].contiguous()


def measure_speed(runners: dict[str, Any], batch: torch.Tensor, *, latency_runs: int | None = None,
                  rounds: int | None = None) -> dict[str, Any]:
    """Batch-1 median latency (ms) and batch-32 throughput (img/s, median round) per runner, the runners
    called in turn so a noisy machine slows them alike."""
    latency_runs, rounds = latency_runs or LATENCY_RUNS, rounds or THROUGHPUT_ROUNDS
    single = batch[:1].contiguous()
    for run in runners.values():
        for _ in range(WARMUP):
            run(single)
        run(batch)
    calls = {name: [] for name in runners}
    throughput = {name: [] for name in runners}
    with progress_bar("speed · batch 1 / 32", len(runners) * (latency_runs + rounds), "call") as bar:
        for _ in range(latency_runs):
            for name, run in runners.items():
                calls[name].append(_timed(run, single))
                bar()
        for _ in range(rounds):
            for name, run in runners.items():
                throughput[name].append(len(batch) / _timed(run, batch))
                bar()
    result = {name: {"latency_ms": 1e3 * float(np.median(calls[name])),
                     "throughput_img_s": float(np.median(throughput[name]))} for name in runners}
    result.update(batch=int(len(batch)), latency_runs=latency_runs, throughput_rounds=rounds)
    result["threads"] = torch.get_num_threads()
    return result


def _timed(run, images: torch.Tensor) -> float:
    started = time.perf_counter()
    run(images)
    return time.perf_counter() - started


# ---------------------------------------------------------------- the summary


def file_entry(path: Path, **extra) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, **extra}


def notes(summary: dict[str, Any]) -> list[str]:
    found = []
    test = summary["splits"].get("test")
    if test and test["fp32"] - test["int8"] > DROP_WARNING:
        hint = ("try more --calibration images, or --mode dynamic" if summary["mode"] == "static" else
                "try --mode static")
        found.append(f"int8 loses {test['fp32'] - test['int8']:.3f} {summary['metric']} on test: {hint}")
    speed = summary["speed"]
    if speed["int8"]["throughput_img_s"] < speed["fp32"]["throughput_img_s"]:
        why = (" (dynamic quantization re-quantizes every activation at run time; --mode static is usually faster)"
               if summary["mode"] == "dynamic" else "")
        found.append(f"int8 is slower than fp32 on this CPU{why}")
    calibration = summary["calibration"]
    if calibration and calibration["images"] < calibration["requested"]:
        found.append(f"calibrated on all {calibration['images']} training images (fewer than the "
                     f"{calibration['requested']} asked for)")
    return found


def summary_text(summary: dict[str, Any]) -> str:
    metric, speed, files = summary["metric"], summary["speed"], summary["files"]
    lines = [f"{summary['run_id']}: int8 {summary['mode']} → {files['int8']['file']}"]
    for name, split in summary["splits"].items():
        lines.append(f"  {name:>4} {metric}: fp32 {split['fp32']:.4f}  int8 {split['int8']:.4f}   top-1 agreement "
                     f"{split['top1_agreement']:.1%}, max |Δscore| {split['max_abs_diff']:.3g}, "
                     f"cosine ≥ {split['cosine_min']:.4f}")
    for name in ("fp32", "int8"):
        lines.append(f"  {name}: {files[name]['bytes'] / 1e6:7.2f} MB  batch 1 {speed[name]['latency_ms']:7.2f} ms"
                     f"  batch {speed['batch']} {speed[name]['throughput_img_s']:8.1f} img/s")
    ratio = speed["int8"]["throughput_img_s"] / speed["fp32"]["throughput_img_s"]
    lines.append(f"  int8 / fp32: size {files['ratio']:.2f}x, throughput {ratio:.2f}x, batch-1 latency "
                 f"{speed['int8']['latency_ms'] / speed['fp32']['latency_ms']:.2f}x")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)
