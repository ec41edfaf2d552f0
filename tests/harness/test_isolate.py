"""Isolation and measurement-lock tests: real crashes, hangs and memory blow-ups in a real study."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autotune.measure.harness.hostlock import measurement_lock

FAULTY_MODEL = '''
"""A tiny classifier that misbehaves at chosen batch sizes (measured batches only)."""
import os
import signal
import time

import numpy as np
import torch
from torch import nn


class Faulty(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        n = x.shape[0]
        if n == 13:
            print("faulty model: about to crash", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        if n == 7:
            print("faulty model: about to hang", flush=True)
            time.sleep(3600)
        if n == 5:
            print("faulty model: allocating", flush=True)
            hog = []
            for _ in range(128):  # up to 4 GiB, 32 MiB at a time, so the watchdog sees it grow
                hog.append(np.ones(2**22))
        return self.lin(x)


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def build():
    torch.manual_seed(0)
    m = Faulty()
    with torch.no_grad():
        m.lin.weight.zero_()
        m.lin.weight[1, 0] = 1.0
        m.lin.bias.zero_()
    return m.eval(), torch.from_numpy(_data()[0][:2])


def data():
    return _data()
'''

FAULTS_JOB = """
name: faults
model: {factory: "faulty_model:build"}
evaluation: {dataset: "faulty_model:data", max_samples: 64}
search_space:
  parameters:
    runtime: [torch]
    batch_size: [1, 2, 5, 7, 13]
objectives: [latency_p50_ms, accuracy]
agent:
  name: random
  seed: 0
  warm_start:
    - {runtime: torch, batch_size: 2}
    - {runtime: torch, batch_size: 7}
    - {runtime: torch, batch_size: 13}
    - {runtime: torch, batch_size: 5}
    - {runtime: torch, batch_size: 1}
budget: {max_trials: 5}
measurement: {warmup: 1, min_repeats: 5, max_repeats: 20, max_time_s: 0.1,
              trial_timeout_s: 30, memory_limit_mb: 900,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
tracking: {enabled: false}
"""


@pytest.fixture
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lock file of this test only (inherited by spawned children through the environment)."""
    path = tmp_path / "measure.lock"
    monkeypatch.setenv("AUTOTUNE_MEASURE_LOCK", str(path))
    return path


def test_crash_hang_and_oom_fail_their_trials_and_the_study_goes_on(tmp_path, private_lock):
    from autotune.job.spec import load_job
    from autotune.tuning import tuner

    (tmp_path / "faulty_model.py").write_text(FAULTY_MODEL)
    (tmp_path / "job.yaml").write_text(textwrap.dedent(FAULTS_JOB).lstrip())
    job = load_job(tmp_path / "job.yaml")

    t0 = time.monotonic()
    summary = tuner.run(job)
    wall = time.monotonic() - t0

    by_batch = {t.config["batch_size"]: t for t in summary.trials}
    assert sorted(by_batch) == [1, 2, 5, 7, 13]
    assert summary.finished and summary.new_trials == 5

    crash = by_batch[13]
    assert crash.state == "failed"
    assert "killed by SIGSEGV" in crash.reason and "crash" in crash.reason
    assert "about to crash" in crash.reason  # the tail of the child's output
    assert "in forward" in crash.reason  # faulthandler's Python stack of the crash

    hang = by_batch[7]
    assert hang.state == "failed"
    assert "timed out after 30 s" in hang.reason
    assert "about to hang" in hang.reason
    assert "in forward" in hang.reason  # the stack dumped before the kill shows where it hung

    oom = by_batch[5]
    assert oom.state == "failed"
    assert "out of memory" in oom.reason and "900 MiB" in oom.reason
    assert "allocating" in oom.reason

    for b in (1, 2):  # normal trials before and after the failures completed, fully measured
        t = by_batch[b]
        assert t.state == "complete", t.reason
        assert t.metrics["accuracy"] == 1.0
        assert t.metrics["latency_p50_ms"] > 0
        assert t.metrics["latency_ratio"] == pytest.approx(
            t.metrics["latency_per_item_ms"] / summary.baseline["latency_per_item_ms"])
        assert t.user_attrs["details"]["fingerprint_digest"]
    assert summary.baseline["speedup"] == 1.0
    assert wall < 600  # the hang cost one trial_timeout_s, not an hour (a bound, not a timing)


def _hold(path: str, hold_s: float, q) -> None:  # runs in a spawned process
    with measurement_lock(path):
        start = time.time()
        time.sleep(hold_s)
        q.put((os.getpid(), start, time.time()))


def test_measurement_lock_serializes_two_processes(tmp_path):
    path = str(tmp_path / "m.lock")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(path, 0.6, q)) for _ in range(2)]
    for p in procs:
        p.start()
    spans = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    (_, s1, e1), (_, s2, e2) = sorted(spans, key=lambda s: s[1])
    assert e1 - s1 >= 0.55 and e2 - s2 >= 0.55
    assert s2 >= e1 - 0.01, f"the two holders overlapped: {spans}"


def _hold_forever(path: str, q) -> None:
    with measurement_lock(path):
        q.put("held")
        time.sleep(3600)


def test_lock_of_a_killed_holder_is_released(tmp_path):
    path = str(tmp_path / "m.lock")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold_forever, args=(path, q))
    p.start()
    assert q.get(timeout=60) == "held"
    got = threading.Event()

    def take() -> None:
        with measurement_lock(path):
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(0.5)  # really held by the other process
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert got.wait(10)


def test_evaluate_times_under_the_host_lock(tiny_job, private_lock):
    """Evaluator.evaluate waits for the lock before timing (and reports how long it waited)."""
    from autotune.job.spec import load_job
    from autotune.measure.workloads.forward import Evaluator

    ev = Evaluator(load_job(tiny_job()))
    config = {"runtime": "torch", "quantization": "fp32", "batch_size": 8, "threads": 1}
    ev.evaluate(config)  # load and warm everything outside the timed check
    out = {}
    with measurement_lock(private_lock):
        t = threading.Thread(target=lambda: out.setdefault("r", ev.evaluate(config)))
        t.start()
        # held 3 s: the evaluation's work before it asks for the lock (building from the warm
        # cache) may take a while on a busy machine and still leave it >= 0.5 s of waiting
        time.sleep(3.0)
        assert "r" not in out  # blocked on the lock
    t.join(60)
    r = out["r"]
    assert r.details["timings_s"]["lock_wait_s"] >= 0.5
    m = r.metrics
    for name in ("latency_p50_ms", "latency_p99_ms", "latency_std_ms", "latency_n", "latency_stable",
                 "throughput_ips", "peak_memory_mb", "model_memory_mb", "model_size_mb", "quality",
                 "cost_usd_per_million", "achieved_gflops", "roofline_pct", "latency_per_item_ms"):
        assert name in m, name
    assert 0 <= m["model_memory_mb"] <= m["peak_memory_mb"]
    # the MLP's forward at batch 8: 2 * 8 * (64*64 + 64*64 + 64*10) multiply-adds x 2
    assert m["forward_gflop"] == pytest.approx(2 * 8 * (64 * 64 + 64 * 64 + 64 * 10) / 1e9)
    assert m["achieved_gflops"] == pytest.approx(m["forward_gflop"] / (m["latency_p50_ms"] / 1e3))
    assert 0 < m["roofline_pct"] < 1000
    assert "gpu_memory_mb" not in m  # a CPU trial


def test_model_loading_is_bounded_by_the_startup_limit_not_the_trial_timeout(tiny_job, tmp_path,
                                                                             private_lock):
    from autotune.errors import TrialFailed
    from autotune.job.spec import load_job
    from autotune.measure.harness.isolate import IsolatedHarness
    from autotune.measure.workloads.registry import evaluator_for

    (tmp_path / "slow_model.py").write_text(
        "import time\nimport digits_model\n\n\ndef build(**kw):\n"
        "    print('slow model: training', flush=True)\n    time.sleep(10)\n"
        "    return digits_model.build(**kw)\n"
    )
    job = load_job(tiny_job(1, **{"digits_model:build": "slow_model:build"}))
    config = {"runtime": "torch", "quantization": "fp32", "batch_size": 1, "threads": 1}
    with IsolatedHarness(job, evaluator=evaluator_for, timeout_s=8, startup_timeout_s=120) as h:
        assert h.evaluate(config).metrics["quality"] > 0.5  # 10 s of loading, 8 s limit: fine
    with IsolatedHarness(job, evaluator=evaluator_for, timeout_s=8, startup_timeout_s=3) as h, \
            pytest.raises(TrialFailed) as err:
        h.evaluate(config)
    msg = str(err.value)
    assert "timed out after 3 s (the start-up limit) while starting" in msg
    assert "File \"" in msg and " line " in msg  # the Python stack of where start-up was


def test_default_memory_limit_is_a_share_of_the_machine_and_validate_states_it(tiny_job):
    from click.testing import CliRunner

    from autotune.cli import main
    from autotune.job.spec import load_job
    from autotune.measure.harness.isolate import IsolatedHarness, machine_memory_mb, memory_limit
    from autotune.measure.workloads.registry import evaluator_for

    path = tiny_job()
    job = load_job(path)
    total = machine_memory_mb()
    assert total and total > 0
    limit, why = memory_limit(job)
    assert limit == max(512, total // 2) and "default" in why
    # on by default, not off
    assert IsolatedHarness(job, evaluator=evaluator_for).memory_limit_mb == limit
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0 and f"memory     : {limit} MiB per trial (default" in out.output
    path.write_text(path.read_text().replace("measurement: {", "measurement: {memory_limit_mb: 700, "))
    job = load_job(path)
    assert memory_limit(job) == (700, "measurement.memory_limit_mb")
    assert IsolatedHarness(job, evaluator=evaluator_for).memory_limit_mb == 700
