"""The metric vocabulary: every name a job may use in objectives, constraints and selection rules.

The quality metric is named by the job's evaluation (``accuracy``, ``cosine``, a custom name); it is
also always available as ``quality``.  ``<quality>_drop`` is how much worse a configuration is than
the unmodified baseline measured in the same job (positive = worse), in the metric's own units.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["minimize", "maximize"]

#: the workloads that compute metrics (:mod:`autotune.measure.workloads.registry`)
FORWARD, GENERATION = "forward", "generation"

#: the entry-point group of plugin metrics: each entry point is a :class:`MetricInfo` (or a tuple
#: of them) declared beside the plugin's code that computes it (``autotune.metrics`` holds quality
#: functions, which a job names as its ``evaluation.metric``)
ENTRY_POINT_GROUP = "autotune.declared_metrics"


@dataclass(frozen=True)
class MetricInfo:
    """One metric, declared once: everything else (the vocabulary a job may name, the tables,
    the ratios to the baseline in :func:`autotune.record.study.derive_metrics`, the MLflow metric key,
    which is the name) comes from this declaration."""

    name: str
    direction: Direction
    unit: str
    description: str
    #: the workloads that compute it
    workloads: tuple[str, ...] = (FORWARD,)
    #: a ratio to the baseline: this trial's ``ratio_of`` over the baseline's (``inverse``: the
    #: baseline's over this trial's), added to every trial's metrics by ``derive_metrics``
    ratio_of: str | None = None
    inverse: bool = False


_BOTH = (FORWARD, GENERATION)

METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("latency_p50_ms", "minimize", "ms", "median latency of one batch"),
    MetricInfo("latency_p90_ms", "minimize", "ms", "90th percentile latency of one batch"),
    MetricInfo("latency_p95_ms", "minimize", "ms", "95th percentile latency of one batch"),
    MetricInfo("latency_p99_ms", "minimize", "ms", "99th percentile latency of one batch"),
    MetricInfo("latency_mean_ms", "minimize", "ms", "mean latency of one batch"),
    MetricInfo("latency_std_ms", "minimize", "ms", "standard deviation of the batch latency"),
    MetricInfo("latency_per_item_ms", "minimize", "ms", "median latency divided by the batch size"),
    MetricInfo("latency_ratio", "minimize", "", "latency per item relative to the baseline's",
               ratio_of="latency_per_item_ms"),
    MetricInfo("speedup", "maximize", "x", "baseline latency per item / this latency per item",
               ratio_of="latency_per_item_ms", inverse=True),
    MetricInfo("throughput_ips", "maximize", "items/s", "items per second at the batch size"),
    MetricInfo("peak_memory_mb", "minimize", "MiB", "peak resident memory of the measuring process",
               workloads=_BOTH),
    MetricInfo("model_memory_mb", "minimize", "MiB",
               "resident memory the trial added: its peak minus the memory before building",
               workloads=_BOTH),
    MetricInfo("gpu_memory_mb", "minimize", "MiB", "peak GPU memory allocated"),
    MetricInfo("model_size_mb", "minimize", "MiB",
               "size of the model's weights (the artifact on disk; for generation, in memory)",
               workloads=_BOTH),
    MetricInfo("cost_usd_per_million", "minimize", "$", "cost of one million inferences"),
    MetricInfo("forward_gflop", "minimize", "GFLOP", "work of one forward at the batch size"),
    MetricInfo("achieved_gflops", "maximize", "GFLOP/s", "achieved floating-point rate"),
    MetricInfo("roofline_pct", "maximize", "%", "share of the machine's measured peak FLOP/s"),
    MetricInfo("sparsity", "maximize", "", "share of zero weights"),
    # text generation (:mod:`autotune.measure.workloads.generation`); names as in vLLM / genai-perf.  The
    # quality metric (``token_agreement`` by default) comes from the job.
    MetricInfo("ttft_p50_ms", "minimize", "ms", "median time to first token (arrival → token)",
               workloads=(GENERATION,)),
    MetricInfo("ttft_p95_ms", "minimize", "ms", "95th percentile time to first token",
               workloads=(GENERATION,)),
    MetricInfo("tpot_p50_ms", "minimize", "ms", "median time per output token after the first",
               workloads=(GENERATION,)),
    MetricInfo("tpot_p95_ms", "minimize", "ms", "95th percentile time per output token",
               workloads=(GENERATION,)),
    MetricInfo("output_tokens_per_s", "maximize", "tokens/s",
               "output tokens per second at the workload's concurrency", workloads=(GENERATION,)),
    MetricInfo("requests_per_s", "maximize", "requests/s", "completed requests per second",
               workloads=(GENERATION,)),
    MetricInfo("goodput_rps", "maximize", "requests/s",
               "requests per second that met the workload's SLO (TTFT <= slo.ttft_ms and TPOT <= "
               "slo.tpot_ms; genai-perf's goodput)", workloads=(GENERATION,)),
    MetricInfo("request_latency_p50_ms", "minimize", "ms", "median request latency",
               workloads=(GENERATION,)),
    MetricInfo("request_latency_p95_ms", "minimize", "ms", "95th percentile request latency",
               workloads=(GENERATION,)),
    MetricInfo("kv_cache_mb", "minimize", "MiB", "peak size of the key/value cache",
               workloads=(GENERATION,)),
    MetricInfo("perplexity", "minimize", "", "perplexity on the held-out text",
               workloads=(GENERATION,)),
    MetricInfo("perplexity_ratio", "minimize", "",
               "held-out perplexity over the unmodified model's (1 = unchanged)",
               workloads=(GENERATION,)),
    MetricInfo("throughput_ratio", "maximize", "x",
               "output tokens/s over the unmodified model's, measured in the same process",
               workloads=(GENERATION,)),
)


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def declared_metrics() -> dict[str, MetricInfo]:
    """Every declared metric by name: the built-in ones and the installed plugins' (entry-point
    group ``autotune.declared_metrics``).  A plugin may not redeclare a built-in name."""
    out = {m.name: m for m in METRICS}
    for ep in _entry_points():
        loaded = ep.load()
        for m in loaded if isinstance(loaded, tuple | list) else (loaded,):
            if not isinstance(m, MetricInfo):
                raise TypeError(f"the entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP} "
                                f"is a {type(m).__name__}, not an autotune.core.metrics.MetricInfo")
            if m.name in out and out[m.name] != m:
                raise ValueError(f"the plugin metric {m.name} ({ep.value}) redeclares a metric")
            out[m.name] = m
    return out


def workload_metrics(workload: str) -> dict[str, MetricInfo]:
    """The declared metrics ``workload`` computes."""
    return {n: m for n, m in declared_metrics().items() if workload in m.workloads}


def baseline_ratios(metrics: Mapping[str, float],
                    baseline: Mapping[str, float] | None) -> dict[str, float]:
    """The declared ratios to the baseline (``ratio_of``) ``metrics`` allows: the baseline itself
    (``baseline=None``) gets 1."""
    out: dict[str, float] = {}
    for m in declared_metrics().values():
        if m.ratio_of is None:
            continue
        own = metrics.get(m.ratio_of)
        base = baseline.get(m.ratio_of) if baseline else own
        if own is not None and base is not None and own > 0 and base > 0:
            out[m.name] = base / own if m.inverse else own / base
    return out


def __getattr__(name: str) -> Any:
    """``BUILTIN_METRICS`` (what a forward-pass job measures) and ``GENERATION_METRICS``, derived
    from the declarations (plugins included), not kept beside them."""
    if name == "BUILTIN_METRICS":
        return workload_metrics(FORWARD)
    if name == "GENERATION_METRICS":
        return workload_metrics(GENERATION)
    raise AttributeError(f"module 'autotune.metrics' has no attribute {name!r}")


#: the ``source`` of a trial measuring a hand recipe (a portfolio entry with ``reference: true``)
REFERENCE_SOURCE = "reference: "
#: the prefix of the speed-up over a hand recipe: ``vs hand int8`` = the reference's latency per
#: item / this trial's (``autotune.record.study.with_reference_speedups``)
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
    if name not in out and name not in declared_metrics():
        out[name] = MetricInfo(name, direction, "", "the job's quality metric")
        out[f"{name}_drop"] = MetricInfo(
            f"{name}_drop", "minimize", "", f"{name} lost against the baseline (positive = worse)"
        )
    return out


def vocabulary(quality_name: str, higher_is_better: bool) -> dict[str, MetricInfo]:
    """All metric names valid for a forward-pass job whose quality metric is ``quality_name``."""
    return {**workload_metrics(FORWARD), **quality_metrics(quality_name, higher_is_better)}


def generation_vocabulary(quality_name: str, higher_is_better: bool) -> dict[str, MetricInfo]:
    """All metric names valid for a text-generation job."""
    return {**workload_metrics(GENERATION), **quality_metrics(quality_name, higher_is_better)}
