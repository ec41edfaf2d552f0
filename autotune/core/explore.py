"""What is left to explore in a search space, and a space-filling pick among it.

The tuning loop (:mod:`autotune.tuning.worker`) uses this when an agent proposes a configuration the
study has measured already: instead of counting towards a stop, the trial goes to the unmeasured
valid configuration farthest from everything measured (maximin distance).  A finite space is
enumerated (:func:`finite_configs`), so a run stops early only once every valid configuration has
been measured; a continuous (or huge) space is sampled.  Agents use the same pick for a
space-filling start (:class:`autotune.agents.auto.AutoAgent`).

Distances: a numeric parameter contributes ``|a - b|`` on its range scaled to [0, 1] (log scale
when the parameter is), a categorical one 1 when the choices differ, and a parameter active in one
configuration and inactive in the other 1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from autotune.core.space import Config, Param, SearchSpace, config_key

#: a discrete space with more valid configurations than this (an upper bound from the product of
#: the value counts) is sampled, not enumerated
ENUMERATE_LIMIT = 20_000
#: candidates drawn from a space that is not enumerated, per pick
SAMPLED_CANDIDATES = 512


def finite_configs(space: SearchSpace, limit: int = ENUMERATE_LIMIT) -> list[Config] | None:
    """Every valid configuration of ``space`` (conditional parameters and invalid combinations
    respected), or None when a parameter is continuous or there may be more than ``limit``."""
    bound = 1
    for p in space:
        if not p.discrete:
            return None
        bound *= len(p.values())
        if bound > limit:
            return None
    return space.grid()


def random_value(p: Param, rng: random.Random) -> Any:
    """One value of ``p``: uniform over a discrete parameter's values, uniform (log-uniform where
    the parameter is log) over a continuous one's range."""
    if p.discrete:
        return rng.choice(p.values())
    lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
    return math.exp(rng.uniform(math.log(lo), math.log(hi))) if p.log else rng.uniform(lo, hi)


def random_config(space: SearchSpace, rng: random.Random) -> Config:
    """One configuration of random values (:func:`random_value`), active parameters only; it may
    be an invalid combination."""
    config: Config = {}
    for p in space:
        if space.is_active(p, config):
            config[p.name] = random_value(p, rng)
    return config


class Encoder:
    """Configurations of ``space`` as vectors whose L1 distance is the distance above."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._slots: list[tuple[Param, int]] = []  # (param, first column)
        width = 0
        for p in space:
            self._slots.append((p, width))
            width += 1 + (len(p.choices) if p.kind == "categorical" else 1)
        self.width = width

    def _unit(self, p: Param, v: float) -> float:
        lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
        if p.log and lo > 0:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, 1e-300))
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    def encode(self, configs: Iterable[Mapping[str, Any]]) -> np.ndarray:
        rows = []
        for c in configs:
            row = np.zeros(self.width)
            for p, col in self._slots:
                if p.name not in c:
                    row[col] = 1.0  # the "inactive" flag
                    continue
                if p.kind == "categorical":
                    idx = next((i for i, ch in enumerate(p.choices) if ch == c[p.name]), 0)
                    row[col + 1 + idx] = 0.5  # two different choices: L1 distance 1
                else:
                    row[col + 1] = self._unit(p, float(c[p.name]))
            rows.append(row)
        return np.array(rows).reshape(len(rows), self.width)


def spread_pick(space: SearchSpace, measured: Sequence[Mapping[str, Any]],
                rng: random.Random, candidates: Sequence[Config] | None = None,
                encoder: Encoder | None = None) -> Config | None:
    """The valid configuration not in ``measured`` farthest from all of them (ties broken by
    ``rng``), among ``candidates`` (default: the whole space when finite, else a sample); None
    when every valid configuration is measured."""
    done = {config_key(c) for c in measured}
    if candidates is None:
        candidates = finite_configs(space)
    if candidates is None:
        drawn = (random_config(space, rng) for _ in range(SAMPLED_CANDIDATES))
        candidates = [c for c in drawn if space.invalid_reason(c) is None]
    left = [c for c in candidates if config_key(c) not in done]
    if not left:
        return None
    if not measured:
        return dict(rng.choice(left))
    enc = encoder or Encoder(space)
    a, b = enc.encode(left), enc.encode(measured)
    nearest = np.full(len(left), np.inf)
    for i in range(0, len(b), 64):  # chunks keep the (left x measured x width) block small
        d = np.abs(a[:, None, :] - b[None, i:i + 64, :]).sum(axis=2)
        nearest = np.minimum(nearest, d.min(axis=1))
    best = np.flatnonzero(nearest >= nearest.max() - 1e-12)
    return dict(left[int(best[rng.randrange(len(best))])])
