"""The forward-pass workload: apply a configuration to the model and measure one forward pass
per measurement.  Runs inside the measuring process (chosen by
:func:`autotune.measure.workloads.registry.evaluator_for`).

The harness knows nothing about agents: it gets a configuration (a dict of the parameter names
below) and returns an immutable :class:`TrialResult`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.errors import AutotuneError, TrialFailed
from autotune.measure.harness import contention
from autotune.measure.harness.flops import forward_flops
from autotune.measure.harness.hardware import (
    cost_usd_per_million,
    default_price_per_hour,
    detect_capabilities,
    fingerprint,
    peak_gflops_cached,
)
from autotune.measure.harness.hostlock import measurement_lock
from autotune.measure.harness.result import PeakRSS, TrialResult
from autotune.measure.harness.stats import alternate, measure
from autotune.measure.runtimes import (
    declared_parameters,
    get_runtime,
    job_default_runtime,
    load_transform_plugins,
    parameter_table,
    runtimes,
)
from autotune.measure.runtimes.base import BuildContext
from autotune.measure.runtimes.onnxruntime import ort_providers as ort_providers  # (re-exported: it moved)
from autotune.measure.transforms.base import TRANSFORMS, Context, ModelRef, apply, data_digest, get_transform
from autotune.measure.workloads.model import fidelity_fn, load_workload

if TYPE_CHECKING:
    from autotune.job.spec import Job
    from autotune.measure.runtimes.base import Built, Parameter, Runtime

#: the key of ``Evaluator.compare``'s result holding the contention seen while it measured
CONTENTION_KEY = "_contention"


def __getattr__(name: str) -> Any:
    """``HARNESS_PARAMS`` ({key: (description, default)}) and ``QUANTIZATIONS``, derived from
    the declarations (:func:`autotune.measure.runtimes.declared_parameters`), not kept beside them."""
    if name == "HARNESS_PARAMS":
        return parameter_table()
    if name == "QUANTIZATIONS":
        return declared_parameters()["quantization"].choices
    raise AttributeError(name)


Predict = Callable[[list[np.ndarray]], np.ndarray]


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
            predict, _ = self._build({"quantization": "fp32"})
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
                + repr(sorted(self.job.model.dynamic_axes.items()))
                + repr((wl.input_names, wl.output_names)),
                input_names=wl.input_names, output_names=wl.output_names,
            )
        return self._context

    def _build(self, config: Mapping[str, Any]) -> tuple[Predict, dict[str, Any]]:
        """``predict(list of input arrays) -> first output`` and what was built (see
        :meth:`build`)."""
        _, built, info = self.build(config)
        return built.runner.positional(), info

    def build(self, config: Mapping[str, Any]) -> tuple[Runtime, Built, dict[str, Any]]:
        """Build ``config`` through its runtime: check every key against its declaration, prune
        (the pipeline), convert the model to the kind the runtime takes, then
        :meth:`Runtime.build`.  Raises :class:`TrialFailed` for a configuration that cannot run."""
        wl = self.workload if self._workload is None else self._workload
        name = config.get("runtime") or job_default_runtime(self.job)
        try:
            runtime = get_runtime(str(name))
        except AutotuneError as exc:
            raise TrialFailed(f"unknown runtime '{name}': {exc.hint or exc}") from None
        check_config(config, runtime, declared_parameters())
        ratio = float(config.get("pruning_ratio", 0.0) or 0.0)
        ctx = self.context()
        cache = self.cache_dir
        ref = (ModelRef.torch(wl.module, wl.model_id) if wl.module is not None
               else ModelRef.onnx(wl.onnx_path, wl.model_id))
        if ratio > 0:
            if ref.kind != "torch":
                raise TrialFailed("pruning needs a torch model (the job's model is an ONNX file)")
            method = config.get("pruning_method", "l1_unstructured")
            pruner = _pruner(str(method))
            params = {"ratio": ratio}
            if "scope" in get_transform(pruner).params:
                params["scope"] = config.get("pruning_scope", "global")
            ref = apply(pruner, ref, ctx, cache_dir=cache, **params)
        fusion = str(config.get("ort_fusion") or "none")
        if runtime.takes != ref.kind:
            if runtime.takes == "onnx" and ref.kind == "torch":  # fusion recognises TorchScript's
                ref = apply("export_onnx", ref, ctx, cache_dir=cache,
                            **({"exporter": "torchscript"} if fusion != "none" else {}))
            else:
                raise TrialFailed(f"the {runtime.name} runtime needs a {runtime.takes} model, not "
                                  f"{'an ONNX file' if ref.kind == 'onnx' else 'a ' + ref.kind}")
        if fusion != "none" and ref.kind == "onnx":  # transformer graph fusion, before int8
            from autotune.measure.transforms.fusion import fusion_params

            ref = apply("ort_fusion", ref, ctx, cache_dir=cache, model_type=fusion,
                        attention=str(config.get("ort_attention") or "fused"),
                        **fusion_params(wl.module))
        built = runtime.build(ref, config, BuildContext(ctx, cache))
        final = built.model_ref
        info: dict[str, Any] = {"runtime": runtime.name, **built.info,
                                "model_path": str(built.model_path),
                                "lineage": [step.to_dict() for step in final.lineage]}
        info.update({k: v for k, v in final.info.items() if k in ("sparsity", "shrink")})
        reason = runtime.exportable(config, built)
        if reason:
            info["not_exportable"] = reason
        return runtime, built, info

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
        with PeakRSS() as rss:
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
        metrics["model_size_mb"] = (info.get("model_size_bytes")
                                    or os.path.getsize(info["model_path"])) / 2**20
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
            **{k: info[k] for k in ("runtime", "providers", "shrink", "inter_op_threads_applied",
                                    "not_exportable") if k in info},
            "model_sha256": _sha256(info["model_path"]),
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
        quiet first (:mod:`autotune.measure.harness.contention`)."""
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

        FLOPs: one forward of the unmodified model at the batch size (autotune.measure.harness.flops).
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


# ------------------------------------------------------------------ configuration checks
def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pruner(method: str) -> str:
    """The transform a ``pruning_method`` value selects (its ``pruning_method`` declaration)."""
    get_transform("prune_magnitude")  # the built-ins are imported
    load_transform_plugins()  # and the autotune.transforms entry points
    found = {getattr(c, "pruning_method", None): n for n, c in TRANSFORMS.items()}
    found.pop(None, None)
    if method not in found:
        raise TrialFailed(f"unknown pruning_method '{method}' ({', '.join(map(str, found))})")
    return str(found[method])


def check_config(config: Mapping[str, Any], runtime: Runtime, declared: Mapping[str, Parameter]) -> None:
    """Each key of ``config`` against its declaration; a value another runtime supports is
    named as such (``quantization 'bf16' is not supported on onnxruntime; torch has it``)."""
    mine = {p.name: p for p in runtime.parameters()}
    for key, value in config.items():
        if key in ("runtime", "pruning_method") or key not in declared:
            continue
        if declared[key].check(value) is not None:
            raise TrialFailed(f"unknown {key} '{value}': {key} must be {declared[key].expected()}"
                              if declared[key].kind == "categorical" else
                              f"{key} must be {declared[key].expected()}; found {value!r}")
        p = mine.get(key)
        if p is not None and p.kind == "categorical" and p.check(value) is not None:
            others = [rt.name for rt in runtimes() if rt.name != runtime.name and any(
                q.name == key and q.check(value) is None for q in rt.parameters())]
            raise TrialFailed(f"{key} '{value}' is not supported on {runtime.name} "
                              f"({', '.join(map(str, p.choices))})"
                              + (f"; it is implemented for {', '.join(others)} only" if others
                                 else ""))
    device = config.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise TrialFailed(f"unknown device '{device}' (cpu or cuda)")
