"""The agent interface: propose a configuration, learn from a measured one.

Every agent, whatever library it wraps, speaks this interface and nothing more.  The tuner records
every trial in the Optuna study (the single source of truth); agents keep whatever model they need
and are rebuilt on resume by replaying the study's finished trials through :meth:`Agent.observe`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autotune.core.metrics import Direction
from autotune.core.space import Config, SearchSpace

State = Literal["complete", "failed", "invalid"]


@dataclass(frozen=True)
class Observation:
    """What an agent learns about one configuration."""

    config: Mapping[str, Any]
    values: tuple[float, ...] | None  # objective values in job order; None when failed/invalid
    violations: tuple[float, ...] = ()  # one per constraint, <= 0 satisfied (Optuna convention)
    state: State = "complete"
    number: int | None = None  # the trial number in the study, when known
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.violations)

    @property
    def total_violation(self) -> float:
        return sum(v for v in self.violations if v > 0)

    def scalarized(self, directions: Sequence[Direction]) -> tuple[float, ...] | None:
        """Values turned into minimization (maximized objectives negated)."""
        if self.values is None:
            return None
        return tuple(v if d == "minimize" else -v for v, d in zip(self.values, directions, strict=True))


class Agent(ABC):
    """Proposes configurations of ``space`` for the objectives ``objectives``.

    Subclasses store their parameters in ``__init__`` and do nothing costly there; they implement
    :meth:`suggest` and :meth:`observe`.  An agent must accept observations of configurations it did
    not propose (resume, warm start, other workers sharing the study).
    """

    #: registry name (set by subclasses)
    name: str = ""

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[tuple[str, Direction]],
        n_constraints: int = 0,
        *,
        seed: int | None = None,
        **options: Any,
    ) -> None:
        self.space = space
        self.objectives = list(objectives)
        self.directions: list[Direction] = [d for _, d in objectives]
        self.n_constraints = n_constraints
        self.seed = seed
        self.options = options

    @abstractmethod
    def suggest(self) -> Config:
        """The next configuration to measure (only active parameters, inside the space)."""

    @abstractmethod
    def observe(self, obs: Observation) -> None:
        """Learn from a finished configuration (proposed by this agent or not)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (e.g. a policy being trained)."""


def finite(values: Sequence[float] | None) -> bool:
    return values is not None and all(math.isfinite(v) for v in values)
