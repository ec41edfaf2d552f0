from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

from autotune import envs
from autotune.envs.layer_wise import (
    MIXED_ACTIONS,
    PRUNE_ACTIONS,
    LayerAction,
    LayerWiseEnv,
    apply_policy,
    describe_layers,
    search_policies,
    size_proxy,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16),
                         nn.ReLU(), nn.Linear(16, 3)).eval()


X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def agreement(model_ref: nn.Module):
    with torch.no_grad():
        ref = model_ref(X).argmax(1)

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(X).argmax(1) == ref).float().mean())

    return evaluate


def make(**kw) -> LayerWiseEnv:
    m = tiny_model()
    return LayerWiseEnv(m, agreement(m), example=X[:1], **kw)


def test_passes_both_checkers():
    gym_check_env(make(budget=2), skip_render_check=True)
    sb3_check_env(make(budget=2, actions=MIXED_ACTIONS), warn=True)


def test_registered_by_string_entry_point():
    m = tiny_model()
    env = gymnasium.make(envs.LAYER_WISE_ID, model=m, evaluate=agreement(m), example=X[:1])
    assert isinstance(env.unwrapped, LayerWiseEnv)


def test_layer_features():
    layers = describe_layers(tiny_model(), X[:1])
    assert [(i.kind, i.in_features, i.out_features, i.kernel) for i in layers] == [
        ("conv", 1, 4, 9), ("linear", 144, 16, 1), ("linear", 16, 3, 1)]
    assert layers[0].flops == 36 * 36  # 36 weights at 6x6 output positions
    env = make()
    obs, _ = env.reset(seed=0)
    assert obs.tolist()[:2] == [0.0, 1.0] and obs[7] == 0.0  # a conv layer, position 0


def test_deterministic_under_a_seed():
    actions = [3, 1, 2, 0, 2, 1]
    runs = []
    for _ in range(2):
        env = make(budget=2)
        obs = [env.reset(seed=5)[0]]
        rewards = []
        for a in actions:
            o, r, _, _, _ = env.step(a)
            obs.append(o)
            rewards.append(r)
        runs.append((np.array(obs), rewards))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_truncated_after_budget_passes():
    env = make(budget=2)
    env.reset(seed=0)
    truncs = [env.step(0)[3] for _ in range(6)]
    assert truncs == [False, False, False, False, False, True]
    with pytest.raises(RuntimeError):
        env.step(0)


def test_reward_is_quality_minus_cost_and_penalties():
    env = make(trade_off=0.5)
    env.reset(seed=0)
    for _ in range(3):
        _, r, _, _, info = env.step(0)  # no pruning anywhere: agreement 1, cost 1
    assert info["quality"] == 1.0 and info["cost"] == 1.0 and r == pytest.approx(0.5)
    env = make(trade_off=0.5, max_cost=0.5, penalty=10.0)
    env.reset(seed=0)
    for _ in range(3):
        _, r, _, _, info = env.step(0)
    assert r == pytest.approx(1.0 - 0.5 - 10.0 * 0.5)  # violates max_cost by 0.5
    env = make(trade_off=0.5, min_quality=1.01, penalty=10.0)
    env.reset(seed=0)
    for _ in range(3):
        _, r, _, _, info = env.step(0)
    assert r == pytest.approx(0.5 - 10.0 * 0.01)


def test_policy_is_applied_per_layer():
    model = tiny_model()
    layers = describe_layers(model, X[:1])
    policy = [LayerAction("fp32", 0.5), LayerAction("fp32", 0.0), LayerAction("int8", 0.25)]
    out = apply_policy(model, layers, policy)
    w0 = out[0].weight
    assert int((w0 == 0).sum()) == 18 and int((out[3].weight == 0).sum()) == 0
    assert type(out[3].weight) is nn.Parameter  # fp32 layer left alone
    assert "Int8" in type(out[5].weight).__name__  # only the int8 layer is quantized (torchao)
    assert int((model[0].weight == 0).sum()) == 0  # the original is untouched
    expected = (36 * 0.5 * 4 + 2304 * 4 + 48 * 0.75 * 1) / ((36 + 2304 + 48) * 4)
    assert size_proxy(layers, policy) == pytest.approx(expected)
    with torch.no_grad():
        assert out(X).shape == (32, 3)


def test_pruning_more_lowers_the_size_term():
    env = make(actions=PRUNE_ACTIONS, trade_off=1.0)
    env.reset(seed=0)
    for _ in range(3):
        *_, info = env.step(3)
    assert info["cost"] == pytest.approx(0.25)


def test_attention_out_proj_is_pruned_but_never_quantized():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                1, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 8)
    layers = describe_layers(enc)
    assert [(i.name.split(".")[-1], i.quantizable) for i in layers] == [
        ("out_proj", False), ("linear1", True), ("linear2", True)]
    out = apply_policy(enc, layers, [LayerAction("int8", 0.5)] * 3)
    with torch.no_grad():
        assert out(x).shape == (2, 5, 8)  # torchao's int8 weight would fail inside attention
    assert type(out.layers[0].self_attn.out_proj.weight) is nn.Parameter
    assert "Int8" in type(out.layers[0].linear1.weight).__name__
    # the out_proj is costed at fp32, the others at int8; all pruned by half
    expected = (64 * 0.5 * 4 + 256 * 0.5 * 1) / (320 * 4)
    assert size_proxy(layers, [LayerAction("int8", 0.5)] * 3) == pytest.approx(expected)


@pytest.mark.parametrize("algorithm", ["ppo", "random"])
def test_search_policies_spends_exactly_the_evaluations(algorithm):
    calls = []
    m = tiny_model()
    score = agreement(m)

    def evaluate(model):
        calls.append(1)
        return score(model)

    env = LayerWiseEnv(m, evaluate, example=X[:1], actions=MIXED_ACTIONS)
    best = search_policies(env, 6, algorithm=algorithm, seed=3)
    assert len(env.evaluated) == len(calls) == 6  # a repeated policy is not evaluated again
    assert len({r.policy for r in env.evaluated}) == 6
    assert best.reward == max(r.reward for r in env.evaluated)
    assert best.reward == pytest.approx(env.score(best.quality, best.cost))
    env2 = LayerWiseEnv(m, score, example=X[:1], actions=MIXED_ACTIONS)
    search_policies(env2, 6, algorithm=algorithm, seed=3)
    assert [r.policy for r in env2.evaluated] == [r.policy for r in env.evaluated]  # same seed


def test_search_policies_rejects_bad_arguments():
    with pytest.raises(ValueError, match="algorithm"):
        search_policies(make(), 3, algorithm="sac")
    with pytest.raises(ValueError, match="budget=1"):
        search_policies(make(budget=2), 3)
