"""Deployed-model speed: fp32 PyTorch vs fp32 / int8 ONNX Runtime on one run's model, in the same run.

Builds a real run (Fashion-MNIST, 10 classes, --per-class training and --test-per-class test PNGs per class,
28 px upscaled; tf_efficientnet_lite0, offline ImageNet weights, frozen at its native 224 px; `linear` on top) or takes
`--run RECORD`, exports it to ONNX once, quantizes it both ways (`quantize_run`: dynamic, and static calibrated
on --calibration training images), then times five arms on the same real test images:
  pytorch           the RunModel's module, eager, NCHW
  pytorch cl        the same module and input in channels_last
  onnx fp32         ONNX Runtime on the fp32 export
  onnx int8 dyn     ONNX Runtime on the dynamic int8 file
  onnx int8 static  ONNX Runtime on the static (QDQ) int8 file
Every round calls each arm in turn (batch-1 calls, then one batch-32 call), so a noisy machine slows all arms
alike; prints the batch-1 median latency and the median batch-32 throughput of each, its test accuracy, and
ratios against the faster PyTorch variant (the baseline), with the static int8 vs baseline throughput last.

    python benchmarks/deploy.py [--run RECORD] [--per-class 40] [--test-per-class 100] [--calibration 200]
                                [--rounds 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import transferlab
from transferlab.config import DataSpec
from transferlab.data import open_pools
from transferlab.data.export import export_image_folder
from transferlab.deploy import load_run
from transferlab.deploy.artifact import decoded_split
from transferlab.deploy.export import default_export_dir, export_model, load_onnx
from transferlab.deploy.quantize import quantize_run

BATCH = 32
LATENCY_CALLS = 5  # batch-1 calls per arm per round


def build_run(root: Path, per_class: int, test_per_class: int) -> Path:
    """A real linear run on lite0 @ 224 px; returns its record."""
    pools = open_pools(DataSpec(source="fashion-mnist"))
    classes = range(len(pools.train.classes))

    def take(labels, n):
        return np.concatenate([np.flatnonzero(np.asarray(labels) == c)[:n] for c in classes])

    train = export_image_folder(pools.train, take(pools.train.labels, per_class), root / "train")
    test = export_image_folder(pools.test, take(pools.test.labels, test_per_class), root / "test")
    record = transferlab.run({"source": str(train), "test": str(test), "name": "fm10"}, "tf_efficientnet_lite0",
                             "linear", out=root / "out")
    return root / "out" / "runs" / f"{record['run_id']}.json"


def int8_files(model, work: Path, calibration: int) -> dict[str, dict]:
    """fp32 export once; each quantization in its own folder (a copy of the export, so none re-exports)."""
    export_dir = default_export_dir(model)
    if not (export_dir / "model.onnx").is_file():
        export_model(model, "onnx")
    summaries = {}
    for mode in ("dynamic", "static"):
        folder = work / mode
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(export_dir / "model.onnx", folder / "model.onnx")
        summaries[mode] = quantize_run(model, mode=mode, calibration=calibration, out=folder)
    return summaries


def torch_arm(module, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=fmt)

    def run(images):
        with torch.inference_mode():
            return module(images.contiguous(memory_format=fmt))

    return run


def arms(model, work: Path) -> dict[str, object]:
    cl_module = load_run(model.path).module  # a second copy: converting the layout changes the module in place
    return {"pytorch": torch_arm(model.module, False), "pytorch cl": torch_arm(cl_module, True),
            "onnx fp32": load_onnx(work / "static" / "model.onnx"),
            "onnx int8 dyn": load_onnx(work / "dynamic" / "model.int8.onnx"),
            "onnx int8 static": load_onnx(work / "static" / "model.int8.onnx")}


def timed(run, images) -> float:
    started = time.perf_counter()
    run(images)
    return time.perf_counter() - started


def measure(runners: dict[str, object], batch: torch.Tensor, rounds: int) -> dict[str, dict[str, float]]:
    single = batch[:1].contiguous()
    for run in runners.values():  # warm-up: first calls allocate, plan kernels, fill caches
        for _ in range(3):
            run(single)
        run(batch)
    latency = {name: [] for name in runners}
    throughput = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            latency[name] += [timed(run, single) for _ in range(LATENCY_CALLS)]
            throughput[name].append(len(batch) / timed(run, batch))
    return {name: {"ms": 1e3 * float(np.median(latency[name])), "img_s": float(np.median(throughput[name]))}
            for name in runners}


def test_accuracy(runners, images, labels) -> dict[str, float]:
    out = {}
    for name, run in runners.items():
        scores = np.concatenate([np.asarray(run(chunk)) for chunk in images.split(BATCH)])
        out[name] = float((scores.argmax(1) == labels).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a run record to use instead of building one")
    parser.add_argument("--per-class", type=int, default=40, help="training images per class (built run)")
    parser.add_argument("--test-per-class", type=int, default=100, help="test images per class (built run)")
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="keep the built run and files here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        record = Path(args.run) if args.run else build_run(root / "run", args.per_class, args.test_per_class)
        model = load_run(record)
        summaries = int8_files(model, root / "quantize", args.calibration)
        runners = arms(model, root / "quantize")
        images, labels = decoded_split(model, "test")
        batch = images.repeat(-(-BATCH // len(images)), 1, 1, 1)[:BATCH].contiguous()
        accuracy = test_accuracy(runners, images, labels)
        speed = measure(runners, batch, args.rounds)
    report(model, summaries, accuracy, speed, args)


def report(model, summaries, accuracy, speed, args) -> None:
    base_name = max(("pytorch", "pytorch cl"), key=lambda n: speed[n]["img_s"])
    base = speed[base_name]
    print(f"run: {model.record['run_id']}  input {tuple(model.input_size)}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x ({LATENCY_CALLS} batch-1 calls + 1 batch-{BATCH} call) per arm, interleaved")
    sizes = {"onnx fp32": summaries["static"]["files"]["fp32"]["bytes"],
             "onnx int8 dyn": summaries["dynamic"]["files"]["int8"]["bytes"],
             "onnx int8 static": summaries["static"]["files"]["int8"]["bytes"]}
    print(f"{'arm':<17} {'batch-1 ms':>10} {'img/s @32':>10} {'vs base':>8} {'test acc':>9} {'size MB':>8}")
    for name, figures in speed.items():
        size = f"{sizes[name] / 1e6:8.2f}" if name in sizes else f"{'':>8}"
        print(f"{name:<17} {figures['ms']:10.2f} {figures['img_s']:10.1f} {figures['img_s'] / base['img_s']:7.2f}x "
              f"{accuracy[name]:9.4f} {size}")
    print(f"baseline: {base_name} ({'channels_last' if base_name == 'pytorch cl' else 'NCHW'} was faster: "
          f"{speed['pytorch cl']['img_s'] / speed['pytorch']['img_s']:.2f}x channels_last vs NCHW)")
    for mode, summary in summaries.items():
        test = summary["splits"]["test"]
        print(f"int8 {mode}: test accuracy {test['fp32']:.4f} -> {test['int8']:.4f}, top-1 agreement "
              f"{test['top1_agreement']:.1%}, cosine >= {test['cosine_min']:.4f}"
              + (f", calibrated on {summary['calibration']['images']} train images" if summary["calibration"] else ""))
    static = speed["onnx int8 static"]
    print(f"ratio: {static['img_s'] / base['img_s']:.2f}x (batch-{BATCH} throughput, int8 static ONNX Runtime vs "
          f"fp32 {base_name}; batch-1 latency {base['ms'] / static['ms']:.2f}x)")


if __name__ == "__main__":
    main()
