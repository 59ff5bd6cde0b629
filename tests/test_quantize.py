"""int8 quantization of a run's ONNX export (transferlab/deploy/quantize.py), on the session study's real runs
(lite0 @ 64 px, 3 Fashion-MNIST classes): files, graphs, accuracy, calibration, speed figures, errors.

One fp32 export per run is the cost (~20 s): the linear run's is made once and shared by its dynamic and
static quantization; the kNN run's (TopK, GatherND in the graph) is a slow check.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from transferlab.core.errors import TransferlabError
from transferlab.deploy import load_run
from transferlab.deploy import quantize as quantize_module
from transferlab.deploy.export import default_export_dir
from transferlab.deploy.quantize import quantize_run

CALIBRATION = 24  # of the run's ~96 training images: two calibration batches, the second a short one


@pytest.fixture(scope="module")
def study(finished_study, tmp_path_factory):
    """A private copy of the session's study (quantization writes under OUT/deploy/)."""
    out, records = finished_study
    return shutil.copytree(out, tmp_path_factory.mktemp("quantize") / "study"), records


def record_path(study, paradigm: str):
    out, records = study
    record = next(r for r in records if r["spec"]["paradigm"]["name"] == paradigm and r["seed"] == 0
                  and not r["reference"])
    return out / "runs" / f"{record['run_id']}.json"


@pytest.fixture(scope="module")
def linear(study):
    """(model, {mode: summary}, decoded_split calls): dynamic into OUT/deploy/<id>/ (exports the fp32 model),
    static into its own folder holding a copy of that export (which it must reuse)."""
    model = load_run(record_path(study, "linear"))
    calls = []
    real = quantize_module.decoded_split

    def spy(model, name, limit=None, **kwargs):
        images, labels = real(model, name, limit=limit, **kwargs)
        calls.append((name, limit, len(images)))
        return images, labels

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize_module, "decoded_split", spy)
        mp.setattr(quantize_module, "LATENCY_RUNS", 5)  # timing is not what these tests check: keep it short
        mp.setattr(quantize_module, "THROUGHPUT_ROUNDS", 2)
        dynamic = quantize_run(model, mode="dynamic")
        static_dir = study[0] / "static"
        static_dir.mkdir()
        shutil.copy(default_export_dir(model) / "model.onnx", static_dir / "model.onnx")
        static = quantize_run(model, mode="static", calibration=CALIBRATION, out=static_dir)
    return model, {"dynamic": dynamic, "static": static}, calls


def folder_of(model, mode: str, study):
    return default_export_dir(model) if mode == "dynamic" else study[0] / "static"


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def int8_weights(path) -> int:
    graph = onnx.load(str(path)).graph
    return sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.INT8)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_file_is_quantized_smaller_and_close_to_fp32(linear, study, mode):
    model, summaries, _ = linear
    summary, folder = summaries[mode], folder_of(model, mode, study)
    int8, fp32 = folder / "model.int8.onnx", folder / "model.onnx"
    assert int8.is_file() and fp32.is_file()
    assert summary["files"]["int8"]["bytes"] == int8.stat().st_size
    assert summary["files"]["ratio"] < 0.4  # lite0's weights are most of the file: ~4x smaller in int8
    ops = op_types(int8)
    expected = {"DynamicQuantizeLinear", "ConvInteger"} if mode == "dynamic" else {"QuantizeLinear", "DequantizeLinear"}
    assert expected <= ops and int8_weights(int8) > 20
    if mode == "dynamic":  # depthwise convolutions and the head stay fp32 (quantize.kept_fp32)
        assert {"Conv", "MatMul"} <= ops and "MatMulInteger" not in ops and len(summary["kept_fp32"]) == 17
    assert "QuantizeLinear" not in op_types(fp32) and int8_weights(fp32) == 0
    for name in ("val", "test"):
        split = summary["splits"][name]
        assert split["images"] > 0
        assert split["max_abs_diff"] > 1e-3  # really other numbers than fp32 ...
        assert split["top1_agreement"] >= 0.8  # ... but mostly the same decisions
        # static: calibrated on a class-stratified sample, within 3 points of fp32 (measured: 1.00 vs 0.98 on
        # test); dynamic, with no calibration, within 10 (measured 0.92 vs 1.00 on val: 2 of 24 images)
        assert split["int8"] >= split["fp32"] - (0.03 if mode == "static" else 0.1), (mode, name, split)
    record_accuracy = model.record["metrics"]["accuracy"]
    assert summary["splits"]["test"]["fp32"] == pytest.approx(record_accuracy, abs=1e-9)


def test_summary_records_speed_sizes_and_is_written(linear, study):
    model, summaries, _ = linear
    for mode, summary in summaries.items():
        for name in ("fp32", "int8"):
            assert summary["speed"][name]["latency_ms"] > 0 and summary["speed"][name]["throughput_img_s"] > 0
        assert summary["speed"]["batch"] == 32 and summary["speed"]["latency_runs"] == 5
        written = json.loads((folder_of(model, mode, study) / "quantize.json").read_text())
        assert written == json.loads(json.dumps(summary))
        assert summary["metric"] == "accuracy" and summary["mode"] == mode
        assert f"int8 {mode}" in summary["text"]


def test_static_calibrates_on_exactly_n_train_images_and_reuses_the_export(linear):
    _, summaries, calls = linear
    assert [c for c in calls if c[0] == "train"] == [("train", CALIBRATION, CALIBRATION)]
    assert summaries["static"]["calibration"] == {"split": "train", "requested": CALIBRATION, "images": CALIBRATION}
    assert summaries["dynamic"]["calibration"] is None
    assert summaries["dynamic"]["files"]["fp32"]["reused"] is False  # no export yet: made one
    assert summaries["static"]["files"]["fp32"]["reused"] is True  # the copy passed the parity check


@pytest.mark.parametrize(("machine", "flags", "reduced"), [
    ("x86_64", "fpu sse2 avx2 fma", True),  # AVX2 only: u8·s8 multiply-adds saturate, so 7-bit weights
    ("x86_64", "fpu avx2 avx512f avx512_vnni", False), ("x86_64", "avx2 avx_vnni", False),
    ("x86_64", "avx2 amx_tile amx_int8", False), ("aarch64", "", False), ("x86_64", None, True)])
def test_static_weight_bits_follow_the_cpus_int8_dot_product(tmp_path, monkeypatch, machine, flags, reduced):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:  # None: flags that cannot be read get the safe 7 bits
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    monkeypatch.setattr(quantize_module, "CPUINFO", cpuinfo)
    monkeypatch.setattr(quantize_module.platform, "machine", lambda: machine)
    assert quantize_module.reduce_weight_range() is reduced
    assert ("7-bit" if reduced else "8-bit") in quantize_module.static_settings()["weights"]


def test_static_summary_says_which_weight_range_ran(linear):
    _, summaries, _ = linear
    bits = "7-bit" if quantize_module.reduce_weight_range() else "8-bit"
    assert bits in summaries["static"]["settings"]["weights"]
    assert "moving average" in summaries["static"]["settings"]["activations"]


@pytest.mark.slow  # a second fp32 export (~20 s) would take the module past its budget
def test_knn_with_topk_quantizes(study, monkeypatch):
    monkeypatch.setattr(quantize_module, "LATENCY_RUNS", 5)
    model = load_run(record_path(study, "knn"))
    summary = quantize_run(model, mode="static", calibration=CALIBRATION)
    assert "TopK" in op_types(default_export_dir(model) / "model.int8.onnx")
    test = summary["splits"]["test"]
    assert test["int8"] >= test["fp32"] - 0.15 and test["top1_agreement"] >= 0.8
    assert summary["files"]["ratio"] < 0.4


@pytest.mark.slow  # its own study and export (knn: the mlp's fp32 export misses export's 1e-4 parity limit)
def test_multi_label_run_is_scored_by_micro_f1_at_its_thresholds(multilabel_study, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "LATENCY_RUNS", 5)
    out = shutil.copytree(multilabel_study[0], tmp_path / "study")
    model = load_run(record_path((out, multilabel_study[1]), "knn"))
    summary = quantize_run(model, mode="static", calibration=CALIBRATION)
    assert summary["metric"] == "micro_f1"
    test = summary["splits"]["test"]
    assert test["fp32"] == pytest.approx(model.record["metrics"]["micro_f1"], abs=1e-6)
    assert test["int8"] >= test["fp32"] - 0.15


@pytest.mark.parametrize("options, message", [({"mode": "float16"}, "--mode float16: choose one of dynamic, static"),
                                              ({"mode": "static", "calibration": 0}, "--calibration 0")])
def test_bad_options_are_refused_in_one_line(study, options, message, tmp_path):
    model = load_run(record_path(study, "linear"))
    with pytest.raises(TransferlabError) as error:
        quantize_run(model, out=tmp_path, **options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_a_failing_quantization_is_one_line_with_what_to_try(linear, study, monkeypatch):
    model = linear[0]

    def broken(prepared, out, kept):
        raise KeyError("no quantization parameters for tensor 'x'\nsecond line")

    monkeypatch.setattr(quantize_module, "quantize_dynamic", broken)
    with pytest.raises(TransferlabError) as error:
        quantize_run(model, mode="dynamic")
    text = str(error.value)
    assert "\n" not in text and model.record["run_id"] in text and "--mode static" in text
    assert np.all([not p.name.startswith(".model.int8") for p in default_export_dir(model).iterdir()])
