"""No wasted trials: a configuration the study has measured is never measured again by accident.

A re-proposal adds no trial and uses no budget; the agent is told the recorded result, the study
counts it in its ``reproposed`` attribute, and an agent that proposes nothing new stops the run
instead of spinning.  Invalid proposals do not use budget either.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from autotune import tuner, worker
from autotune.agents.base import Agent, Observation
from autotune.space import Config, config_key
from autotune.testing.agents import InProcessHarness, tiny_job

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
        tmp_path, monkeypatch, [A, A, INVALID, B, A, INVALID, B, A, C, D], budget=4)
    assert summary.finished
    assert all(n == 1 for n in measured.values()), measured  # nothing measured twice
    states = Counter(t.state for t in summary.trials)
    assert states == {"complete": 4, "invalid": 2}, states  # A B C D + the invalid proposals
    assert record.counted() == 4  # neither re-proposals nor invalid proposals used budget
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


def test_an_agent_that_repeats_itself_stops_the_run(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "MAX_REPROPOSED_IN_A_ROW", 25)
    summary, agent, measured, record = _run(tmp_path, monkeypatch, [A, B, A], budget=10)
    assert not summary.finished and summary.new_trials == 2
    assert measured[config_key(A)] == 1 and measured[config_key(B)] == 1
    assert record.counted() == 2
    assert any("stopped early" in n and "25 in a row" in n for n in summary.notices)
    repeats = [o for o in agent.told if config_key(o.config) == config_key(A)]
    assert len(repeats) == 1 + 25 and len({o.values for o in repeats}) == 1
    # a later run with a better agent continues from here: the budget left is intact
    summary2, _, measured2, record2 = _run(tmp_path, monkeypatch, [A, C, D, INVALID, C], budget=4)
    assert summary2.finished and record2.counted() == 4
    assert sum(measured2.values()) == 2 and config_key(A) not in measured2
