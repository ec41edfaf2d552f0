"""MLflow tracking against a real ``mlflow server`` on loopback (REST API + client).

One server per module (startup is the slow part); each test runs a tiny job through the real
tuner and isolated harness, then reads everything back through the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from autotune.cli import main
from autotune.job.spec import load_job
from autotune.review.front import REFERENCE_ATTR, pareto_ranks
from autotune.review.tracking import TRIAL_TAG
from autotune.tuning.tuner import open_record
from autotune.tuning.tuner import run as run_job

EXPECTED_ARTIFACTS = {
    "job.yaml", "hardware.json", "trials.csv", "trials.parquet", "pareto_front.csv", "plots.html",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not become healthy within 240 s")
            time.sleep(0.5)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs(url: str, experiment: str) -> tuple[list, list]:
    import mlflow

    mlflow.set_tracking_uri(url)
    try:
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, nested


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _with_tracking(tiny_job, uri: str, name: str = "tiny", trials: int = 2) -> Path:
    return tiny_job(trials, **{"budget:": f"tracking: {uri}\nbudget:", "name: tiny": f"name: {name}"})


def test_run_logs_parent_nested_runs_and_artifacts(mlflow_server, tiny_job, tmp_path):
    job = load_job(_with_tracking(tiny_job, mlflow_server))
    summary = run_job(job)
    assert summary.tracking_error is None
    views = summary.trials
    assert [v.state for v in views] == ["complete", "complete"]

    parents, nested = _runs(mlflow_server, "autotune-tiny")
    assert len(parents) == 1 and len(nested) == 2
    parent = parents[0]
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"

    # parent: job spec (artifact + a few tags, no params), versions, hardware, baseline, hypervolume
    assert parent.data.params == {}
    assert parent.data.tags["autotune.objectives"] == "minimize latency_p95_ms, maximize accuracy"
    assert '"max_trials": 2' in parent.data.tags["autotune.budget"]
    assert parent.data.tags["autotune.version"]
    assert parent.data.tags["hardware.cpu_arch"]
    assert int(parent.data.tags["hardware.logical_cores"]) >= 1
    assert parent.data.tags["lib.onnxruntime"]
    assert "baseline.latency_p95_ms" in parent.data.metrics
    assert "baseline.accuracy" in parent.data.metrics
    client = _client(mlflow_server)
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == [v.number for v in views]
    exp = client.get_experiment_by_name("autotune-tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    values = [m.value for m in sorted(hv, key=lambda m: m.step)]
    assert values == sorted(values)  # never decreases
    record = open_record(job, create=False)
    assert len(record.attr(REFERENCE_ATTR)) == 2

    # nested: configuration as params, measurements with spread and n, state tags
    ranks = pareto_ranks(views, job.objective_pairs)
    by_number = {int(r.data.tags[TRIAL_TAG]): r for r in nested}
    assert set(by_number) == {v.number for v in views}
    for v in views:
        r = by_number[v.number]
        assert r.data.params == {k: str(x) for k, x in v.config.items()}
        for m in ("latency_p95_ms", "latency_std_ms", "latency_n", "latency_ci_rel", "accuracy"):
            assert r.data.metrics[m] == pytest.approx(v.metrics[m])
        assert r.data.tags["state"] == "complete"
        assert r.data.metrics["feasible"] == float(v.feasible)
        assert r.data.tags["agent"] == "tpe"
        assert r.data.metrics.get("pareto_rank") == ranks.get(v.number)
        assert "pareto_rank" not in r.data.tags and "feasible" not in r.data.tags
        assert r.info.status == "FINISHED"
        # named after its configuration; the run lasts as long as the trial did
        assert r.info.run_name.endswith(f"#{v.number}") and f"b{v.config['batch_size']}" in \
            r.info.run_name
        assert r.info.start_time == int(v.started * 1000)
        assert r.info.end_time == int(v.completed * 1000)

    # artifacts, read back through the server's artifact proxy
    assert _artifacts(client, parent.info.run_id) >= EXPECTED_ARTIFACTS
    local = client.download_artifacts(parent.info.run_id, "trials.parquet", str(tmp_path))
    import pandas as pd

    table = pd.read_parquet(local)
    assert sorted(table["trial"]) == [v.number for v in views]
    html = Path(client.download_artifacts(parent.info.run_id, "plots.html",
                                          str(tmp_path))).read_text()
    assert 'id="plotly-gz"' in html and "trial " in html and "pareto_front_2d" in html


def test_server_down_then_sync_writes_each_run_once(mlflow_server, tiny_job):
    closed = f"http://127.0.0.1:{_free_port()}"
    path = _with_tracking(tiny_job, closed, name="tiny-down")
    job = load_job(path)
    t0 = time.monotonic()
    summary = run_job(job)
    assert summary.tracking_error and "connect" in summary.tracking_error
    assert len(summary.trials) == 2 and summary.n_complete == 2
    assert len(open_record(job, create=False).trials()) == 2
    # sync while the server is still down: says so, exit status 1
    down = CliRunner().invoke(main, ["sync", str(path)])
    assert down.exit_code == 1 and "unavailable" in down.output
    assert time.monotonic() - t0 < 200

    # the server is up: point the job at it and sync
    path.write_text(path.read_text().replace(closed, mlflow_server))
    first = CliRunner().invoke(main, ["sync", str(path)])
    assert first.exit_code == 0, first.output
    assert "2 new trial run(s)" in first.output
    parents, nested = _runs(mlflow_server, "autotune-tiny-down")
    assert len(parents) == 1
    numbers = sorted(int(r.data.tags[TRIAL_TAG]) for r in nested)
    assert numbers == [0, 1]
    client = _client(mlflow_server)
    hv = client.get_metric_history(parents[0].info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == [0, 1]
    assert _artifacts(client, parents[0].info.run_id) >= EXPECTED_ARTIFACTS

    second = CliRunner().invoke(main, ["sync", str(path)])
    assert second.exit_code == 0 and "0 new trial run(s)" in second.output
    parents2, nested2 = _runs(mlflow_server, "autotune-tiny-down")
    assert len(parents2) == 1 and len(nested2) == 2
    assert len(client.get_metric_history(parents[0].info.run_id, "hypervolume")) == 2

    # running the finished job again (it catches up on MLflow first) writes nothing twice either
    again = run_job(load_job(path))
    assert again.new_trials == 0 and again.tracking_error is None
    parents3, nested3 = _runs(mlflow_server, "autotune-tiny-down")
    assert len(parents3) == 1 and sorted(int(r.data.tags[TRIAL_TAG]) for r in nested3) == [0, 1]


def test_sync_writes_measured_trials_once_and_keeps_rank_tags_current(tiny_job):
    """Local SQLite store, study written by hand: invalid proposals get no run, a trial that
    pushes another off the front changes that run's (numeric) rank."""
    from autotune.review.tracking import Tracker

    job = load_job(tiny_job(10))
    record = open_record(job)
    record.set_attr("baseline", {"latency_p95_ms": 4.0, "accuracy": 0.9, "quality": 0.9})
    space = job.space
    cfg = {"runtime": "torch", "quantization": "fp32", "pruning_ratio": 0.0, "batch_size": 1,
           "threads": 1}

    def complete(lat: float, acc: float, **change) -> None:
        n = record.start({**cfg, **change}, space, agent="tpe")
        record.complete(n, {"latency_p95_ms": lat, "accuracy": acc, "quality": acc,
                            "accuracy_drop": 0.9 - acc})

    complete(3.0, 0.89)
    n = record.start({**cfg, "batch_size": 8}, space, agent="tpe")
    record.fail(n, "invalid combination: test", invalid=True)
    n = record.start({**cfg, "pruning_ratio": 0.3}, space, agent="tpe")
    record.fail(n, "child process crashed")
    tracker = Tracker(job, record)
    assert tracker.sync(record.trials()) == 2
    tracker.finish(record.trials())
    runs = {int(r.data.tags[TRIAL_TAG]): r for r in tracker.nested_runs()}
    assert set(runs) == {0, 2}
    assert runs[0].data.metrics["pareto_rank"] == 0 and "pareto_rank" not in runs[2].data.metrics
    assert runs[0].data.metrics["feasible"] == 1 and runs[2].data.metrics["feasible"] == 0
    assert runs[2].data.tags["state"] == "failed"
    assert runs[2].data.tags["fail_reason"] == "child process crashed"

    complete(2.0, 0.895, quantization="int8_dynamic")  # dominates trial 0
    assert tracker.sync(record.trials()) == 1
    assert tracker.sync(record.trials()) == 0
    tracker.finish(record.trials())
    runs = {int(r.data.tags[TRIAL_TAG]): r for r in tracker.nested_runs()}
    assert runs[0].data.metrics["pareto_rank"] == 1 and runs[3].data.metrics["pareto_rank"] == 0
    hv = tracker.client.get_metric_history(tracker.parent_run_id(), "hypervolume")
    assert sorted(m.step for m in hv) == [0, 2, 3]
    assert runs[3].info.run_name == "torch int8_dynamic b1 t1 #3"

    # the front, filtered and sorted numerically as the runs table does (10 after 2)
    front = tracker.client.search_runs(
        [runs[0].info.experiment_id], filter_string="metrics.pareto_rank <= 1",
        order_by=["metrics.pareto_rank ASC"])
    assert [int(r.data.tags[TRIAL_TAG]) for r in front] == [3, 0]


def test_artifacts_of_a_tiny_job_stay_small_and_plots_work_offline(tiny_job, tmp_path):
    """All plots share one compressed plotly.js; the parent's artifacts stay under 2 MB."""
    import gzip
    import re

    import plotly.offline

    from autotune.review.plots import decode_7bit
    from autotune.review.tracking import Tracker

    job = load_job(tiny_job(10))
    record = open_record(job)
    record.set_attr("baseline", {"latency_p95_ms": 4.0, "accuracy": 0.9, "quality": 0.9})
    cfg = {"runtime": "torch", "quantization": "fp32", "pruning_ratio": 0.0, "batch_size": 1,
           "threads": 1}
    for i, (lat, acc) in enumerate([(3.0, 0.89), (2.0, 0.885), (1.0, 0.8), (3.5, 0.9)]):
        n = record.start({**cfg, "batch_size": [1, 8][i % 2]}, job.space, agent="tpe")
        record.complete(n, {"latency_p95_ms": lat, "accuracy": acc, "quality": acc,
                            "accuracy_drop": 0.9 - acc})
    tracker = Tracker(job, record)
    tracker.start({"cpu_model": "test"}, record.baseline)
    tracker.sync(record.trials())
    tracker.finish(record.trials())
    assert tracker.last_error is None
    (tmp_path / "dl").mkdir()
    folder = Path(tracker.client.download_artifacts(tracker.parent_run_id(), "",
                                                    str(tmp_path / "dl")))
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in folder.rglob("*") if p.is_file()}
    assert "plots.html" in files and not any(f.startswith("plots/") for f in files)
    assert sum(files.values()) < 2_000_000, files
    html = (folder / "plots.html").read_text(encoding="utf-8")
    assert html.count('class="figure"') == 3  # front, parallel coordinates, hypervolume
    m = re.search(r'<script type="text/plain" id="plotly-gz" data-bytes="(\d+)">(.*?)</script>',
                  html, re.S)
    assert m and "<" not in m.group(2) and "\r" not in m.group(2) and "\0" not in m.group(2)
    js = gzip.decompress(decode_7bit(m.group(2), int(m.group(1)))).decode()
    assert js == plotly.offline.get_plotlyjs()


def test_registered_model_has_a_signature_an_onnx_flavor_and_prints_no_ansi(tmp_path, capfd):
    import mlflow
    import numpy as np
    from _deploy_job import ORT_INT8, tuned_job

    from autotune.deploy import load
    from autotune.deploy.export import pick_trial, register_bundle, write_bundle

    job = tuned_job()
    out = tmp_path / "bundle"
    write_bundle(job, pick_trial(job, ORT_INT8), out)
    capfd.readouterr()
    reg = register_bundle(out, tracking_uri=job.tracking_uri, name="signed", alias=None,
                          artifacts=job.out_dir / "mlartifacts")
    printed = capfd.readouterr()
    assert "\x1b[" not in printed.out + printed.err  # no coloured MLflow warning
    assert "type hint" not in printed.out + printed.err
    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_registry_uri(job.tracking_uri)
    try:
        info = mlflow.models.get_model_info(reg.model_uri)
        proto = mlflow.onnx.load_model(reg.model_uri)
        model = mlflow.pyfunc.load_model(reg.model_uri)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert {"python_function", "onnx"} <= set(info.flavors)
    (inp,) = info.signature.inputs.inputs
    assert inp.name == "input" and inp.shape == (-1, 64) and inp.type == np.dtype("float32")
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    assert proto.SerializeToString() == (out / "model.onnx").read_bytes()
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x), load(out).predict(x))


def _tracked_toy_job(folder: Path, budget: int):
    """The conformance toy job (in-process objective: fast) with local MLflow tracking on."""
    from autotune.testing.agents import tiny_job as toy_job

    job = toy_job("random", folder, budget, "accuracy >= 0.0")
    path = Path(job.source)
    path.write_text(path.read_text().replace("tracking: {enabled: false}", "tracking: {}"))
    return load_job(path)


def test_rerun_repairs_a_parent_run_killed_during_the_write_up(tmp_path, monkeypatch):
    import autotune.review.tracking as tracking
    from autotune.review.tracking import Tracker
    from autotune.testing.agents import InProcessHarness

    job = _tracked_toy_job(tmp_path / "toy", 3)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies while writing the parent's artifacts

    monkeypatch.setattr(tracking, "write_review_files", killed)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, harness=InProcessHarness(job))
    record = open_record(job, create=False)
    tracker = Tracker(job, record)
    rid = tracker.parent_run_id()
    assert tracker.client.get_run(rid).info.status == "RUNNING"
    assert tracker.needs_finish()
    monkeypatch.undo()

    again = run_job(job, harness=InProcessHarness(job))  # the job is finished: repair only
    assert again.new_trials == 0 and again.tracking_error is None
    run = tracker.client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert {"trials.csv", "pareto_front.csv"} <= _artifacts(tracker.client, rid)
    assert not Tracker(job, record).needs_finish()


def test_a_trial_failed_by_the_heartbeat_check_reaches_mlflow(tmp_path):
    from autotune.record.study import STALE
    from autotune.review.tracking import Tracker
    from autotune.testing.agents import InProcessHarness
    from autotune.tuning.tuner import run_worker
    from autotune.tuning.worker import WorkerOptions, open_shared_record

    job = _tracked_toy_job(tmp_path / "toy", 2)
    opts = WorkerOptions(heartbeat_s=1, grace_s=2)
    record = open_shared_record(job, opts)
    record.set_attr("baseline", {"latency_ms": 1.0, "accuracy": 0.9})
    n = record.start({"runtime": "torch", "quantization": "fp32", "batch_size": 1, "threads": 1,
                      "pruning_ratio": 0.0}, job.space, agent="random")
    tid = record.storage.get_trial_id_from_study_id_trial_number(record.study._study_id, n)
    record.storage.set_trial_user_attr(tid, "worker", "elsewhere:1")  # a worker on another host
    record.storage.record_heartbeat(tid)
    time.sleep(2.5)  # ... that stopped sending heartbeats
    summary = run_worker(job, opts=opts, harness=InProcessHarness(job))
    states = {t.number: (t.state, t.reason) for t in summary.trials}
    assert states[n] == ("failed", STALE)
    runs = {int(r.data.tags[TRIAL_TAG]): r for r in Tracker(job, record).nested_runs()}
    assert n in runs and runs[n].data.tags["state"] == "failed"
    assert runs[n].data.tags["fail_reason"] == STALE and runs[n].info.status == "FAILED"
    assert len(runs) == 3  # the dead trial, its retry and one more
