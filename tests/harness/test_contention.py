"""Contention: a busy process on the measured cores marks the measurement contended."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from autotune.harness import contention


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _busy_children(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)  # let them start spinning
    return procs


def test_a_busy_process_marks_the_measurement_contended() -> None:
    cores = len(psutil.Process().cpu_affinity() or [0])
    procs = _busy_children(cores)  # one spinner per core we may use
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


def test_own_work_is_not_contention() -> None:
    before = contention.probe(0.5)
    if before.contended:
        pytest.skip(f"this machine is already busy ({before.describe()})")
    with contention.watch(wait_s=0.0) as w:
        _spin(0.4)  # this process's own CPU time is subtracted
    assert w.result is not None
    if w.result.contended and contention.probe(0.3).contended:
        pytest.skip("other work started on this machine during the test")
    assert not w.result.contended, w.result


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
