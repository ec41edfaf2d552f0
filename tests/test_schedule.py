"""Re-tuning cycles: keep the champion when nothing changed, re-tune and promote when the model
file is replaced by one that is slower for the champion's configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autotune.harness.hostlock import file_lock
from autotune.schedule import Cycle, LocalDeployer, run_schedule
from autotune.spec import load_job

# v1: slow in eager torch (a sleep the ONNX export does not trace), fast on ONNX Runtime.
MODEL_V1 = """
import time
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 64)
        self.b = nn.Linear(64, 4)

    def forward(self, x):
        if not torch.onnx.is_in_onnx_export():
            time.sleep(0.003)
        return self.b(torch.relu(self.a(x)))


def build():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(4, 16)
"""

# v2 (the replacement): the same network in eager torch, but its ONNX graph carries 150 extra
# 64x64 layers, so the champion (onnxruntime) becomes much slower and torch wins.
MODEL_V2 = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 64)
        self.b = nn.Linear(64, 4)
        self.register_buffer("w", torch.randn(64, 64) * 0.01)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if torch.onnx.is_in_onnx_export():
            s = h
            for _ in range(150):
                s = torch.tanh(s @ self.w)
            h = h + s * 0.0
        return self.b(h)


def build():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(4, 16)
"""

JOB = """
name: rt
model: {factory: "netmod:build"}
evaluation: {metric: mse, max_samples: 64}
search_space:
  parameters:
    runtime: [onnxruntime, torch]
    threads: {low: 1, high: 1}
objectives: [latency_p50_ms]
agent:
  name: tpe
  seed: 0
  warm_start: [{runtime: torch, threads: 1}, {runtime: onnxruntime, threads: 1}]
budget: {max_trials: 2}
measurement: {warmup: 3, min_repeats: 15, max_repeats: 400, max_time_s: 0.25}
schedule: "1s"
retune: {drift_threshold: 20.0, budget: 2, margin: 0.2, rounds: 3}
"""


def _write(tmp_path: Path, model: str) -> Path:
    (tmp_path / "netmod.py").write_text(textwrap.dedent(model))
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(JOB).lstrip())
    return job


@pytest.mark.slow
def test_keep_then_promote_after_model_change(tmp_path: Path) -> None:
    timeline: list[str] = []
    t0 = time.monotonic()

    def log(msg: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {msg}")

    job = load_job(_write(tmp_path, MODEL_V1))
    dep = LocalDeployer()
    first = Cycle(job, deployer=dep, log=log).run()
    log(f"cycle 0: {first.decision} ({first.why})")
    assert first.decision == "initial"
    champion = dep.manifest(dep.resolve(job, "champion"))
    assert champion["config"]["runtime"] == "onnxruntime"  # torch sleeps 3 ms per call

    keep = Cycle(job, deployer=dep, log=log).run()
    log(f"cycle 1: {keep.decision} ({keep.why})")
    assert keep.decision == "keep", keep
    assert keep.changed == () and keep.bundle == first.bundle
    assert "nothing changed" in keep.why

    # A reader that follows the alias the way a server does (resolve + load on every request)
    # must never see a missing or half-written bundle across the swap.  After the merge with
    # autotune.deploy, replace `_follow` by requests to a running `autotune serve`.
    stop, seen, errors = threading.Event(), [], []

    def _follow() -> None:
        while not stop.is_set():
            try:
                b = dep.resolve(job, "champion")
                seen.append((str(b), dep.load(b).manifest["config"]["runtime"]))
            except Exception as exc:  # any failure is a dropped request
                errors.append(repr(exc))
            time.sleep(0.005)

    follower = threading.Thread(target=_follow, daemon=True)
    follower.start()
    (tmp_path / "netmod.py").write_text(textwrap.dedent(MODEL_V2))  # the slower model
    promo = Cycle(job, deployer=dep, log=log).run()
    log(f"cycle 2: {promo.decision} ({promo.why})")
    time.sleep(0.05)
    stop.set()
    follower.join(5)
    assert not errors, errors[:3]
    runtimes = [r for _, r in seen]
    assert runtimes[0] == "onnxruntime" and runtimes[-1] == "torch"
    swap = runtimes.index("torch")
    assert set(runtimes[:swap]) == {"onnxruntime"} and set(runtimes[swap:]) == {"torch"}
    log(f"alias follower: {len(seen)} loads, swapped after {swap}, 0 errors")
    assert promo.decision == "promote", promo
    assert any(c.startswith("model ") for c in promo.changed)
    side = promo.measured["side_by_side"]
    assert side["ratio_max"] < 1 - 0.2  # torch beat onnxruntime in every round
    new = dep.resolve(job, "champion")
    assert str(new) == promo.bundle != first.bundle
    m = dep.manifest(new)
    assert m["config"]["runtime"] == "torch" and m["study"].startswith("rt.r")
    assert dep.load(new).model_file.is_file()
    # the study of the re-tune was warm-started with the old champion (re-measured first)
    import optuna

    trials = optuna.load_study(study_name=m["study"], storage=job.storage_url).get_trials()
    assert trials[0].params["runtime"] == "onnxruntime"
    # every cycle is recorded: history file and one MLflow run each, tagged with the decision
    hist = [json.loads(line) for line in
            (job.out_dir / "retune" / "history.jsonl").read_text().splitlines()]
    assert [h["decision"] for h in hist] == ["initial", "keep", "promote"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=job.tracking_uri)
    exp = client.get_experiment_by_name("autotune-rt")
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.kind` = 'retune'")
    assert sorted(r.data.tags["autotune.retune.decision"] for r in runs) == \
        ["initial", "keep", "promote"]
    promoted = next(r for r in runs if r.data.tags["autotune.retune.decision"] == "promote")
    assert "model" in promoted.data.tags["autotune.retune.changed"]
    assert "side_by_side.ratio_median" in promoted.data.metrics
    print("\n".join(timeline))
    (tmp_path / "timeline.txt").write_text("\n".join(timeline))


def test_concurrent_cycle_is_skipped_and_lock_survives_sigkill(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, MODEL_V1))
    lock = job.out_dir / "retune.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from autotune.harness.hostlock import file_lock\n"
         "with file_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(600)",
         str(lock)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = Cycle(job).run()
        assert res.decision == "skipped" and str(holder.pid) in res.why
        os.kill(holder.pid, signal.SIGKILL)  # a crashed cycle: no cleanup at all
        holder.wait(10)
        with file_lock(lock, blocking=False) as got:
            assert got  # the kernel released it
    finally:
        if holder.poll() is None:
            holder.kill()


def test_schedule_needs_a_schedule(tmp_path: Path) -> None:
    from autotune.errors import AutotuneError

    text = textwrap.dedent(JOB).replace('schedule: "1s"\n', "")
    (tmp_path / "netmod.py").write_text(MODEL_V1)
    (tmp_path / "job.yaml").write_text(text)
    with pytest.raises(AutotuneError, match="no 'schedule:'"):
        run_schedule(load_job(tmp_path / "job.yaml"), max_cycles=1)


def test_schedule_loop_runs_cycles_on_time(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, MODEL_V1))
    lock = job.out_dir / "retune.lock"
    slept: list[float] = []
    with file_lock(lock):  # cycles are skipped while we hold the lock: cheap, and shows the loop
        out = run_schedule(job, max_cycles=2, sleep=slept.append)
    assert [r.decision for r in out] == ["skipped", "skipped"]
    assert len(slept) == 2 and all(0 <= s <= 1.01 for s in slept)


def test_schedule_errors_are_located(tmp_path: Path) -> None:
    from autotune.errors import SpecError

    (tmp_path / "netmod.py").write_text(MODEL_V1)
    (tmp_path / "job.yaml").write_text(
        textwrap.dedent(JOB).lstrip().replace('"1s"', '"0 25 * * *"'))
    with pytest.raises(SpecError) as e:
        load_job(tmp_path / "job.yaml")
    assert e.value.path == "schedule" and e.value.line == 15 and "hour: 25" in str(e.value)
