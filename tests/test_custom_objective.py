"""Jobs that name a Python callable (``objective: module:function``) instead of a model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autotune.errors import SpecError
from autotune.job.spec import load_job
from autotune.tuning import tuner

OBJECTIVE_MODULE = '''
import math, os

def zdt1(config):
    x = [config["x1"], config["x2"], config["x3"]]
    f1 = x[0]
    g = 1 + 9 * sum(x[1:]) / (len(x) - 1)
    return {"f1": f1, "f2": g * (1 - math.sqrt(f1 / g)), "g": g}

def partial(config):
    return {"f1": config["x1"]}

def broken(config):
    if config["x1"] > 0.5:
        raise RuntimeError("the harness exploded")
    return zdt1(config)

def crash(config):
    os._exit(3)
'''

JOB = """
name: custom
objective: myobj:FUNC
search_space:
  parameters:
    x1: {low: 0.0, high: 1.0}
    x2: {low: 0.0, high: 1.0}
    x3: {low: 0.0, high: 1.0}
objectives:
  - {metric: f1, direction: minimize}
  - {metric: f2, direction: minimize}
constraints: [CONSTRAINT]
agent: {name: random, seed: 3}
budget: {max_trials: 5}
tracking: {enabled: TRACK}
"""


def write(tmp_path: Path, func: str = "zdt1", constraint: str = "g <= 5", track: str = "false",
          extra: str = "") -> Path:
    (tmp_path / "myobj.py").write_text(OBJECTIVE_MODULE)
    text = JOB.replace("FUNC", func).replace("CONSTRAINT", constraint).replace("TRACK", track)
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text).lstrip() + extra)
    return path


def test_runs_isolated_with_constraints_and_mlflow(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, track="true"))
    assert job.model is None and job.evaluation is None and job.is_custom
    summary = tuner.run(job)
    assert summary.n_complete == 5 and summary.baseline == {}
    for t in summary.trials:
        assert set(t.metrics) == {"f1", "f2", "g"}
        assert t.feasible == (t.metrics["g"] <= 5)
    assert summary.front and all(t.feasible for t in summary.front)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("autotune-custom").experiment_id])
    assert len(runs) == 6  # parent + one per trial
    assert any("f2" in r.data.metrics for r in runs)


def test_missing_metric_and_exceptions_fail_the_trial(tmp_path: Path) -> None:
    summary = tuner.run(load_job(write(tmp_path, func="partial")))
    assert summary.n_failed == 5
    assert all("'f2', 'g'" in t.reason and "returned: f1" in t.reason for t in summary.trials)

    other = tmp_path / "b"
    other.mkdir()
    summary = tuner.run(load_job(write(other, func="broken")))
    failed = [t for t in summary.trials if t.state == "failed"]
    assert failed and all(t.config["x1"] > 0.5 for t in failed)
    assert all("RuntimeError: the harness exploded" in t.reason for t in failed)
    assert summary.n_complete == 5 - len(failed)


def test_a_crash_in_the_objective_fails_only_that_trial(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, func="crash"))
    summary = tuner.run(job, max_trials=2)
    assert summary.n_failed == 2
    assert all("exited with code 3" in t.reason for t in summary.trials)


def test_relative_constraints_use_the_given_baseline(tmp_path: Path) -> None:
    extra = "baseline: {x1: 0.5, x2: 0.0, x3: 0.0}\n"
    job = load_job(write(tmp_path, constraint="f1 <= 50% of baseline", extra=extra))
    summary = tuner.run(job)
    assert summary.baseline["f1"] == pytest.approx(0.5)
    for t in summary.trials:
        assert t.violations[0] == pytest.approx(t.metrics["f1"] - 0.25)


@pytest.mark.parametrize(("text", "match", "path"), [
    ("model: {factory: a:b}\nevaluation: {metric: cosine}\n", "only one of", "objective"),
    ("evaluation: {metric: cosine}\n", "'evaluation' belongs to a 'model'", "evaluation"),
])
def test_model_xor_objective(tmp_path: Path, text: str, match: str, path: str) -> None:
    with pytest.raises(SpecError, match=match) as e:
        load_job(write(tmp_path, extra=text))
    assert e.value.path == path and e.value.line


def test_neither_model_nor_objective(tmp_path: Path) -> None:
    p = write(tmp_path)
    p.write_text(p.read_text().replace("objective: myobj:zdt1\n", ""))
    with pytest.raises(SpecError, match=r"give one of 'model'.*or 'objective'"):
        load_job(p)


def test_spec_errors_for_custom_objectives(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="relative to the baseline") as e:
        load_job(write(tmp_path, constraint="f1 <= 80% of baseline"))
    assert e.value.path == "constraints[0]" and e.value.line == 11
    with pytest.raises(SpecError, match="baseline configuration is not in the space"):
        load_job(write(tmp_path, extra="baseline: {x1: 2.0, x2: 0.0, x3: 0.0}\n"))
    p = write(tmp_path)
    p.write_text(p.read_text().replace("{metric: f1, direction: minimize}", "f1"))
    with pytest.raises(SpecError, match="direction is unknown") as e:
        load_job(p)
    assert e.value.path == "objectives[0]"
    # built-in names keep their direction; unknown names are fine in constraints
    p.write_text(p.read_text().replace("  - f1\n", "  - latency_p95_ms\n"))
    assert load_job(p).objective_pairs[0] == ("latency_p95_ms", "minimize")
