"""Many workers on one PostgreSQL-backed study (real server: AUTOTUNE_TEST_POSTGRES_URL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autotune.measure.harness.hostlock import file_lock, measurement_lock
from tests.conftest import tiny_job_text

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
needs_pg = pytest.mark.skipif(not PG, reason="AUTOTUNE_TEST_POSTGRES_URL is not set "
                              "(eval \"$(.ci/postgres.sh)\" starts a server)")

def _job(write_job, *, max_trials: int, storage: str, tracking: bool = False,
         slow: bool = False) -> Path:
    """The tiny job on ``storage``, unconstrained; ``slow`` makes each measurement last ~1.5 s."""
    text = tiny_job_text(
        max_trials, name=f"w{uuid.uuid4().hex[:10]}", constraints=None, storage=storage,
        tracking={"enabled": tracking},
        measurement={"warmup": 1, "min_repeats": 200 if slow else 5,
                     "max_repeats": 100000 if slow else 30, "max_time_s": 1.5 if slow else 0.1,
                     "target_ci": 0.001,
                     # the workers load each other's cores: contention is never flagged, so no
                     # trial waits for quiet cores or is re-measured (the claims here are about
                     # sharing the budget and recovering trials, not about contention)
                     "contention_threshold_pct": 100, "contention_wait_s": 0,
                     "quiet_wait_s": 0})
    return write_job(text)


def _spawn(job: Path, n: int, tmp: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTOTUNE_MEASURE_LOCK": str(tmp / "host.lock")}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "autotune.cli", "worker", str(job), "--quiet",
             "--heartbeat", "1", "--grace", "3"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(n)
    ]


def _study(job: Path):
    import optuna

    from autotune.job.spec import load_job

    j = load_job(job)
    return optuna.load_study(study_name=j.name, storage=j.storage_url)


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
    return outs


@needs_pg
@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_share_one_budget_exactly(write_job, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    job = _job(write_job, max_trials=6, storage=PG, tracking=True)
    procs = _spawn(job, 3, tmp_path)
    outs = _wait(procs)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    trials = _study(job).get_trials()
    measured = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(measured) == 6, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # every trial measured once, by exactly one worker, and the workers' own tallies add up
    import re

    per_worker = [int(re.search(r"(\d+) trials measured here", o)[1]) for o in outs]
    assert sum(per_worker) == 6, outs
    workers = {t.user_attrs["worker"] for t in measured}
    assert len(workers) >= 2, workers  # the study really was shared
    # one baseline for the whole study, one MLflow parent run
    study = _study(job)
    assert "baseline" in study.user_attrs and "mlflow_parent_run_id" in study.user_attrs


@needs_pg
@pytest.mark.postgres
@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(write_job, tmp_path: Path) -> None:
    import psutil
    from optuna.trial import TrialState

    job = _job(write_job, max_trials=5, storage=PG, slow=True)
    procs = _spawn(job, 3, tmp_path)
    by_pid = {p.pid: p for p in procs}
    victim, victim_trial = None, None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = _study(job).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            continue
        for t in running:
            pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if pid in by_pid:
                victim, victim_trial = by_pid[pid], t.number
                break
    assert victim is not None, "no worker ever held a running trial"
    children = psutil.Process(victim.pid).children(recursive=True)
    os.kill(victim.pid, signal.SIGKILL)  # mid-trial: no cleanup, no tell()
    for c in children:
        c.kill()
    t_kill = time.monotonic()
    others = [p for p in procs if p is not victim]
    outs = _wait(others)
    victim.wait()
    for p, out in zip(others, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert time.monotonic() - t_kill >= 3  # the grace period elapsed before anyone gave up
    trials = _study(job).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = trials[victim_trial]
    assert dead.state == TrialState.FAIL and "fail_reason" not in dead.user_attrs
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim_trial]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == dead.params
    # the budget counts the retry, not the dead trial: exactly 5 measured trials
    from autotune.job.spec import load_job
    from autotune.tuning.tuner import open_record

    assert open_record(load_job(job), create=False).counted() == 5


def test_measure_lock_is_reentrant_and_excludes_other_processes(tmp_path: Path,
                                                                monkeypatch) -> None:
    lock = tmp_path / "m.lock"
    monkeypatch.setenv("AUTOTUNE_MEASURE_LOCK", str(lock))
    probe = ("import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); "
             "\ntry:\n fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n print('held')")
    with measurement_lock(), measurement_lock():  # nested: no self-deadlock
        out = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == "held"
    out = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "free"
    with file_lock(tmp_path / "x.lock") as got, file_lock(tmp_path / "x.lock",
                                                           blocking=False) as again:
        assert got is True and again is False
