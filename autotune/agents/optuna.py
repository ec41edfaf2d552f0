"""Optuna's samplers as agents (TPE, GP, NSGA-II, NSGA-III, QMC, random), and a grid agent.

The agent keeps its own in-memory study and drives the sampler through Optuna's ask/tell; the
tuner's persistent study stays the record.  Constraints go through ``trial.set_constraint`` (the
Optuna 5 API), so every sampler that supports constraints sees them.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from autotune.agents.base import Agent, Observation, finite
from autotune.core.metrics import Direction
from autotune.core.space import Config, SearchSpace, config_key
from autotune.errors import SpecError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(
    name: str, space: SearchSpace, n_objectives: int, seed: int | None, **options: Any
) -> optuna.samplers.BaseSampler:
    s = optuna.samplers
    try:
        if name == "tpe":
            options.setdefault("multivariate", True)
            options.setdefault("group", True)  # conditional parameters: one model per sub-space
            options.setdefault("n_startup_trials", 8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return s.TPESampler(seed=seed, **options)
        if name == "gp":
            options.setdefault("warn_independent_sampling", False)
            return s.GPSampler(seed=seed, **options)
        if name == "nsga2":
            options.setdefault("population_size", 16)
            return s.NSGAIISampler(seed=seed, **options)
        if name == "nsga3":
            options.setdefault("population_size", 16)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return s.NSGAIIISampler(seed=seed, **options)
        if name == "qmc":
            options.setdefault("warn_independent_sampling", False)
            options.setdefault("scramble", True)  # so the seed matters (unscrambled Sobol ignores it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return s.QMCSampler(seed=seed, **options)
        if name == "random":
            return s.RandomSampler(seed=seed, **options)
    except TypeError as exc:
        raise SpecError(f"bad option for agent '{name}': {exc}.", path="agent.options") from None
    raise SpecError(f"unknown Optuna agent '{name}'.", path="agent.name")


def grid_configs(space: SearchSpace) -> list[Config]:
    """Every valid configuration of a discrete space, conditional parameters respected."""
    try:
        return space.grid()
    except ValueError as exc:
        raise SpecError(
            f"the grid agent needs a discrete space: {exc}.", path="agent.name",
            hint="Give continuous parameters a 'step', or pick another agent.",
        ) from None


class GridAgent(Agent):
    """Exhaustive search over :meth:`SearchSpace.grid` in a seeded random order.

    Optuna's ``GridSampler`` takes the cross product of every parameter, so a conditional parameter
    (``graph_optimization`` only for ``runtime: onnxruntime``) would repeat each inactive
    configuration once per value, and invalid combinations would be proposed.  This agent walks the
    valid, conditional-aware grid instead, skipping configurations already observed (foreign ones
    too); once every configuration has been seen it starts a new pass (re-measurements).
    """

    name = "grid"

    def __init__(self, space: SearchSpace, objectives: Sequence[tuple[str, Direction]],
                 n_constraints: int = 0, *, seed: int | None = None, shuffle: bool = True) -> None:
        super().__init__(space, objectives, n_constraints, seed=seed)
        self.shuffle = shuffle
        self._order: list[Config] | None = None
        self._seen: dict[str, int] = {}  # key -> times proposed or observed
        self._pending: set[str] = set()

    @property
    def order(self) -> list[Config]:
        if self._order is None:
            self._order = grid_configs(self.space)
            if self.shuffle:
                random.Random(self.seed).shuffle(self._order)
        return self._order

    def suggest(self) -> Config:
        least = min(self._seen.get(config_key(c), 0) for c in self.order)
        c = next(c for c in self.order if self._seen.get(config_key(c), 0) == least)
        self._seen[config_key(c)] = least + 1
        self._pending.add(config_key(c))
        return dict(c)

    def observe(self, obs: Observation) -> None:
        k = config_key(obs.config)
        if k in self._pending:
            self._pending.discard(k)  # counted when proposed
        else:
            self._seen[k] = self._seen.get(k, 0) + 1


class OptunaAgent(Agent):
    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[tuple[str, Direction]],
        n_constraints: int = 0,
        *,
        sampler: str = "tpe",
        seed: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, objectives, n_constraints, seed=seed, **options)
        self.name = sampler
        self._sampler_options = options
        self._study: optuna.Study | None = None
        self._pending: dict[str, optuna.Trial] = {}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            sampler = make_sampler(
                self.name, self.space, len(self.directions), self.seed, **self._sampler_options
            )
            self._study = optuna.create_study(directions=self.directions, sampler=sampler)
        return self._study

    def suggest(self) -> Config:
        with _one_torch_thread(self.name == "gp"):
            trial = self.study.ask()
            config = self.space.sample(trial)
        self._pending[config_key(config)] = trial
        return config

    def observe(self, obs: Observation) -> None:
        trial = self._pending.pop(config_key(obs.config), None)
        ok = obs.state == "complete" and finite(obs.values)
        constraints = {f"c{i}": float(v) for i, v in enumerate(obs.violations)}
        if trial is not None:
            values = list(obs.values) if ok else None  # type: ignore[arg-type]
            if obs.state == "invalid" and (worst := self._worst()) is not None:
                # A model-based sampler ignores failed trials, so GP kept proposing the same
                # invalid corner when its model liked it (the quickstart's torch + int8_static,
                # 200 times in a row).  This study is the sampler's own, not the record: the
                # invalid point is told as the worst seen so far, and infeasible.
                values, constraints = worst
            for k, v in constraints.items():
                trial.set_constraint(k, v if v == v else float("inf"))
            if values is not None:
                self.study.tell(trial, values)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
            return
        dists: dict[str, BaseDistribution] = self.space.distributions()
        params = {k: v for k, v in obs.config.items() if k in dists}
        self.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if ok else TrialState.FAIL,
                values=list(obs.values) if ok else None,  # type: ignore[arg-type]
                params=params,
                distributions={k: dists[k] for k in params},
                constraints=constraints if ok else None,
            )
        )

    def _worst(self) -> tuple[list[float], dict[str, float]] | None:
        """Per objective the worst value of the complete trials, and every constraint violated
        (by at least 1, or by the largest violation seen); None before any complete trial."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        values = [max(t.values[i] for t in done) if d == "minimize" else min(t.values[i] for t in done)
                  for i, d in enumerate(self.directions)]
        seen = [v for t in done for v in t.constraints.values() if v == v and v != float("inf")]
        worst_violation = max([1.0, *seen])
        return values, {f"c{i}": worst_violation for i in range(self.n_constraints)}


@contextlib.contextmanager
def _one_torch_thread(active: bool) -> Iterator[None]:
    """GPSampler fits tiny torch models; with the default thread pool a busy machine makes each
    suggestion ~10x slower (measured 8.3 s vs 0.65 s at 15 trials on 2 shared cores)."""
    if not active:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

