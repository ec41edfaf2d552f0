from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from autotune import envs
from autotune.core.space import parse_space
from autotune.envs.config_search import ConfigSearchEnv, SpaceCodec

SPACE = parse_space({"parameters": {
    "quantization": ["fp32", "int8"],
    "calibration": {"choices": [16, 64, 256], "when": {"quantization": "int8"}},
    "x": {"low": 0.0, "high": 1.0},
    "batch": {"low": 1, "high": 64, "log": True, "type": "int"},
}})


def toy(config):
    x = config["x"]
    q = config["quantization"] == "int8"
    lat = 1.0 + x - 0.5 * q
    err = (1.0 - x) * 0.5 + 0.2 * q + (0.1 if config.get("calibration") == 16 else 0.0)
    return (lat, err), (err - 0.6,)


def make(budget=3, evaluate=toy, **kw):
    return ConfigSearchEnv(SPACE, ["minimize", "minimize"], evaluate, reference=(3.0, 1.0),
                           ideal=(0.0, 0.0), budget=budget, bins=4, **kw)


def test_passes_both_checkers():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # gymnasium's checker warns on problems
        gym_check_env(make(budget=5), skip_render_check=True)
    sb3_check_env(make(budget=5), warn=True)


def test_registered_by_string_entry_point():
    env = gymnasium.make(envs.CONFIG_SEARCH_ID, space=SPACE, directions=["minimize", "minimize"],
                         evaluate=toy, reference=(3.0, 1.0), ideal=(0.0, 0.0))
    assert isinstance(env.unwrapped, ConfigSearchEnv)


def rollout(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return np.array(out), rewards


def test_deterministic_under_a_seed():
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, make().action_space.n, 40)]
    o1, r1 = rollout(make(budget=6), actions, seed=3)
    o2, r2 = rollout(make(budget=6), actions, seed=3)
    assert np.array_equal(o1, o2) and r1 == r2


def test_inactive_dimensions_are_skipped():
    env = make()
    env.reset(seed=0)
    # quantization=fp32 (action 0) makes calibration inactive: the next step sets x
    obs, *_ = env.step(0)
    step_onehot = obs[env.codec.onehot_size: env.codec.onehot_size + len(SPACE)]
    assert step_onehot.tolist() == [0, 0, 1, 0]
    env.step(3)  # x = 1.0
    _, _, _, _, info = env.step(0)
    assert info["config"] == {"quantization": "fp32", "x": 1.0, "batch": 1}


def test_truncated_exactly_when_the_budget_is_used():
    env = make(budget=2)
    env.reset(seed=0)
    flags = []
    for _ in range(20):
        _, _, term, trunc, info = env.step(1)
        assert not term
        if "config" in info:
            flags.append(trunc)
        if trunc:
            break
    assert flags == [False, True]
    with pytest.raises(RuntimeError):
        env.step(0)


def test_reward_is_the_normalized_hypervolume_improvement():
    # f(config) = (x, 1 - x) on a [0, 1] box with reference (1, 1): hand-computed areas
    space = parse_space({"parameters": {"x": {"low": 0.0, "high": 1.0, "step": 0.25}}})
    env = ConfigSearchEnv(space, ["minimize", "minimize"],
                          lambda c: ((c["x"], 1.0 - c["x"]), ()),
                          reference=(1.0, 1.0), ideal=(0.0, 0.0), budget=4, bins=5)
    env.reset(seed=0)
    r1 = env.step(2)[1]  # x = 0.5 -> point (0.5, 0.5): area 0.25
    assert r1 == pytest.approx(0.25)
    r2 = env.step(1)[1]  # x = 0.25 -> (0.25, 0.75): adds 0.25 * 0.25
    assert r2 == pytest.approx(0.0625)
    r3 = env.step(2)[1]  # the same point again adds nothing
    assert r3 == 0.0
    r4 = env.step(0)[1]  # x = 0 -> (0, 1) lies on the reference: adds nothing
    assert r4 == 0.0


def test_initial_front_is_the_baseline_of_the_improvement():
    space = parse_space({"parameters": {"x": {"low": 0.0, "high": 1.0, "step": 0.25}}})
    env = ConfigSearchEnv(space, ["minimize", "maximize"],
                          lambda c: ((c["x"], c["x"]), ()),
                          reference=(1.0, 0.0), ideal=(0.0, 1.0), budget=2, bins=5)
    obs, _ = env.reset(seed=0, options={"front": [[0.5, 0.5]]})
    assert obs[-5] == pytest.approx(0.25)  # normalized hv of the given front
    # (0.75, 0.75) over the front {(0.5, 0.5)}: 0.25*0.75 - 0.25*0.5 = 0.0625 gained
    assert env.step(3)[1] == pytest.approx(0.25 * 0.25)


def test_violations_are_penalized_and_do_not_join_the_front():
    space = parse_space({"parameters": {"x": {"low": 0.0, "high": 1.0, "step": 0.5}}})
    env = ConfigSearchEnv(space, ["minimize"], lambda c: ((c["x"],), (0.5 - c["x"], -1.0)),
                          reference=(2.0,), ideal=(0.0,), budget=3, bins=3, violation_penalty=2.0)
    env.reset(seed=0)
    assert env.step(0)[1] == pytest.approx(-1.0)  # x = 0 violates by 0.5, times 2
    assert env.hv() == 0.0
    assert env.step(2)[1] == pytest.approx(0.5)  # x = 1 is feasible: (2 - 1) / 2


def test_failures_and_invalid_combinations():
    space = parse_space({"parameters": {
        "device": ["cpu", "cuda"],
        "q": {"choices": ["fp32", "fp16"],
              "invalid": [{"values": ["fp16"], "when": {"device": "cpu"}}]},
    }})
    calls = []

    def ev(c):
        calls.append(c)
        return (None, ()) if c["device"] == "cuda" else ((1.0,), ())

    env = ConfigSearchEnv(space, ["minimize"], ev, reference=(2.0,), ideal=(0.0,), budget=2,
                          failure_penalty=0.7)
    env.reset(seed=0)
    env.step(0)
    _, r, _, trunc, info = env.step(1)  # cpu + fp16: invalid, not evaluated, no budget used
    assert r == -0.7 and "invalid" in info and not calls and not trunc
    env.step(1)
    _, r, _, trunc, _ = env.step(0)  # cuda: evaluation fails
    assert r == -0.7 and len(calls) == 1 and not trunc


def test_codec_discretizes_and_snaps():
    codec = SpaceCodec.from_space(SPACE, bins=4)
    assert codec.values[2] == (0.0, 1 / 3, 2 / 3, 1.0)
    assert codec.values[3][0] == 1 and codec.values[3][-1] == 64
    assert codec.snap({"quantization": "fp32", "x": 0.3, "batch": 50}) == {
        "quantization": "fp32", "x": 1 / 3, "batch": 64}
    f = codec.features({"quantization": "int8", "calibration": 64, "x": 0.25, "batch": 8})
    # quantization one-hot; calibration, a choice of numbers, by rank (64 lies between 16 and 256)
    assert f.tolist()[:3] == [0, 1, 0.5] and f[3] == 0.25
    assert f[4] == pytest.approx(math.log(8) / math.log(64))
    ranks = [codec.features({"quantization": "int8", "calibration": c, "x": 0.0, "batch": 1})[2]
             for c in (16, 64, 256)]
    assert ranks == [0.0, 0.5, 1.0]
    assert codec.features({"quantization": "fp32", "x": 0.0, "batch": 1})[2] == -1.0  # inactive
    # every value of every dimension is reachable through some action
    for d, vals in enumerate(codec.values):
        assert {codec.value_for(d, a) for a in range(codec.n_actions)} == set(vals)
        for i in range(len(vals)):
            assert codec.value_for(d, codec.action_for(d, i)) == vals[i]
