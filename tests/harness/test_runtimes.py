"""Runtimes and devices: real predictors (torch, ONNX Runtime sessions) for many configurations of
a tiny model, the machine restrictions of the space and the presets."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from autotune.core.space import PRESET_DIR, parse_space
from autotune.errors import TrialFailed
from autotune.job.spec import load_job
from autotune.measure.harness.hardware import detect_capabilities, fingerprint
from autotune.measure.workloads.forward import HARNESS_PARAMS, Evaluator, ort_providers
from autotune.measure.workloads.model import split_calibration
from autotune.tuning.tuner import restrict_to_machine

JOB = """
name: runtimes
model:
  factory: digits_model:build
  options: {hidden: 64, epochs: 3}
evaluation:
  dataset: digits_model:validation_data
  metric: accuracy
  max_samples: 200
  calibration_samples: 64
search_space:
  parameters:
    runtime: [onnxruntime, torch]
objectives: [latency_p95_ms, accuracy]
measurement: {warmup: 1, min_repeats: 3, max_repeats: 10, max_time_s: 0.1,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> Evaluator:
    import shutil
    from pathlib import Path

    d = tmp_path_factory.mktemp("runtimes")
    experiments = Path(__file__).resolve().parents[2] / "experiments"
    shutil.copy(experiments / "digits_model.py", d / "digits_model.py")
    (d / "job.yaml").write_text(JOB.lstrip())
    return Evaluator(load_job(d / "job.yaml"))


def outputs(ev: Evaluator, config: dict) -> tuple[np.ndarray, dict]:
    predict, info = ev._build(config)
    return ev._run_all(predict, 64), info


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


_VNNI = bool({"avx512_vnni", "avx_vnni"} & set(fingerprint().cpu_flags))
CONFIGS = [
    {"runtime": "torch", "quantization": "bf16"},
    {"runtime": "torch", "quantization": "fp16"},
    {"runtime": "torch", "quantization": "int8_dynamic", "threads": 1},
    {"runtime": "torch", "quantization": "int8_weight_only"},
    {"runtime": "onnxruntime", "graph_optimization": "disabled"},
    {"runtime": "onnxruntime", "graph_optimization": "basic", "execution_mode": "parallel",
     "inter_op_threads": 2},
    {"runtime": "onnxruntime", "quantization": "fp16"},
    {"runtime": "onnxruntime", "intra_op_spinning": False, "threads": 2},
    {"runtime": "onnxruntime", "quantization": "int8_dynamic", "per_channel": True,
     "weight_type": "uint8", "exclude_nodes": "last"},
    # full-range int8 weights saturate ONNX Runtime's u8s8 kernels on CPUs without VNNI (its
    # documented advice there: reduce_range); on AVX2-only machines the error reached 12 %
    {"runtime": "onnxruntime", "quantization": "int8_static", "quant_format": "qdq",
     "calibration": "percentile", "per_channel": True, "reduce_range": not _VNNI},
    {"runtime": "onnxruntime", "quantization": "int8_static", "quant_format": "qoperator",
     "activation_type": "uint8", "reduce_range": True, "quant_op_types": "MatMul,Gemm"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_predictors_compute_close_to_the_reference(evaluator, config):
    ref = evaluator.reference_outputs()
    out, info = outputs(evaluator, config)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert agreement(out, ref) >= 0.95
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.1
    steps = [s["transform"] for s in info["lineage"]]
    quant = config.get("quantization", "fp32")
    if config["runtime"] == "onnxruntime":
        assert steps[0] == "export_onnx"
        assert info["providers"] == ["CPUExecutionProvider"]
        assert info["model_path"].endswith(".onnx")
    if quant != "fp32":
        assert not np.array_equal(out, ref)  # really a different numeric format
        assert steps[-1] == {"torch": "quantize_torch"}.get(
            config["runtime"], f"ort_{quant}" if quant != "fp16" else "ort_fp16")


def test_pruning_methods_in_the_harness(evaluator):
    ref = evaluator.reference_outputs()
    for method in ("l1_unstructured", "structured", "gradient"):
        for runtime in ("torch", "onnxruntime"):
            cfg = {"runtime": runtime, "pruning_method": method, "pruning_ratio": 0.3}
            out, info = outputs(evaluator, cfg)
            assert out.shape == ref.shape
            assert info["lineage"][0]["transform"] == {
                "l1_unstructured": "prune_magnitude", "structured": "prune_structured",
                "gradient": "prune_gradient"}[method]
            if method == "structured":
                assert info["shrink"] == pytest.approx(0.3, abs=0.01)
            else:
                assert info["sparsity"] == pytest.approx(0.3, abs=0.01)
    # gradient pruning used the accuracy job's default loss on the calibration split
    grad = outputs(evaluator, {"runtime": "torch", "pruning_method": "gradient",
                               "pruning_ratio": 0.3})[1]["lineage"][0]
    assert grad["info"]["loss"] == "cross_entropy"


def test_second_build_hits_the_cache(evaluator):
    cfg = {"runtime": "onnxruntime", "quantization": "int8_static", "calibration": "entropy"}
    outputs(evaluator, cfg)
    _, info = outputs(evaluator, cfg)
    assert all(step["cached"] for step in info["lineage"])
    assert str(evaluator.cache_dir) in info["model_path"]


def test_calibration_is_disjoint_from_evaluation(evaluator):
    wl = evaluator.workload
    assert wl.n_samples == 200 and wl.calibration[0].shape[0] == 64 and wl.calibration_disjoint
    ev_rows = {r.tobytes() for r in wl.inputs[0]}
    assert not any(r.tobytes() in ev_rows for r in wl.calibration[0])


def test_split_calibration_rules():
    x = [np.arange(100)[:, None]]
    t = np.arange(100)
    ev, et, cal, ct, disjoint = split_calibration(x, t, 50, 20)  # room for both
    assert (et == np.arange(50)).all()
    assert (ev[0].ravel() == np.arange(50)).all() and (cal[0].ravel() == np.arange(50, 70)).all()
    assert (ct == np.arange(50, 70)).all() and disjoint
    ev, _, cal, _, disjoint = split_calibration(x, t, 1000, 20)  # carve the end off
    assert ev[0].shape[0] == 80 and (cal[0].ravel() == np.arange(80, 100)).all() and disjoint
    ev, _, cal, _, disjoint = split_calibration(x, None, 1000, 80)  # too few: overlap, flagged
    assert ev[0].shape[0] == 100 and cal[0].shape[0] == 80 and not disjoint


@pytest.mark.parametrize(("config", "match"), [
    ({"runtime": "torch", "device": "cuda"}, "no CUDA device"),
    ({"runtime": "onnxruntime", "execution_provider": "tensorrt", "device": "cuda"},
     "TensorrtExecutionProvider"),
    ({"runtime": "onnxruntime", "execution_provider": "cuda"}, "needs device 'cuda'"),
    ({"runtime": "torch", "quantization": "int8_static"}, "onnxruntime, openvino only"),
    ({"runtime": "onnxruntime", "quantization": "bf16"}, "not supported on onnxruntime"),
    ({"runtime": "onnxruntime", "quantization": "int4"}, "unknown quantization"),
    ({"runtime": "onnxruntime", "execution_mode": "eager"},
     "execution_mode must be one of sequential, parallel"),
    ({"runtime": "torch", "pruning_ratio": 0.2, "pruning_method": "random"}, "pruning_method"),
])
def test_configurations_that_cannot_run_fail_clearly(evaluator, config, match):
    import torch

    if config.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrialFailed, match=match):
        evaluator._build(config)


def test_provider_mapping():
    assert ort_providers({}) == ["CPUExecutionProvider"]
    assert ort_providers({"device": "cuda"})[0] == "CUDAExecutionProvider"
    assert ort_providers({"device": "cuda", "execution_provider": "tensorrt"}) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_evaluate_reports_lineage_and_providers(evaluator):
    r = evaluator.evaluate({"runtime": "onnxruntime", "quantization": "int8_dynamic",
                            "batch_size": 4})
    assert [s["transform"] for s in r.details["lineage"]] == ["export_onnx", "ort_int8_dynamic"]
    assert r.details["providers"] == ["CPUExecutionProvider"]
    assert r.details["calibration_disjoint"] is True
    assert 0.5 < r.metrics["quality"] <= 1.0


# ------------------------------------------------------------------ the space and the machine
CPU_ONLY = {"cuda": False, "cuda_bf16": False, "cuda_fp16": False, "cpu_bf16": False,
            "cpu_fp16": False, "ort_available": True,
            "ort_providers": ("CPUExecutionProvider",), "tensorrt": False}


def _space(params: dict):
    return parse_space({"parameters": params})


def test_restrict_removes_half_precision_on_cpu_torch_visibly():
    space = _space({"device": [cpu := "cpu", "cuda"], "runtime": ["torch", "onnxruntime"],
                    "quantization": ["fp32", "fp16", "bf16"],
                    "execution_provider": ["cpu", "cuda", "tensorrt"]})
    assert cpu == "cpu"
    out, notices = restrict_to_machine(space, CPU_ONLY)
    text = "\n".join(notices)
    assert "device = cuda" in text and "execution_provider = cuda, tensorrt" in text
    assert "quantization = fp16 with device=cpu, runtime=torch" in text
    assert "quantization = bf16 with device=cpu, runtime=torch" in text
    cfg = {"device": "cpu", "runtime": "torch", "quantization": "bf16", "execution_provider": "cpu"}
    assert "no native bf16" in out.invalid_reason(cfg)
    assert out.invalid_reason({**cfg, "runtime": "onnxruntime", "quantization": "fp16"}) is None
    # a CPU with bf16 keeps bf16
    _, notices = restrict_to_machine(space, {**CPU_ONLY, "cpu_bf16": True})
    assert not any("bf16" in n for n in notices)


def test_restrict_with_fixed_runtime_and_gpu():
    space = _space({"quantization": ["fp32", "fp16"]})
    _, notices = restrict_to_machine(space, CPU_ONLY, runtime_default="onnxruntime")
    assert notices == []  # fp16 on ONNX Runtime's CPU provider is fine
    out, notices = restrict_to_machine(space, CPU_ONLY, runtime_default="torch")
    assert out.invalid_reason({"quantization": "fp16"})
    gpu = {**CPU_ONLY, "cuda": True, "cuda_fp16": True, "cuda_bf16": False,
           "ort_providers": ("CUDAExecutionProvider", "CPUExecutionProvider")}
    space = _space({"device": ["cuda"], "quantization": ["fp32", "bf16"],
                    "execution_provider": ["cuda", "tensorrt"]})
    out, notices = restrict_to_machine(space, gpu)
    assert any("bf16 with device=cuda" in n for n in notices)
    assert out["execution_provider"].choices == ("cuda",)


@pytest.mark.parametrize("preset", ["cpu-inference", "cpu-inference-full", "gpu-inference"])
def test_presets_use_known_parameters(preset):
    import yaml

    space = parse_space(yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text()), name=preset)
    assert all(p.name in HARNESS_PARAMS for p in space)
    if preset == "cpu-inference-full":
        assert {"quant_format", "per_channel", "reduce_range", "weight_type", "activation_type",
                "calibration", "quant_op_types", "exclude_nodes", "pruning_method",
                "pruning_scope", "execution_mode", "inter_op_threads"} <= set(space.names)
        # conditional: calibration exists only for static int8
        assert space.validate({"device": "cpu", "runtime": "torch", "quantization": "fp32",
                               "calibration": "minmax", "pruning_method": "structured",
                               "pruning_ratio": 0.0, "batch_size": 1, "threads": 1})
        assert "cannot be combined" in space.invalid_reason(
            {"runtime": "onnxruntime", "quantization": "bf16"})
    if preset != "gpu-inference":
        caps = asdict(detect_capabilities())
        restricted, _ = restrict_to_machine(space, caps, runtime_default="torch")
        assert "device" in restricted


def test_quickstart_preset_configs_all_build(evaluator):
    """Every valid combination of the quickstart preset's transform knobs builds and runs."""
    import itertools

    import yaml

    space = parse_space(yaml.safe_load((PRESET_DIR / "cpu-inference.yaml").read_text()))
    space, _ = restrict_to_machine(space, asdict(detect_capabilities()), runtime_default="torch")
    seen = 0
    for runtime, quant, method in itertools.product(
            space["runtime"].choices, space["quantization"].choices,
            space["pruning_method"].choices):
        cfg = {"device": "cpu", "runtime": runtime, "quantization": quant,
               "pruning_method": method, "pruning_ratio": 0.2}
        if quant == "int8_static":
            cfg["calibration"] = "percentile"
            if runtime == "onnxruntime":
                cfg["per_channel"] = True
        if space.invalid_reason(cfg):
            continue
        out, _ = outputs(evaluator, cfg)
        assert np.isfinite(out).all()
        seen += 1
    assert seen >= 8


# ------------------------------------------------------------------ GPU
def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
@pytest.mark.parametrize("quant", ["fp32", "fp16", "bf16"])
def test_torch_cuda(evaluator, quant):
    ref = evaluator.reference_outputs()
    out, _ = outputs(evaluator, {"runtime": "torch", "device": "cuda", "quantization": quant})
    assert agreement(out, ref) >= 0.95


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
def test_ort_cuda_provider(evaluator):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider")
    ref = evaluator.reference_outputs()
    out, info = outputs(evaluator, {"runtime": "onnxruntime", "device": "cuda",
                                    "quantization": "fp16"})
    assert info["providers"][0] == "CUDAExecutionProvider"
    assert agreement(out, ref) >= 0.95


# ------------------------------------------------------------------ other job kinds
def test_custom_loss_and_onnx_file_jobs(write_job, tmp_path):
    """evaluation.loss drives gradient pruning; an ONNX-file model goes through the ORT transforms
    (and cannot be pruned)."""
    (tmp_path / "losses.py").write_text(
        "import torch\n\ncalls = []\n\n"
        "def margin(outputs, targets):\n"
        "    calls.append(len(targets))\n"
        "    return torch.nn.functional.multi_margin_loss(outputs, targets.long())\n"
    )
    job = load_job(write_job(JOB.replace("calibration_samples: 64",
                                         "calibration_samples: 64\n  loss: losses:margin")))
    ev = Evaluator(job)
    _, info = outputs(ev, {"runtime": "torch", "pruning_method": "gradient", "pruning_ratio": 0.4})
    assert info["lineage"][0]["info"]["loss"] == "losses:margin"
    assert info["sparsity"] == pytest.approx(0.4, abs=0.01)
    import sys

    assert sum(sys.modules["losses"].calls) == 64  # the calibration split, once

    onnx_path = ev._build({"runtime": "onnxruntime"})[1]["model_path"]
    import shutil

    shutil.copy(onnx_path, tmp_path / "digits.onnx")
    text = JOB.replace("factory: digits_model:build\n  options: {hidden: 64, epochs: 3}",
                       "onnx: digits.onnx").replace("metric: accuracy", "metric: cosine").replace(
                           "objectives: [latency_p95_ms, accuracy]", "objectives: [latency_p95_ms, cosine]")
    ev2 = Evaluator(load_job(write_job(text, name="onnx.yaml")))
    out, info = outputs(ev2, {"runtime": "onnxruntime", "quantization": "int8_static",
                              "exclude_nodes": "first"})
    assert [s["transform"] for s in info["lineage"]] == ["ort_int8_static"]
    assert agreement(out, ev2.reference_outputs()) >= 0.95
    with pytest.raises(TrialFailed, match="pruning needs a torch model"):
        ev2._build({"runtime": "onnxruntime", "pruning_ratio": 0.3})


def test_spec_checks_loss_and_dynamic_axes(write_job):
    from autotune.errors import SpecError

    with pytest.raises(SpecError, match=r"evaluation\.loss"):
        load_job(write_job(JOB.replace("calibration_samples: 64",
                                       "calibration_samples: 64\n  loss: cross entropy")))
    job = load_job(write_job(JOB.replace("options: {hidden: 64, epochs: 3}",
                                         "options: {hidden: 64, epochs: 3}\n"
                                         "  dynamic_axes: {input_0: {1: frames}}")))
    assert job.model.dynamic_axes == {"input_0": {1: "frames"}}
