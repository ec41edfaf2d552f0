"""Conformance checks every agent must pass (like ``optuna/testing/pytest_samplers.py``).

A new agent registered in :data:`autotune.agents.AGENTS` is covered by
``tests/agents/test_conformance.py`` automatically.  A third-party agent can run the same checks::

    from autotune.testing.agents import CHECKS

    @pytest.mark.parametrize("check", CHECKS)
    def test_my_agent(check, tmp_path):
        check("my-agent", tmp_path)

The checks use a small toy problem (:func:`toy_objective`, two objectives and a constraint) over a
discrete space with a conditional parameter and an invalid combination.  The front and resume
checks run the real tuner (real Optuna storage, the real loop) with an in-process harness that
calls the toy objective; process isolation is tested elsewhere.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotune.agents import create_agent
from autotune.agents.base import Agent, Observation
from autotune.core.space import Config, SearchSpace, parse_space
from autotune.job.spec import load_job
from autotune.measure.workloads.objective import ObjectiveEvaluator
from autotune.tuning import tuner

SPACE_YAML = {
    "parameters": {
        "runtime": {"choices": ["onnxruntime", "torch"]},
        "graph_optimization": {"choices": ["basic", "all"], "when": {"runtime": "onnxruntime"}},
        "quantization": {
            "choices": ["fp32", "int8_dynamic"],
            "invalid": [{"values": ["int8_dynamic"], "when": {"runtime": "torch"},
                         "reason": "not in this toy"}],
        },
        "batch_size": {"choices": [1, 8, 32]},
        "threads": {"low": 1, "high": 8},
        "pruning_ratio": {"low": 0.0, "high": 0.8, "step": 0.1},
    }
}
OBJECTIVES = [("latency_ms", "minimize"), ("accuracy", "maximize")]
CONSTRAINT = "accuracy >= 0.8"

#: cheaper settings for slow agents, so the suite stays fast; behaviour is the same
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "skopt-gp": {"n_points": 300, "n_initial_points": 4},
    "skopt-rf": {"n_points": 300, "n_initial_points": 4},
    "skopt-et": {"n_points": 300, "n_initial_points": 4},
    "skopt-gbrt": {"n_points": 300, "n_initial_points": 4},
}


def space() -> SearchSpace:
    return parse_space(SPACE_YAML, name="conformance")


def toy_objective(config: dict[str, Any]) -> dict[str, float]:
    """Deterministic: pruning and int8 make it faster and less accurate; threads help latency."""
    p = float(config["pruning_ratio"])
    lat = config["batch_size"] ** 0.7 * (1 - 0.6 * p) / math.sqrt(config["threads"])
    acc = 0.95 - 0.5 * p**2
    if config.get("quantization") == "int8_dynamic":
        lat *= 0.6
        acc -= 0.03
    if config.get("graph_optimization") == "basic":
        lat *= 1.2
    if config["runtime"] == "torch":
        lat *= 1.5
    return {"latency_ms": lat, "accuracy": acc}


def lure_objective(config: dict[str, Any]) -> dict[str, float]:
    """The toy with torch faster than ONNX Runtime: a model of the measurements then points at
    torch + int8_dynamic, the invalid combination."""
    m = toy_objective(config)
    if config["runtime"] == "torch":
        m["latency_ms"] *= 0.25
    return m


def _obs(config: Config, number: int | None = None,
         objective: Callable[[dict[str, Any]], dict[str, float]] = toy_objective) -> Observation:
    m = objective(config)
    return Observation(config, (m["latency_ms"], m["accuracy"]), (0.8 - m["accuracy"],),
                       number=number, metrics=m)


def make(name: str, seed: int | None = 0) -> Agent:
    return create_agent(name, space(), OBJECTIVES, 1, seed=seed, **FAST_OPTIONS.get(name, {}))


def _steps(agent: Agent, n: int,
           objective: Callable[[dict[str, Any]], dict[str, float]] = toy_objective) -> list[Config]:
    sp = space()
    out = []
    for i in range(n):
        c = agent.suggest()
        out.append(c)
        if sp.invalid_reason(c):
            agent.observe(Observation(c, None, state="invalid", number=i))
        else:
            agent.observe(_obs(c, i, objective))
    return out


# -------------------------------------------------------------------- the checks
def check_suggestions_in_space(name: str, tmp_path: Path | None = None) -> None:
    """Every suggestion has exactly the active parameters, inside their ranges."""
    sp = space()
    for c in _steps(make(name), 12):
        problems = [p for p in sp.validate(c) if "cannot be combined" not in p]
        assert problems == [], f"{name} suggested {c}: {problems}"


def check_accepts_foreign_observations(name: str, tmp_path: Path | None = None) -> None:
    """Observations of configurations the agent did not propose (resume, warm start, other
    workers), including failed and invalid ones, are accepted before and between suggestions."""
    agent = make(name)
    foreign = [
        {"runtime": "onnxruntime", "graph_optimization": "all", "quantization": "int8_dynamic",
         "batch_size": 8, "threads": 4, "pruning_ratio": 0.3},
        {"runtime": "torch", "quantization": "fp32", "batch_size": 1, "threads": 1,
         "pruning_ratio": 0.0},
    ]
    agent.observe(_obs(foreign[0]))
    agent.observe(Observation(foreign[1], None, state="failed"))
    agent.observe(Observation({**foreign[1], "quantization": "int8_dynamic"}, None, state="invalid"))
    _steps(agent, 3)
    agent.observe(_obs(foreign[1], number=99))
    c = agent.suggest()
    assert not [p for p in space().validate(c) if "cannot be combined" not in p]


def check_deterministic(name: str, tmp_path: Path | None = None) -> None:
    """The same seed and the same observations give the same 10 suggestions."""
    a, b = _steps(make(name, seed=7), 10), _steps(make(name, seed=7), 10)
    assert a == b, f"{name} is not reproducible with a fixed seed:\n{a}\n{b}"


_JOB = """
name: conformance
objective: autotune.testing.agents:toy_objective
search_space:
  parameters:
    runtime: [onnxruntime, torch]
    graph_optimization: {choices: [basic, all], when: {runtime: onnxruntime}}
    quantization:
      choices: [fp32, int8_dynamic]
      invalid: [{values: [int8_dynamic], when: {runtime: torch}}]
    batch_size: [1, 8, 32]
    threads: {low: 1, high: 8}
    pruning_ratio: {low: 0.0, high: 0.8, step: 0.1}
objectives:
  - {metric: latency_ms, direction: minimize}
  - {metric: accuracy, direction: maximize}
constraints: ["CONSTRAINT"]
agent: {name: AGENT, seed: 0, options: OPTIONS}
budget: {max_trials: BUDGET}
tracking: {enabled: false}
"""


class InProcessHarness:
    """The custom-objective evaluator without the child process (fast, deterministic)."""

    def __init__(self, job: Any) -> None:
        self._ev = ObjectiveEvaluator(job)
        self.evaluate = self._ev.evaluate
        self.capabilities = self._ev.capabilities

    def fingerprint(self) -> dict[str, Any]:
        return {"host": "conformance"}

    def close(self) -> None:
        pass


def tiny_job(name: str, folder: Path, budget: int, constraint: str = "accuracy >= 0.8") -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    text = (_JOB.replace("AGENT", name).replace("BUDGET", str(budget))
            .replace("CONSTRAINT", constraint)
            .replace("OPTIONS", json.dumps(FAST_OPTIONS.get(name, {}))))
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return load_job(path)


def check_leaves_invalid_combinations(name: str, tmp_path: Path | None = None) -> None:
    """Told that a proposal is an invalid combination, the agent moves on, even when its model of
    the measurements says the invalid corner is the best place (the tuner gives up after many
    invalid proposals in a row)."""
    sp = space()
    configs = _steps(make(name), 30, lure_objective)
    invalid = [bool(sp.invalid_reason(c)) for c in configs]
    run = longest = 0
    for bad in invalid:
        run = run + 1 if bad else 0
        longest = max(longest, run)
    assert longest <= 6, f"{name}: {longest} invalid proposals in a row ({sum(invalid)} of 30)"
    assert sum(invalid) <= 15, f"{name}: {sum(invalid)} of 30 proposals were invalid"


def check_front_is_feasible(name: str, tmp_path: Path) -> None:
    """Through the real tuner: the reported front holds only feasible trials, and it is the
    non-dominated set of the feasible ones."""
    job = tiny_job(name, tmp_path / "front", 10, "accuracy >= 0.85")
    summary = tuner.run(job, harness=InProcessHarness(job))
    assert summary.n_complete + summary.n_failed == 10
    assert all(t.feasible for t in summary.front)
    feasible = [t for t in summary.trials if t.feasible]
    assert bool(summary.front) == bool(feasible)
    for t in feasible:  # nothing feasible dominates a front member
        for f in summary.front:
            a, b = (t.metrics["latency_ms"], -t.metrics["accuracy"]), \
                   (f.metrics["latency_ms"], -f.metrics["accuracy"])
            assert not (all(x <= y for x, y in zip(a, b, strict=True)) and a != b)
    assert {t.agent for t in summary.trials} == {name}


def check_resume(name: str, tmp_path: Path) -> None:
    """Run 5 trials, then the same job with budget 8: 8 trials in all, the first 5 untouched,
    the new ones proposed by an agent rebuilt from the study."""
    job = tiny_job(name, tmp_path / "resume", 5)
    first = tuner.run(job, harness=InProcessHarness(job))
    assert len(first.trials) - sum(t.state == "invalid" for t in first.trials) == 5
    second = tuner.run(job, max_trials=8, harness=InProcessHarness(job))
    counted = [t for t in second.trials if t.state != "invalid"]
    assert len(counted) == 8 and second.new_trials == 3 and second.finished
    before = {t.number: t for t in first.trials}
    for t in second.trials[: len(first.trials)]:
        b = before[t.number]
        assert (t.state, dict(t.config), dict(t.metrics), t.values) == \
               (b.state, dict(b.config), dict(b.metrics), b.values)
    assert all(t.agent == name for t in second.trials)
    third = tuner.run(job, max_trials=8, harness=InProcessHarness(job))
    assert third.new_trials == 0 and len(third.trials) == len(second.trials)


CHECKS: list[Callable[[str, Path], None]] = [
    check_suggestions_in_space,
    check_accepts_foreign_observations,
    check_deterministic,
    check_leaves_invalid_combinations,
    check_front_is_feasible,
    check_resume,
]

__all__ = ["CHECKS", "OBJECTIVES", "InProcessHarness", "space", "tiny_job", "toy_objective"]
