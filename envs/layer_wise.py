"""Per-layer compression policies, in the spirit of AMC (He et al., 2018) and HAQ (Wang et al., 2019).

Episode structure
-----------------
One step per prunable layer (``nn.Linear`` / ``nn.Conv*``, in ``model.modules()`` order).  The
action picks that layer's entry of ``actions``: a :class:`LayerAction` (precision ``fp32`` or
``int8``, and an unstructured magnitude-pruning ratio).  When the last layer is decided, the
policy is applied to a copy of the model (:func:`apply_policy`: per-layer L1 pruning at each
layer's ratio, then torchao int8 dynamic quantization of the Linear layers marked ``int8`` via
``quantize_``'s per-module ``filter_fn``; ``int8`` on a Conv layer or on attention's ``out_proj``
is kept in fp32 and costed as fp32) and evaluated by ``evaluate(model) -> quality`` (e.g.
accuracy in [0, 1], higher is better), or ``-> (quality, cost)`` to supply a measured cost
(e.g. latency relative to the baseline) in place of the size proxy.

Reward (at the last layer of a pass, 0 elsewhere)::

    cost    = size_proxy = Σ nonzero weights × bytes(precision) / Σ weights × 4   (1.0 = fp32 dense)
    reward  = quality - trade_off * cost
              - penalty * (max(0, min_quality - quality) + max(0, cost - max_cost))

``min_quality`` / ``max_cost`` are the constraints (None = unconstrained); a violated constraint
costs ``penalty`` per unit of violation.  The default ``trade_off=0.5`` values halving the model
as much as half a point of quality… per unit: 0.5 · Δcost against Δquality.

An episode is ``budget`` passes over the layers (default 1, i.e. one AMC episode per policy);
``truncated`` is True at the step that finishes the last pass, ``terminated`` is always False.
``evaluate`` is assumed deterministic: a policy already evaluated is scored from memory, and
``env.evaluated`` lists every distinct policy with its quality, cost and reward, in the order
they were first evaluated (the real evaluations an agent spent).

:func:`search_policies` drives the environment with an SB3 algorithm (PPO, A2C, DQN) or with
uniformly random policies for a given number of real evaluations and returns the best policy.

Observation (``Box`` in [0, 1]), for the layer the next action decides::

    [is_linear, is_conv, in/max_in, out/max_out, kernel/max_kernel, log-params/max,
     log-flops/max, position / (L-1), previous action / (A-1), passes used / budget]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    from torch import nn

PRECISION_BYTES = {"fp32": 4.0, "int8": 1.0}


@dataclass(frozen=True)
class LayerAction:
    precision: str = "fp32"
    prune: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_BYTES:
            raise ValueError(f"The 'precision' of LayerAction must be one of "
                             f"{sorted(PRECISION_BYTES)}. Got {self.precision!r}.")
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"The 'prune' of LayerAction must be in [0, 1). Got {self.prune}.")


@dataclass(frozen=True)
class PolicyResult:
    policy: tuple[LayerAction, ...]
    quality: float
    cost: float
    reward: float


PRUNE_ACTIONS = tuple(LayerAction("fp32", r) for r in (0.0, 0.25, 0.5, 0.75))
QUANT_ACTIONS = (LayerAction("fp32"), LayerAction("int8"))
MIXED_ACTIONS = tuple(LayerAction(p, r) for p in ("fp32", "int8") for r in (0.0, 0.5))


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # linear | conv
    in_features: int
    out_features: int
    kernel: int  # kernel elements (1 for Linear)
    params: int
    flops: float  # multiply-accumulates for one example
    quantizable: bool = True  # int8 applies (Linear layers, except attention's out_proj)


def describe_layers(model: nn.Module, example: Any | None = None) -> list[LayerInfo]:
    """The prunable layers with their shapes, parameter counts and MACs (from a forward pass
    on ``example`` for Conv layers; Linear layers need none)."""
    import torch
    from torch import nn

    from autotune.measure.transforms.prune import PRUNABLE

    out_sizes: dict[str, int] = {}
    hooks = []
    if example is not None:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, n=name: out_sizes.__setitem__(n, int(out[0, 0].numel()))))
        with torch.no_grad():
            model(example)
        for h in hooks:
            h.remove()
    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, PRUNABLE):
            continue
        w = m.weight
        if isinstance(m, nn.Linear):
            # MultiheadAttention passes out_proj's weight to F.linear itself (transposing it),
            # which torchao's int8 tensors do not support: that layer is pruned, never quantized
            quantizable = not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
            info = LayerInfo(name, "linear", m.in_features, m.out_features, 1, w.numel(), w.numel(),
                             quantizable)
        else:
            kernel = int(np.prod(w.shape[2:]))
            spatial = out_sizes.get(name, 1)
            info = LayerInfo(name, "conv", m.in_channels, m.out_channels, kernel, w.numel(),
                             float(w.numel() * spatial), quantizable=False)
        layers.append(info)
    if not layers:
        raise ValueError("the model has no Linear or Conv layer to decide on")
    return layers


def apply_policy(model: nn.Module, layers: Sequence[LayerInfo],
                 policy: Sequence[LayerAction]) -> nn.Module:
    """A copy of ``model`` with each layer pruned and (Linear layers) quantized as ``policy`` says."""
    from torch import nn
    from torch.nn.utils import prune as tprune

    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for info, act in zip(layers, policy, strict=True):
        if act.prune > 0:
            tprune.l1_unstructured(modules[info.name], "weight", amount=act.prune)
            tprune.remove(modules[info.name], "weight")
    int8 = {info.name for info, act in zip(layers, policy, strict=True)
            if act.precision == "int8" and info.quantizable}
    if int8:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(out, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in int8)
    return out


def size_proxy(layers: Sequence[LayerInfo], policy: Sequence[LayerAction]) -> float:
    """Weight bytes of the policy over the fp32 dense bytes (1.0 = unchanged)."""
    total = sum(info.params for info in layers) * 4.0
    used = 0.0
    for info, act in zip(layers, policy, strict=True):
        precision = act.precision if info.quantizable else "fp32"
        used += info.params * (1.0 - act.prune) * PRECISION_BYTES[precision]
    return used / total


class LayerWiseEnv(gym.Env):
    """Decide one layer per step; see the module docstring for the MDP and the reward."""

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium convention
    N_FEATURES = 10

    def __init__(
        self,
        model: nn.Module,
        evaluate: Callable[[nn.Module], float | tuple[float, float]],
        *,
        actions: Sequence[LayerAction] = PRUNE_ACTIONS,
        example: Any | None = None,
        budget: int = 1,
        trade_off: float = 0.5,
        min_quality: float | None = None,
        max_cost: float | None = None,
        penalty: float = 10.0,
    ) -> None:
        if budget < 1:
            raise ValueError(f"The 'budget' parameter of LayerWiseEnv must be >= 1. Got {budget}.")
        if not actions:
            raise ValueError("The 'actions' parameter of LayerWiseEnv must not be empty.")
        self.model = model
        self.evaluate = evaluate
        self.actions = tuple(actions)
        self.layers = describe_layers(model, example)
        self.budget = int(budget)
        self.trade_off = float(trade_off)
        self.min_quality = min_quality
        self.max_cost = max_cost
        self.penalty = float(penalty)
        self.action_space = spaces.Discrete(len(self.actions))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.N_FEATURES,), dtype=np.float32)
        self._static = self._layer_features()
        self._layer = 0
        self._passes = 0
        self._policy: list[LayerAction] = []
        self._prev = 0
        self._memo: dict[tuple[LayerAction, ...], PolicyResult] = {}
        self.evaluated: list[PolicyResult] = []

    def _layer_features(self) -> np.ndarray:
        ls = self.layers
        max_in = max(i.in_features for i in ls)
        max_out = max(i.out_features for i in ls)
        max_k = max(i.kernel for i in ls)
        max_p = max(math.log1p(i.params) for i in ls)
        max_f = max(math.log1p(i.flops) for i in ls)
        n = len(ls)
        rows = [
            [float(i.kind == "linear"), float(i.kind == "conv"), i.in_features / max_in,
             i.out_features / max_out, i.kernel / max_k, math.log1p(i.params) / max_p,
             math.log1p(i.flops) / max_f, k / (n - 1) if n > 1 else 0.0]
            for k, i in enumerate(ls)
        ]
        return np.asarray(rows, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._layer = 0
        self._passes = 0
        self._policy = []
        self._prev = 0
        return self._obs(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}")
        if self._passes >= self.budget:
            raise RuntimeError("step() called after the budget was used up; call reset()")
        self._policy.append(self.actions[int(action)])
        self._prev = int(action)
        self._layer += 1
        reward, info, truncated = 0.0, {}, False
        if self._layer == len(self.layers):
            reward, info = self._finish(self._policy)
            self._passes += 1
            truncated = self._passes >= self.budget
            self._layer, self._policy, self._prev = 0, [], 0
        return self._obs(), float(reward), False, truncated, info

    def score(self, quality: float, cost: float) -> float:
        """The reward of a policy with this quality and cost (see the module docstring)."""
        violation = 0.0
        if self.min_quality is not None:
            violation += max(0.0, self.min_quality - quality)
        if self.max_cost is not None:
            violation += max(0.0, cost - self.max_cost)
        return quality - self.trade_off * cost - self.penalty * violation

    def _finish(self, policy: Sequence[LayerAction]) -> tuple[float, dict[str, Any]]:
        key = tuple(policy)
        done = self._memo.get(key)
        if done is None:
            result = self.evaluate(apply_policy(self.model, self.layers, key))
            if isinstance(result, tuple):
                quality, cost = (float(v) for v in result)
            else:
                quality, cost = float(result), size_proxy(self.layers, key)
            done = PolicyResult(key, quality, cost, self.score(quality, cost))
            self._memo[key] = done
            self.evaluated.append(done)
        return done.reward, {"policy": key, "quality": done.quality, "cost": done.cost}

    def _obs(self) -> np.ndarray:
        n_act = len(self.actions)
        prev = self._prev / (n_act - 1) if n_act > 1 else 0.0
        extra = np.array([prev, self._passes / self.budget], dtype=np.float32)
        return np.clip(np.concatenate([self._static[self._layer], extra]), 0.0, 1.0).astype(np.float32)


ALGORITHMS = ("ppo", "a2c", "dqn", "random")


def search_policies(env: LayerWiseEnv, evaluations: int, *, algorithm: str = "ppo",
                    seed: int = 0, max_episodes: int | None = None) -> PolicyResult:
    """Search per-layer policies until ``evaluations`` distinct policies were evaluated.

    ``algorithm`` is an SB3 algorithm trained on ``env`` (``ppo``, ``a2c``, ``dqn``) or
    ``random`` (each layer's action uniformly at random).  Stops early after ``max_episodes``
    passes (default 20 x evaluations) when a converged policy keeps choosing known policies.
    Returns the best evaluated policy; ``env.evaluated`` holds them all.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"The 'algorithm' of search_policies must be one of {ALGORITHMS}. "
                         f"Got {algorithm!r}.")
    if evaluations < 1:
        raise ValueError(f"'evaluations' must be >= 1. Got {evaluations}.")
    if env.budget != 1:
        raise ValueError("search_policies needs an environment with budget=1 (one policy per episode)")
    n_layers = len(env.layers)
    cap = (max_episodes or 20 * evaluations) * n_layers
    target = len(env.evaluated) + evaluations
    if algorithm == "random":
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        for _ in range(cap):
            if len(env.evaluated) >= target:
                break
            *_, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if truncated:
                env.reset()
    else:
        _train(env, algorithm, seed, target, cap)
    if not env.evaluated:
        raise RuntimeError("no policy was evaluated")
    return max(env.evaluated, key=lambda r: r.reward)


def _train(env: LayerWiseEnv, algorithm: str, seed: int, target: int, cap: int) -> None:
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback

    class Enough(BaseCallback):
        def _on_step(self) -> bool:
            return len(env.evaluated) < target

    n_layers = len(env.layers)
    common: dict[str, Any] = {"seed": seed, "device": "cpu", "verbose": 0, "gamma": 1.0,
                              "policy_kwargs": {"net_arch": [64, 64]}}
    if algorithm == "ppo":
        n = 8 * n_layers  # eight policies per update
        model = sb3.PPO("MlpPolicy", env, n_steps=n, batch_size=n, n_epochs=10,
                        learning_rate=3e-3, gae_lambda=1.0, ent_coef=0.01, **common)
    elif algorithm == "a2c":
        # A2C updates after every policy: with PPO's entropy bonus it collapses onto one policy
        # within ten evaluations
        model = sb3.A2C("MlpPolicy", env, n_steps=n_layers, learning_rate=1e-3,
                        gae_lambda=1.0, ent_coef=0.05, **common)
    else:
        model = sb3.DQN("MlpPolicy", env, learning_starts=8 * n_layers, train_freq=1,
                        target_update_interval=4 * n_layers, exploration_fraction=0.3,
                        exploration_final_eps=0.05, learning_rate=1e-3, **common)
    model.learn(total_timesteps=cap, callback=Enough())
