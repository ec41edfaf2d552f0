"""Apply a configuration to the model and measure it.  Runs inside the measuring process.

The harness knows nothing about agents: it gets a configuration (a dict of the parameter names
below) and returns an immutable :class:`TrialResult`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import TrialFailed
from autotune.spec import Job

#: configuration keys the harness understands, with their meaning and default
HARNESS_PARAMS: dict[str, tuple[str, Any]] = {
    "runtime": ("torch | onnxruntime", None),
    "device": ("cpu (cuda where present)", "cpu"),
    "quantization": ("fp32 | int8_dynamic", "fp32"),
    "pruning_ratio": ("share of weights zeroed by L1 magnitude, in [0, 1)", 0.0),
    "pruning_scope": ("global | layer", "global"),
    "batch_size": ("items per inference call", 1),
    "threads": ("intra-op threads", None),
    "graph_optimization": ("ONNX Runtime: disabled | basic | extended | all", "all"),
}

Predict = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class TrialResult:
    """What one measured configuration produced."""

    metrics: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _PeakRSS:
    """Samples the process's resident memory in the background; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = self._proc.memory_info().rss
        self.start_mb = self.peak / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class Evaluator:
    """Builds and measures configurations of one job's model (lives in the measuring process)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cache_dir = job.out_dir / "cache"
        self._workload = None
        self._reference: np.ndarray | None = None
        self._peak_gflops: dict[str, float] = {}

    # ------------------------------------------------------------------ model
    @property
    def workload(self):  # type: ignore[no-untyped-def]
        if self._workload is None:
            from autotune.harness.workload import fidelity_fn, load_workload

            self._workload = load_workload(self.job)
            if self.job.evaluation.is_fidelity:
                self._workload.quality_fn = fidelity_fn(
                    self.job.evaluation.metric, self.reference_outputs()
                )
        return self._workload

    def reference_outputs(self) -> np.ndarray:
        """Outputs of the unmodified model (fp32) on the evaluation inputs."""
        if self._reference is None:
            from autotune.harness.workload import load_workload

            wl = self._workload or load_workload(self.job)
            self._workload = wl
            predict, _ = self._build({"runtime": "torch" if wl.module is not None else
                                      "onnxruntime", "quantization": "fp32"})
            self._reference = self._run_all(predict, 256)
        return self._reference

    def _build(self, config: Mapping[str, Any]) -> tuple[Predict, dict[str, Any]]:
        wl = self.workload if self._workload is None else self._workload
        runtime = config.get("runtime") or ("torch" if wl.module is not None else "onnxruntime")
        quant = config.get("quantization", "fp32")
        ratio = float(config.get("pruning_ratio", 0.0) or 0.0)
        scope = config.get("pruning_scope", "global")
        device = config.get("device", "cpu")
        threads = config.get("threads")
        if device != "cpu":
            raise TrialFailed(f"device '{device}' is not supported by this harness yet")
        info: dict[str, Any] = {"runtime": runtime}
        module = wl.module
        if ratio > 0:
            if module is None:
                raise TrialFailed("pruning needs a torch model (the job's model is an ONNX file)")
            from autotune.transforms.prune import magnitude_prune, sparsity

            module = magnitude_prune(module, ratio, scope=scope)
            info["sparsity"] = sparsity(module)
        if runtime == "torch":
            import torch

            if module is None:
                raise TrialFailed("the torch runtime needs a torch model, not an ONNX file")
            if threads:
                torch.set_num_threads(int(threads))
            if quant == "int8_dynamic":
                from autotune.transforms.quantize import torch_int8_dynamic

                module = torch_int8_dynamic(module)
            elif quant != "fp32":
                raise TrialFailed(f"quantization '{quant}' is not supported on the torch runtime")
            path = self.cache_dir / f"torch-{_digest(wl.model_id, ratio, scope, quant)}.pt"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(module.state_dict(), path)
            info["model_path"] = str(path)
            mod = module

            def predict(batch: list[np.ndarray]) -> np.ndarray:
                with torch.inference_mode():
                    out = mod(*[torch.from_numpy(x) for x in batch])
                return out.numpy()

            return predict, info
        if runtime == "onnxruntime":
            path = self._onnx_model(module, ratio, scope, quant)
            info["model_path"] = str(path)
            return self._ort_predictor(path, config), info
        raise TrialFailed(f"unknown runtime '{runtime}'")

    def _onnx_model(self, module: Any, ratio: float, scope: str, quant: str) -> Path:
        wl = self.workload if self._workload is None else self._workload
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if module is None:
            fp32 = wl.onnx_path
        else:
            fp32 = self.cache_dir / f"fp32-{_digest(wl.model_id, ratio, scope)}.onnx"
            if not fp32.exists():
                from autotune.transforms.convert import export_onnx

                tmp = fp32.with_suffix(f".{os.getpid()}.tmp.onnx")
                export_onnx(module, wl.example_inputs(), tmp)
                tmp.replace(fp32)
        if quant == "fp32":
            return fp32
        if quant == "int8_dynamic":
            out = self.cache_dir / f"int8dyn-{_digest(wl.model_id, ratio, scope)}.onnx"
            if not out.exists():
                from autotune.transforms.quantize import ort_int8_dynamic

                tmp = out.with_suffix(f".{os.getpid()}.tmp.onnx")
                ort_int8_dynamic(fp32, tmp)
                tmp.replace(out)
            return out
        raise TrialFailed(f"quantization '{quant}' is not supported on onnxruntime")

    @staticmethod
    def _ort_predictor(path: Path, config: Mapping[str, Any]) -> Predict:
        import onnxruntime as ort

        so = ort.SessionOptions()
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so.graph_optimization_level = levels[config.get("graph_optimization", "all")]
        if config.get("threads"):
            so.intra_op_num_threads = int(config["threads"])
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def predict(batch: list[np.ndarray]) -> np.ndarray:
            return sess.run(None, dict(zip(names, batch, strict=True)))[0]

        return predict

    # ------------------------------------------------------------------ measuring
    def _run_all(self, predict: Predict, chunk: int) -> np.ndarray:
        wl = self._workload
        outs = []
        for start in range(0, wl.n_samples, chunk):
            outs.append(np.asarray(predict([x[start:start + chunk] for x in wl.inputs])))
        return np.concatenate(outs, axis=0)

    def evaluate(self, config: Mapping[str, Any]) -> TrialResult:
        """Build ``config``, score its quality and time it; see README "Measurement".

        Memory: ``peak_memory_mb`` is the measuring process's absolute peak resident memory during
        this trial (interpreter, libraries and the loaded workload included); the process serves
        many trials, so ``model_memory_mb`` is the trial's own share: that peak minus the resident
        memory just before the configuration was built.  ``gpu_memory_mb`` is
        ``torch.cuda.max_memory_allocated`` after a peak reset (torch's allocator only; ONNX
        Runtime's CUDA arena is not visible to it), present only when the trial ran on a GPU.
        """
        from autotune.harness.hardware import cost_usd_per_million, default_price_per_hour
        from autotune.harness.isolate import measurement_lock
        from autotune.harness.stats import measure

        m = self.job.measurement
        wl = self.workload
        t0 = time.perf_counter()
        batch_size = int(config.get("batch_size", 1))
        device = str(config.get("device", "cpu"))
        gpu = self._reset_gpu_peak(device)
        timings: dict[str, float] = {}
        with _PeakRSS() as rss:
            before_mb = rss.start_mb
            predict, info = self._build(config)
            timings["build_s"] = time.perf_counter() - t0
            batch = wl.batch(batch_size)
            try:
                t1 = time.perf_counter()
                outputs = self._run_all(predict, max(batch_size, 64))
                quality = float(wl.quality_fn(outputs, wl.targets))
                timings["quality_s"] = time.perf_counter() - t1
                with measurement_lock() as waited:
                    t2 = time.perf_counter()
                    stats = measure(
                        lambda: predict(batch), warmup=m.warmup, min_repeats=m.min_repeats,
                        max_repeats=m.max_repeats, target_ci=m.target_ci,
                        max_time_s=m.max_time_s, sync=gpu,
                    )
                    timings["measure_s"] = time.perf_counter() - t2
                timings["lock_wait_s"] = waited
            except TrialFailed:
                raise
            except Exception as exc:  # the runtime refused this configuration
                raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        metrics: dict[str, float] = dict(stats.as_metrics())
        metrics["throughput_ips"] = batch_size / (stats.p50_ms / 1000.0)
        metrics["latency_per_item_ms"] = stats.p50_ms / batch_size
        metrics["peak_memory_mb"] = rss.peak_mb
        metrics["model_memory_mb"] = max(0.0, rss.peak_mb - before_mb)
        if gpu is not None:
            import torch

            metrics["gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        metrics["model_size_mb"] = os.path.getsize(info["model_path"]) / 2**20
        metrics["quality"] = quality
        if "sparsity" in info:
            metrics["sparsity"] = float(info["sparsity"])
        fp = self._fingerprint()
        threads = int(config.get("threads") or fp.usable_cores or os.cpu_count() or 1)
        price = m.price_per_hour or default_price_per_hour(fp, device, threads)
        metrics["cost_usd_per_million"] = cost_usd_per_million(
            stats.p50_ms / 1000.0, batch_size, price
        )
        roofline = self._roofline(batch_size, stats.p50_ms, device)
        metrics.update(roofline)
        details = {
            "latency": stats.to_dict(),
            "model_path": info["model_path"],
            "price_per_hour": price,
            "price_source": "measurement.price_per_hour" if m.price_per_hour else
            "hardware.DEFAULT_PRICES_USD_PER_HOUR",
            "fingerprint_digest": fp.digest(),
            "memory_before_build_mb": before_mb,
            "timings_s": timings,
            "elapsed_s": time.perf_counter() - t0,
        }
        return TrialResult(metrics=metrics, details=details)

    # ------------------------------------------------------------------ measuring helpers
    @staticmethod
    def _fingerprint():  # type: ignore[no-untyped-def]
        from autotune.harness.hardware import fingerprint

        return fingerprint()

    @staticmethod
    def _reset_gpu_peak(device: str) -> Callable[[], None] | None:
        """On a CUDA device: reset torch's peak-memory counter; returns the sync for timing."""
        if not device.startswith("cuda"):
            return None
        import torch

        if not torch.cuda.is_available():
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.synchronize

    def _roofline(self, batch_size: int, p50_ms: float, device: str) -> dict[str, float]:
        """``achieved_gflops`` and ``roofline_pct`` (empty when FLOPs or the peak are unknown).

        FLOPs: one forward of the unmodified model at the batch size (autotune.harness.flops).
        Peak: a large fp32 matmul on all usable cores (or the GPU), measured once per machine and
        cached in the job's cache directory -- under the measurement lock, as it is a timing too.
        """
        from autotune.harness.flops import forward_flops
        from autotune.harness.hardware import peak_gflops_cached
        from autotune.harness.isolate import measurement_lock

        try:
            flops = forward_flops(self._workload, batch_size, self.cache_dir)
        except Exception:  # an exotic graph: leave the metric out rather than fail the trial
            return {}
        if flops <= 0:
            return {}
        achieved = flops / (p50_ms / 1000.0) / 1e9
        out = {"achieved_gflops": achieved, "forward_gflop": flops / 1e9}
        dev = "cuda" if device.startswith("cuda") else "cpu"
        if dev not in self._peak_gflops:
            try:
                threads = None if dev == "cuda" else (self._fingerprint().usable_cores or None)
                with measurement_lock():
                    self._peak_gflops[dev] = peak_gflops_cached(
                        self.cache_dir, dev, threads=threads, seconds=0.5)
            except Exception:
                self._peak_gflops[dev] = 0.0
        if self._peak_gflops[dev]:
            out["roofline_pct"] = 100.0 * achieved / self._peak_gflops[dev]
        return out

    def capabilities(self) -> dict[str, Any]:
        from dataclasses import asdict

        from autotune.harness.hardware import detect_capabilities

        return asdict(detect_capabilities())

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint().to_dict()
