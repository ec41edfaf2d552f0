"""Latency measurement that users can trust (numpy + stdlib only).

:func:`measure` times a callable until the median is known well enough, or until a sample or time
budget runs out, and says which of the two happened.  "Known well enough" is two checks, both
against ``target_ci`` (a relative tolerance, 0.02 = 2 %):

1. the 95 % confidence interval of the median has a relative half-width ``ci_rel <= target_ci``;
   the interval is the distribution-free order-statistic (binomial) interval, so it holds for the
   skewed, heavy-tailed distributions latencies have;
2. the medians of the last two windows of samples differ by at most ``target_ci`` of the overall
   median (``drift_rel``): a machine that is slowly warming up or being throttled gives a tight
   interval around a moving target, and this check notices.

:func:`summarize` turns samples into a :class:`LatencyStats`; it is pure and is what
:func:`measure` uses.  :func:`alternate` measures several configurations in interleaved rounds so
that drift of a shared, noisy machine affects them alike, and :func:`ratio_spread` tells how
reproducible the ratio of two of them is.

Invalid arguments raise :class:`ValueError` with a message naming the parameter, the function, the
accepted values and what was given.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

__all__ = [
    "STOP_REASONS",
    "LatencyStats",
    "alternate",
    "cv",
    "measure",
    "median_ci_ranks",
    "ratio_spread",
    "repeatability",
    "rotation",
    "summarize",
]

StopReason = Literal["stable", "time_cap", "max_repeats"]
STOP_REASONS: tuple[str, ...] = ("stable", "time_cap", "max_repeats")

#: Smallest sample for which a distribution-free 95 % interval of the median exists
#: (``[min, max]`` of 6 samples covers the median with probability 1 - 2/64 = 96.9 %).
MIN_STABLE_N = 6
#: Samples between two stability checks (at least; the gap grows with n so checks stay cheap).
CHECK_EVERY = 10
_Z95 = 1.959963984540054
_EXACT_CI_MAX_N = 1000


# ------------------------------------------------------------------------------------------------
# argument validation (sklearn-style messages)


def _fmt(value: object) -> str:
    return repr(value)


def _check_int(value: object, name: str, func: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    if ok:
        ok = value >= low and (high is None or value <= high)
    if not ok:
        upper = "inf)" if high is None else f"{high}]"
        raise ValueError(
            f"The '{name}' parameter of {func} must be an int in [{low}, {upper}. "
            f"Got {_fmt(value)} instead."
        )
    return int(value)  # type: ignore[arg-type]


def _check_float(
    value: object,
    name: str,
    func: str,
    low: float,
    high: float = math.inf,
    *,
    low_closed: bool = True,
    high_closed: bool = False,
) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = not math.isnan(v)
        ok = ok and (v >= low if low_closed else v > low)
        ok = ok and (v <= high if high_closed else v < high)
    if not ok:
        lo = f"[{low}" if low_closed else f"({low}"
        hi_text = "inf" if math.isinf(high) else f"{high}"
        hi = f"{hi_text}]" if high_closed else f"{hi_text})"
        raise ValueError(
            f"The '{name}' parameter of {func} must be a float in {lo}, {hi}. "
            f"Got {_fmt(value)} instead."
        )
    return float(value)  # type: ignore[arg-type]


def _check_callable(value: object, name: str, func: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not callable(value):
        what = "a callable or None" if allow_none else "a callable"
        raise ValueError(
            f"The '{name}' parameter of {func} must be {what}. Got {_fmt(value)} instead."
        )


def _check_choice(value: object, name: str, func: str, choices: Sequence[str]) -> str:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"The '{name}' parameter of {func} must be one of {options}. Got {_fmt(value)} instead."
        )
    return str(value)


# ------------------------------------------------------------------------------------------------
# order statistics


@lru_cache(maxsize=4096)
def median_ci_ranks(n: int) -> tuple[int, int]:
    """0-based ranks ``(lo, hi)`` such that ``[sorted[lo], sorted[hi]]`` is a 95 % CI of the median.

    The number of samples below the true median is Binomial(n, 1/2) whatever the distribution, so
    ``[x_(l), x_(n+1-l)]`` covers the median with probability ``1 - 2 P(B <= l-1)``; ``l`` is the
    largest rank for which that is at least 95 %.  Exact binomial tail up to n = 1000, the normal
    approximation above (indistinguishable there).  For n < 6 no such interval exists and the
    whole range ``(0, n-1)`` is returned (coverage ``1 - 2**(1-n)``).
    """
    if n < 1:
        raise ValueError(f"median_ci_ranks needs at least one sample. Got n={n} instead.")
    if n < MIN_STABLE_N:
        return 0, n - 1
    alpha = 0.025
    if n <= _EXACT_CI_MAX_N:
        # walk the lower tail of Binomial(n, 1/2) in log space (0.5**n underflows for n > 1074)
        log_p = -n * math.log(2.0)
        cdf = 0.0
        k = 0
        while True:
            p = math.exp(log_p)
            if cdf + p > alpha:
                break
            cdf += p
            log_p += math.log((n - k) / (k + 1))
            k += 1
        lower_rank = k  # 1-based l: P(B <= l-1) <= alpha < P(B <= l)
    else:
        lower_rank = max(1, math.floor(n / 2 - _Z95 * math.sqrt(n) / 2))
    return lower_rank - 1, n - lower_rank


def _median_of_partitioned(a: np.ndarray, n: int) -> float:
    mid = n // 2
    if n % 2:
        return float(a[mid])
    return 0.5 * (float(a[mid - 1]) + float(a[mid]))


def _rel(diff: float, ref: float) -> float:
    if diff == 0.0:
        return 0.0
    if ref <= 0.0:
        return math.inf
    return diff / ref


def _stability(samples: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(median, ci_low, ci_high, ci_rel, drift_rel)`` of samples in collection order."""
    n = int(samples.size)
    lo, hi = median_ci_ranks(n)
    mid = n // 2
    kth = sorted({lo, hi, mid, max(mid - 1, 0)})
    part = np.partition(samples, kth)
    median = _median_of_partitioned(part, n)
    low, high = float(part[lo]), float(part[hi])
    ci_rel = _rel((high - low) / 2.0, median)
    return median, low, high, ci_rel, _drift_rel(samples, median)


def _drift_rel(samples: np.ndarray, median: float) -> float:
    """Relative difference of the medians of the last two windows (window = max(10, n/4))."""
    n = int(samples.size)
    window = max(CHECK_EVERY, n // 4)
    if 2 * window > n:
        window = n // 2
    if window < 1:
        return 0.0
    last = float(np.median(samples[n - window :]))
    before = float(np.median(samples[n - 2 * window : n - window]))
    return _rel(abs(last - before), median)


# ------------------------------------------------------------------------------------------------
# the summary


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # "inf" / "nan": float() reads them back


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples (the samples themselves are not kept).

    ``ci95_low_ms``/``ci95_high_ms`` bound the median (95 %, order-statistic interval);
    ``ci_rel`` is its half-width relative to the median and ``drift_rel`` the relative difference
    of the medians of the last two windows.  ``stable`` says whether both were within the target
    tolerance (and, under :func:`measure`, whether ``min_repeats`` / ``min_time_s`` were met);
    ``stop_reason`` says why collection stopped.  ``warmup`` counts the untimed calls made before
    the first sample and ``elapsed_s`` the wall time of the whole measurement, warm-up included.
    """

    n: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    ci95_low_ms: float
    ci95_high_ms: float
    ci_rel: float
    stable: bool
    stop_reason: str
    warmup: int
    elapsed_s: float
    drift_rel: float = 0.0

    def as_metrics(self, prefix: str = "latency") -> dict[str, float]:
        """Metric values named as the metric vocabulary names them (``latency_p50_ms``, ...)."""
        return {
            f"{prefix}_p50_ms": self.p50_ms,
            f"{prefix}_p90_ms": self.p90_ms,
            f"{prefix}_p95_ms": self.p95_ms,
            f"{prefix}_p99_ms": self.p99_ms,
            f"{prefix}_mean_ms": self.mean_ms,
            f"{prefix}_std_ms": self.std_ms,
            f"{prefix}_n": float(self.n),
            f"{prefix}_ci_rel": self.ci_rel,
            f"{prefix}_stable": 1.0 if self.stable else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite floats become the strings ``"inf"`` / ``"nan"``)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = _json_float(value) if isinstance(value, float) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones are an error."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "drift_rel":
                    continue
                raise ValueError(f"LatencyStats.from_dict: missing field '{f.name}'.")
            value = data[f.name]
            if f.name in ("n", "warmup"):
                kwargs[f.name] = int(value)
            elif f.name == "stable":
                kwargs[f.name] = bool(value)
            elif f.name == "stop_reason":
                kwargs[f.name] = str(value)
            else:
                kwargs[f.name] = float(value)
        return cls(**kwargs)


def summarize(
    samples_ms: Iterable[float] | np.ndarray,
    *,
    warmup: int = 0,
    stop_reason: str = "max_repeats",
    target_ci: float = 0.02,
    elapsed_s: float = 0.0,
) -> LatencyStats:
    """Summarize latency samples (milliseconds, in collection order).

    Percentiles use numpy's linear interpolation; ``std_ms`` is the sample standard deviation
    (0 for a single sample).  ``stable`` is true when there are at least 6 samples and both
    ``ci_rel`` and ``drift_rel`` are at most ``target_ci``.
    """
    func = "summarize"
    warmup = _check_int(warmup, "warmup", func, 0)
    stop_reason = _check_choice(stop_reason, "stop_reason", func, STOP_REASONS)
    target_ci = _check_float(target_ci, "target_ci", func, 0.0, low_closed=False)
    elapsed_s = _check_float(elapsed_s, "elapsed_s", func, 0.0)
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("The 'samples_ms' parameter of summarize must not be empty.")
    if not np.all(np.isfinite(a)):
        raise ValueError("The 'samples_ms' parameter of summarize must hold finite numbers.")
    n = int(a.size)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50.0, 90.0, 95.0, 99.0]))
    _, low, high, ci_rel, drift = _stability(a)
    stable = n >= MIN_STABLE_N and ci_rel <= target_ci and drift <= target_ci
    return LatencyStats(
        n=n,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(a.mean()),
        std_ms=float(a.std(ddof=1)) if n > 1 else 0.0,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        ci95_low_ms=low,
        ci95_high_ms=high,
        ci_rel=ci_rel,
        stable=bool(stable),
        stop_reason=stop_reason,
        warmup=warmup,
        elapsed_s=elapsed_s,
        drift_rel=drift,
    )


# ------------------------------------------------------------------------------------------------
# the timing loop


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 5,
    min_repeats: int = 20,
    max_repeats: int = 2000,
    target_ci: float = 0.02,
    max_time_s: float = 5.0,
    min_time_s: float = 0.0,
    warmup_s: float = 0.05,
    sync: Callable[[], None] | None = None,
    timer: Callable[[], int] = time.perf_counter_ns,
) -> LatencyStats:
    """Time ``fn()`` until its median latency is stable, or a budget runs out.

    1. Warm-up: ``warmup`` untimed calls, continued until ``warmup_s`` has passed (at most a quarter
       of ``max_time_s``, at most ``10 * max_repeats`` extra calls); none with ``warmup=0``.
    2. Timed calls, one sample each: ``timer(); fn(); sync(); timer()`` -- ``sync`` (e.g.
       ``torch.cuda.synchronize``) runs inside the timed region so asynchronous work is counted.
       The cyclic garbage collector is paused meanwhile, as :mod:`timeit` does.
    3. Every 10 samples or so (the gap grows with n) once ``min_repeats`` samples are in and
       ``min_time_s`` has passed, the stability checks run (see the module docstring); the loop
       stops with ``stop_reason="stable"`` when both hold.  Otherwise it stops at ``max_repeats``
       samples (``"max_repeats"``) or when ``max_time_s`` has passed since the call began,
       warm-up included (``"time_cap"``), with ``stable=False``.

    The time cap is checked after every call, so it is overrun by at most one call; at least one
    warm-up call (if ``warmup > 0``) and one timed call are always made.  ``timer`` must return
    integer nanoseconds (it is injectable for tests).
    """
    func = "measure"
    _check_callable(fn, "fn", func)
    warmup = _check_int(warmup, "warmup", func, 0)
    min_repeats = _check_int(min_repeats, "min_repeats", func, 1)
    max_repeats = _check_int(max_repeats, "max_repeats", func, 1)
    if max_repeats < min_repeats:
        raise ValueError(
            f"The 'max_repeats' parameter of {func} must be >= min_repeats ({min_repeats}). "
            f"Got {max_repeats!r} instead."
        )
    target_ci = _check_float(target_ci, "target_ci", func, 0.0, low_closed=False)
    max_time_s = _check_float(max_time_s, "max_time_s", func, 0.0, low_closed=False)
    min_time_s = _check_float(min_time_s, "min_time_s", func, 0.0)
    if min_time_s > max_time_s:
        raise ValueError(
            f"The 'min_time_s' parameter of {func} must be <= max_time_s ({max_time_s!r}). "
            f"Got {min_time_s!r} instead."
        )
    warmup_s = _check_float(warmup_s, "warmup_s", func, 0.0)
    _check_callable(sync, "sync", func, allow_none=True)
    _check_callable(timer, "timer", func)

    start = timer()
    deadline = start + int(max_time_s * 1e9)
    min_end = start + int(min_time_s * 1e9)

    # -- warm-up (untimed)
    warm_calls = 0
    if warmup > 0:
        warm_end = start + int(min(warmup_s, max_time_s / 4.0) * 1e9)
        while True:
            fn()
            if sync is not None:
                sync()
            warm_calls += 1
            now = timer()
            if now >= deadline:
                break
            if warm_calls >= warmup and (
                now >= warm_end or warm_calls >= warmup + 10 * max_repeats
            ):
                break

    # -- timed loop
    capacity = min(max_repeats, 4096)
    buf = np.empty(capacity, dtype=np.float64)  # nanoseconds
    n = 0
    t1 = timer()
    next_check = max(min_repeats, MIN_STABLE_N)
    reason = "max_repeats"
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            end = min(next_check, max_repeats)
            if end > capacity:
                capacity = min(max_repeats, max(end, 2 * capacity))
                grown = np.empty(capacity, dtype=np.float64)
                grown[:n] = buf[:n]
                buf = grown
            # two copies of the loop so that the timed region holds nothing but the call
            if sync is None:
                while n < end:
                    t0 = timer()
                    fn()
                    t1 = timer()
                    buf[n] = t1 - t0
                    n += 1
                    if t1 >= deadline:
                        break
            else:
                while n < end:
                    t0 = timer()
                    fn()
                    sync()
                    t1 = timer()
                    buf[n] = t1 - t0
                    n += 1
                    if t1 >= deadline:
                        break
            time_up = t1 >= deadline
            if n >= min_repeats and n >= MIN_STABLE_N and t1 >= min_end:
                _, _, _, ci_rel, drift = _stability(buf[:n])
                if ci_rel <= target_ci and drift <= target_ci:
                    reason = "stable"
                    break
            if time_up:
                reason = "time_cap"
                break
            if n >= max_repeats:
                reason = "max_repeats"
                break
            next_check = n + max(CHECK_EVERY, n // 8)
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed_s = max(0.0, (timer() - start) / 1e9)

    stats = summarize(
        buf[:n] / 1e6,
        warmup=warm_calls,
        stop_reason=reason,
        target_ci=target_ci,
        elapsed_s=elapsed_s,
    )
    if reason != "stable" and stats.stable:
        # the samples look fine but the stop was a budget (e.g. fewer than min_repeats)
        stats = replace(stats, stable=False)
    return stats


# ------------------------------------------------------------------------------------------------
# comparing configurations


#: pause before each block of :func:`alternate` (s): a thread pool that spins after its own run
#: (ONNX Runtime's intra-op pool by default, OpenMP's workers in torch) keeps burning a core for a
#: while after its block ends and takes it from the next contender; this lets it go to sleep first
SETTLE_S = 0.3


def rotation(names: Sequence[str], r: int) -> list[str]:
    """The order in which round ``r`` of interleaved rounds times ``names``: rotated by ``r``
    (A B, B A, A B, ... for two; A B C, B C A, C A B, ... for three), so that slow drift of the
    machine and the position within a round affect every contender alike."""
    k = r % len(names)
    return [*names[k:], *names[:k]]


def alternate(
    fns: Mapping[str, Callable[[], object]], rounds: int, *, settle_s: float = SETTLE_S,
    **measure_kwargs: Any
) -> dict[str, list[LatencyStats]]:
    """Measure several configurations in interleaved rounds; one :class:`LatencyStats` per round.

    Each round measures every configuration once with :func:`measure` (``measure_kwargs`` are
    passed on).  The order rotates from round to round (A B, B A, A B, ... for two) so that both
    slow drift of the machine and the position within a round affect all configurations alike.
    Before each block the process sleeps ``settle_s`` (:data:`SETTLE_S`), so that no contender's
    spinning thread pool is still running while the next one is timed: each is then measured as
    it runs alone, with its own (deployed) thread settings.
    """
    func = "alternate"
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError(
            f"The 'fns' parameter of {func} must be a non-empty mapping of name to callable. "
            f"Got {_fmt(fns)} instead."
        )
    for name, fn in fns.items():
        _check_callable(fn, f"fns[{name!r}]", func)
    rounds = _check_int(rounds, "rounds", func, 1)
    settle_s = _check_float(settle_s, "settle_s", func, 0.0)
    names = list(fns)
    out: dict[str, list[LatencyStats]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotation(names, r):
            if settle_s > 0:
                time.sleep(settle_s)
            out[name].append(measure(fns[name], **measure_kwargs))
    return out


def cv(values: Iterable[float] | np.ndarray) -> float:
    """Coefficient of variation: sample standard deviation / mean (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("The 'values' parameter of cv must not be empty.")
    if a.size == 1:
        return 0.0
    std = float(a.std(ddof=1))
    mean = float(a.mean())
    if std == 0.0:
        return 0.0
    if mean == 0.0:
        return math.inf
    return std / abs(mean)


def ratio_spread(a: Sequence[LatencyStats], b: Sequence[LatencyStats]) -> dict[str, float]:
    """Spread of the per-round ratio ``a[i].p50_ms / b[i].p50_ms`` (as from :func:`alternate`).

    Returns ``median``, ``min``, ``max`` and ``cv`` of the ratios and the number of ``rounds``.
    """
    func = "ratio_spread"
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(
            f"The 'a' and 'b' parameters of {func} must be non-empty and of equal length. "
            f"Got {len(a)} and {len(b)} instead."
        )
    ratios = []
    for x, y in zip(a, b, strict=True):
        if not y.p50_ms > 0.0:
            raise ValueError(
                f"The 'b' parameter of {func} must have positive p50_ms in every round. "
                f"Got {y.p50_ms!r} instead."
            )
        ratios.append(x.p50_ms / y.p50_ms)
    r = np.asarray(ratios)
    return {
        "median": float(np.median(r)),
        "min": float(r.min()),
        "max": float(r.max()),
        "cv": cv(r),
        "rounds": float(r.size),
    }


def repeatability(
    runs: Sequence[LatencyStats], target_ci: float, contended: Sequence[bool] = ()
) -> dict[str, Any]:
    """Whether repeated measurements of one configuration agree: a verdict that looks at the
    spread *between* runs, not only at each run's own ``stable`` flag (each run can pin its own
    median tightly while the machine moves it by 12 % from one run to the next).

    Returns ``stable`` (every run stable on its own, the half-range of the runs' p50s within
    ``target_ci`` of their median, and no run contended), ``spread_rel`` (that half-range over
    the median), ``cv`` of the p50s, ``own_stable`` (how many runs were stable on their own),
    ``contended`` (how many ran contended; ``contended[i]`` says whether run ``i`` did) and
    ``verdict``, a line saying which of these failed."""
    func = "repeatability"
    if len(runs) == 0:
        raise ValueError(f"The 'runs' parameter of {func} must not be empty.")
    target_ci = _check_float(target_ci, "target_ci", func, 0.0, low_closed=False)
    if contended and len(contended) != len(runs):
        raise ValueError(f"The 'contended' parameter of {func} must have one entry per run "
                         f"({len(runs)}). Got {len(contended)} instead.")
    p50s = np.asarray([r.p50_ms for r in runs], dtype=np.float64)
    med = float(np.median(p50s))
    spread = _rel(float(p50s.max() - p50s.min()) / 2.0, med)
    own = sum(bool(r.stable) for r in runs)
    busy = sum(bool(c) for c in contended)
    why = []
    if spread > target_ci:
        why.append(f"p50 varies +-{spread:.1%} between runs (target +-{target_ci:.1%})")
    if own < len(runs):
        why.append(f"{len(runs) - own} of {len(runs)} runs unstable on their own")
    if busy:
        why.append(f"contended: {busy} of {len(runs)} runs ran while other processes used the "
                   "cores")
    verdict = ("stable: " if not why else "unstable: ") + (
        "; ".join(why) if why else f"{len(runs)} runs within +-{spread:.1%} of their median, "
        "each stable, none contended")
    return {"stable": not why, "spread_rel": spread, "cv": cv(p50s), "own_stable": own,
            "contended": busy, "verdict": verdict}
