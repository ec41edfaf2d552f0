"""Apply a configuration to the model and measure it.  Runs inside the measuring process.

The harness knows nothing about agents: it gets a configuration (a dict of the parameter names
below) and returns an immutable :class:`TrialResult`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import TrialFailed
from autotune.harness import contention
from autotune.harness.flops import forward_flops
from autotune.harness.hardware import (
    cost_usd_per_million,
    default_price_per_hour,
    detect_capabilities,
    fingerprint,
    peak_gflops_cached,
)
from autotune.harness.hostlock import measurement_lock
from autotune.harness.ortsession import session_options
from autotune.harness.stats import alternate, measure
from autotune.harness.workload import fidelity_fn, load_workload
from autotune.spec import Job
from autotune.transforms.base import Context, ModelRef, apply, data_digest

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
    "pruning_method": ("l1_unstructured | structured (shrinks Linear/FFN units) | gradient "
                       "(|w·dL/dw|)", "l1_unstructured"),
    "quant_format": ("ONNX Runtime int8_static: qdq | qoperator", "qdq"),
    "per_channel": ("ONNX Runtime int8: one scale per output channel", False),
    "reduce_range": ("ONNX Runtime int8: 7-bit weights (CPUs without VNNI)", False),
    "weight_type": ("ONNX Runtime int8: int8 | uint8", "int8"),
    "activation_type": ("ONNX Runtime int8_static: int8 | uint8", "uint8"),
    "calibration": ("ONNX Runtime int8_static: minmax | entropy | percentile", "minmax"),
    "quant_op_types": ("ONNX Runtime int8: 'all' or op types, e.g. 'MatMul,Gemm'", "all"),
    "exclude_nodes": ("ONNX Runtime int8: nodes kept float: none | first | last | first_last | "
                      "comma-separated node names", "none"),
    "execution_provider": ("ONNX Runtime: cpu | cuda | tensorrt (default from device)", None),
    "execution_mode": ("ONNX Runtime: sequential | parallel", "sequential"),
    "inter_op_threads": ("threads running independent operators in parallel", None),
}
HARNESS_PARAMS["quantization"] = (
    "fp32 | fp16 | bf16 (torch) | int8_dynamic | int8_weight_only (torch) | int8_static "
    "(onnxruntime)", "fp32")
HARNESS_PARAMS["pruning_ratio"] = (
    "share of weights zeroed (unstructured) or hidden units removed (structured), in [0, 1)", 0.0)

#: the key of ``Evaluator.compare``'s result holding the contention seen while it measured
CONTENTION_KEY = "_contention"

QUANTIZATIONS = ("fp32", "fp16", "bf16", "int8_dynamic", "int8_weight_only", "int8_static")
#: harness config key -> ONNX Runtime quantization transform parameter
_ORT_QUANT_KEYS = {"per_channel": "per_channel", "reduce_range": "reduce_range",
                   "weight_type": "weight_type", "quant_op_types": "op_types",
                   "exclude_nodes": "exclude_nodes"}
_ORT_STATIC_KEYS = {"quant_format": "quant_format", "activation_type": "activation_type",
                    "calibration": "calibration"}
_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
              "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                           "CPUExecutionProvider"]}


def ort_providers(config: Mapping[str, Any]) -> list[str]:
    """ONNX Runtime providers for a configuration: ``execution_provider``, else from ``device``."""
    ep = config.get("execution_provider") or ("cuda" if config.get("device") == "cuda" else "cpu")
    if ep not in _PROVIDERS:
        raise TrialFailed(f"unknown execution_provider '{ep}' ({', '.join(_PROVIDERS)})")
    if config.get("device", "cpu") == "cpu" and ep != "cpu":
        raise TrialFailed(f"execution_provider '{ep}' needs device 'cuda'")
    return list(_PROVIDERS[ep])

Predict = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class TrialResult:
    """What one measured configuration produced."""

    metrics: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


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
        self._context: Any = None
        self._peak_gflops: dict[str, float] = {}

    # ------------------------------------------------------------------ model
    @property
    def workload(self):  # type: ignore[no-untyped-def]
        if self._workload is None:
            self._workload = load_workload(self.job)
            if self.job.evaluation.is_fidelity:
                self._workload.quality_fn = fidelity_fn(
                    self.job.evaluation.metric, self.reference_outputs()
                )
        return self._workload

    def reference_outputs(self) -> np.ndarray:
        """Outputs of the unmodified model (fp32) on the evaluation inputs."""
        if self._reference is None:
            wl = self._workload or load_workload(self.job)
            self._workload = wl
            predict, _ = self._build({"runtime": "torch" if wl.module is not None else
                                      "onnxruntime", "quantization": "fp32"})
            self._reference = self._run_all(predict, 256)
        return self._reference

    def context(self) -> Any:
        """The data transforms read: example inputs, the calibration split, the loss."""
        if self._context is None:
            wl = self.workload if self._workload is None else self._workload
            example = tuple(x[:2] for x in wl.inputs)
            cal = tuple(wl.calibration or ())
            self._context = Context(
                example_inputs=example, calibration=cal, calibration_targets=wl.calibration_targets,
                loss=wl.loss_fn, loss_name=wl.loss_name,
                dynamic_axes=dict(self.job.model.dynamic_axes) or None,
                digest=data_digest(*example, *cal, wl.calibration_targets) + wl.loss_name
                + repr(sorted(self.job.model.dynamic_axes.items())),
            )
        return self._context

    def _build(self, config: Mapping[str, Any]) -> tuple[Predict, dict[str, Any]]:
        wl = self.workload if self._workload is None else self._workload
        runtime = config.get("runtime") or ("torch" if wl.module is not None else "onnxruntime")
        quant = config.get("quantization", "fp32")
        ratio = float(config.get("pruning_ratio", 0.0) or 0.0)
        method = config.get("pruning_method", "l1_unstructured")
        scope = config.get("pruning_scope", "global")
        device = config.get("device", "cpu")
        if device not in ("cpu", "cuda"):
            raise TrialFailed(f"unknown device '{device}' (cpu or cuda)")
        if device == "cuda":
            import torch

            if runtime == "torch" and not torch.cuda.is_available():
                raise TrialFailed("device 'cuda' asked for, but torch sees no CUDA device")
        if quant not in QUANTIZATIONS:
            raise TrialFailed(f"unknown quantization '{quant}' ({', '.join(QUANTIZATIONS)})")
        ctx = self.context()
        cache = self.cache_dir
        info: dict[str, Any] = {"runtime": runtime}
        ref = (ModelRef.torch(wl.module, wl.model_id) if wl.module is not None
               else ModelRef.onnx(wl.onnx_path, wl.model_id))
        if ratio > 0:
            if ref.kind != "torch":
                raise TrialFailed("pruning needs a torch model (the job's model is an ONNX file)")
            if method == "l1_unstructured":
                ref = apply("prune_magnitude", ref, ctx, cache_dir=cache, ratio=ratio, scope=scope)
            elif method == "gradient":
                ref = apply("prune_gradient", ref, ctx, cache_dir=cache, ratio=ratio, scope=scope)
            elif method == "structured":
                ref = apply("prune_structured", ref, ctx, cache_dir=cache, ratio=ratio)
            else:
                raise TrialFailed(f"unknown pruning_method '{method}' "
                                  "(l1_unstructured, structured or gradient)")
        if runtime == "torch":
            if ref.kind != "torch":
                raise TrialFailed("the torch runtime needs a torch model, not an ONNX file")
            if quant == "int8_static":
                raise TrialFailed("int8_static is implemented for onnxruntime only; use "
                                  "int8_dynamic or int8_weight_only on torch")
            if quant != "fp32":
                ref = apply("quantize_torch", ref, ctx, cache_dir=cache, mode=quant)
            path = self.cache_dir / f"torch-{ref.model_id}.pt"
            if not path.exists():
                import torch

                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                torch.save(ref.module.state_dict(), tmp)
                tmp.replace(path)
            predict = self._torch_predictor(ref.module, config, info)
        elif runtime == "onnxruntime":
            if ref.kind == "torch":
                ref = apply("export_onnx", ref, ctx, cache_dir=cache)
            if quant in ("int8_dynamic", "int8_static"):
                params = {k: config[c] for c, k in _ORT_QUANT_KEYS.items() if c in config}
                if "exclude_nodes" in params and not params["exclude_nodes"]:
                    params["exclude_nodes"] = "none"
                if quant == "int8_static":
                    params.update({k: config[c] for c, k in _ORT_STATIC_KEYS.items() if c in config})
                    ref = apply("ort_int8_static", ref, ctx, cache_dir=cache, **params)
                else:
                    ref = apply("ort_int8_dynamic", ref, ctx, cache_dir=cache, **params)
            elif quant == "fp16":
                ref = apply("ort_fp16", ref, ctx, cache_dir=cache)
            elif quant != "fp32":
                raise TrialFailed(f"quantization '{quant}' is not supported on onnxruntime "
                                  "(fp32, fp16, int8_dynamic, int8_static)")
            path = ref.path
            predict = self._ort_predictor(path, config, info)
        else:
            raise TrialFailed(f"unknown runtime '{runtime}'")
        info["model_path"] = str(path)
        info["lineage"] = [step.to_dict() for step in ref.lineage]
        info.update({k: v for k, v in ref.info.items() if k in ("sparsity", "shrink")})
        return predict, info

    @staticmethod
    def _torch_predictor(module: Any, config: Mapping[str, Any], info: dict[str, Any]) -> Predict:
        import copy

        import torch

        threads = config.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        if config.get("inter_op_threads"):
            try:
                torch.set_num_interop_threads(int(config["inter_op_threads"]))
                info["inter_op_threads_applied"] = True
            except RuntimeError:  # only settable before the process's first parallel work
                info["inter_op_threads_applied"] = False
        device = config.get("device", "cpu")
        mod = module
        if device == "cuda":
            mod = copy.deepcopy(module).to("cuda")  # never move a cached module in place
        dtype = next((p.dtype for p in mod.parameters() if p.is_floating_point()), torch.float32)
        if dtype not in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        dev = torch.device(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def predict(batch: list[np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                xs = [torch.from_numpy(x).to(dev) for x in batch]
                xs = [x.to(dtype) if x.is_floating_point() else x for x in xs]
                out = mod(*xs)
                sync()
                return out.float().cpu().numpy()

        return predict

    @staticmethod
    def _ort_predictor(path: Path, config: Mapping[str, Any],
                       info: dict[str, Any] | None = None) -> Predict:
        import onnxruntime as ort

        try:
            so = session_options(config)
        except ValueError as exc:
            raise TrialFailed(str(exc)) from None
        providers = ort_providers(config)
        available = ort.get_available_providers()
        if providers[0] not in available:
            raise TrialFailed(f"ONNX Runtime here has no {providers[0]} "
                              f"(available: {', '.join(available)})")
        sess = ort.InferenceSession(str(path), so, providers=providers)
        if sess.get_providers()[0] != providers[0]:  # ORT falls back silently; we do not
            raise TrialFailed(f"{providers[0]} could not be used for this model "
                              f"(session got {', '.join(sess.get_providers())})")
        if info is not None:
            info["providers"] = sess.get_providers()
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
                with measurement_lock() as waited, self._contention() as busy:
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
            "lineage": info.get("lineage", []),
            **{k: info[k] for k in ("providers", "shrink", "inter_op_threads_applied") if k in info},
            "calibration_disjoint": bool(getattr(wl, "calibration_disjoint", True)),
            "price_per_hour": price,
            "price_source": "measurement.price_per_hour" if m.price_per_hour else
            "hardware.DEFAULT_PRICES_USD_PER_HOUR",
            "fingerprint_digest": fp.digest(),
            "memory_before_build_mb": before_mb,
            "timings_s": timings,
            "elapsed_s": time.perf_counter() - t0,
            "contention": busy.result.to_dict() if busy.result else None,
        }
        return TrialResult(metrics=metrics, details=details)

    def compare(self, configs: Mapping[str, Mapping[str, Any]], rounds: int) -> dict[str, Any]:
        """Latency of several configurations measured side by side (interleaved rounds,
        ``stats.alternate``); per name the list of per-round summaries (``to_dict``)."""
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
        with measurement_lock(), self._contention() as busy:
            out = alternate(fns, rounds, warmup=m.warmup, min_repeats=m.min_repeats,
                            max_repeats=m.max_repeats, target_ci=m.target_ci,
                            max_time_s=m.max_time_s)
        res: dict[str, Any] = {name: [s.to_dict() for s in stats] for name, stats in out.items()}
        res[CONTENTION_KEY] = busy.result.to_dict() if busy.result else None
        return res

    def _contention(self) -> Any:
        """Sample other processes' use of the cores around a measurement; wait a bounded time for
        quiet first (:mod:`autotune.harness.contention`)."""
        m = self.job.measurement

        def say(c: Any) -> None:
            print(f"contention: {c.describe()}; waiting up to {m.contention_wait_s:g} s for "
                  "quiet cores", flush=True)

        return contention.watch(wait_s=m.contention_wait_s,
                                threshold_pct=m.contention_threshold_pct, on_wait=say)

    # ------------------------------------------------------------------ measuring helpers
    @staticmethod
    def _fingerprint():  # type: ignore[no-untyped-def]
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

        return asdict(detect_capabilities())

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint().to_dict()
