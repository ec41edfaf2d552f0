"""Two `autotune run` of one job at once: the second joins the first as a worker and never
touches its trials; a dead run's trials are still failed as interrupted by the next run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.core.space import config_key
from autotune.testing.agents import InProcessHarness, tiny_job
from autotune.tuning.liveness import Liveness
from tests.conftest import UNCONTENDED, tiny_job_text

ROOT = Path(__file__).resolve().parent.parent


def test_liveness_records(tmp_path: Path) -> None:
    folder = tmp_path / "live"
    a = Liveness(folder, f"{socket.gethostname()}:1", "run")
    b = Liveness(folder, f"{socket.gethostname()}:2", "worker")
    assert a.acquire() == 0 and b.acquire() == 1  # each process its own index (seed stream)
    assert [h.worker for h in a.others()] == [b.worker]
    assert a.owner_is_live(b.worker) is True
    assert a.owner_is_live(f"{socket.gethostname()}:3") is False  # this host, no record: dead
    assert a.owner_is_live("elsewhere:3") is None  # another host: the heartbeat decides
    b.release()
    assert a.owner_is_live(b.worker) is False and a.others() == []
    c = Liveness(folder, f"{socket.gethostname()}:4")
    assert c.acquire() == 1  # the freed index is reused
    # a killed process's record reads as dead: the kernel dropped its lock
    code = ("import sys, os; from autotune.tuning.liveness import Liveness; "
            "Liveness(sys.argv[1], 'h:' + str(os.getpid())).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert {h.index for h in a.holders()[0]} == {0, 1}
    a.release()
    c.release()


def test_run_fails_dead_trials_and_leaves_live_ones(tmp_path: Path) -> None:
    """A RUNNING trial of a dead process is failed as interrupted; one of a live process (here
    a liveness record held in this process under another id) is left to finish."""
    from autotune.tuning import tuner

    job = tiny_job("random", tmp_path / "job", 3, "accuracy >= 0.0")
    record = tuner.open_record(job)
    space = job.space
    host = socket.gethostname()
    dead = record.start({"runtime": "torch", "quantization": "fp32", "batch_size": 1,
                         "threads": 1, "pruning_ratio": 0.0}, space, agent="x")
    alive = record.start({"runtime": "torch", "quantization": "fp32", "batch_size": 8,
                          "threads": 1, "pruning_ratio": 0.0}, space, agent="x")
    for number, who in ((dead, f"{host}:999999"), (alive, f"{host}:424242")):
        tid = record.storage.get_trial_id_from_study_id_trial_number(record.study._study_id, number)
        record.storage.set_trial_user_attr(tid, "worker", who)
    other = Liveness(job.out_dir / "live", f"{host}:424242", "run")
    other.acquire()
    harness = InProcessHarness(job)
    evaluate = harness.evaluate

    def first_finishes_the_live_trial(config: dict[str, Any]) -> Any:
        if other.index is not None:  # the "other run" completes its trial, then goes away
            record.complete(alive, {"latency_ms": 1.0, "accuracy": 0.9})
            other.release()
        return evaluate(config)

    harness.evaluate = first_finishes_the_live_trial
    summary = tuner.run(job, harness=harness)
    by_number = {t.number: t for t in summary.trials}
    assert by_number[dead].state == "failed" and by_number[dead].reason.startswith("interrupted")
    assert by_number[alive].state == "complete" and by_number[alive].metrics["accuracy"] == 0.9
    assert record.counted() == 3 and summary.finished


@pytest.mark.slow
def test_two_runs_of_one_job_at_once(write_job, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from autotune.job.spec import load_job

    path = write_job(tiny_job_text(
        4, constraints=None, agent={"name": "random", "seed": 1},
        measurement={"warmup": 1, "min_repeats": 10, "max_repeats": 2000, "max_time_s": 0.3,
                     "target_ci": 0.001, **UNCONTENDED}))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "AUTOTUNE_MEASURE_LOCK": str(tmp_path / "host.lock")}  # not shared with other tests
    cmd = [sys.executable, "-m", "autotune.cli", "run", str(path), "--quiet",
           "--no-confirm"]  # the closing confirmation is tests/test_confirm.py's
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=420)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert sum("joins it as one more worker" in o for o in outs) == 1, outs
    job = load_job(path)
    trials = optuna.load_study(study_name=job.name, storage=job.storage_url).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t.number for t in trials if t.user_attrs.get("interrupted")]  # none by the other
    measured = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(measured) == 4  # the budget, exactly: nothing lost, nothing twice
    assert len({config_key(t.params) for t in measured}) == 4  # no configuration twice
    assert len({t.user_attrs["worker"] for t in measured}) == 2  # both really measured
