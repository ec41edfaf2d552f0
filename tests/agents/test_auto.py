"""The default agent (``auto``): space-filling start, never a configuration it has seen, local moves
around the front, the inner sampler chosen by the space."""

from __future__ import annotations

from typing import Any

import pytest

from autotune.agents import DEFAULT_AGENT, create_agent
from autotune.agents.auto import AutoAgent
from autotune.core.explore import Encoder, finite_configs
from autotune.core.space import config_key, parse_space
from autotune.errors import SpecError
from autotune.testing.agents import OBJECTIVES, _steps, space


def test_the_default_agent_is_auto() -> None:
    assert DEFAULT_AGENT == "auto"


def test_it_never_proposes_a_configuration_twice_and_covers_a_small_space() -> None:
    """A finite space of 30 configurations, 30 suggestions: each one new, so all are measured."""
    sp = parse_space({"parameters": {"runtime": {"choices": ["onnxruntime", "torch", "openvino"]},
                                     "batch_size": {"choices": [1, 2, 4, 8, 16]},
                                     "threads": {"low": 1, "high": 2}}})
    agent = create_agent("auto", sp, OBJECTIVES, 0, seed=3)
    seen = set()
    for i in range(30):
        c = agent.suggest()
        assert config_key(c) not in seen, f"suggestion {i} repeats {c}"
        seen.add(config_key(c))
        m = {"latency_ms": c["batch_size"] / c["threads"] * (1 + (c["runtime"] == "torch")),
             "accuracy": 0.9 - 0.01 * (c["runtime"] == "openvino")}
        from autotune.agents.base import Observation

        agent.observe(Observation(c, (m["latency_ms"], m["accuracy"]), metrics=m))
    assert len(seen) == len(finite_configs(sp)) == 30


def test_the_start_fills_the_space() -> None:
    """The first suggestions are maximin picks: the closest pair among the first 6 is farther
    apart than in the median random draw of 6 configurations."""
    import random

    sp = space()
    agent: Any = create_agent("auto", sp, OBJECTIVES, 1, seed=0, n_initial=6)
    first = _steps(agent, 6)
    assert agent.kinds[:6] == ["spread"] * 6
    enc = Encoder(sp)

    def closest(configs: list[dict[str, Any]]) -> float:
        x = enc.encode(configs)
        return min(float(abs(x[i] - x[j]).sum()) for i in range(len(x)) for j in range(i))

    grid = finite_configs(sp)
    assert grid is not None
    draws = sorted(closest(random.Random(s).sample(grid, 6)) for s in range(21))
    assert closest(first) > draws[10]


def test_local_moves_and_the_model_take_turns() -> None:
    agent: Any = create_agent("auto", space(), OBJECTIVES, 1, seed=1, n_initial=10,
                              local_every=3)
    _steps(agent, 22)
    later = agent.kinds[10:]
    assert later.count("local") >= 3 and later.count("model") >= 5, agent.kinds


def test_the_inner_sampler_follows_the_space() -> None:
    numeric = parse_space({"parameters": {"x": {"low": 0.0, "high": 1.0},
                                          "n": {"low": 1, "high": 8}}})
    assert isinstance(a := create_agent("auto", numeric, OBJECTIVES, 0), AutoAgent)
    assert a.inner.name == "gp" and (a.cfg["n_initial"], a.cfg["local_every"]) == (10, 3)
    b: Any = create_agent("auto", space(), OBJECTIVES, 0)  # categorical, conditional
    assert b.inner.name == "tpe" and (b.cfg["n_initial"], b.cfg["local_every"]) == (0, 0)
    assert create_agent("auto", numeric, OBJECTIVES, 0,  # type: ignore[attr-defined]
                        inner="tpe").inner.name == "tpe"


@pytest.mark.parametrize("options", [{"inner": "cmaes"}, {"n_initial": -1}, {"n_intial": 3}])
def test_bad_options_are_located(options: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as err:
        create_agent("auto", space(), OBJECTIVES, 0, **options)
    assert "agent.options" in str(err.value.path)
