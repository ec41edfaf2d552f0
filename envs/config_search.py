"""Build a configuration one search dimension at a time (the Gymnasium view of a SearchSpace).

Episode structure
-----------------
An episode is one tuning run of at most ``budget`` evaluated configurations.  Each configuration
takes one step per *active* parameter of the space, in the space's order: the action picks the
parameter's value among its discrete values (continuous parameters are cut into ``bins`` values,
log-spaced for ``log`` parameters).  Parameters that are inactive under the choices made so far
(``when:`` conditions) are skipped, so every action has a fixed meaning: "the value of the
parameter named by the step index in the observation".  The action space is
``Discrete(K)`` with ``K`` the largest number of values of a parameter; a parameter with ``k < K``
values maps action ``a`` to value ``floor(a * k / K)`` (order-preserving, so neighbouring actions
mean neighbouring values of ordinal parameters).

When the last active parameter is chosen the configuration is evaluated by the ``evaluate``
callable, ``evaluate(config) -> (values, violations)`` (raw objective values in the order of
``directions``; constraint violations, ``<= 0`` satisfied).  It may be a real measurement, a
surrogate model or a test function, and may return ``values=None`` for a failed configuration.

Reward (only at the last step of a configuration, 0 elsewhere)::

    reward = (HV(front ∪ {y}) - HV(front)) / box        if the configuration is feasible
           = -violation_penalty * sum(max(v, 0))         if it violates constraints
           = -failure_penalty                            if it failed or is an invalid combination

``HV`` is :func:`autotune.core.pareto.hypervolume` against the fixed ``reference`` and ``box`` is the
volume of the box between ``ideal`` and ``reference``, so a perfect front scores at most 1 per
episode in total.  Invalid combinations (the space's ``invalid:`` rules) are not evaluated and do
not use budget.  ``truncated`` is True at the step that uses the last evaluation of the budget;
``terminated`` is always False (the run is cut by its budget, it has no natural end).

Observation (a ``Box`` in [0, 1])::

    [ one-hot of the chosen value per parameter (zeros when not chosen yet / inactive) ]
    [ one-hot of the step index (which parameter the next action sets) ]
    [ normalized hypervolume of the front, front size / budget, evaluations used / budget ]
    [ best value per objective, normalized so that 1 = ideal and 0 = reference or worse ]

``options={"front": points}`` in :meth:`ConfigSearchEnv.reset` (or the ``initial_front``
argument) starts the episode from an existing front (e.g. the real measurements so far) without
using budget: the agent's surrogate-trained policy learns to *improve* that front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autotune.core.pareto import hypervolume, pareto_mask
from autotune.core.space import Config, Param, SearchSpace

Evaluation = tuple[Sequence[float] | None, Sequence[float]]
Evaluate = Callable[[Config], Evaluation]


def param_values(p: Param, bins: int) -> list[Any]:
    """The discrete values a parameter takes in the environment (``bins`` for large ranges)."""
    if p.kind == "categorical":
        return list(p.choices)
    if p.discrete:
        vals = p.values()
        if len(vals) <= bins:
            return vals
        if p.log:  # log-spaced targets, snapped to the nearest allowed value
            arr = np.asarray(vals, dtype=float)
            targets = np.geomspace(arr[0], arr[-1], bins)
            idx = np.unique([int(np.argmin(np.abs(np.log(arr) - math.log(t)))) for t in targets])
        else:
            idx = np.unique(np.round(np.linspace(0, len(vals) - 1, bins)).astype(int))
        return [vals[i] for i in idx]
    lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
    pts = np.geomspace(lo, hi, bins) if p.log else np.linspace(lo, hi, bins)
    return [float(v) for v in pts]


@dataclass(frozen=True)
class SpaceCodec:
    """The one adapter from :class:`SearchSpace` to fixed-size vectors (env and agent share it)."""

    space: SearchSpace
    values: tuple[tuple[Any, ...], ...]

    @classmethod
    def from_space(cls, space: SearchSpace, bins: int = 8) -> SpaceCodec:
        if bins < 2:
            raise ValueError(f"The 'bins' parameter of SpaceCodec must be an int >= 2. Got {bins}.")
        return cls(space, tuple(tuple(param_values(p, bins)) for p in space))

    @cached_property
    def ranks(self) -> tuple[list[float] | None, ...]:
        """Per dimension, the ranks of a categorical of numbers (:func:`_ordinal`), else None."""
        return tuple(_ordinal(v) if p.kind == "categorical" else None
                     for p, v in zip(self.space.params, self.values, strict=True))

    @property
    def n_actions(self) -> int:
        return max(len(v) for v in self.values)

    @property
    def onehot_size(self) -> int:
        return sum(len(v) for v in self.values)

    def value_for(self, dim: int, action: int) -> Any:
        k = len(self.values[dim])
        return self.values[dim][min(int(action) * k // self.n_actions, k - 1)]

    def action_for(self, dim: int, index: int) -> int:
        """The smallest action that selects value ``index`` of dimension ``dim``."""
        k = len(self.values[dim])
        return math.ceil(index * self.n_actions / k)

    def index_of(self, dim: int, value: Any) -> int:
        """Index of the value nearest to ``value`` (exact match for categorical parameters)."""
        vals = self.values[dim]
        p = self.space.params[dim]
        if p.kind == "categorical":
            for i, v in enumerate(vals):
                if type(v) is type(value) and v == value:
                    return i
            return [str(v) for v in vals].index(str(value))
        x = _unit(p, value)
        return int(np.argmin([abs(_unit(p, v) - x) for v in vals]))

    def next_active(self, dim: int, partial: Mapping[str, Any]) -> int:
        """First dimension ``>= dim`` active under ``partial`` (``len(space)`` when none)."""
        n = len(self.space.params)
        while dim < n and not self.space.is_active(self.space.params[dim], partial):
            dim += 1
        return dim

    def onehot(self, config: Mapping[str, Any]) -> np.ndarray:
        out = np.zeros(self.onehot_size, dtype=np.float32)
        off = 0
        for d, p in enumerate(self.space.params):
            if p.name in config:
                out[off + self.index_of(d, config[p.name])] = 1.0
            off += len(self.values[d])
        return out

    def features(self, config: Mapping[str, Any]) -> np.ndarray:
        """Regression features of a (possibly foreign, off-grid) configuration.

        Numeric parameters: position in [0, 1] of their range (log-scaled where declared), -1
        when inactive; a categorical of three or more numbers (batch sizes 1, 4, 16, 64): the
        rank of its value in [0, 1], so batch 16 is nearer 4 than 64; other categorical ones:
        one-hot (all zero when inactive).
        """
        out: list[float] = []
        for d, p in enumerate(self.space.params):
            ranks = self.ranks[d]
            if ranks is not None:
                out.append(ranks[self.index_of(d, config[p.name])] if p.name in config else -1.0)
            elif p.kind == "categorical":
                row = [0.0] * len(self.values[d])
                if p.name in config:
                    row[self.index_of(d, config[p.name])] = 1.0
                out += row
            else:
                out.append(_unit(p, config[p.name]) if p.name in config else -1.0)
        return np.asarray(out, dtype=float)

    def snap(self, config: Mapping[str, Any]) -> Config:
        """The grid configuration nearest to ``config`` (active parameters only)."""
        out: Config = {}
        for d, p in enumerate(self.space.params):
            if self.space.is_active(p, out) and p.name in config:
                out[p.name] = self.values[d][self.index_of(d, config[p.name])]
        return out


def _ordinal(values: Sequence[Any]) -> list[float] | None:
    """Each value's rank among ``values`` in [0, 1] when they are three or more numbers (not
    booleans), else None."""
    if len(values) < 3 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                  for v in values):
        return None
    order = sorted(range(len(values)), key=lambda i: float(values[i]))
    ranks = [0.0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = r / (len(values) - 1)
    return ranks


def _unit(p: Param, value: Any) -> float:
    lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
    if hi == lo:
        return 0.0
    if p.log:
        return (math.log(float(value)) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


class ConfigSearchEnv(gym.Env):
    """Choose one parameter per step; see the module docstring for the MDP."""

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium convention

    def __init__(
        self,
        space: SearchSpace,
        directions: Sequence[str],
        evaluate: Evaluate,
        *,
        reference: Sequence[float],
        ideal: Sequence[float],
        budget: int = 20,
        bins: int = 8,
        violation_penalty: float = 1.0,
        failure_penalty: float = 1.0,
        initial_front: Sequence[Sequence[float]] = (),
    ) -> None:
        if budget < 1:
            raise ValueError(f"The 'budget' parameter of ConfigSearchEnv must be >= 1. Got {budget}.")
        self.space = space
        self.directions = list(directions)
        self.evaluate = evaluate
        self.reference = np.asarray(reference, dtype=float)
        self.ideal = np.asarray(ideal, dtype=float)
        m = len(self.directions)
        if self.reference.shape != (m,) or self.ideal.shape != (m,):
            raise ValueError(f"reference and ideal need {m} value(s), one per objective")
        sign = np.array([1.0 if d == "minimize" else -1.0 for d in self.directions])
        if np.any((self.reference - self.ideal) * sign <= 0):
            raise ValueError("the ideal point must be strictly better than the reference in every "
                             f"objective; got ideal={self.ideal.tolist()} "
                             f"reference={self.reference.tolist()}")
        self._sign = sign
        self.box = float(np.prod(np.abs(self.reference - self.ideal)))
        self.budget = int(budget)
        self.violation_penalty = float(violation_penalty)
        self.failure_penalty = float(failure_penalty)
        self.initial_front = np.asarray(initial_front, dtype=float).reshape(-1, m)
        self.codec = SpaceCodec.from_space(space, bins)
        n_dims = len(space.params)
        self.action_space = spaces.Discrete(self.codec.n_actions)
        size = self.codec.onehot_size + n_dims + 3 + m
        self.observation_space = spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self._front = np.empty((0, m))
        self._partial: Config = {}
        self._dim = 0
        self._used = 0
        self.last_config: Config | None = None
        self.history: list[tuple[Config, Evaluation]] = []

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        front = (options or {}).get("front")
        pts = self.initial_front if front is None else np.asarray(front, dtype=float)
        self._front = self._clean_front(pts.reshape(-1, len(self.directions)))
        self._used = 0
        self.history = []
        self.last_config = None
        self._start_config()
        return self._obs(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}")
        if self._dim >= len(self.space.params):
            raise RuntimeError("step() called after the budget was used up; call reset()")
        p = self.space.params[self._dim]
        self._partial[p.name] = self.codec.value_for(self._dim, int(action))
        self._dim = self.codec.next_active(self._dim + 1, self._partial)
        reward = 0.0
        info: dict[str, Any] = {}
        truncated = False
        if self._dim >= len(self.space.params):
            config = dict(self._partial)
            reward, info = self._finish(config)
            self.last_config = config
            truncated = self._used >= self.budget
            if not truncated:
                self._start_config()
        return self._obs(), float(reward), False, truncated, info

    # ------------------------------------------------------------------ internals
    def _start_config(self) -> None:
        self._partial = {}
        self._dim = self.codec.next_active(0, self._partial)

    def _clean_front(self, pts: np.ndarray) -> np.ndarray:
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if pts.shape[0] == 0:
            return pts
        return pts[pareto_mask(pts, self.directions)]

    def hv(self, pts: np.ndarray | None = None) -> float:
        pts = self._front if pts is None else pts
        if pts.shape[0] == 0:
            return 0.0
        return hypervolume(pts, self.directions, self.reference) / self.box

    def add_point(self, values: Sequence[float]) -> None:
        """Add a feasible point measured elsewhere to the front (no reward, no budget)."""
        pts = np.vstack([self._front, np.asarray(values, dtype=float)[None, :]])
        self._front = self._clean_front(pts)

    def _finish(self, config: Config) -> tuple[float, dict[str, Any]]:
        reason = self.space.invalid_reason(config)
        if reason:
            return -self.failure_penalty, {"config": config, "invalid": reason}
        values, violations = self.evaluate(config)
        self._used += 1
        self.history.append((config, (values, violations)))
        info: dict[str, Any] = {"config": config, "values": values, "violations": violations}
        if values is None or not all(math.isfinite(v) for v in values):
            return -self.failure_penalty, info
        excess = sum(max(float(v), 0.0) for v in violations)
        if excess > 0:
            return -self.violation_penalty * excess, info
        before = self.hv()
        pts = np.vstack([self._front, np.asarray(values, dtype=float)[None, :]])
        self._front = self._clean_front(pts)
        return self.hv() - before, info

    def _obs(self) -> np.ndarray:
        n_dims = len(self.space.params)
        step = np.zeros(n_dims, dtype=np.float32)
        if self._dim < n_dims:
            step[self._dim] = 1.0
        m = len(self.directions)
        best = np.zeros(m, dtype=np.float32)
        if self._front.shape[0]:
            gain = (self.reference - self._front) * self._sign  # > 0 = better than the reference
            span = np.abs(self.reference - self.ideal)
            best = np.clip(gain.max(axis=0) / span, 0.0, 1.0).astype(np.float32)
        summary = np.array(
            [min(self.hv(), 1.0), min(self._front.shape[0] / self.budget, 1.0),
             min(self._used / self.budget, 1.0)],
            dtype=np.float32,
        )
        obs = np.concatenate([self.codec.onehot(self._partial), step, summary, best])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)
