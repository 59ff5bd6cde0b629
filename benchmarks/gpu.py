"""CUDA and bf16-AMP code paths on a GPU, each against a baseline measured in the same run.

tf_efficientnet_lite0 (offline ImageNet weights, 224 px) on real Fashion-MNIST images, through transferlab's
own code paths:
  1. features:   `BackboneEncoder` with device cuda (engine chosen by `select_engine`: torch, channels_last)
                 vs the same encoder on this machine's CPU (baseline, engine torch), img/s on images decoded
                 once to uint8; max |feature difference| CPU vs CUDA (also with TF32 off, to tell TF32
                 rounding from a bug); `FeatureStore.get` on CUDA end to end (decoding thread included).
  2. training:   the `finetune` paradigm (every layer, augment none) on CUDA with `precision: bf16` (autocast),
                 `precision: fp16` (autocast + GradScaler) and `precision: fp32`: img/s per epoch, final
                 validation accuracy, peak GPU memory; which dtypes the convolutions ran in under bf16;
                 the CPU figure on a small sample; the cached-
                 activation path (`from_stage: -1`) and the `light` augmentation preset on CUDA.
  3. end to end: `transferlab.run` (linear, then finetune for 1 epoch) with `device: cuda`: the run record
                 names the GPU in its environment and the trained model file is written.
A crash in any section is a finding: its traceback is printed and kept, and the next section runs.
Prints the CUDA / CPU ratio of feature extraction last; `--json` writes every figure (after each section).

    python benchmarks/gpu.py [--device cuda] [--quick] [--json gpu.json] [--fashion-mnist DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKBONE = "tf_efficientnet_lite0"
PRECISIONS = ("bf16", "fp16", "fp32")  # finetune's precision: settings the training section compares
LEARNED = 0.5  # validation accuracy that proves a run learned (chance is 0.1 on Fashion-MNIST's 10 classes)

FULL = {"feat_images": 2048, "feat_cpu_images": 512, "feat_batches": (32, 256), "store_images": 2048,
        "train": 4096, "val": 1024, "epochs": 3, "batch_size": 128, "cpu_train": 128, "cpu_val": 64,
        "side_train": 1024, "run_train": 300, "run_val": 100, "run_test": 500}
QUICK = {"feat_images": 64, "feat_cpu_images": 32, "feat_batches": (32,), "store_images": 64,
         "train": 96, "val": 48, "epochs": 1, "batch_size": 32, "cpu_train": 32, "cpu_val": 32,
         "side_train": 32, "run_train": 50, "run_val": 30, "run_test": 50}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n_bytes: int) -> float:
    return round(n_bytes / 2**30, 3)


# ---------------------------------------------------------------- 1. frozen features


def encode_all(encoder, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, np.ndarray]:
    """(img/s, features) of `encoder` over `images`; one batch first builds the engine and warms it up."""
    encoder.encode(images[:batch_size])
    sync(device)
    started = time.perf_counter()
    features = np.concatenate([encoder.encode(batch) for batch in images.split(batch_size)])
    sync(device)
    return len(images) / (time.perf_counter() - started), features


def features_section(c: dict, device: torch.device, backbone, source, tmp: Path) -> dict[str, Any]:
    from transferlab.data.decode import decode_images
    from transferlab.engines import PARITY_TOLERANCE, select_engine
    from transferlab.features import BackboneEncoder, FeatureStore

    out: dict[str, Any] = {"images": c["feat_images"], "cpu_images": c["feat_cpu_images"],
                           "selected_engine": select_engine("auto", device)}
    indices = np.arange(c["feat_images"])
    images, _, _ = decode_images(source, indices, backbone.eval_transform(), cache=False)
    cpu_images = images[:c["feat_cpu_images"]]
    cpu = torch.device("cpu")
    cpu_rate, cpu_features = encode_all(BackboneEncoder(backbone, cpu, "torch"), cpu_images, 32, cpu)
    out["cpu_img_s"] = round(cpu_rate, 1)
    out["cpu_threads"] = torch.get_num_threads()
    print(f"[features] CPU (engine torch, {torch.get_num_threads()} threads, batch 32): {cpu_rate:8.1f} img/s "
          f"on {len(cpu_images)} images", flush=True)
    for batch in c["feat_batches"]:
        encoder = BackboneEncoder(backbone, device, "auto")  # the engine a run would pick on this device
        rate, features = encode_all(encoder, images, batch, device)
        out[f"device_img_s_batch{batch}"] = round(rate, 1)
        out["device_engine"] = encoder.engine
        print(f"[features] {device.type} (engine {encoder.engine}, batch {batch}): {rate:8.1f} img/s on "
              f"{len(images)} images", flush=True)
    head = features[:len(cpu_images)]
    diff = float(np.abs(head - cpu_features).max())
    out.update(max_abs_diff=diff, max_abs_feature=float(np.abs(cpu_features).max()),
               parity_tolerance=PARITY_TOLERANCE, finite=bool(np.isfinite(features).all()))
    print(f"[features] max |feature difference| CPU vs {device.type}: {diff:.2e} (features up to "
          f"{out['max_abs_feature']:.2f}; ONNX parity tolerance {PARITY_TOLERANCE:.0e})", flush=True)
    if device.type == "cuda":  # TF32 convolutions (PyTorch's default for cuDNN) round to 10-bit mantissas
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            _, strict = encode_all(BackboneEncoder(backbone, device, "auto"), cpu_images, 32, device)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        out["max_abs_diff_no_tf32"] = float(np.abs(strict - cpu_features).max())
        print(f"[features] max |feature difference| CPU vs cuda with TF32 off: {out['max_abs_diff_no_tf32']:.2e}",
              flush=True)
    # The feature store end to end: the decoding thread beside the encoder, chunks written to disk.
    store_indices = np.arange(c["store_images"])
    encoder = BackboneEncoder(backbone, device, "auto")
    encoder.encode(images[:2])
    sync(device)
    started = time.perf_counter()
    got = FeatureStore(tmp / "features").get(source, store_indices, encoder, batch_size=32, label="store")
    seconds = time.perf_counter() - started
    out["store_img_s"] = round(len(store_indices) / seconds, 1)
    out["store_matches_encoder"] = float(np.abs(got.features - features[:len(store_indices)]).max())
    print(f"[features] FeatureStore.get on {device.type} (decode 28 px -> 224 px in its thread, batch 32): "
          f"{out['store_img_s']:8.1f} img/s; max |Δ| vs the encoder above: {out['store_matches_encoder']:.1e}",
          flush=True)
    out["ratio_device_over_cpu"] = round(max(out[f"device_img_s_batch{b}"] for b in c["feat_batches"]) / cpu_rate, 2)
    return out


# ---------------------------------------------------------------- 2. training


def train_once(backbone, device: torch.device, data: dict, params: dict, label: str) -> dict[str, Any]:
    """Fit `finetune` with `params` through the paradigm (the loop, autocast and all); its figures."""
    from transferlab.paradigms import create_paradigm
    from transferlab.paradigms.trained import TrainingContext

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    paradigm = create_paradigm("finetune", params, n_classes=10, seed=0)
    paradigm.bind(TrainingContext(backbone, device))
    (x, y), (x_val, y_val) = data["train"], data["val"]
    started = time.perf_counter()
    paradigm.fit(x, y, x_val, y_val)
    sync(device)
    total = time.perf_counter() - started
    history = paradigm.history_
    rates = [len(x) / h["seconds"] for h in history]
    out = {"params": params, "train_images": len(x), "val_images": len(x_val), "fit_s": round(total, 2),
           "epoch_img_s": [round(r, 1) for r in rates],
           "img_s": round(float(np.mean(rates[1:] if len(rates) > 1 else rates)), 1),
           "val_accuracy": [round(h["val_accuracy"], 4) for h in history],
           "final_val_accuracy": round(history[-1]["val_accuracy"], 4),
           "best_val_accuracy": round(max(h["val_accuracy"] for h in history), 4),
           "train_loss": [round(h["train_loss"], 4) for h in history], "selected": paradigm.selected_}
    out["learned"] = out["best_val_accuracy"] > LEARNED
    if device.type == "cuda":
        out["peak_gpu_gib"] = gib(torch.cuda.max_memory_allocated(device))
    proba = paradigm.predict_proba(x_val)
    out["predict_accuracy"] = round(float((proba.argmax(1) == np.asarray(y_val)).mean()), 4)
    print(f"[train] {label:<34} {out['img_s']:8.1f} img/s (epochs: {out['epoch_img_s']}), val accuracy "
          f"{out['val_accuracy']}, learned: {out['learned']}"
          + (f", peak GPU memory {out['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in out else ""), flush=True)
    return out


def autocast_dtypes(backbone, device: torch.device, data: dict) -> dict[str, list[str]]:
    """The dtypes convolution and linear layers produced while training with precision: bf16 (a separate short fit,
    since a global forward hook slows every layer)."""
    from torch import nn

    seen: dict[str, set[str]] = {"train": set(), "eval": set()}

    def hook(module, args, output):
        if isinstance(module, nn.Conv2d | nn.Linear) and isinstance(output, torch.Tensor):
            seen["train" if module.training else "eval"].add(str(output.dtype).removeprefix("torch."))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        n = min(64, len(data["train"][0]))
        small = {"train": (data["train"][0][:n], data["train"][1][:n]),
                 "val": (data["val"][0][:32], data["val"][1][:32])}
        train_once(backbone, device, small, {"epochs": 1, "batch_size": 32, "augment": "none", "precision": "bf16"},
                   "precision: bf16 (dtype probe)")
    finally:
        handle.remove()
    return {k: sorted(v) for k, v in seen.items()}


def training_section(c: dict, device: torch.device, backbone, pools, results: dict, save) -> None:
    from transferlab.config import DataSpec
    from transferlab.data import make_splits
    from transferlab.data.decode import decode_images

    spec = DataSpec(source="fashion-mnist", train_size=c["train"], val_size=c["val"])
    splits = make_splits(pools, spec, seed=0)
    started = time.perf_counter()
    data = {name: (decode_images(s.source, s.indices, backbone.eval_transform(), cache=False)[0], s.labels)
            for name, s in splits.items() if name in ("train", "val")}
    print(f"[train] decoded {c['train']} + {c['val']} images at 224 px in {time.perf_counter() - started:.1f} s",
          flush=True)
    out = results["training"] = {}
    base = {"epochs": c["epochs"], "batch_size": c["batch_size"], "augment": "none"}
    for key in PRECISIONS:
        try:
            out[key] = train_once(backbone, device, data, {**base, "precision": key},
                                  f"{device.type} finetune precision: {key}")
        except Exception:  # noqa: BLE001 - a crash is a finding; the other configurations still run
            out[key] = {"error": traceback.format_exc()}
            traceback.print_exc()
        save()
    for key in ("bf16", "fp16"):
        if "img_s" in out.get(key, {}) and "img_s" in out.get("fp32", {}):
            out[f"ratio_{key}_over_fp32"] = round(out[key]["img_s"] / out["fp32"]["img_s"], 2)
    side = {"train": (data["train"][0][:c["side_train"]], data["train"][1][:c["side_train"]]), "val": data["val"]}
    extras = {
        "dtypes": lambda: autocast_dtypes(backbone, device, data),
        "cached_activations": lambda: train_once(backbone, device, side, {
            "epochs": 2, "batch_size": c["batch_size"], "augment": "none", "from_stage": -1, "precision": "bf16"},
            f"{device.type} from_stage -1, cached, bf16"),
        "augment_light": lambda: train_once(backbone, device, side, {
            "epochs": 1, "batch_size": c["batch_size"], "augment": "light", "precision": "bf16"},
            f"{device.type} augment light, bf16"),
    }
    if device.type == "cuda":
        cpu_data = {"train": (data["train"][0][:c["cpu_train"]], data["train"][1][:c["cpu_train"]]),
                    "val": (data["val"][0][:c["cpu_val"]], data["val"][1][:c["cpu_val"]])}
        extras["cpu"] = lambda: train_once(backbone, torch.device("cpu"), cpu_data, {
            "epochs": 1, "batch_size": 32, "augment": "none"}, f"cpu finetune ({torch.get_num_threads()} threads)")
    for key, job in extras.items():
        try:
            out[key] = job()
        except Exception:  # noqa: BLE001
            out[key] = {"error": traceback.format_exc()}
            traceback.print_exc()
        save()
    if "dtypes" in out and "error" not in out["dtypes"]:
        print(f"[train] under precision: bf16, conv/linear outputs were {out['dtypes']['train']} in training, "
              f"{out['dtypes']['eval']} in evaluation", flush=True)


# ---------------------------------------------------------------- 3. end to end


def run_section(c: dict, device: torch.device, tmp: Path) -> dict[str, Any]:
    import transferlab

    data = {"source": "fashion-mnist", "train_size": c["run_train"], "val_size": c["run_val"],
            "test_size": c["run_test"]}
    out: dict[str, Any] = {}
    for paradigm in ("linear", {"name": "finetune", "epochs": 1, "augment": "none"}):
        name = paradigm if isinstance(paradigm, str) else paradigm["name"]
        try:
            started = time.perf_counter()
            record = transferlab.run(data, BACKBONE, paradigm, device=device.type, out=tmp / "runs", force=True)
            model = record.get("model") or {}
            out[name] = {"seconds": round(time.perf_counter() - started, 1),
                         "accuracy": record["metrics"].get("accuracy"), "environment": record["environment"],
                         "engine": record["backbone"].get("engine"), "timings": record["timings"],
                         "record_written": (tmp / "runs" / "runs" / f"{record['run_id']}.json").is_file(),
                         "model": model if isinstance(model, dict) else str(model)}
            env = record["environment"]
            print(f"[run] {name:<9} on {env['device']} (gpu: {env['gpu']}), engine {out[name]['engine']}: test "
                  f"accuracy {out[name]['accuracy']:.4f} in {out[name]['seconds']} s; record written: "
                  f"{out[name]['record_written']}", flush=True)
        except Exception:  # noqa: BLE001
            out[name] = {"error": traceback.format_exc()}
            traceback.print_exc()
    return out


# ---------------------------------------------------------------- main


def environment(device: torch.device) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory), sms=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try this script anywhere)")
    parser.add_argument("--quick", action="store_true", help="a few images per section: checks the paths only")
    parser.add_argument("--json", type=Path, help="write every figure here (rewritten after each section)")
    parser.add_argument("--fashion-mnist", type=Path, help="a folder holding Fashion-MNIST's four .gz files, "
                        "searched before Debian's /usr/share/datasets/fashion-mnist")
    parser.add_argument("--sections", default="features,training,run")
    args = parser.parse_args()
    c = QUICK if args.quick else FULL
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (run this where one is, or --device cpu to walk the "
              "same code paths here)")
        return
    from transferlab.engines import resolve_device

    device = resolve_device(args.device)
    if args.fashion_mnist:
        from transferlab.data import builtins

        builtins.FASHION_MNIST_DIRS = (args.fashion_mnist.resolve(), *builtins.FASHION_MNIST_DIRS)
    results: dict[str, Any] = {"environment": environment(device), "config": {**c, "quick": args.quick}}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str))

    print(f"environment: {json.dumps(results['environment'])}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["TRANSFERLAB_CACHE"] = str(tmp / "cache")  # nothing cached before: every figure is computed
        from transferlab.config import BackboneSpec, DataSpec
        from transferlab.data import open_pools
        from transferlab.models import load_backbone

        pools = open_pools(DataSpec(source="fashion-mnist"))
        backbone = load_backbone(BackboneSpec(name=BACKBONE, weights="offline"))
        results["backbone"] = {"name": backbone.name, "weights": vars(backbone.weights),
                               "input_size": list(backbone.data_config["input_size"])}
        sections = {"features": lambda: features_section(c, device, backbone, pools.train, tmp),
                    "training": lambda: training_section(c, device, backbone, pools, results, save),
                    "run": lambda: run_section(c, device, tmp)}
        for name in args.sections.split(","):
            section_started = time.perf_counter()
            try:
                got = sections[name]()
                if got is not None:
                    results[name] = got
            except Exception:  # noqa: BLE001 - a crash in a CUDA path is a finding; the next section runs
                results.setdefault(name, {})["error"] = traceback.format_exc()
                traceback.print_exc()
            results.setdefault(name, {})["section_s"] = round(time.perf_counter() - section_started, 1)
            save()
    results["total_s"] = round(time.perf_counter() - started, 1)
    errors = [name for name in args.sections.split(",") if "error" in results.get(name, {})]
    errors += [f"{name}.{key}" for name in args.sections.split(",") for key, part in results.get(name, {}).items()
               if isinstance(part, dict) and "error" in part]
    results["errors"] = errors
    save()
    print(f"\ntotal {results['total_s']} s; sections with a crash: {', '.join(errors) or 'none'}")
    training = results.get("training", {})
    for key in PRECISIONS:
        t = training.get(key, {})
        if "img_s" in t:
            print(f"training {key:>4}: {t['img_s']:8.1f} img/s, final val accuracy {t['final_val_accuracy']:.4f}"
                  + (f", peak GPU memory {t['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in t else ""))
    for key in ("bf16", "fp16"):
        if f"ratio_{key}_over_fp32" in training:
            print(f"training ratio ({key} / fp32 img/s): {training[f'ratio_{key}_over_fp32']:.2f}x")
    features = results.get("features", {})
    if "ratio_device_over_cpu" in features:
        print(f"features max |Δ| CPU vs {device.type}: {features['max_abs_diff']:.2e}")
        print(f"ratio: {features['ratio_device_over_cpu']:.2f}x")


if __name__ == "__main__":
    main()
