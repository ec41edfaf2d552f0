"""Contention: a busy process on the measured cores marks the measurement contended.

The busy verdict is tested on the real machine with contention the test makes itself (one
spinning process per usable core, each seen using CPU before the watch starts).  The quiet
verdicts (this process's own work is not contention; waiting until the cores are quiet) need
known figures, which a shared machine never guarantees: they run against :class:`FakePsutil`,
a stand-in for the psutil counters the module samples, whose figures the test sets."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import namedtuple
from typing import Any

import psutil
import pytest

from autotune.measure.harness import contention

_Times = namedtuple("_Times", "user nice system idle iowait irq softirq steal guest guest_nice")
_Own = namedtuple("_Own", "user system")


class FakePsutil:
    """The psutil surface :mod:`autotune.measure.harness.contention` reads, with known counters.

    Each ``cpu_times(percpu=True)`` call (one per snapshot) first adds ``tick_s`` seconds to
    every core: idle time, or, while ``busy_samples`` is positive, time another process used.
    :meth:`run` adds CPU time this process used (``own``), another process used (``other``) or a
    hypervisor stole (``steal``)."""

    Error = psutil.Error

    def __init__(self, cores: int = 2, tick_s: float = 0.05) -> None:
        self.n, self.tick_s, self.busy_samples = cores, tick_s, 0
        self.cores = [dict.fromkeys(_Times._fields, 0.0) for _ in range(cores)]
        self.own = 0.0

    def run(self, *, own: float = 0.0, other: float = 0.0, steal: float = 0.0) -> None:
        self.cores[0]["user"] += own + other
        self.cores[0]["steal"] += steal
        self.own += own

    def cpu_times(self, percpu: bool = False) -> list[Any]:
        assert percpu
        for core in self.cores:
            core["user" if self.busy_samples > 0 else "idle"] += self.tick_s
        self.busy_samples -= 1
        return [_Times(**c) for c in self.cores]

    def cpu_count(self) -> int:
        return self.n

    def Process(self) -> Any:  # psutil's name
        fake = self

        class _Process:
            def cpu_affinity(self) -> list[int]:
                return list(range(fake.n))

            def cpu_times(self) -> Any:
                return _Own(fake.own, 0.0)

        return _Process()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePsutil:
    ps = FakePsutil()
    monkeypatch.setattr(contention, "psutil", ps)
    return ps


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _busy_children(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning on a CPU, returned once each has used CPU time (a loaded
    machine can take long to start them: a fixed sleep would let the watch start too early)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    deadline = time.monotonic() + 60
    for p in procs:
        while psutil.Process(p.pid).cpu_times().user < 0.05 and time.monotonic() < deadline:
            time.sleep(0.02)
    return procs


def test_a_busy_process_marks_the_measurement_contended() -> None:
    cores = len(psutil.Process().cpu_affinity() or [0])
    procs = _busy_children(cores)  # one spinner per core we may use: our own contention
    try:
        with contention.watch(wait_s=0.3) as w:
            _spin(0.3)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    c = w.result
    assert c is not None and c.contended, c
    assert c.other_cpu_pct > contention.THRESHOLD_PCT
    assert not c.quiet_before and c.waited_s >= 0.3
    assert c.cores == cores and c.window_s >= 0.3
    assert set(c.to_dict()) >= {"other_cpu_pct", "steal_pct", "load", "contended"}


def test_own_work_is_not_contention(fake: FakePsutil) -> None:
    with contention.watch(wait_s=0.0) as w:
        fake.run(own=0.4)  # this process's own CPU time is subtracted
    c = w.result
    assert c is not None and c.quiet_before and not c.contended, c
    assert c.other_cpu_pct == pytest.approx(0.0) and c.cores == 2
    # the same CPU time used by another process: 0.4 s of the window's 0.5 s capacity
    # (0.4 s + one 0.05 s tick on each of 2 cores)
    with contention.watch(wait_s=0.0) as w:
        fake.run(other=0.4)
    assert w.result is not None and w.result.contended
    assert w.result.other_cpu_pct == pytest.approx(80.0)
    # a hypervisor stealing the cores is contention too
    with contention.watch(wait_s=0.0) as w:
        fake.run(own=0.2, steal=0.1)
    assert w.result is not None and w.result.contended
    assert (w.result.other_cpu_pct, w.result.steal_pct) == pytest.approx((0.0, 25.0))


def test_the_watch_waits_for_quiet_cores(fake: FakePsutil) -> None:
    said: list[contention.Contention] = []
    fake.busy_samples = 4  # the first probe and the first waiting probe see another process
    with contention.watch(wait_s=30.0, on_wait=said.append) as w:
        fake.run(own=0.3)
    c = w.result
    assert c is not None and not c.contended and c.quiet_before, c
    assert len(said) == 1 and said[0].contended and said[0].other_cpu_pct == pytest.approx(100.0)
    assert 0.5 <= c.waited_s < 30.0  # two 0.25 s waiting probes, not the whole wait
    # cores that stay busy: it gives up after wait_s and says the cores were not quiet
    fake.busy_samples = 10**6
    t0 = time.monotonic()
    with contention.watch(wait_s=0.3) as w:
        pass
    assert w.result is not None and w.result.contended and not w.result.quiet_before
    assert 0.3 <= w.result.waited_s <= time.monotonic() - t0


def test_flags_and_notes_for_tables_and_the_run_output() -> None:
    busy = contention.Contention(other_cpu_pct=80.0, steal_pct=0.0, load=3.0, cores=2,
                                 window_s=0.5, contended=True, waited_s=2.0,
                                 quiet_before=False).to_dict()
    quiet = {**busy, "other_cpu_pct": 3.0, "contended": False}
    assert contention.flag({"details": {"contention": busy}}) == "contended"
    assert contention.flag({"details": {"contention": quiet}}) == ""
    assert contention.flag({"details": {}}) == ""
    assert contention.flag({"confirmed": {"rounds": 3, "contended_rounds": 0},
                            "details": {"contention": busy}}) == "confirmed"
    assert contention.flag({"confirmed": {"rounds": 3, "contended_rounds": 3}}) == \
        "confirmed, contended"
    line = contention.note({"contention": busy})
    assert line is not None and "80% of the 2 core(s)" in line and "waiting 2.0 s" in line
    assert contention.note({"contention": quiet}) is None
