"""Re-tuning cycles: keep the champion when nothing changed, re-tune and promote when the model
file is replaced by one that is slower for the champion's configuration, while a running
``autotune serve`` on the registry alias answers every request across the swap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autotune.job.spec import load_job
from autotune.measure.harness.hostlock import file_lock
from autotune.retune.schedule import BundleDeployer, Cycle, run_schedule

# The model pair: one network whose extra work (a chain of 512x512 matmuls) exists in only one
# runtime's graph.  torch.export traces with ``is_in_onnx_export()`` False, the ONNX export with it
# True, so the branch decides which runtime carries the work.  The extra work makes that runtime
# 50x-2000x slower than the other (measured side by side on a 2-core machine with every core
# busy), far beyond any timing noise, so every decision below is decided by the work, not by luck.
_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 64)
        self.b = nn.Linear(64, 4)
        self.register_buffer("up", torch.randn(64, 512) * 0.05)
        self.register_buffer("w", torch.randn(512, 512) * 0.1)  # tanh stays away from denormals

    def forward(self, x):
        h = torch.relu(self.a(x))
        if {heavy}:
            s = h @ self.up
            for _ in range({layers}):
                s = torch.tanh(s @ self.w)
            h = h + s[:, :64] * 0.0
        return self.b(h)


def build():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(4, 16)
"""
# v1: the work is in the torch program only: onnxruntime wins (~0.01 ms vs ~1 ms).
MODEL_V1 = _NET.format(heavy="not torch.onnx.is_in_onnx_export()", layers=16)
# v2 (the replacement): the work is in the ONNX graph only: the champion's configuration
# (onnxruntime) becomes ~50x slower than torch (~10 ms vs ~0.2 ms).
MODEL_V2 = _NET.format(heavy="torch.onnx.is_in_onnx_export()", layers=100)

# Contention is never flagged (threshold 100 %): every decision rests on the 50x work difference,
# not on quiet cores, so no measurement waits for quiet cores or is measured again (under load,
# with this test's own requests to its server running, those waits took minutes).
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
measurement: {warmup: 3, min_repeats: 15, max_repeats: 400, max_time_s: 0.25,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
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
    from mlflow.tracking import MlflowClient

    from autotune.deploy.serve import ModelServer, load_test

    timeline: list[str] = []
    t0 = time.monotonic()

    def log(msg: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {msg}")

    job = load_job(_write(tmp_path, MODEL_V1))
    dep = BundleDeployer(log)
    first = Cycle(job, deployer=dep, log=log).run()
    log(f"cycle 0: {first.decision} ({first.why})")
    assert first.decision == "initial"
    assert dep.resolve(job, "champion") == Path(first.bundle)
    champion = dep.manifest(Path(first.bundle))
    assert champion["config"]["runtime"] == "onnxruntime"  # the work is in torch
    assert champion["model_hash"] and champion["env"]["hardware"]  # copied from the study
    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    assert client.get_model_version_by_alias("rt", "champion").version == 1

    # a real server follows the registry alias while cycles 1 and 2 run under load
    server = ModelServer("models:/rt@champion", tracking_uri=job.tracking_uri, port=0,
                         poll_interval=0.2, max_wait_ms=1.0).start()
    v_before = server.served.version
    log(f"serving {v_before} at {server.url}")
    res: dict[str, object] = {}

    def cycle(name: str):
        def act() -> None:
            res[name] = r = Cycle(job, deployer=dep, log=log).run()
            log(f"{name}: {r.decision} ({r.why}); server serves {server.served.version}, "
                f"{server.swaps} swaps")
        return act

    def replace_model() -> None:
        (tmp_path / "netmod.py").write_text(textwrap.dedent(MODEL_V2))  # the slower model
        log("model file replaced by the slower v2")

    def until_swapped() -> None:
        deadline = time.monotonic() + 60  # a bound on liveness, not a timing
        while server.served.version == v_before and time.monotonic() < deadline:
            time.sleep(0.02)
        log(f"server swapped to {server.served.version}")
        time.sleep(1.0)  # keep answering on the new model for a while

    body = json.dumps({"inputs": [[0.1] * 16]}).encode()
    try:
        report = load_test(server.url, body, seconds=1.0, threads=2, events=(
            (0.5, cycle("cycle 1")), (0.5, replace_model), (0.5, cycle("cycle 2")),
            (0.5, until_swapped)))
        meta = server.metadata()
    finally:
        server.stop()
    log(f"load across both cycles: {report.line()}")
    print("\n".join(timeline))
    (tmp_path / "timeline.txt").write_text("\n".join(timeline))

    keep, promo = res["cycle 1"], res["cycle 2"]
    assert keep.decision == "keep", keep
    assert keep.changed == () and keep.bundle == first.bundle
    assert "nothing changed" in keep.why
    assert promo.decision == "promote", promo
    # the server answered every request, before and after the swap, and swapped exactly once
    assert report.failures == 0, report.errors
    assert report.versions.get(v_before, 0) > 0 and report.versions.get(meta["model_version"], 0) > 0
    assert meta["model_version"] == "rt/2" != v_before and meta["swaps"] == 1
    assert meta["config"]["runtime"] == "torch" and meta["job"].startswith("rt.r")

    assert any(c.startswith("model ") for c in promo.changed)
    side = promo.measured["side_by_side"]
    assert side["ratio_max"] < 1 - 0.2  # torch beat onnxruntime in every round
    new = dep.resolve(job, "champion")
    assert str(new) == promo.bundle != first.bundle
    m = dep.manifest(new)
    assert m["config"]["runtime"] == "torch" and m["study"].startswith("rt.r")
    assert m["model_hash"] != champion["model_hash"]
    assert dep.load(new).predict(np.full((1, 16), 0.1, np.float32)).shape == (1, 4)
    mv = client.get_model_version_by_alias("rt", "champion")
    assert mv.version == 2 and mv.tags["autotune.bundle_path"] == promo.bundle
    # the study of the re-tune was warm-started with the old champion (re-measured first)
    import optuna

    trials = optuna.load_study(study_name=m["study"], storage=job.storage_url).get_trials()
    assert trials[0].params["runtime"] == "onnxruntime"
    # every cycle is recorded: history file and one MLflow run each, tagged with the decision
    hist = [json.loads(line) for line in
            (job.out_dir / "retune" / "history.jsonl").read_text().splitlines()]
    assert [h["decision"] for h in hist] == ["initial", "keep", "promote"]
    exp = client.get_experiment_by_name("autotune-rt")
    runs = client.search_runs([exp.experiment_id], "tags.`autotune.kind` = 'retune'")
    assert sorted(r.data.tags["autotune.retune.decision"] for r in runs) == \
        ["initial", "keep", "promote"]
    promoted = next(r for r in runs if r.data.tags["autotune.retune.decision"] == "promote")
    assert "model" in promoted.data.tags["autotune.retune.changed"]
    assert "side_by_side.ratio_median" in promoted.data.metrics


def test_alias_falls_back_to_the_local_record_while_mlflow_is_down(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Tracking down: the export still deploys (local alias record) and says so; the next
    resolve that reaches the registry registers the bundle and moves the alias there."""
    import contextlib
    import socket

    from _deploy_job import ORT_FP32, ORT_INT8, tuned_job
    from mlflow.tracking import MlflowClient

    job = tuned_job()
    # the registered model may exist already (other tests export it) or not: both must work
    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    with contextlib.suppress(Exception):
        client.create_registered_model(job.name)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = job.model_copy(update={"tracking": job.tracking.model_copy(
        update={"uri": f"http://127.0.0.1:{port}"})})
    logs: list[str] = []
    dep = BundleDeployer(logs.append)
    bundle = dep.export_trial(down, job.name, ORT_FP32, tmp_path, "retune-test")
    assert any("registry unreachable" in m and "local alias record" in m for m in logs), logs
    record = json.loads((job.out_dir / "aliases" / "retune-test.json").read_text())
    assert record == {"bundle": str(bundle), "model": job.name, "version": None}
    logs.clear()
    assert dep.resolve(down, "retune-test") == bundle
    assert any("using the local alias record" in m for m in logs), logs
    m = dep.manifest(bundle)
    assert (m["study"], m["trial"]) == (job.name, ORT_FP32) and m["config"]["runtime"] == "onnxruntime"
    dep.load(bundle)  # checksums verified

    # MLflow is back: the pending export is registered and the registry alias follows it
    logs.clear()
    assert dep.resolve(job, "retune-test") == bundle
    assert any("exported while MLflow was unreachable" in m for m in logs), logs
    mv = client.get_model_version_by_alias(job.name, "retune-test")
    assert mv.tags["autotune.bundle_path"] == str(bundle)
    record = json.loads((job.out_dir / "aliases" / "retune-test.json").read_text())
    assert record["version"] == str(mv.version)
    # `autotune export` moves the alias outside re-tuning: resolve follows the registry, to the
    # exported folder while it exists, else to a download of the registered artifacts
    from autotune.deploy.export import export_bundle

    other = export_bundle(job, ORT_INT8, out=tmp_path / "by-hand", alias="retune-test")
    assert other.registered is not None
    assert dep.resolve(job, "retune-test") == (tmp_path / "by-hand").resolve()
    shutil.rmtree(tmp_path / "by-hand")
    fetched = dep.resolve(job, "retune-test")
    assert fetched is not None and fetched.name == f"registry-{job.name}-v{other.registered.version}"
    assert dep.manifest(fetched)["trial"] == ORT_INT8
    dep.load(fetched)


def test_concurrent_cycle_is_skipped_and_lock_survives_sigkill(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, MODEL_V1))
    lock = job.out_dir / "retune.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from autotune.measure.harness.hostlock import file_lock\n"
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
    line = textwrap.dedent(JOB).lstrip().splitlines().index('schedule: "1s"') + 1
    assert e.value.path == "schedule" and e.value.line == line and "hour: 25" in str(e.value)
