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
        from autotune.harness.hardware import (
            cost_usd_per_million,
            default_price_per_hour,
            fingerprint,
        )
        from autotune.harness.stats import measure

        m = self.job.measurement
        wl = self.workload
        t0 = time.perf_counter()
        with _PeakRSS() as rss:
            predict, info = self._build(config)
            batch_size = int(config.get("batch_size", 1))
            batch = wl.batch(batch_size)
            try:
                outputs = self._run_all(predict, max(batch_size, 64))
                quality = float(wl.quality_fn(outputs, wl.targets))
                from autotune.harness.hostlock import measure_lock

                with measure_lock():  # never two latency measurements at once on this host
                    stats = measure(
                        lambda: predict(batch), warmup=m.warmup, min_repeats=m.min_repeats,
                        max_repeats=m.max_repeats, target_ci=m.target_ci,
                        max_time_s=m.max_time_s,
                    )
            except TrialFailed:
                raise
            except Exception as exc:  # the runtime refused this configuration
                raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        metrics: dict[str, float] = dict(stats.as_metrics())
        metrics["throughput_ips"] = batch_size / (stats.p50_ms / 1000.0)
        metrics["peak_memory_mb"] = rss.peak_mb
        metrics["model_size_mb"] = os.path.getsize(info["model_path"]) / 2**20
        metrics["quality"] = quality
        if "sparsity" in info:
            metrics["sparsity"] = float(info["sparsity"])
        fp = fingerprint()
        threads = int(config.get("threads") or os.cpu_count() or 1)
        price = m.price_per_hour or default_price_per_hour(fp, "cpu", threads)
        metrics["cost_usd_per_million"] = cost_usd_per_million(
            stats.p50_ms / 1000.0, batch_size, price
        )
        details = {
            "latency": stats.to_dict(),
            "model_path": info["model_path"],
            "price_per_hour": price,
            "fingerprint_digest": fp.digest(),
            "elapsed_s": time.perf_counter() - t0,
        }
        return TrialResult(metrics=metrics, details=details)

    def compare(self, configs: Mapping[str, Mapping[str, Any]], rounds: int) -> dict[str, Any]:
        """Latency of several configurations measured side by side (interleaved rounds,
        ``stats.alternate``); per name the list of per-round summaries (``to_dict``)."""
        from autotune.harness.stats import alternate

        m = self.job.measurement
        wl = self.workload
        fns = {}
        for name, config in configs.items():
            try:
                predict, _ = self._build(config)
            except TrialFailed:
                raise
            except Exception as exc:
                raise TrialFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
            batch = wl.batch(int(config.get("batch_size", 1)))
            fns[name] = (lambda p, b: lambda: p(b))(predict, batch)
        from autotune.harness.hostlock import measure_lock

        with measure_lock():
            out = alternate(fns, rounds, warmup=m.warmup, min_repeats=m.min_repeats,
                            max_repeats=m.max_repeats, target_ci=m.target_ci,
                            max_time_s=m.max_time_s)
        return {name: [s.to_dict() for s in stats] for name, stats in out.items()}

    def capabilities(self) -> dict[str, Any]:
        from dataclasses import asdict

        from autotune.harness.hardware import detect_capabilities

        return asdict(detect_capabilities())

    def fingerprint(self) -> dict[str, Any]:
        from autotune.harness.hardware import fingerprint

        return fingerprint().to_dict()
