"""No wasted trials: a configuration the study has measured is never measured again by accident.

A re-proposal is not measured again; the agent is told the recorded result, the study counts it
in its ``reproposed`` attribute, and the trial goes to an unmeasured configuration instead (a
space-filling pick), so an agent that proposes nothing new still gets a finite space measured in
full; the run stops early only when nothing is left.  Invalid proposals do not use budget.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from autotune.agents.base import Agent, Observation
from autotune.core.space import Config, config_key
from autotune.testing import agents as testing_agents
from autotune.testing.agents import InProcessHarness, tiny_job
from autotune.tuning import tuner, worker

A = {"runtime": "torch", "quantization": "fp32", "batch_size": 1, "threads": 2,
     "pruning_ratio": 0.0}
B = {**A, "batch_size": 8}
C = {**A, "threads": 4}
D = {**A, "pruning_ratio": 0.5}
INVALID = {**A, "quantization": "int8_dynamic"}  # int8_dynamic on torch: an invalid combination


class Scripted(Agent):
    """Proposes ``script`` in order, then its last entry forever; records what it is told."""

    name = "scripted"

    def __init__(self, script: list[Config], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = list(script)
        self.told: list[Observation] = []

    def suggest(self) -> Config:
        return dict(self.script.pop(0) if len(self.script) > 1 else self.script[0])

    def observe(self, obs: Observation) -> None:
        self.told.append(obs)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: list[Config], budget: int
         ) -> tuple[Any, Scripted, Counter[str], Any]:
    job = tiny_job("random", tmp_path / "job", budget, "accuracy >= 0.0")
    agents: list[Scripted] = []

    def create(name: str, *args: Any, **kwargs: Any) -> Agent:
        agents.append(Scripted(script, *args, **kwargs))
        return agents[-1]

    monkeypatch.setattr(worker, "create_agent", create)
    harness = InProcessHarness(job)
    measured: Counter[str] = Counter()
    evaluate = harness.evaluate

    def counting(config: dict[str, Any]) -> Any:
        measured[config_key(config)] += 1
        return evaluate(config)

    harness.evaluate = counting
    summary = tuner.run(job, harness=harness)
    return summary, agents[0], measured, tuner.open_record(job, create=False)


def test_repeated_proposals_are_answered_from_the_study(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    summary, agent, measured, record = _run(
        tmp_path, monkeypatch, [A, A, INVALID, B, A, INVALID, B, A, C, D], budget=7)
    assert summary.finished
    assert all(n == 1 for n in measured.values()), measured  # nothing measured twice
    states = Counter(t.state for t in summary.trials)
    assert states == {"complete": 7, "invalid": 2}, states
    assert record.counted() == 7  # invalid proposals used no budget
    first = {config_key(t.config): t for t in summary.trials if t.state == "complete"}
    # every re-proposal was told the recorded result of the trial that measured it
    again = [o for o in agent.told if o.number in (first[config_key(A)].number,
                                                   first[config_key(B)].number)]
    assert len(again) == 2 + 4  # A and B measured once each, then A x3 and B x1 re-proposed
    for o in again:
        t = first[config_key(o.config)]
        assert o.values == t.values and o.state == "complete" and o.metrics == t.metrics
    assert record.attr("reproposed") == {str(first[config_key(A)].number): 3,
                                         str(first[config_key(B)].number): 1}
    # each re-proposal's trial went to an unmeasured configuration, recorded as such
    sources = [t.user_attrs.get("source") for t in summary.trials if t.state == "complete"]
    assert sources.count("explore") == 4, sources
    assert config_key(C) in first and config_key(D) not in first  # the budget ended at C


def test_an_agent_that_repeats_itself_still_gets_the_space_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy space holds 1080 valid configurations, and the agent proposes only A and B; with a
    budget of 24 every trial measures a new one, and the picks spread over the space."""
    summary, agent, measured, record = _run(tmp_path, monkeypatch, [A, B, A], budget=24)
    assert summary.finished and summary.new_trials == 24 and record.counted() == 24
    assert len(measured) == 24 and all(n == 1 for n in measured.values())
    assert summary.space_size == 1080 and summary.measured_configs == 24
    assert not any("stopped early" in n for n in summary.notices)
    done = [t.config for t in summary.trials if t.state == "complete"]
    # space-filling: both runtimes, every batch size and a wide range of threads are covered
    assert {c["runtime"] for c in done} == {"torch", "onnxruntime"}
    assert {c["batch_size"] for c in done} == {1, 8, 32}
    assert {c["threads"] for c in done} >= {1, 8}
    # the agent heard about every trial, its own proposals and the picks alike
    assert {config_key(c) for c in done} <= {config_key(o.config) for o in agent.told}


def test_a_finite_space_is_enumerated_then_the_run_stops(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget above the space's size: every valid configuration is measured exactly once, then
    the run stops early and says why; a later run with budget left measures nothing."""
    small = {"runtime": {"choices": ["onnxruntime", "torch"]},
             "graph_optimization": {"choices": ["basic", "all"],
                                    "when": {"runtime": "onnxruntime"}},
             "quantization": {"choices": ["fp32", "int8_dynamic"],
                              "invalid": [{"values": ["int8_dynamic"],
                                           "when": {"runtime": "torch"}}]},
             "batch_size": {"choices": [1, 8]}, "threads": {"choices": [2]},
             "pruning_ratio": {"choices": [0.0]}}
    monkeypatch.setattr(testing_agents, "SPACE_YAML", {"parameters": small})
    monkeypatch.setattr(testing_agents, "_JOB", _small_job(small))
    summary, _, measured, record = _run(tmp_path, monkeypatch, [A, A], budget=30)
    # onnxruntime: 2 graph levels x 2 quantizations x 2 batch sizes; torch: fp32 x 2 batch sizes
    assert summary.space_size == 10 and summary.measured_configs == 10
    assert len(measured) == 10 and all(n == 1 for n in measured.values())
    assert record.counted() == 10 and not summary.finished
    assert any("stopped early: every one of the 10 valid configurations" in n
               for n in summary.notices), summary.notices
    again, _, measured2, _ = _run(tmp_path, monkeypatch, [B, A], budget=30)
    assert not measured2 and again.new_trials == 0


def _small_job(space: dict[str, Any]) -> str:
    import json

    text = testing_agents._JOB
    start = text.index("search_space:")
    end = text.index("objectives:")
    return text[:start] + "search_space: " + json.dumps({"parameters": space}) + "\n" + text[end:]
