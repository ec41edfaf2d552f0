"""The metric vocabulary: every name a job may use in objectives, constraints and selection rules.

The quality metric is named by the job's evaluation (``accuracy``, ``cosine``, a custom name); it is
also always available as ``quality``.  ``<quality>_drop`` is how much worse a configuration is than
the unmodified baseline measured in the same job (positive = worse), in the metric's own units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    unit: str
    description: str


_BUILTIN: tuple[MetricInfo, ...] = (
    MetricInfo("latency_p50_ms", "minimize", "ms", "median latency of one batch"),
    MetricInfo("latency_p90_ms", "minimize", "ms", "90th percentile latency of one batch"),
    MetricInfo("latency_p95_ms", "minimize", "ms", "95th percentile latency of one batch"),
    MetricInfo("latency_p99_ms", "minimize", "ms", "99th percentile latency of one batch"),
    MetricInfo("latency_mean_ms", "minimize", "ms", "mean latency of one batch"),
    MetricInfo("latency_std_ms", "minimize", "ms", "standard deviation of the batch latency"),
    MetricInfo("latency_per_item_ms", "minimize", "ms", "median latency divided by the batch size"),
    MetricInfo("latency_ratio", "minimize", "", "latency per item relative to the baseline's"),
    MetricInfo("speedup", "maximize", "x", "baseline latency per item / this latency per item"),
    MetricInfo("throughput_ips", "maximize", "items/s", "items per second at the batch size"),
    MetricInfo("peak_memory_mb", "minimize", "MiB", "peak resident memory of the measuring process"),
    MetricInfo("model_memory_mb", "minimize", "MiB",
               "resident memory the trial added: its peak minus the memory before building"),
    MetricInfo("gpu_memory_mb", "minimize", "MiB", "peak GPU memory allocated"),
    MetricInfo("model_size_mb", "minimize", "MiB", "size of the model artifact on disk"),
    MetricInfo("cost_usd_per_million", "minimize", "$", "cost of one million inferences"),
    MetricInfo("forward_gflop", "minimize", "GFLOP", "work of one forward at the batch size"),
    MetricInfo("achieved_gflops", "maximize", "GFLOP/s", "achieved floating-point rate"),
    MetricInfo("roofline_pct", "maximize", "%", "share of the machine's measured peak FLOP/s"),
    MetricInfo("sparsity", "maximize", "", "share of zero weights"),
)
BUILTIN_METRICS: dict[str, MetricInfo] = {m.name: m for m in _BUILTIN}


#: the ``source`` of a trial measuring a hand recipe (a portfolio entry with ``reference: true``)
REFERENCE_SOURCE = "reference: "
#: the prefix of the speed-up over a hand recipe: ``vs hand int8`` = the reference's latency per
#: item / this trial's (``autotune.study.with_reference_speedups``)
REFERENCE_PREFIX = "vs "


def reference_metric(name: str) -> MetricInfo:
    """The speed-up over the reference (hand recipe) named ``name``."""
    safe = "".join(c if c.isalnum() or c in "_.- " else "_" for c in name)
    return MetricInfo(f"{REFERENCE_PREFIX}{safe}", "maximize", "x",
                      f"the hand recipe '{name}''s latency per item / this one's, both measured in "
                      "this job")


def quality_metrics(name: str, higher_is_better: bool) -> dict[str, MetricInfo]:
    """The metrics a job's quality measure adds: its own name, ``quality`` and the drops."""
    direction: Direction = "maximize" if higher_is_better else "minimize"
    out = {
        "quality": MetricInfo("quality", direction, "", f"the job's quality metric ({name})"),
        "quality_drop": MetricInfo(
            "quality_drop", "minimize", "", "quality lost against the baseline (positive = worse)"
        ),
    }
    if name not in out and name not in BUILTIN_METRICS:
        out[name] = MetricInfo(name, direction, "", "the job's quality metric")
        out[f"{name}_drop"] = MetricInfo(
            f"{name}_drop", "minimize", "", f"{name} lost against the baseline (positive = worse)"
        )
    return out


def vocabulary(quality_name: str, higher_is_better: bool) -> dict[str, MetricInfo]:
    """All metric names valid for a job whose quality metric is ``quality_name``."""
    return {**BUILTIN_METRICS, **quality_metrics(quality_name, higher_is_better)}


#: what a text-generation job measures (:mod:`autotune.workloads.generation`); names as in vLLM /
#: genai-perf.  The quality metric (``token_agreement`` by default) comes from the job.
_GENERATION: tuple[MetricInfo, ...] = (
    MetricInfo("ttft_p50_ms", "minimize", "ms", "median time to first token (arrival → token)"),
    MetricInfo("ttft_p95_ms", "minimize", "ms", "95th percentile time to first token"),
    MetricInfo("tpot_p50_ms", "minimize", "ms", "median time per output token after the first"),
    MetricInfo("tpot_p95_ms", "minimize", "ms", "95th percentile time per output token"),
    MetricInfo("output_tokens_per_s", "maximize", "tokens/s",
               "output tokens per second at the workload's concurrency"),
    MetricInfo("requests_per_s", "maximize", "requests/s", "completed requests per second"),
    MetricInfo("request_latency_p50_ms", "minimize", "ms", "median request latency"),
    MetricInfo("request_latency_p95_ms", "minimize", "ms", "95th percentile request latency"),
    MetricInfo("kv_cache_mb", "minimize", "MiB", "peak size of the key/value cache"),
    MetricInfo("perplexity", "minimize", "", "perplexity on the held-out text"),
    MetricInfo("perplexity_ratio", "minimize", "",
               "held-out perplexity over the unmodified model's (1 = unchanged)"),
    MetricInfo("throughput_ratio", "maximize", "x",
               "output tokens/s over the unmodified model's, measured in the same process"),
    MetricInfo("peak_memory_mb", "minimize", "MiB", "peak resident memory of the measuring process"),
    MetricInfo("model_memory_mb", "minimize", "MiB",
               "resident memory the trial added: its peak minus the memory before building"),
    MetricInfo("model_size_mb", "minimize", "MiB", "size of the weights in memory"),
)
GENERATION_METRICS: dict[str, MetricInfo] = {m.name: m for m in _GENERATION}


def generation_vocabulary(quality_name: str, higher_is_better: bool) -> dict[str, MetricInfo]:
    """All metric names valid for a text-generation job."""
    return {**GENERATION_METRICS, **quality_metrics(quality_name, higher_is_better)}
