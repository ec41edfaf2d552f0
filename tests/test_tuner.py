"""End to end: a YAML job runs, is recorded in the study and in MLflow, and resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from sqlalchemy.exc import SQLAlchemyError

from autotune.job.spec import load_job
from autotune.tuning.tuner import run, status
from tests.conftest import ROOT


def test_job_runs_end_to_end_into_study_and_mlflow(tiny_job):
    job = load_job(tiny_job(max_trials=5))
    summary = run(job)
    assert summary.finished and summary.new_trials == 5
    assert len([t for t in summary.trials if t.state in ("complete", "failed")]) == 5
    assert summary.n_complete >= 4
    assert summary.baseline["accuracy"] > 0.5
    # the front is feasible and non-dominated
    assert summary.front and all(t.feasible for t in summary.front)
    for a in summary.front:
        for b in summary.trials:
            if b.feasible:
                assert not (b.metrics["latency_p95_ms"] <= a.metrics["latency_p95_ms"]
                            and b.metrics["accuracy"] >= a.metrics["accuracy"]
                            and (b.metrics["latency_p95_ms"] < a.metrics["latency_p95_ms"]
                                 or b.metrics["accuracy"] > a.metrics["accuracy"]))
    # every trial carries real measurements
    done = [t for t in summary.trials if t.state == "complete"]
    assert all(t.metrics["latency_p50_ms"] > 0 and t.metrics["latency_n"] >= 5 for t in done)
    assert all("accuracy_drop" in t.metrics for t in done)

    mlflow.set_tracking_uri(job.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[f"autotune-{job.name}"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert len(nested) == 5
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["autotune.trial_number"]) for r in nested) == [0, 1, 2, 3, 4]
    first = next(r for r in nested if r.data.tags["state"] == "complete")
    assert {"runtime", "quantization", "batch_size"} <= set(first.data.params)
    assert "latency_p95_ms" in first.data.metrics
    client = mlflow.MlflowClient(job.tracking_uri)
    assert "pareto_front.csv" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]

    # running again says it is finished and adds nothing
    again = run(job)
    assert again.new_trials == 0 and again.finished
    assert len(status(job).trials) == len(summary.trials)


def _counted(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    if not os.path.exists(storage.removeprefix("sqlite:///")):
        return []
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except (KeyError, SQLAlchemyError):  # not created yet, or the run is creating the schema now
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_repeating_trials(tiny_job):
    path = tiny_job(max_trials=7)
    job = load_job(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "autotune.cli", "run", str(path), "--quiet",
           "--no-confirm"]  # the closing confirmation is tests/test_confirm.py's
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len([t for t in _counted(job.storage_url, job.name)
                if t.state == optuna.trial.TrialState.COMPLETE]) >= 3:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    else:
        pytest.fail("the run did not finish 3 trials in time")
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its measuring child
    proc.wait()
    before = {t.number: (t.params, t.values) for t in _counted(job.storage_url, job.name)
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 3

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name=job.name, storage=job.storage_url)
    trials = study.get_trials(deepcopy=False)
    after = {t.number: (t.params, t.values) for t in trials
             if t.state == optuna.trial.TrialState.COMPLETE}
    for n, v in before.items():  # nothing finished was lost or changed
        assert after[n] == v
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    counted = [t for t in trials if t.state.is_finished() and t.state.name != "PRUNED"
               and not t.user_attrs.get("interrupted")]
    assert len(counted) == 7  # exactly the budget: no finished trial repeated
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) <= 1


def test_status_of_a_job_that_never_ran_is_a_clear_error(tiny_job):
    from autotune.errors import StudyError

    job = load_job(tiny_job())
    with pytest.raises(StudyError, match="run the job first"):
        status(job)
    assert not job.out_dir.exists()  # reading does not create an empty study


def test_every_command_reports_user_errors_as_one_paragraph(tiny_job):
    path = tiny_job()
    for cmd in (["status", str(path)], ["report", str(path)], ["export", str(path)]):
        out = subprocess.run([sys.executable, "-m", "autotune.cli", *cmd], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 2, (cmd, out.stderr)
        assert out.stderr.startswith("error: no study for job 'tiny'") and "Traceback" not in out.stderr
