from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.agents import AGENTS, create_agent
from autotune.agents.base import Observation
from autotune.core.space import parse_space
from autotune.errors import SpecError

SPACE = parse_space({"parameters": {
    "runtime": ["torch", "onnxruntime"],
    "quantization": {"choices": ["fp32", "fp16", "int8"],
                     "invalid": [{"values": ["fp16"], "when": {"runtime": "torch"}}]},
    "calibration": {"choices": [32, 128], "when": {"quantization": "int8"}},
    "x": {"low": 0.0, "high": 1.0},
    "batch": {"low": 1, "high": 64, "log": True, "type": "int"},
}})
OBJ = [("latency", "minimize"), ("accuracy", "maximize")]
FAST = {"train_steps": 32, "n_steps": 16, "n_initial": 3, "max_retries": 4, "n_candidates": 2,
        "train_every": 1}


def measure(c):
    q = {"fp32": 1.0, "fp16": 0.7, "int8": 0.5}[c["quantization"]]
    lat = q * (1.0 + c["x"]) / math.log2(c["batch"] + 1)
    acc = 0.9 - 0.1 * (c["quantization"] == "int8") + 0.05 * c["x"]
    return (lat, acc), (0.85 - acc,)


def drive(agent, n, measure=measure):
    out = []
    for _ in range(n):
        c = agent.suggest()
        out.append(c)
        values, viol = measure(c)
        agent.observe(Observation(c, values, viol))
    agent.close()
    return out


def test_registered():
    for name in ("rl-ppo", "rl-a2c", "rl-dqn"):
        assert name in AGENTS
        assert create_agent(name, SPACE, OBJ, 1, seed=0).name == name
    assert create_agent("rl-ppo", SPACE, OBJ, 1, algorithm="dqn").name == "rl-dqn"


@pytest.mark.parametrize("name", ["rl-ppo", "rl-a2c", "rl-dqn"])
def test_suggestions_are_inside_the_space(name):
    agent = create_agent(name, SPACE, OBJ, 1, seed=1, **FAST)
    configs = drive(agent, 6)
    for c in configs:
        assert SPACE.validate(c) == []
    assert len(agent.overhead_s) == 6 and agent.train_steps_done[-1] == 32


def test_real_evaluation_mode_suggestions_are_inside_the_space():
    agent = create_agent("rl-ppo", SPACE, OBJ, 1, seed=1, surrogate=False, **FAST)
    configs = drive(agent, 8)
    assert all(SPACE.validate(c) == [] for c in configs)
    assert agent._thread is None  # closed


@pytest.mark.parametrize("surrogate", [True, False])
def test_same_seed_same_suggestions(surrogate):
    a = drive(create_agent("rl-ppo", SPACE, OBJ, 1, seed=7, surrogate=surrogate, **FAST), 7)
    b = drive(create_agent("rl-ppo", SPACE, OBJ, 1, seed=7, surrogate=surrogate, **FAST), 7)
    c = drive(create_agent("rl-ppo", SPACE, OBJ, 1, seed=8, surrogate=surrogate, **FAST), 7)
    assert a == b
    assert a != c


@pytest.mark.parametrize("surrogate", [True, False])
def test_accepts_foreign_observations(surrogate):
    agent = create_agent("rl-ppo", SPACE, OBJ, 1, seed=3, surrogate=surrogate, **FAST)
    foreign = [
        {"runtime": "onnxruntime", "quantization": "fp32", "x": 0.123, "batch": 5},  # off-grid
        {"runtime": "torch", "quantization": "int8", "calibration": 32, "x": 1.0, "batch": 64},
        {"runtime": "onnxruntime", "quantization": "fp16", "x": 0.0, "batch": 1},
    ]
    for c in foreign[:2]:
        agent.observe(Observation(c, *measure(c)))
    agent.observe(Observation(foreign[2], None, state="failed"))
    agent.observe(Observation({"runtime": "torch", "quantization": "fp16", "x": 0.0, "batch": 1},
                              None, state="invalid"))
    agent.observe(Observation(foreign[0], (float("nan"), 0.5), (float("nan"),)))
    configs = drive_mixed(agent, foreign)
    assert all(SPACE.validate(c) == [] for c in configs)
    assert all(c not in foreign for c in configs)


def drive_mixed(agent, foreign):
    """Own suggestions interleaved with a foreign measurement (another worker)."""
    out = []
    for i in range(5):
        c = agent.suggest()
        out.append(c)
        agent.observe(Observation(c, *measure(c)))
        if i == 3:
            f = {"runtime": "onnxruntime", "quantization": "int8", "calibration": 128, "x": 0.5,
                 "batch": 16}
            agent.observe(Observation(f, *measure(f)))
    agent.close()
    return out


def test_does_not_repeat_measured_configurations():
    small = parse_space({"parameters": {"a": [0, 1, 2], "b": [0, 1, 2, 3]}})
    agent = create_agent("rl-ppo", small, [("f", "minimize")], 0, seed=0, **FAST)
    seen = []
    for _ in range(12):
        c = agent.suggest()
        seen.append((c["a"], c["b"]))
        agent.observe(Observation(c, (float((c["a"] - 1) ** 2 + c["b"]),)))
    assert len(set(seen)) == 12  # the whole grid, no repeats


def test_policy_takes_over_after_the_random_phase():
    # the first n_initial suggestions are random; every later one trains the policy first
    agent = create_agent("rl-ppo", SPACE, OBJ, 1, seed=0, **{**FAST, "train_steps": 64})
    configs = drive(agent, 12)
    assert agent.train_steps_done[:3] == [0, 0, 0] and all(s == 64 for s in agent.train_steps_done[3:])
    assert len({repr(sorted(c.items())) for c in configs}) == 12


def test_the_policy_trains_every_train_every_th_suggestion():
    # trained at its first policy suggestion, then at every third; ranks rollouts in between
    agent = create_agent("rl-ppo", SPACE, OBJ, 1, seed=0, **{**FAST, "train_every": 3})
    drive(agent, 10)
    assert agent.train_steps_done == [0, 0, 0, 32, 0, 0, 32, 0, 0, 32]


def test_surrogate_sd_is_zero_at_observations_and_grows_away_from_them():
    from autotune.agents.rl import KernelRidge

    rng = np.random.default_rng(0)
    x = rng.random((20, 3)) * 0.5  # observations fill one corner of the unit cube
    y = np.c_[x.sum(1), np.sin(3 * x[:, 0])]
    model = KernelRidge().fit(x, y)
    mean, sd = model.predict(x, with_sd=True)
    assert np.allclose(mean, y, atol=0.05 * y.std(0).max())
    assert sd.shape == y.shape and np.all(sd < 0.05 * y.std(0))
    near = x[:5] + 0.05
    far = np.ones((1, 3))
    _, sd_near = model.predict(near, with_sd=True)
    _, sd_far = model.predict(far, with_sd=True)
    assert np.all(sd_far > 3 * sd_near.max(0)) and np.all(sd_far > 0.5 * y.std(0))
    assert np.allclose(model.predict(far), model.predict(far, with_sd=True)[0])


FLAT_SPACE = parse_space({"parameters": {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3],
                                         "c": ["x", "y", "z"]}})


def flat(config):
    """Every configuration measures the same: the mean surrogate can never promise a gain."""
    return (1.0, 1.0), ()


def test_without_a_promised_gain_it_measures_neighbours_of_the_front_and_far_points():
    agent = create_agent("rl-ppo", FLAT_SPACE, OBJ, 0, seed=0, optimism=0.0, **FAST)
    configs = drive(agent, 12, flat)
    assert agent.sources[:3] == ["initial"] * 3
    later = agent.sources[3:]
    assert "policy" not in later and "optimistic" not in later  # the policy steps aside
    assert later.count("neighbour") >= 4 and later.count("spread") >= 4
    assert len({repr(sorted(c.items())) for c in configs}) == 12  # nothing measured twice
    for i, (c, src) in enumerate(zip(configs, agent.sources, strict=True)):
        if src == "neighbour":  # one or two parameters away from something measured before
            assert min(sum(c[k] != o[k] for k in c) for o in configs[:i]) in (1, 2)


def test_optimism_lets_the_policy_propose_where_the_mean_promises_nothing():
    # same flat problem: the posterior sd makes unmeasured configurations a possible gain, so
    # the policy's optimistic proposals take turns with neighbours of the front (no far picks)
    agent = create_agent("rl-ppo", FLAT_SPACE, OBJ, 0, seed=0, **FAST)
    configs = drive(agent, 12, flat)
    later = agent.sources[3:]
    assert "policy" not in later and "spread" not in later
    assert later.count("optimistic") >= 4 and later.count("neighbour") >= 4
    assert len({repr(sorted(c.items())) for c in configs}) == 12


def test_bad_options_are_spec_errors():
    with pytest.raises(SpecError, match="unknown option"):
        create_agent("rl-ppo", SPACE, OBJ, 1, learning_rat=0.1)
    with pytest.raises(SpecError, match="algorithm"):
        create_agent("rl-ppo", SPACE, OBJ, 1, algorithm="sac")
    with pytest.raises(SpecError, match="train_steps"):
        create_agent("rl-ppo", SPACE, OBJ, 1, train_steps=0)
    with pytest.raises(SpecError, match="optimism"):
        create_agent("rl-ppo", SPACE, OBJ, 1, optimism=-1)
    for bad in (1.5, -0.1, "0.3", True):
        with pytest.raises(SpecError, match="proposal_epsilon"):
            create_agent("rl-dqn", SPACE, OBJ, 1, proposal_epsilon=bad)


def test_dqn_proposals_explore_around_its_greedy_policy():
    agent = create_agent("rl-dqn", SPACE, OBJ, 1, seed=0, **FAST)
    drive(agent, 4)  # the Q-network exists after the first policy suggestion
    obs = np.zeros(agent._model.observation_space.shape, dtype=np.float32)
    greedy = int(agent._model.predict(obs, deterministic=True)[0])
    n = agent._model.action_space.n
    for eps in (0.0, 0.3, 1.0):
        agent.cfg["proposal_epsilon"] = eps
        acts = [agent._propose(obs) for _ in range(1000)]
        off = sum(a != greedy for a in acts)  # a random action differs with p (n - 1) / n
        assert abs(off - 1000 * eps * (n - 1) / n) <= 50, (eps, off)  # 3.5 sd
        assert all(0 <= a < n for a in acts)


@pytest.mark.parametrize("name", ["rl-dqn", "rl-ppo", "rl-a2c"])
def test_proposals_are_ranked_among_n_candidates_new_configurations(name):
    # every algorithm re-draws until it has n_candidates distinct new configurations
    opts = {**FAST, "n_candidates": 8, "max_retries": 200}
    agent = create_agent(name, SPACE, OBJ, 1, seed=0, **opts)
    drive(agent, 8)
    assert agent.candidates == [8] * 5
    agent = create_agent(name, SPACE, OBJ, 1, seed=0, **{**opts, "max_retries": 3})
    drive(agent, 8)  # too few rollouts for 8: it ranks what it found
    assert len(agent.candidates) == 5 and all(k <= 3 for k in agent.candidates)


ORDERED = parse_space({"parameters": {"p": {"low": 0.0, "high": 0.8, "step": 0.2},
                                      "b": [1, 8, 32, 128], "c": ["x", "y"]}})


def _key(c):
    return repr(sorted(c.items()))


def test_neighbours_of_the_front_take_any_value_of_one_parameter():
    agent = create_agent("rl-a2c", ORDERED, OBJ, 0, seed=0, **FAST)
    front = {"p": 0.2, "b": 32, "c": "x"}
    done = [Observation(front, (1.0, 1.0)), Observation({"p": 0.4, "b": 32, "c": "x"}, (2.0, 0.5)),
            Observation({"p": 0.0, "b": 32, "c": "x"}, (1.5, 0.9))]
    for o in done:
        agent.observe(o)
    moves = [{**front, k: v} for k, vals in (("p", [0.6, 0.8]), ("b", [1, 8, 128]), ("c", ["y"]))
             for v in vals]
    one_away = {_key(c) for c in moves}
    # nothing promises a gain: a random unmeasured one-parameter move, the ordered parameter's
    # far end included (a one-grid-step move never reaches p = 0.8 from 0.2)
    picks = {_key(agent._neighbour(done, lambda cs: [0.0] * len(cs))) for _ in range(200)}
    assert picks == one_away
    # the surrogate's gain decides among them
    for target in ({**front, "p": 0.8}, {**front, "b": 1}):
        pick = agent._neighbour(done, lambda cs, t=target: [float(c == t) for c in cs])
        assert pick == target
    # every one-parameter move measured: two parameters away
    for c in moves:
        agent.observe(Observation(c, (3.0, 0.1)))
    pick = agent._neighbour(done, lambda cs: [0.0] * len(cs))
    assert sum(pick[k] != front[k] for k in front) == 2 and _key(pick) not in agent._table


@pytest.mark.slow
def test_tuner_run_end_to_end(tiny_job):
    from autotune.job.spec import load_job
    from autotune.tuning.tuner import run

    path = tiny_job(15, **{"{name: tpe, seed: 1}":
                           "{name: rl-ppo, seed: 1, options: {train_steps: 32, n_steps: 16, "
                           "n_initial: 4}}"})
    summary = run(load_job(path))
    assert summary.finished and summary.new_trials == 15
    assert summary.n_complete + summary.n_failed == 15 and summary.n_complete >= 10
    assert {t.agent for t in summary.trials} == {"rl-ppo"}
    assert len(summary.front) >= 1
    configs = [repr(sorted(t.config.items())) for t in summary.trials]
    assert len(set(configs)) == len(configs)
    assert np.isfinite([t.metrics["accuracy"] for t in summary.front]).all()
