"""Tests of autotune.measure.harness.hardware: fingerprint, capabilities, peak FLOP/s, cost."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time

import pytest

from autotune.errors import DependencyError
from autotune.measure.harness import cpu, gpu, hardware, peak
from autotune.measure.harness.hardware import (
    DEFAULT_PRICES_USD_PER_HOUR,
    Fingerprint,
    cost_usd_per_million,
    default_price_per_hour,
    detect_capabilities,
    fingerprint,
    measure_peak_gflops,
    peak_gflops_cached,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux probes")


def _fake(**overrides) -> Fingerprint:
    base = {
        "cpu_model": "Intel Xeon Test",
        "cpu_arch": "x86_64",
        "physical_cores": 2,
        "logical_cores": 4,
        "cpu_flags": ("avx2", "fma", "avx512_vnni"),
        "memory_total_mb": 24000.0,
        "os": "Linux 6.1",
        "python": "CPython 3.11.7",
        "gpus": (),
        "libraries": {"torch": "2.13.0", "numpy": "2.4.6"},
        "ort_providers": ("CPUExecutionProvider",),
        "usable_cores": 4,
    }
    base.update(overrides)
    return Fingerprint(**base)


# ------------------------------------------------------------------------------------------------
# fingerprint


@linux_only
def test_fingerprint_is_populated_here():
    fp = fingerprint()
    assert fp.cpu_model and fp.cpu_model != "unknown"
    assert fp.cpu_arch != "unknown"
    assert fp.logical_cores >= 1 and 1 <= fp.physical_cores <= fp.logical_cores
    assert 1 <= fp.usable_cores <= fp.logical_cores
    assert fp.memory_total_mb > 0
    assert fp.os.startswith("Linux")
    assert fp.python.endswith(platform.python_version())
    assert set(fp.cpu_flags) <= set(hardware.RELEVANT_CPU_FLAGS)
    assert fp.libraries["numpy"] and fp.libraries["autotune"]
    assert fingerprint() is fp  # cached for the process


def test_fingerprint_round_trip_and_digest():
    fp = fingerprint()
    d = json.loads(json.dumps(fp.to_dict()))
    back = Fingerprint.from_dict(d)
    assert back == fp
    assert back.digest() == fp.digest() == fingerprint(refresh=True).digest()
    assert len(fp.digest()) == 16 and int(fp.digest(), 16) >= 0
    assert hash(back) == hash(fp)


def test_digest_ignores_software_but_not_hardware():
    fp = _fake()
    same_hw = dataclasses.replace(
        fp,
        libraries={"torch": "9.9", "numpy": "0.1", "onnxruntime": None},
        os="Linux 7.0",
        python="CPython 3.13.0",
        ort_providers=(),
        memory_total_mb=24010.0,  # a few MiB of kernel reservation moved
    )
    assert same_hw.digest() == fp.digest()
    assert dataclasses.replace(fp, cpu_flags=("avx2",)).digest() != fp.digest()
    assert dataclasses.replace(fp, physical_cores=4).digest() != fp.digest()
    gpu = {
        "name": "NVIDIA H100",
        "memory_mb": 81559.0,
        "driver": "550",
        "compute_capability": "9.0",
    }
    with_gpu = dataclasses.replace(fp, gpus=(gpu,))
    assert with_gpu.digest() != fp.digest()
    newer_driver = dataclasses.replace(fp, gpus=({**gpu, "driver": "570"},))
    assert newer_driver.digest() == with_gpu.digest()


def test_short():
    fp = _fake()
    assert fp.short() == "Intel Xeon Test · 2 cores/4 threads · AVX2 FMA AVX512-VNNI · 23.4 GiB"
    gpu = {
        "name": "NVIDIA H200",
        "memory_mb": 143771.0,
        "driver": "570",
        "compute_capability": "9.0",
    }
    two = dataclasses.replace(fp, physical_cores=4, gpus=(gpu, gpu))
    assert two.short().endswith(
        "· 4 cores · AVX2 FMA AVX512-VNNI · 23.4 GiB · 2× NVIDIA H200 (140 GiB)"
    )


def test_from_dict_tolerates_old_records():
    fp = Fingerprint.from_dict({"cpu_model": "x", "logical_cores": 8})
    assert fp.usable_cores == 8 and fp.memory_total_mb == 0.0 and fp.gpus == ()


def test_flag_normalization():
    assert cpu.relevant_flags({"AVX512VNNI", "FMA3", "SSE42", "avx2", "bogus"}) == (
        "sse4_2",
        "fma",
        "avx2",
        "avx512_vnni",
    )


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/cpuinfo").is_file(),
                    reason="reads /proc/cpuinfo")
def test_proc_cpuinfo_gives_what_py_cpuinfo_gives():
    """On Linux the kernel's file is read directly (py-cpuinfo would start a subprocess); it must
    say what py-cpuinfo says."""
    info = pytest.importorskip("cpuinfo").get_cpu_info()
    if info.get("brand_raw"):
        assert cpu.cpu_model() == info["brand_raw"]
    if info.get("flags"):
        assert cpu.cpu_flags() == cpu.relevant_flags(set(info["flags"]))
    psutil = pytest.importorskip("psutil")
    assert fingerprint().physical_cores == psutil.cpu_count(logical=False)


def test_cpu_flags_from_py_cpuinfo_where_the_kernel_has_no_file(monkeypatch):
    monkeypatch.setattr(cpu, "_proc_cpuinfo", dict)
    monkeypatch.setattr(cpu, "_py_cpuinfo", lambda: {"brand_raw": "Apple M3",
                                                     "flags": ["fp16", "i8mm", "bf16", "x"]})
    monkeypatch.setattr(cpu.platform, "machine", lambda: "arm64")
    assert cpu.cpu_model() == "Apple M3"
    assert cpu.cpu_flags() == ("neon", "asimd", "i8mm", "bf16")


class _FakeNVML:
    """pynvml's calls used by autotune.measure.harness.gpu, over two GPUs."""

    class _Mem:
        total = 150_754_820_096  # bytes (143771 MiB)

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init, self.shutdown = fail_init, 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlSystemGetDriverVersion(self):
        return "570.86.15"

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return ["NVIDIA H200", "NVIDIA L4"][h]

    def nvmlDeviceGetMemoryInfo(self, h):
        return self._Mem()

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return [(9, 0), (8, 9)][h]

    def nvmlDeviceGetUUID(self, h):
        return ["GPU-aaaa-1111", "GPU-bbbb-2222"][h]


def test_gpus_from_nvml_follow_cuda_visible_devices(monkeypatch):
    fake = _FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    h200 = {"name": "NVIDIA H200", "memory_mb": 143771.0, "driver": "570.86.15",
            "compute_capability": "9.0"}
    l4 = {**h200, "name": "NVIDIA L4", "compute_capability": "8.9"}
    assert gpu.gpus() == (h200, l4) and fake.shutdown == 1
    for visible, expected in (("1", (l4,)), ("1,0", (l4, h200)), ("GPU-bbbb", (l4,)),
                              ("", ()), ("0,7,1", (h200,)), ("-1", ())):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpu.gpus() == expected, visible
    # no NVIDIA driver: no GPUs (and no error)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML(fail_init=True))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.gpus() == ()


def test_the_digest_of_a_recorded_fingerprint_is_unchanged():
    """Digests stored in studies, bundles and caches stay valid: the same recorded machine hashes
    as it always has (value computed before the probing moved to psutil/py-cpuinfo/NVML)."""
    recorded = _fake(gpus=({"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559.0,
                            "driver": "550", "compute_capability": "9.0"},))
    assert recorded.digest() == "5c629cae2a83c009"
    assert _fake().digest() == "1c8c9fc58de97d58"


# ------------------------------------------------------------------------------------------------
# capabilities


def test_detect_capabilities_here():
    caps = detect_capabilities()
    flags = set(fingerprint().cpu_flags)
    assert caps.cpu_bf16 == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert caps.cpu_vnni == bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
    assert caps.tensorrt == ("TensorrtExecutionProvider" in caps.ort_providers)
    if caps.ort_available:
        assert "CPUExecutionProvider" in caps.ort_providers
    json.dumps(caps.to_dict())
    if not caps.cuda:  # this (CI) machine has no GPU
        assert caps.cuda_devices == 0 and not caps.cuda_bf16 and not caps.cuda_fp16


def test_no_cuda_on_this_machine():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert detect_capabilities().cuda is False
    with pytest.raises(DependencyError, match="cuda"):
        measure_peak_gflops("cuda", seconds=0.1, size=64)


@pytest.mark.gpu
def test_gpu_capabilities_and_peak():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    caps = detect_capabilities()
    assert caps.cuda and caps.cuda_devices >= 1 and caps.cuda_fp16
    fp = fingerprint()
    assert fp.gpus and fp.gpus[0]["memory_mb"] > 0 and fp.gpus[0]["name"]
    assert measure_peak_gflops("cuda", dtype="float16", seconds=0.3, size=2048) > 0
    assert default_price_per_hour(fp, "cuda", 1) > 0


# ------------------------------------------------------------------------------------------------
# peak FLOP/s


def test_measure_peak_gflops_small_and_fast():
    pytest.importorskip("torch")
    t0 = time.process_time()  # this process's CPU time: other processes' load is not in it
    g = measure_peak_gflops(seconds=0.3, size=128, threads=1)
    assert time.process_time() - t0 < 2.0
    assert g > 0 and math.isfinite(g)
    assert measure_peak_gflops(seconds=0.3, size=128, threads=1) == g  # cached


def test_peak_gflops_cached_on_disk(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    calls = []

    def fake_measure(device, dtype, seconds, size, threads):
        calls.append((device, dtype, size, threads))
        return 123.5

    monkeypatch.setattr(peak, "measure_peak_gflops", fake_measure)
    assert peak_gflops_cached(tmp_path, seconds=0.1, size=64, threads=1) == 123.5
    assert peak_gflops_cached(tmp_path, seconds=0.1, size=64, threads=1) == 123.5
    assert len(calls) == 1
    data = json.loads((tmp_path / "peak_gflops.json").read_text())
    (key,) = data["entries"]
    assert key.startswith(fingerprint().digest() + "|torch=")
    assert "|cpu|float32|threads=1|size=64" in key
    peak_gflops_cached(tmp_path, seconds=0.1, size=96, threads=1)  # another size: measured
    assert len(calls) == 2
    (tmp_path / "peak_gflops.json").write_text("{not json")
    assert peak_gflops_cached(tmp_path, seconds=0.1, size=64, threads=1) == 123.5
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "The 'device' parameter of measure_peak_gflops must be"),
        ({"dtype": "int8"}, "The 'dtype' parameter of measure_peak_gflops must be one of"),
        ({"seconds": 0}, "The 'seconds' parameter of measure_peak_gflops must be a positive"),
        ({"size": 8}, "The 'size' parameter of measure_peak_gflops must be an int in [16, inf)"),
        ({"threads": 0}, "The 'threads' parameter of measure_peak_gflops must be an int in [1"),
    ],
)
def test_measure_peak_gflops_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        measure_peak_gflops(**kwargs)
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------------
# cost


def test_cost_arithmetic():
    # $3.60/h = $0.001/s; 0.5 s per batch of 10 = 0.05 s per item -> $50 per million
    assert cost_usd_per_million(0.5, 10, 3.6) == pytest.approx(50.0, rel=1e-12)
    # $0.048/h per core x 2 cores, 4 ms per item -> 0.096/3600 * 0.004 * 1e6 = $0.10666...
    assert cost_usd_per_million(0.004, 1, 0.096) == pytest.approx(0.096 * 4000 / 3600, rel=1e-12)
    assert cost_usd_per_million(0.004, 1, 0.096) == pytest.approx(0.10666666666666667, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0.0, 1, 1.0), "latency_s_per_batch"),
        ((-1.0, 1, 1.0), "latency_s_per_batch"),
        ((float("nan"), 1, 1.0), "latency_s_per_batch"),
        ((1.0, 0, 1.0), "batch_size"),
        ((1.0, 2.5, 1.0), "batch_size"),
        ((1.0, 1, 0.0), "price_per_hour"),
    ],
)
def test_cost_validation(args, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of cost_usd_per_million"):
        cost_usd_per_million(*args)


def test_default_price_per_hour():
    cpu = _fake()
    assert default_price_per_hour(cpu, "cpu", 4) == pytest.approx(
        4 * DEFAULT_PRICES_USD_PER_HOUR["cpu-core"]
    )
    gpus = (
        {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559.0},
        {"name": "NVIDIA L40", "memory_mb": 46068.0},  # not an "L4"
        {"name": "NVIDIA A100-SXM4-80GB", "memory_mb": 81920.0},
    )
    fp = _fake(gpus=gpus)
    assert default_price_per_hour(fp, "cuda", 8) == DEFAULT_PRICES_USD_PER_HOUR["gpu:H100"]
    assert default_price_per_hour(fp, "cuda:1", 1) == DEFAULT_PRICES_USD_PER_HOUR["gpu:default"]
    assert default_price_per_hour(fp, "cuda:2", 1) == DEFAULT_PRICES_USD_PER_HOUR["gpu:A100"]
    assert default_price_per_hour(cpu, "gpu", 1) == DEFAULT_PRICES_USD_PER_HOUR["gpu:default"]
    own = {"cpu-core": 0.5, "gpu:default": 1.0}
    assert default_price_per_hour(cpu, "cpu", 2, prices=own) == 1.0
    with pytest.raises(ValueError, match="'threads' parameter of default_price_per_hour"):
        default_price_per_hour(cpu, "cpu", 0)
    with pytest.raises(ValueError, match="'device' parameter of default_price_per_hour"):
        default_price_per_hour(cpu, "tpu", 1)


# ------------------------------------------------------------------------------------------------
# a job asking for a device this machine lacks


@pytest.mark.skipif(detect_capabilities().cuda, reason="this machine has a CUDA device")
def test_job_asking_cuda_without_a_gpu_gets_a_notice_and_no_cuda_trials(tiny_job):
    from autotune.job.spec import load_job
    from autotune.tuning import tuner

    path = tiny_job(
        3,
        **{
            "    runtime: [onnxruntime, torch]": "    device: [cpu, cuda]\n    runtime: [torch]",
            "    quantization: [fp32, int8_dynamic]": "    quantization: [fp32]",
            "agent: {name: tpe, seed: 1}": (
                "agent: {name: random, seed: 1, warm_start: [{device: cuda, runtime: torch, "
                "quantization: fp32, pruning_ratio: 0.0, batch_size: 1, threads: 1}]}\n"
                "tracking: {enabled: false}"
            ),
        },
    )
    messages: list[str] = []
    summary = tuner.run(load_job(path), progress=tuner.Progress(on_message=messages.append))
    notice = [n for n in summary.notices if "cuda" in n]
    assert notice and "no CUDA device" in notice[0]
    assert any("no CUDA device" in m for m in messages)
    measured = [t for t in summary.trials if t.state in ("complete", "failed")]
    assert len(measured) == 3 and all(t.config["device"] == "cpu" for t in measured)
    cuda = [t for t in summary.trials if t.config.get("device") == "cuda"]
    assert len(cuda) == 1 and cuda[0].state == "invalid"  # the warm start was never measured
    assert "not runnable on this machine" in cuda[0].reason
