"""Tests of autotune.measure.harness.stats: summaries, the timing loop, interleaved comparisons."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from autotune.measure.harness.stats import (
    LatencyStats,
    alternate,
    cv,
    measure,
    median_ci_ranks,
    ratio_spread,
    repeatability,
    summarize,
)

MS = 1_000_000  # nanoseconds


class FakeClock:
    """A clock that only moves when a fake workload says so (integer nanoseconds)."""

    def __init__(self) -> None:
        self.now = 0
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def work(self, cost_ns: int):
        def fn() -> None:
            self.calls += 1
            self.now += cost_ns

        return fn


# ------------------------------------------------------------------------------------------------
# summarize


def test_summarize_known_samples():
    s = summarize(np.arange(1, 101, dtype=float), warmup=3, elapsed_s=1.5)
    assert s.n == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    # the textbook 95 % order-statistic interval of the median for n = 100 is [x(40), x(61)]
    assert (s.ci95_low_ms, s.ci95_high_ms) == (40.0, 61.0)
    assert s.ci_rel == pytest.approx((61 - 40) / 2 / 50.5)
    assert not s.stable  # a ramp: wide interval and drift
    assert s.stop_reason == "max_repeats"
    assert (s.warmup, s.elapsed_s) == (3, 1.5)


def test_median_ci_ranks_textbook_values():
    # 1-based ranks from the binomial tables: n=10 -> (2, 9), n=20 -> (6, 15), n=50 -> (18, 33)
    assert median_ci_ranks(10) == (1, 8)
    assert median_ci_ranks(20) == (5, 14)
    assert median_ci_ranks(50) == (17, 32)
    assert median_ci_ranks(6) == (0, 5)
    assert median_ci_ranks(3) == (0, 2)  # no 95 % interval exists: the whole range
    lo, hi = median_ci_ranks(5000)  # normal approximation branch
    assert (lo, hi) == (2429, 2570)  # 1-based l = floor(2500 - 1.96 * sqrt(5000) / 2)


def test_summarize_constant_is_stable():
    s = summarize([2.0] * 30, target_ci=0.01, stop_reason="stable")
    assert s.stable and s.ci_rel == 0.0 and s.std_ms == 0.0 and s.p99_ms == 2.0


def test_summarize_single_sample():
    s = summarize([3.0])
    assert s.n == 1 and s.std_ms == 0.0 and s.ci95_low_ms == s.ci95_high_ms == 3.0
    assert not s.stable  # too few samples for a 95 % interval


def test_ci_coverage_of_true_median():
    # lognormal(0, 0.5): skewed like latencies, true median exactly 1.0
    rng = np.random.default_rng(20260101)
    hits = 0
    draws = 200
    for _ in range(draws):
        s = summarize(rng.lognormal(0.0, 0.5, size=41))
        hits += s.ci95_low_ms <= 1.0 <= s.ci95_high_ms
    assert hits / draws >= 0.90


def test_round_trip_and_metrics():
    s = summarize(np.linspace(1.0, 2.0, 50), warmup=5, stop_reason="time_cap", elapsed_s=0.25)
    d = s.to_dict()
    assert LatencyStats.from_dict(json.loads(json.dumps(d, allow_nan=False))) == s
    m = s.as_metrics()
    assert set(m) == {
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "latency_std_ms",
        "latency_n",
        "latency_ci_rel",
        "latency_stable",
    }
    assert m["latency_n"] == 50.0 and m["latency_stable"] == 0.0
    assert m["latency_p50_ms"] == s.p50_ms
    assert set(s.as_metrics("gpu")) == {k.replace("latency", "gpu") for k in m}


def test_round_trip_non_finite():
    zero = summarize([0.0] * 4 + [1.0] * 3)  # median 0 with a non-zero interval width
    assert zero.ci_rel == math.inf
    d = zero.to_dict()
    json.dumps(d, allow_nan=False)
    assert LatencyStats.from_dict(d).ci_rel == math.inf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"warmup": -1},
            "The 'warmup' parameter of summarize must be an int in [0, inf). Got -1 instead.",
        ),
        ({"stop_reason": "done"}, "The 'stop_reason' parameter of summarize must be one of"),
        ({"target_ci": 0.0}, "The 'target_ci' parameter of summarize must be a float in (0.0"),
    ],
)
def test_summarize_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        summarize([1.0, 2.0], **kwargs)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="must not be empty"):
        summarize([])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])


# ------------------------------------------------------------------------------------------------
# measure


def test_measure_deterministic_clock_is_stable_after_min_repeats():
    clock = FakeClock()
    s = measure(clock.work(1 * MS), warmup=3, min_repeats=20, timer=clock)
    assert s.stable and s.stop_reason == "stable"
    assert s.n == 20
    assert s.p50_ms == 1.0 and s.p99_ms == 1.0 and s.ci_rel == 0.0
    # warm-up ran the 3 calls and then until warmup_s (50 ms of fake time) had passed
    assert s.warmup >= 3
    assert clock.calls == s.warmup + s.n  # warm-up calls are not in the samples
    assert s.elapsed_s == pytest.approx(clock.now / 1e9)


def test_measure_warmup_count_without_time_extension():
    clock = FakeClock()
    s = measure(clock.work(2 * MS), warmup=7, warmup_s=0.0, min_repeats=10, timer=clock)
    assert s.warmup == 7 and s.n == 10
    assert clock.calls == 17


def test_measure_no_warmup():
    clock = FakeClock()
    s = measure(clock.work(MS), warmup=0, min_repeats=6, timer=clock)
    assert s.warmup == 0 and clock.calls == s.n == 6


def test_measure_noisy_clock_stops_at_max_repeats():
    clock = FakeClock()
    rng = np.random.default_rng(7)
    costs = rng.integers(1 * MS, 100 * MS, size=10_000)

    def fn() -> None:
        clock.now += int(costs[clock.calls])
        clock.calls += 1

    s = measure(fn, warmup=2, min_repeats=20, max_repeats=200, max_time_s=1e6, timer=clock)
    assert s.n == 200
    assert not s.stable
    assert s.stop_reason == "max_repeats"
    assert s.ci_rel > 0.02


def test_measure_drift_is_not_stable():
    # each call 1 % slower than the one before: tight-looking windows, but a moving target
    clock = FakeClock()
    state = {"cost": 1.0 * MS}

    def fn() -> None:
        clock.now += int(state["cost"])
        state["cost"] *= 1.01

    s = measure(
        fn, warmup=0, min_repeats=20, max_repeats=300, target_ci=0.05, max_time_s=1e6, timer=clock
    )
    assert not s.stable and s.stop_reason == "max_repeats"
    assert s.drift_rel > 0.05


def test_measure_sync_is_inside_timed_region():
    clock = FakeClock()
    synced = []

    def sync() -> None:
        synced.append(1)
        clock.now += MS  # the "device" finishes 1 ms after the call returns

    s = measure(clock.work(MS), warmup=2, warmup_s=0.0, min_repeats=10, sync=sync, timer=clock)
    assert s.p50_ms == 2.0
    assert len(synced) == s.warmup + s.n


def test_measure_time_cap_real_clock():
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.001)

    t0 = time.perf_counter()
    s = measure(fn, warmup=2, max_repeats=100_000, target_ci=1e-9, max_time_s=0.2)
    wall = time.perf_counter() - t0
    assert s.stop_reason == "time_cap" and not s.stable
    # the cap stopped it (uncapped: 100,000 calls of >= 1 ms); how far one call overran it is
    # the machine's load, not the cap's (the fake-clock tests pin the exact stop)
    assert 0.2 <= s.elapsed_s <= wall < 10.0
    assert s.p50_ms >= 1.0
    assert calls == s.warmup + s.n


def test_measure_time_cap_before_min_repeats_is_not_stable():
    clock = FakeClock()
    s = measure(clock.work(10 * MS), warmup=0, min_repeats=100, max_time_s=0.5, timer=clock)
    assert s.stop_reason == "time_cap" and not s.stable
    assert s.n == 50


def test_measure_min_time_keeps_going():
    clock = FakeClock()
    s = measure(clock.work(MS), warmup=0, min_repeats=10, min_time_s=0.1, timer=clock)
    assert s.stable and s.elapsed_s >= 0.1 and s.n >= 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": -1}, "The 'warmup' parameter of measure must be an int in [0, inf). Got -1"),
        ({"warmup": 1.5}, "The 'warmup' parameter of measure must be an int in [0, inf). Got 1.5"),
        ({"warmup": True}, "The 'warmup' parameter of measure must be an int"),
        ({"min_repeats": 0}, "The 'min_repeats' parameter of measure must be an int in [1, inf)"),
        ({"max_repeats": 5, "min_repeats": 10}, "'max_repeats' parameter of measure must be >="),
        ({"target_ci": 0}, "The 'target_ci' parameter of measure must be a float in (0.0, inf)"),
        ({"max_time_s": -1.0}, "The 'max_time_s' parameter of measure must be a float in (0.0"),
        ({"min_time_s": 9.0}, "The 'min_time_s' parameter of measure must be <= max_time_s"),
        ({"sync": 3}, "The 'sync' parameter of measure must be a callable or None. Got 3"),
    ],
)
def test_measure_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        measure(lambda: None, **kwargs)
    assert message in str(info.value)


def test_measure_validation_exact_message():
    with pytest.raises(ValueError) as info:
        measure(lambda: None, warmup=-1)
    assert str(info.value) == (
        "The 'warmup' parameter of measure must be an int in [0, inf). Got -1 instead."
    )
    with pytest.raises(ValueError, match="The 'fn' parameter of measure must be a callable"):
        measure(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# alternate / ratio_spread / cv


def test_alternate_and_ratio_spread_exact():
    clock = FakeClock()
    log: list[str] = []

    def work(name: str, cost: int):
        def fn() -> None:
            log.append(name)
            clock.now += cost

        return fn

    res = alternate(
        {"a": work("a", 1 * MS), "b": work("b", 2 * MS)},
        rounds=4,
        warmup=1,
        warmup_s=0.0,
        min_repeats=10,
        timer=clock,
        settle_s=0.0,
    )
    # each measurement is 1 warm-up + 10 timed calls; the order rotates: A B, B A, A B, B A
    assert log[::11] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(v) for v in res.values()] == [4, 4]
    assert all(s.p50_ms == 1.0 for s in res["a"]) and all(s.p50_ms == 2.0 for s in res["b"])
    spread = ratio_spread(res["a"], res["b"])
    assert spread == {"median": 0.5, "min": 0.5, "max": 0.5, "cv": 0.0, "rounds": 4.0}


def test_alternate_settles_before_every_block(monkeypatch: pytest.MonkeyPatch):
    """A pause before each block, so that no contender's spinning pool still runs while the
    next is timed (tests/harness/test_interference.py shows what it is for)."""
    import autotune.measure.harness.stats as stats

    clock = FakeClock()
    events: list[object] = []
    monkeypatch.setattr(stats.time, "sleep", lambda s: events.append(s))

    def work(name: str):
        def fn() -> None:
            if not events or events[-1] != name:
                events.append(name)
            clock.now += MS

        return fn

    alternate({"a": work("a"), "b": work("b")}, rounds=2, warmup=1, warmup_s=0.0,
              min_repeats=6, timer=clock, settle_s=0.25)
    assert events == [0.25, "a", 0.25, "b", 0.25, "b", 0.25, "a"]
    with pytest.raises(ValueError, match="The 'settle_s' parameter of alternate"):
        alternate({"a": lambda: None}, rounds=1, settle_s=-1.0)


def test_repeatability_looks_between_runs():
    def run(p50: float) -> LatencyStats:
        return summarize([p50] * 6)  # each run perfectly stable on its own

    tight = repeatability([run(10.0), run(10.1), run(9.95)], target_ci=0.03)
    assert tight["stable"] and tight["verdict"].startswith("stable")
    # "stable 5/5" by each run's own flag, yet the p50 moved 12 % between them
    drifting = [run(10.0), run(11.2), run(10.4), run(10.9), run(10.1)]
    res = repeatability(drifting, target_ci=0.03)
    assert res["own_stable"] == 5 and not res["stable"]
    assert res["spread_rel"] == pytest.approx(0.6 / 10.4)
    assert "varies +-5.8% between runs" in res["verdict"]
    busy = repeatability([run(10.0)] * 3, target_ci=0.03, contended=[False, True, False])
    assert not busy["stable"] and "contended: 1 of 3 runs" in busy["verdict"]
    with pytest.raises(ValueError, match="one entry per run"):
        repeatability([run(1.0)], 0.03, contended=[True, False])


def test_ratio_spread_values_and_validation():
    def st(p50: float) -> LatencyStats:
        return summarize([p50] * 6)

    spread = ratio_spread([st(1.0), st(2.0), st(3.0)], [st(1.0), st(1.0), st(1.0)])
    assert spread["median"] == 2.0 and spread["min"] == 1.0 and spread["max"] == 3.0
    assert spread["cv"] == pytest.approx(0.5)  # std([1, 2, 3], ddof=1) / 2
    with pytest.raises(ValueError, match="equal length"):
        ratio_spread([st(1.0)], [])
    with pytest.raises(ValueError, match="The 'rounds' parameter of alternate must be an int"):
        alternate({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="non-empty mapping"):
        alternate({}, rounds=1)


def test_cv():
    assert cv([2.0, 2.0, 2.0]) == 0.0
    assert cv([5.0]) == 0.0
    assert cv([1.0, 3.0]) == pytest.approx(np.std([1.0, 3.0], ddof=1) / 2.0)
    with pytest.raises(ValueError, match="must not be empty"):
        cv([])
