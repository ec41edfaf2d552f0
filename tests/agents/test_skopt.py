"""The scikit-optimize adapter: space mapping, scalarization, penalties, library compatibility."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.agents import create_agent
from autotune.agents.base import Observation
from autotune.agents.skopt import ESTIMATORS, SkoptAgent, dimensions, normalize, tchebycheff
from autotune.core.space import parse_space
from autotune.errors import SpecError

SPACE = parse_space({"parameters": {
    "runtime": ["onnxruntime", "torch"],
    "batch_size": [1, 8, 32],
    "pruning_ratio": {"low": 0.0, "high": 0.6, "step": 0.2},
    "threads": {"low": 1, "high": 4},
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "fixed": {"low": 2, "high": 2},
    "graph_optimization": {"choices": ["basic", "all"], "when": {"runtime": "onnxruntime"}},
}})
OBJ = [("latency", "minimize"), ("accuracy", "maximize")]


def problem(c: dict) -> tuple[tuple[float, float], tuple[float]]:
    lat = c["batch_size"] * (1 - c["pruning_ratio"]) / c["threads"]
    acc = 1 - c["pruning_ratio"] ** 2 - (0.1 if c.get("graph_optimization") == "basic" else 0)
    return (lat, acc), (c["pruning_ratio"] - 0.4,)


def test_dimensions_map_every_kind() -> None:
    from skopt.space import Categorical, Integer, Real

    dims = dict(zip(SPACE.names, dimensions(SPACE), strict=True))
    assert isinstance(dims["runtime"], Categorical) and dims["runtime"].categories == (0, 1)
    assert isinstance(dims["pruning_ratio"], Integer) and dims["pruning_ratio"].high == 3  # index
    assert isinstance(dims["threads"], Integer) and (dims["threads"].low, dims["threads"].high) == (1, 4)
    assert isinstance(dims["lr"], Real) and dims["lr"].prior == "log-uniform"
    assert len(dims) == len(SPACE)  # conditional parameters are flat dimensions too


def test_encode_decode_roundtrip_masks_inactive() -> None:
    agent = SkoptAgent(SPACE, OBJ, estimator="skopt-rf")
    cfg = {"runtime": "torch", "batch_size": 8, "pruning_ratio": 0.4, "threads": 3, "lr": 0.01,
           "fixed": 2}
    assert agent.decode(agent.encode(cfg)) == cfg
    onnx = {**cfg, "runtime": "onnxruntime", "graph_optimization": "all"}
    assert agent.decode(agent.encode(onnx)) == onnx
    # an inactive value in the flat vector is dropped by space.complete()
    x = agent.encode(onnx)
    x[0] = 1  # runtime -> torch
    assert "graph_optimization" not in agent.decode(x)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_runs_multiobjective_with_constraints(name: str) -> None:
    """All four surrogates work on numpy 2.x / scikit-learn 1.9 (GBRT needs the patches)."""
    agent = create_agent(name, SPACE, OBJ, 1, seed=0, n_initial_points=4, n_points=200)
    for i in range(7):
        c = agent.suggest()
        assert SPACE.validate(c) == []
        values, viol = problem(c)
        agent.observe(Observation(c, values, viol, number=i))


def test_same_seed_same_suggestions() -> None:
    def run(seed: int) -> list[dict]:
        agent = create_agent("skopt-et", SPACE, OBJ, 1, seed=seed, n_initial_points=3, n_points=200)
        out = []
        for _ in range(6):
            c = agent.suggest()
            out.append(c)
            agent.observe(Observation(c, *problem(c)))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_scalarization_is_augmented_tchebycheff() -> None:
    vals = np.array([[0.0, 10.0], [5.0, 0.0], [10.0, 5.0]])
    norm = normalize(vals)
    assert norm.min() == 0 and norm.max() == 1
    s = tchebycheff(norm, np.array([0.5, 0.5]), rho=0.1)
    # point 3 = (1, 0.5): max 0.5 + 0.1 * 0.75
    assert s[2] == pytest.approx(0.5 + 0.1 * 0.75)
    # a point dominated by another scores worse under every weight vector
    for w in np.random.default_rng(0).dirichlet([1, 1], size=20):
        d = tchebycheff(np.array([[0.2, 0.2], [0.3, 0.4]]), w)
        assert d[0] < d[1]


def test_infeasible_and_failed_points_rank_below_feasible() -> None:
    agent = SkoptAgent(SPACE, OBJ, 1, estimator="skopt-rf")
    base = {"runtime": "torch", "batch_size": 1, "pruning_ratio": 0.0, "threads": 1, "lr": 0.01,
            "fixed": 2}
    agent.observe(Observation(base, (1.0, 0.9), (-1.0,)))
    agent.observe(Observation({**base, "threads": 2}, (9.0, 0.1), (-1.0,)))  # feasible, bad
    agent.observe(Observation({**base, "threads": 3}, (0.1, 0.99), (0.5,)))  # infeasible, great
    agent.observe(Observation({**base, "threads": 4}, (0.1, 0.99), (50.0,)))  # more infeasible
    agent.observe(Observation({**base, "batch_size": 8}, None, state="failed"))
    s = agent.scalarized_history(np.array([0.5, 0.5]))
    assert max(s[:2]) < s[2] < s[3] < s[4]


def test_foreign_observations_are_learned() -> None:
    agent = create_agent("skopt-gp", SPACE, OBJ, 0, seed=1, n_initial_points=2, n_points=100)
    foreign = {"runtime": "onnxruntime", "graph_optimization": "all", "batch_size": 1,
               "pruning_ratio": 0.2, "threads": 4, "lr": 0.05, "fixed": 2}
    agent.observe(Observation(foreign, problem(foreign)[0]))
    assert agent.encode(foreign) in agent._X
    assert SPACE.validate(agent.suggest()) == []


def test_bad_options_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="acq_func"):
        create_agent("skopt-gp", SPACE, OBJ, acq_func="UCB")
    with pytest.raises(SpecError, match="n_initial_points"):
        create_agent("skopt-rf", SPACE, OBJ, n_initial_points=0)
