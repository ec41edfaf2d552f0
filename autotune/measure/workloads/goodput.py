"""The highest arrival rate a configuration serves within an SLO, over batch sizes.

As vLLM's ``auto_tune`` (which searches ``max-num-seqs`` x ``max-num-batched-tokens`` for the
highest throughput whose P99 latency stays under a cap): for every ``max_batch``, the saturation
rate is measured first (closed loop: ``max_batch`` clients, each sending its next request when
served), then Poisson arrivals at rates between a low rate and 1.25x that saturation rate are
bisected (geometrically) for the highest rate whose TTFT p95 and TPOT p95 stay within the limits
(latency grows with the rate: a rate that misses the SLO bounds the search from above).  The
answer is the best ``(max_batch, rate)``, with every measured point.

``measure(max_batch, rate)`` is the seam: ``rate`` None means closed loop; it returns the
generation metrics of one pass (:func:`autotune.measure.workloads.generation.summarize`).  Tests give it
known figures; :func:`evaluator_measure` measures a job's configuration for real.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from autotune.measure.harness.hostlock import measurement_lock
from autotune.measure.workloads.generation import serve_pass, summarize

Measure = Callable[[int, float | None], Mapping[str, float]]


@dataclass(frozen=True)
class RatePoint:
    """One measurement: arrivals at ``rate`` requests/s (None: closed loop) at ``max_batch``."""

    max_batch: int
    rate: float | None
    ttft_p95_ms: float
    tpot_p95_ms: float
    goodput_rps: float
    output_tokens_per_s: float
    requests_per_s: float
    meets: bool


@dataclass(frozen=True)
class GoodputResult:
    """The highest rate meeting the SLO per batch size, the best of them, every point."""

    ttft_ms: float
    tpot_ms: float
    best_rate: Mapping[int, float | None]  # max_batch → highest rate meeting the SLO (None: none)
    best: RatePoint | None
    points: tuple[RatePoint, ...]


def _point(max_batch: int, rate: float | None, m: Mapping[str, float], ttft_ms: float,
           tpot_ms: float) -> RatePoint:
    ttft, tpot = float(m["ttft_p95_ms"]), float(m["tpot_p95_ms"])
    tpot_ok = math.isnan(tpot) or tpot <= tpot_ms  # one-token requests have no TPOT
    return RatePoint(max_batch, rate, ttft, tpot, float(m.get("goodput_rps", math.nan)),
                     float(m["output_tokens_per_s"]), float(m["requests_per_s"]),
                     ttft <= ttft_ms and tpot_ok)


def search(measure: Measure, batches: Sequence[int], *, ttft_ms: float = 200.0,
           tpot_ms: float = 50.0, steps: int = 5, low_fraction: float = 1 / 32,
           log: Callable[[str], None] = lambda m: None) -> GoodputResult:
    """Per ``max_batch``: the saturation rate (closed loop), then ``steps`` bisections of the
    arrival rate in ``[low_fraction, 1.25] x`` that rate for the highest one meeting the SLO."""
    if not batches:
        raise ValueError("search: no batch sizes")
    points: list[RatePoint] = []
    best_rate: dict[int, float | None] = {}
    for b in batches:
        sat = _point(b, None, measure(b, None), ttft_ms, tpot_ms)
        points.append(sat)
        log(f"max_batch {b}: closed loop {sat.requests_per_s:.2f} requests/s, TTFT p95 "
            f"{sat.ttft_p95_ms:.1f} ms, TPOT p95 {sat.tpot_p95_ms:.2f} ms")
        hi = 1.25 * sat.requests_per_s
        lo = hi * low_fraction
        good: float | None = None
        p = _point(b, hi, measure(b, hi), ttft_ms, tpot_ms)
        points.append(p)
        if p.meets:
            good = hi
        else:
            p = _point(b, lo, measure(b, lo), ttft_ms, tpot_ms)
            points.append(p)
            if p.meets:
                good = lo
                for _ in range(steps):
                    mid = math.sqrt(lo * hi)
                    p = _point(b, mid, measure(b, mid), ttft_ms, tpot_ms)
                    points.append(p)
                    log(f"max_batch {b}: {mid:.2f} requests/s -> TTFT p95 {p.ttft_p95_ms:.1f} ms,"
                        f" TPOT p95 {p.tpot_p95_ms:.2f} ms ({'meets' if p.meets else 'misses'})")
                    if p.meets:
                        lo = good = mid
                    else:
                        hi = mid
        best_rate[b] = good
    meeting = [q for q in points if q.meets and q.rate is not None
               and best_rate.get(q.max_batch) == q.rate]
    best = max(meeting, key=lambda q: (q.rate, q.goodput_rps), default=None)
    return GoodputResult(ttft_ms, tpot_ms, best_rate, best, tuple(points))


def evaluator_measure(evaluator: Any, config: Mapping[str, Any], *, ttft_ms: float,
                      tpot_ms: float) -> Measure:
    """``measure`` for a job's configuration: one engine per batch size (built once), one pass of
    the job's workload per call, under the host's measurement lock; ``goodput_rps`` counts the
    requests within these limits (the search's, not necessarily the job's ``slo``)."""
    engines: dict[int, Any] = {}
    wl = replace(evaluator.workload, slo_ttft_s=ttft_ms / 1000.0, slo_tpot_s=tpot_ms / 1000.0)

    def measure(max_batch: int, rate: float | None) -> Mapping[str, float]:
        if max_batch not in engines:
            engines[max_batch] = evaluator.build({**config, "max_batch": max_batch})[0]
            serve_pass(engines[max_batch], wl, n=max_batch)  # warm-up
        run = replace(wl, request_rate=rate, concurrency=max_batch if rate is None
                      else wl.concurrency)
        with measurement_lock():
            return summarize([serve_pass(engines[max_batch], run)])

    return measure
