"""Warm start: from a list of configurations, or from an earlier study (re-measured here)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autotune.core.space import config_key
from autotune.errors import SpecError
from autotune.job.spec import load_job
from autotune.tuning import tuner
from autotune.tuning.warmstart import from_study

OBJ = '''
import os

def f(config):
    x, y = config["x"], config["y"]
    return {"a": x, "b": (1 - x) ** 2 + y, "stamp": float(os.environ.get("WS_STAMP", "0"))}
'''

JOB = """
name: NAME
objective: wsobj:f
search_space:
  parameters:
    x: {low: 0.0, high: 1.0, step: 0.1}
    y: {low: 0.0, high: 0.5, step: 0.25}
objectives:
  - {metric: a, direction: minimize}
  - {metric: b, direction: minimize}
constraints: [a >= 0.2]
agent:
  name: random
  seed: 0
AGENT
budget: {max_trials: BUDGET}
tracking: {enabled: false}
"""


def job_file(folder: Path, name: str, budget: int, agent: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wsobj.py").write_text(OBJ)
    text = JOB.replace("NAME", name).replace("BUDGET", str(budget)).replace("AGENT", agent)
    p = folder / "job.yaml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


FROM = """  warm_start_from:
    storage: ../first/runs/first/study.db
    study: first
    top_k: 3"""


@pytest.fixture
def earlier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WS_STAMP", "1")
    summary = tuner.run(load_job(job_file(tmp_path / "first", "first", 10)))
    monkeypatch.setenv("WS_STAMP", "2")
    return summary


def test_best_feasible_trials_are_replayed_and_remeasured(tmp_path: Path, earlier) -> None:
    p = job_file(tmp_path / "second", "second", 5, FROM)
    p.write_text(p.read_text().replace("name: random", "name: grid"))  # never repeats a config
    job = load_job(p)
    ws = from_study(job, job.space)
    feasible = [t for t in earlier.trials if t.feasible]
    front = {config_key(t.config) for t in earlier.front}
    assert len(ws.configs) == min(3, len(feasible))
    # the first front comes first; only feasible trials are taken
    assert all(config_key(c) in front for c in ws.configs[: min(3, len(front))])
    assert all(o.feasible and o.values == (o.metrics["a"], o.metrics["b"]) for o in ws.observations)
    assert all(o.metrics["stamp"] == 1.0 for o in ws.observations)

    summary = tuner.run(job)
    first = summary.trials[: len(ws.configs)]
    assert [dict(t.config) for t in first] == [dict(c) for c in ws.configs]
    assert all(t.metrics["stamp"] == 2.0 for t in summary.trials)  # measured again, here
    assert len(summary.trials) == 5

    # resuming does not queue them again (and grid, having observed them, does not propose them)
    summary = tuner.run(job, max_trials=7)
    keys = [config_key(t.config) for t in summary.trials[5:]]
    assert not set(keys) & {config_key(c) for c in ws.configs}


def test_configs_outside_the_space_are_spec_errors(tmp_path: Path, earlier) -> None:
    p = job_file(tmp_path / "second", "second", 3, FROM)
    p.write_text(p.read_text().replace("x: {low: 0.0, high: 1.0, step: 0.1}",
                                       "x: {low: 0.0, high: 0.1, step: 0.1}"))
    job = load_job(p)
    with pytest.raises(SpecError, match=r"trial \d+ of study 'first' is not a configuration") as e:
        tuner.run(job)
    assert e.value.path == "agent.warm_start_from" and e.value.line == 14


def test_missing_study_or_file(tmp_path: Path, earlier) -> None:
    job = load_job(job_file(tmp_path / "second", "second", 3, FROM.replace("study: first",
                                                                          "study: nope")))
    with pytest.raises(SpecError, match=r"no study named 'nope'.*Studies there: first") as e:
        tuner.run(job)
    assert e.value.path == "agent.warm_start_from.study" and e.value.line == 16
    job = load_job(job_file(tmp_path / "third", "third", 3, FROM.replace("first/runs", "x/runs")))
    with pytest.raises(SpecError, match="no study file"):
        tuner.run(job)


def test_warm_start_list_is_measured_first(tmp_path: Path) -> None:
    agent = "  warm_start:\n    - {x: 0.3, y: 0.25}\n    - {x: 0.9, y: 0.0}"
    summary = tuner.run(load_job(job_file(tmp_path, "listed", 3, agent)))
    assert [dict(t.config) for t in summary.trials[:2]] == [{"x": 0.3, "y": 0.25}, {"x": 0.9, "y": 0.0}]
    assert [t.user_attrs["source"] for t in summary.trials] == ["warm_start"] * 2 + ["agent"]
    bad = job_file(tmp_path / "bad", "bad", 3, "  warm_start:\n    - {x: 3.0, y: 0.0}")
    with pytest.raises(SpecError, match="warm-start configuration is not in the space") as e:
        load_job(bad)
    assert e.value.path == "agent.warm_start[0]"
