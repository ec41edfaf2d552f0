"""Reinforcement-learning agents: a Stable-Baselines3 policy builds configurations dimension by
dimension in :class:`autotune.envs.config_search.ConfigSearchEnv`.

Names: ``rl-ppo``, ``rl-a2c``, ``rl-dqn`` (or ``options.algorithm: ppo|a2c|dqn``).

Real measurements are expensive, so by default (``surrogate: true``) the agent is model-based:

1. the first ``n_initial`` suggestions fill the space: each is the unmeasured valid configuration
   farthest from everything observed (:func:`autotune.core.explore.spread_pick`);
2. then, before each suggestion, a Gaussian-kernel ridge regression (:class:`KernelRidge`, a GP
   posterior mean and standard deviation; one output per objective and constraint) is fitted on
   the features of the configurations observed so far; every ``train_every``-th suggestion the
   policy is trained for ``train_steps`` environment steps on a ConfigSearchEnv whose
   ``evaluate`` is that surrogate (measured configurations answer with their real values) and
   whose episodes start from the *real* front, so the reward is the predicted hypervolume gain
   over what is known.  The surrogate is optimistic: it answers the posterior mean moved by
   ``optimism`` (1.0) standard deviations towards "better" for every objective and constraint.
   A bare mean predicts no gain for the unmeasured near-equal neighbours of the front (on the
   digits table the hypervolume is decided among 10 such configurations), so no rollout
   promised anything there; with the standard deviation (about 0 at measured points, larger away
   from them) an unmeasured configuration next to the front is worth a trial;
3. the proposal is ranked among ``n_candidates`` *distinct* new stochastic rollouts of the
   policy (rollouts ending in a measured, invalid or already drawn configuration are re-drawn,
   up to ``max_retries`` rollouts in all; PPO and A2C sample their stochastic policies, DQN
   takes a random action at each step with probability ``proposal_epsilon`` (0.3), else its
   greedy one: with the 0.1 it ends training on, 32 rollouts held about 9 distinct
   configurations and the best of so few was no better than chance on the serving-mixed
   benchmark problem): the rollout with the largest hypervolume gain by the posterior *mean* is
   measured if that gain is positive (source "policy").  Otherwise, if the optimistic surrogate
   still promises a gain, the best rollout by optimistic gain (source "optimistic") takes turns
   with a neighbour of the front (:meth:`RLAgent._neighbour`, source "neighbour"): of the
   unmeasured valid configurations one parameter away from a Pareto-optimal measurement (that
   parameter set to *any* other value of its grid), the one with the largest optimistic gain.
   An optimistic gain of a rollout is mostly uncertainty where the data are thin (8 continuous
   dimensions of ZDT2), where a step from the front does better; and a policy's rollouts can
   keep missing the front's own neighbours (on the digits table rl-a2c measured neither end of
   the top group's pruning range in 100 trials when a neighbour moved an ordered parameter one
   grid step only).  When nothing promises a gain, the neighbour takes turns with the
   space-filling pick of step 1 (source "spread").  The policy never spends a trial on what is
   known; where each suggestion came from is kept in :attr:`RLAgent.sources` ("initial",
   "policy", "optimistic", "neighbour", "spread").

``surrogate: false`` trains on real evaluations only: SB3's ``learn`` runs in a worker thread on
a ConfigSearchEnv whose ``evaluate`` hands the configuration to :meth:`RLAgent.suggest` and waits
for :meth:`RLAgent.observe` (a strict hand-off, so runs stay deterministic).  Already measured
configurations are answered from the table without a measurement.

The work per suggestion is bounded by ``train_steps`` (plus the proposal rollouts; with 32
rollouts and training every 4th suggestion the policy ranks more of its own proposals by the
surrogate than it trains on, which keeps a suggestion cheap); the time each
suggestion took is kept in :attr:`RLAgent.overhead_s`.  Determinism: the SB3 model gets the
agent's seed, torch is re-seeded before each training/proposal and torch runs on one thread
while the agent trains.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autotune.agents.base import Agent, Observation, finite
from autotune.core.explore import finite_configs, spread_pick
from autotune.core.metrics import Direction
from autotune.core.pareto import pareto_mask
from autotune.core.space import Config, SearchSpace, config_key
from autotune.errors import SpecError

ALGORITHMS = ("ppo", "a2c", "dqn")

_DEFAULTS: dict[str, Any] = {
    "surrogate": True,
    "n_initial": 8,
    "train_steps": 256,
    "n_steps": 64,
    "bins": 8,
    "episode_configs": 4,
    "max_retries": 96,
    "n_candidates": 32,
    "train_every": 4,
    "learning_rate": 3e-4,
    "ent_coef": 0.01,
    "optimism": 1.0,
    "proposal_epsilon": 0.3,
}


#: how many one-parameter moves from the front :meth:`RLAgent._neighbour` scores at most
_MAX_NEIGHBOURS = 256


class _Stop(Exception):
    """Raised inside the training thread to end ``learn`` when the agent closes."""



class RLAgent(Agent):
    name = "rl-ppo"
    default_algorithm = "ppo"

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[tuple[str, Direction]],
        n_constraints: int = 0,
        *,
        seed: int | None = None,
        algorithm: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, objectives, n_constraints, seed=seed, **options)
        unknown = set(options) - set(_DEFAULTS)
        if unknown:
            raise SpecError(
                f"unknown option(s) {', '.join(sorted(unknown))} for agent '{self.name}'.",
                path="agent.options", hint=f"The RL agents take: algorithm, {', '.join(_DEFAULTS)}.",
            )
        algo = (algorithm or self.default_algorithm).lower()
        if algo not in ALGORITHMS:
            raise SpecError(f"The 'algorithm' option of the RL agent must be one of "
                            f"{', '.join(ALGORITHMS)}. Got {algorithm!r}.", path="agent.options")
        self.algorithm = algo
        self.name = f"rl-{algo}"
        self.cfg = {**_DEFAULTS, **options}
        for k in ("n_initial", "train_steps", "n_steps", "bins", "episode_configs", "max_retries",
                  "n_candidates", "train_every"):
            if not isinstance(self.cfg[k], int) or self.cfg[k] < (2 if k == "bins" else 1):
                raise SpecError(f"The '{k}' option of the RL agent must be a positive int. "
                                f"Got {self.cfg[k]!r}.", path=f"agent.options.{k}")
        if not isinstance(self.cfg["optimism"], (int, float)) or self.cfg["optimism"] < 0:
            raise SpecError(f"The 'optimism' option of the RL agent must be a number >= 0. "
                            f"Got {self.cfg['optimism']!r}.", path="agent.options.optimism")
        eps = self.cfg["proposal_epsilon"]
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps <= 1:
            raise SpecError(f"The 'proposal_epsilon' option of the RL agent must be a number in "
                            f"[0, 1]. Got {eps!r}.", path="agent.options.proposal_epsilon")
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        self._rng = np.random.default_rng(self._seed)
        self._codec: Any = None
        self._grid: list[Config] | bool | None = False  # every valid configuration; False: unknown
        self._observed: list[Observation] = []
        self._table: dict[str, Observation] = {}
        self._model: Any = None
        self._n_suggested = 0
        #: wall-clock seconds spent inside each suggest() call
        self.overhead_s: list[float] = []
        #: environment steps the policy was trained for, per suggestion
        self.train_steps_done: list[int] = []
        #: where each suggestion came from: "initial", "policy", "optimistic", "neighbour" or
        #: "spread"
        self.sources: list[str] = []
        #: how many new configurations each trained-policy suggestion was chosen among
        self.candidates: list[int] = []
        # real-evaluation (surrogate: false) hand-off
        self._thread: threading.Thread | None = None
        self._requests: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._replies: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._waiting: str | None = None
        self._foreign: list[Observation] = []
        self._lock = threading.Lock()
        self._threads_before: int | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def codec(self) -> Any:
        if self._codec is None:
            from autotune.envs.config_search import SpaceCodec

            self._codec = SpaceCodec.from_space(self.space, self.cfg["bins"])
        return self._codec

    def _measured(self, config: Config) -> bool:
        return config_key(config) in self._table or config_key(self.codec.snap(config)) in self._table

    def _random_config(self) -> Config:
        """A random valid grid configuration not measured yet (any valid one if all are)."""
        fallback: Config | None = None
        for _ in range(200):
            config: Config = {}
            for d, p in enumerate(self.space.params):
                if self.space.is_active(p, config):
                    vals = self.codec.values[d]
                    config[p.name] = vals[int(self._rng.integers(len(vals)))]
            if self.space.invalid_reason(config):
                continue
            if not self._measured(config):
                return config
            fallback = fallback or config
        return fallback if fallback is not None else config

    def _spread(self) -> Config:
        """The unmeasured valid configuration farthest from every observed one (snapped to the
        policy's grid); a random one when the space has nothing left."""
        import random

        if self._grid is False:
            self._grid = finite_configs(self.space)
        candidates = self._grid if self._grid is not None else \
            [self._random_config() for _ in range(128)]  # on the policy's grid, unmeasured
        pick = spread_pick(self.space, [o.config for o in self._observed],
                           random.Random(int(self._rng.integers(2**31))), candidates=candidates)
        return pick if pick is not None else self._random_config()

    def _bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(reference, ideal, real front points) from the finite observations, or None."""
        done = [o for o in self._observed if o.state == "complete" and finite(o.values)]
        if not done:
            return None
        sign = np.array([1.0 if d == "minimize" else -1.0 for d in self.directions])
        pts = np.array([o.values for o in done], dtype=float)
        mins = pts * sign
        lo, hi = mins.min(axis=0), mins.max(axis=0)
        span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1e-9))
        reference = (hi + 0.1 * span) * sign
        ideal = (lo - 0.1 * span) * sign
        feas = np.array([o.feasible for o in done])
        return reference, ideal, pts[feas]

    def _make_env(self, evaluate: Any, reference: np.ndarray, ideal: np.ndarray, front: np.ndarray,
                  budget: int) -> Any:
        from autotune.envs.config_search import ConfigSearchEnv

        return ConfigSearchEnv(self.space, self.directions, evaluate, reference=reference,
                               ideal=ideal, budget=budget, bins=self.cfg["bins"], initial_front=front)

    def _new_model(self, env: Any) -> Any:
        import stable_baselines3 as sb3

        common = {"seed": self._seed, "device": "cpu", "verbose": 0,
                  "learning_rate": self.cfg["learning_rate"],
                  "policy_kwargs": {"net_arch": [64, 64]}}
        if self.algorithm == "ppo":
            n = self.cfg["n_steps"]
            return sb3.PPO("MlpPolicy", env, n_steps=n, batch_size=min(n, 64), n_epochs=4,
                           ent_coef=self.cfg["ent_coef"], **common)
        if self.algorithm == "a2c":
            return sb3.A2C("MlpPolicy", env, n_steps=min(self.cfg["n_steps"], 16),
                           ent_coef=self.cfg["ent_coef"], **common)
        return sb3.DQN("MlpPolicy", env, buffer_size=20_000,
                       learning_starts=min(256, self.cfg["train_steps"]), train_freq=4,
                       target_update_interval=200, exploration_fraction=0.5,
                       exploration_final_eps=0.1, **common)

    # ------------------------------------------------------------------ Agent API
    def suggest(self) -> Config:
        t0 = time.perf_counter()
        steps = 0
        if self.cfg["surrogate"]:
            config, steps = self._suggest_surrogate()
        else:
            config = self._suggest_real()
        self._n_suggested += 1
        self.overhead_s.append(time.perf_counter() - t0)
        self.train_steps_done.append(steps)
        return config

    def observe(self, obs: Observation) -> None:
        with self._lock:
            self._observed.append(obs)
            self._table[config_key(obs.config)] = obs
            key = config_key(obs.config)
            if self._waiting is not None and key == self._waiting:
                self._waiting = None
                self._replies.put(obs)
            elif self._thread is not None:
                self._foreign.append(obs)

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._replies.put(None)  # wakes the worker with a stop signal
            self._thread.join(timeout=30)
        self._thread = None
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    # ------------------------------------------------------------------ surrogate mode
    def _suggest_surrogate(self) -> tuple[Config, int]:
        bounds = self._bounds()
        if len(self._observed) < self.cfg["n_initial"] or bounds is None:
            self.sources.append("initial")
            return self._spread(), 0
        import torch

        reference, ideal, front = bounds
        done = [o for o in self._observed if o.state == "complete" and finite(o.values)]
        x = np.array([self.codec.features(o.config) for o in done])
        n_c = self.n_constraints
        y = np.array([list(o.values) + [v if math.isfinite(v) else 1e6 for v in o.violations][:n_c]
                      + [0.0] * (n_c - len(o.violations)) for o in done], dtype=float)
        model = KernelRidge().fit(x, y)
        m = len(self.directions)
        # optimism in the face of uncertainty: each prediction is moved by `optimism` posterior
        # standard deviations towards "better" (objectives and constraint violations alike), so an
        # unmeasured configuration next to the front is worth measuring and a measured one is not
        better = np.array([-1.0 if d == "minimize" else 1.0 for d in self.directions]
                          + [-1.0] * n_c)
        beta = float(self.cfg["optimism"])
        cache: dict[str, tuple[Any, Any]] = {}  # unmeasured configuration: posterior mean, sd

        def optimistic(k: str) -> Any:
            mean, sd = cache[k]
            return mean + beta * better * sd

        def evaluate(config: Config) -> tuple[Any, tuple[float, ...]]:
            k = config_key(config)
            if k in self._table:
                o = self._table[k]
                ok = o.state == "complete" and finite(o.values)
                return (tuple(o.values) if ok else None), tuple(o.violations)  # type: ignore[arg-type]
            if k not in cache:
                mean, sd = model.predict(self.codec.features(config)[None, :], with_sd=True)
                cache[k] = (mean[0], sd[0])
            pred = optimistic(k)
            return tuple(pred[:m]), tuple(pred[m:])

        env = self._make_env(evaluate, reference, ideal, front, self.cfg["episode_configs"])
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(self._seed + self._n_suggested)
            steps = 0
            if self._model is None or self._n_suggested % self.cfg["train_every"] == 0:
                if self._model is None:
                    self._model = self._new_model(env)
                else:
                    self._model.set_env(env)
                self._model.learn(self.cfg["train_steps"], reset_num_timesteps=False)
                steps = self.cfg["train_steps"]
            found: dict[str, tuple[float, Config]] = {}  # new rollouts: optimistic gain, config
            probe = self._make_env(evaluate, reference, ideal, front, 1)
            tries = 0
            while tries < self.cfg["max_retries"] and len(found) < self.cfg["n_candidates"]:
                tries += 1
                obs, _ = probe.reset(seed=int(self._rng.integers(2**31)))
                truncated, info, reward = False, {}, 0.0
                while not truncated:
                    obs, reward, _, truncated, info = probe.step(self._propose(obs))
                    if "invalid" in info:
                        break
                if "invalid" in info or self._measured(info["config"]):
                    continue
                found[config_key(info["config"])] = (reward, dict(info["config"]))
        finally:
            torch.set_num_threads(before)
        self.candidates.append(len(found))
        base = probe.hv(front) if len(front) else 0.0

        def gain(pred: Any) -> float:
            """The hypervolume a predicted point (objectives, then constraint violations) adds to
            the real front; -1 where it violates a constraint."""
            if np.any(pred[m:] > 0):
                return -1.0
            return probe.hv(np.vstack([front.reshape(-1, m), pred[None, :m]])) - base

        def optimistic_gain(configs: list[Config]) -> list[float]:
            """:func:`gain` of unmeasured configurations by the optimistic surrogate."""
            new = [c for c in configs if config_key(c) not in cache]
            if new:  # one batched prediction instead of one per configuration
                mean, sd = model.predict(np.array([self.codec.features(c) for c in new]),
                                         with_sd=True)
                for c, mu, s in zip(new, mean, sd, strict=True):
                    cache[config_key(c)] = (mu, s)
            return [gain(optimistic(config_key(c))) for c in configs]

        if found:
            # the posterior mean first: a rollout it expects to gain is measured
            gains = {k: gain(cache[k][0]) for k in found}
            key = max(gains, key=lambda k: gains[k])
            if gains[key] > 0:
                self.sources.append("policy")
                return found[key][1], steps
            # else the optimism alone promises a gain: that guess takes turns with a neighbour
            # of the front (an optimistic gain is mostly uncertainty where the data are thin,
            # e.g. in 8 continuous dimensions, where a step from the front does better)
            opt = max(found.values(), key=lambda t: t[0])
            if opt[0] > 0:
                pick = None
                if self.sources.count("optimistic") > self.sources.count("neighbour"):
                    pick = self._neighbour(done, optimistic_gain)
                if pick is not None:
                    self.sources.append("neighbour")
                    return pick, steps
                self.sources.append("optimistic")
                return opt[1], steps
        # nothing new promises a gain: alternate between measuring next to the front (where
        # near-equal configurations hide) and far from everything (where the model knows nothing)
        if self.sources.count("neighbour") <= self.sources.count("spread"):
            pick = self._neighbour(done, optimistic_gain)
            if pick is not None:
                self.sources.append("neighbour")
                return pick, steps
        self.sources.append("spread")
        return self._spread(), steps

    def _propose(self, obs: np.ndarray) -> int:
        """One step of a proposal rollout: PPO and A2C sample their stochastic policy; DQN's
        policy is greedy, so it takes a random action with probability ``proposal_epsilon``."""
        if self.algorithm != "dqn":
            action, _ = self._model.predict(obs, deterministic=False)
            return int(action)
        if self._rng.random() < self.cfg["proposal_epsilon"]:
            return int(self._rng.integers(self._model.action_space.n))
        action, _ = self._model.predict(obs, deterministic=True)
        return int(action)

    def _neighbour(self, done: list[Observation],
                   gain: Callable[[list[Config]], list[float]]) -> Config | None:
        """The unmeasured valid grid configuration that differs from a feasible Pareto-optimal
        observation in one parameter (set to any other value of its grid, not only the next
        one: the best value of a parameter is often far from the front's, e.g. its other end)
        with the largest ``gain`` (the optimistic surrogate's); a random one of them when none
        promises a gain.  At most ``_MAX_NEIGHBOURS`` of them, drawn at random, are scored.
        When no such configuration is left, one two parameters away at random; None when there
        is none."""
        feas = [o for o in done if o.feasible]
        if not feas:
            return None
        pts = np.array([o.values for o in feas], dtype=float)
        front = [self.codec.snap(o.config)
                 for o, keep in zip(feas, pareto_mask(pts, self.directions), strict=True) if keep]
        moves: dict[str, Config] = {}
        for base in front:
            for d, p in enumerate(self.space.params):
                if p.name not in base:
                    continue
                for v in self.codec.values[d]:
                    if v != base[p.name] or type(v) is not type(base[p.name]):
                        config = self._moved(base, {d: v})
                        if not self.space.invalid_reason(config) and not self._measured(config):
                            moves.setdefault(config_key(config), config)
        if moves:
            pool = list(moves.values())
            if len(pool) > _MAX_NEIGHBOURS:
                pool = [pool[i] for i in self._rng.choice(len(pool), _MAX_NEIGHBOURS,
                                                          replace=False)]
            gains = np.array(gain(pool))
            best = np.flatnonzero(gains >= gains.max())
            if gains.max() <= 0:
                best = np.arange(len(pool))
            return pool[int(best[int(self._rng.integers(len(best)))])]
        params = self.space.params
        for _ in range(64):  # two parameters away
            base = front[int(self._rng.integers(len(front)))]
            dims = [d for d, p in enumerate(params) if p.name in base]
            if len(dims) < 2:
                return None
            picked = self._rng.choice(dims, size=2, replace=False)
            config = self._moved(base, {int(d): self.codec.values[d][int(self._rng.integers(
                len(self.codec.values[d])))] for d in picked})
            if not self.space.invalid_reason(config) and not self._measured(config):
                return config
        return None

    def _moved(self, base: Config, changes: dict[int, Any]) -> Config:
        """``base`` with the parameters of dimensions ``changes`` set to the given values; a
        parameter the change activates takes a random value of its grid."""
        config: Config = {}
        for d, p in enumerate(self.space.params):
            if not self.space.is_active(p, config):
                continue
            if d in changes:
                config[p.name] = changes[d]
            elif p.name in base:
                config[p.name] = base[p.name]
            else:
                vals = self.codec.values[d]
                config[p.name] = vals[int(self._rng.integers(len(vals)))]
        return config

    # ------------------------------------------------------------------ real-evaluation mode
    def _suggest_real(self) -> Config:
        if self._thread is None:
            bounds = self._bounds()
            if len(self._observed) < self.cfg["n_initial"] or bounds is None:
                return self._spread()
            self._start_worker(*bounds)
        item = self._requests.get()
        if isinstance(item, BaseException):
            raise item
        with self._lock:
            self._waiting = config_key(item)
        return dict(item)

    def _start_worker(self, reference: np.ndarray, ideal: np.ndarray, front: np.ndarray) -> None:
        import torch

        max_dupes = self.cfg["max_retries"]
        dupes = [0]

        def evaluate(config: Config) -> tuple[Any, tuple[float, ...]]:
            with self._lock:
                foreign, self._foreign = self._foreign, []
            for o in foreign:  # measurements this policy did not ask for join its front
                if o.feasible and finite(o.values):
                    env.add_point(o.values)
            known = self._table.get(config_key(config))
            if known is not None and dupes[0] < max_dupes:
                dupes[0] += 1
            else:
                dupes[0] = 0
                if known is not None:  # the policy is stuck on measured configurations
                    config = self._spread()
                self._requests.put(config)
                known = self._replies.get()
                if known is None:
                    raise _Stop
            ok = known.state == "complete" and finite(known.values)
            return (tuple(known.values) if ok else None), tuple(known.violations)

        env = self._make_env(evaluate, reference, ideal, front, 10**9)
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        torch.manual_seed(self._seed)
        self._model = self._new_model(env)

        def work() -> None:
            try:
                self._model.learn(10**9)
            except _Stop:
                return
            except BaseException as exc:  # surfaced by the next suggest()
                self._requests.put(exc)

        self._thread = threading.Thread(target=work, name=f"{self.name}-learner", daemon=True)
        self._thread.start()


class KernelRidge:
    """The surrogate: Gaussian-kernel ridge regression on standardized targets, one column per
    objective and constraint, i.e. a GP posterior mean and (``with_sd``) its posterior standard
    deviation ``sqrt(k(x, x) - k^T (K + a I)^-1 k)`` in the targets' units.  Predicting one
    configuration costs one kernel row and a product with the coefficients (its standard deviation
    one triangular solve with the cached Cholesky factor; n <= a few hundred observations), which
    keeps thousands of surrogate steps per suggestion cheap.
    Length scale: the median pairwise distance of the observed features."""

    def __init__(self, alpha: float = 1e-3) -> None:
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> KernelRidge:
        self.x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self.mu = y.mean(axis=0)
        self.sd = np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
        d2 = ((self.x[:, None, :] - self.x[None, :, :]) ** 2).sum(-1)
        med = float(np.median(d2[np.triu_indices(len(self.x), 1)])) if len(self.x) > 1 else 1.0
        self.gamma = 1.0 / (med if med > 0 else 1.0)
        from scipy.linalg import cho_solve

        self.chol = np.linalg.cholesky(np.exp(-self.gamma * d2) + self.alpha * np.eye(len(self.x)))
        self.coef = cho_solve((self.chol, True), (y - self.mu) / self.sd)
        return self

    def predict(self, x: np.ndarray, with_sd: bool = False) -> Any:
        d2 = ((np.asarray(x, dtype=float)[:, None, :] - self.x[None, :, :]) ** 2).sum(-1)
        k = np.exp(-self.gamma * d2)
        mean = k @ self.coef * self.sd + self.mu
        if not with_sd:
            return mean
        from scipy.linalg import solve_triangular

        v = solve_triangular(self.chol, k.T, lower=True)  # k^T (K + a I)^-1 k = |L^-1 k|^2
        var = np.clip(1.0 - (v * v).sum(axis=0), 0.0, None)
        return mean, np.sqrt(var)[:, None] * self.sd


class PPOAgent(RLAgent):
    name = "rl-ppo"
    default_algorithm = "ppo"


class A2CAgent(RLAgent):
    name = "rl-a2c"
    default_algorithm = "a2c"


class DQNAgent(RLAgent):
    name = "rl-dqn"
    default_algorithm = "dqn"
