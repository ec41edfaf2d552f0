"""The default agent (``auto``): the sampler Optuna's AutoSampler would pick, started and helped
where the benchmark showed it needs help, never proposing a configuration it has seen.

Each suggestion is one of:

1. **space-filling** (the first ``n_initial``): the unmeasured valid configuration farthest from
   everything observed (:func:`autotune.core.explore.spread_pick`), a design that covers the space;
2. **model**: a proposal of an inner Optuna sampler that sees every observation (``inner``:
   ``gp``, Optuna's Gaussian process with log-EHVI, or ``tpe``, multivariate TPE; by default, as
   AutoSampler chooses, ``gp`` when every parameter is numeric and unconditional, else ``tpe``).
   A proposal of a configuration observed already is answered from the record (the sampler is
   told the known result) and asked again; after ``max_retries`` the pick is space-filling;
3. **local** (every ``local_every``-th suggestion): a random front configuration (feasible and
   non-dominated; the least-violating one while nothing is feasible) with one or two parameters
   moved (a numeric one by a step drawn around 15 % of its range, a categorical one to another
   choice), unmeasured and valid.  This fills the front between the points the model found: GP
   with expected hypervolume improvement settles at a front's ends (ZDT2's concave front).

Defaults per inner sampler (:data:`_PER_INNER`): with ``gp`` 10 space-filling picks and a local
move every third suggestion; with ``tpe`` neither (TPE's own random start; on the categorical
``serving-mixed`` problem both cost TPE hypervolume), so there ``auto`` is TPE that never spends
a trial on a configuration it has seen.  Deterministic for a fixed seed and the same observations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from autotune.agents.base import Agent, Observation, finite
from autotune.agents.optuna import OptunaAgent
from autotune.core.explore import Encoder, finite_configs, random_value, spread_pick
from autotune.core.metrics import Direction
from autotune.core.pareto import pareto_mask
from autotune.core.space import Config, Param, SearchSpace, config_key
from autotune.errors import SpecError

_DEFAULTS: dict[str, Any] = {
    "inner": "choose",
    "n_initial": None,  # 10 with gp, 0 with tpe (its own random start)
    "local_every": None,  # 3 with gp, 0 (never) with tpe
    "max_retries": 3,
}
#: the defaults of n_initial and local_every per inner sampler, chosen on
#: experiments/bench_agents.py: they lift GP on ZDT2 (whose concave front GP alone covers only at
#: its ends) and cost TPE hypervolume on the categorical serving-mixed problem
_PER_INNER = {"gp": {"n_initial": 10, "local_every": 3}, "tpe": {"n_initial": 0, "local_every": 0}}


class AutoAgent(Agent):
    name = "auto"

    def __init__(self, space: SearchSpace, objectives: Sequence[tuple[str, Direction]],
                 n_constraints: int = 0, *, seed: int | None = None, **options: Any) -> None:
        unknown = set(options) - set(_DEFAULTS) - {"inner_options"}
        if unknown:
            raise SpecError(f"unknown option(s) {', '.join(sorted(unknown))} for agent 'auto'.",
                            path="agent.options",
                            hint=f"The auto agent takes: {', '.join(_DEFAULTS)}, inner_options.")
        super().__init__(space, objectives, n_constraints, seed=seed, **options)
        cfg = {**_DEFAULTS, **{k: v for k, v in options.items() if k in _DEFAULTS}}
        if cfg["inner"] not in ("choose", "gp", "tpe"):
            raise SpecError(f"the 'inner' option of the auto agent must be choose, gp or tpe; "
                            f"got {cfg['inner']!r}.", path="agent.options.inner")
        if cfg["inner"] == "choose":  # as Optuna's AutoSampler: GP for numeric spaces only
            numeric = all(p.kind != "categorical" and not p.when for p in space)
            cfg["inner"] = "gp" if numeric else "tpe"
        for k, v in _PER_INNER[cfg["inner"]].items():
            if cfg[k] is None:
                cfg[k] = v
        for k in ("n_initial", "local_every", "max_retries"):
            if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 0:
                raise SpecError(f"the '{k}' option of the auto agent must be an int >= 0; got "
                                f"{cfg[k]!r}.", path=f"agent.options.{k}")
        self.cfg = cfg
        self.inner = OptunaAgent(space, objectives, n_constraints, sampler=cfg["inner"],
                                 seed=seed, **dict(options.get("inner_options") or {}))
        self._rng = random.Random(seed)
        self._observed: dict[str, Observation] = {}
        self._proposed: dict[str, Config] = {}  # suggested, not observed yet
        self._finite: list[Config] | bool | None = False  # False: not computed yet
        self._encoder: Encoder | None = None
        self._n = 0
        #: how each suggestion was made ("spread", "model", "local"), in order
        self.kinds: list[str] = []

    # ------------------------------------------------------------------ helpers
    @property
    def _candidates(self) -> list[Config] | None:
        if self._finite is False:
            self._finite = finite_configs(self.space)
        return self._finite  # type: ignore[return-value]

    def _seen(self, config: Config) -> bool:
        k = config_key(config)
        return k in self._observed or k in self._proposed

    def _spread(self) -> Config | None:
        if self._encoder is None:
            self._encoder = Encoder(self.space)
        seen = [o.config for o in self._observed.values()] + list(self._proposed.values())
        return spread_pick(self.space, seen, self._rng, candidates=self._candidates,
                           encoder=self._encoder)

    def _front(self) -> list[Observation]:
        done = [o for o in self._observed.values() if o.state == "complete" and finite(o.values)]
        feasible = [o for o in done if o.feasible]
        if not feasible:
            return sorted(done, key=lambda o: o.total_violation)[:1]
        mask = pareto_mask(np.array([o.values for o in feasible], dtype=float), self.directions)
        return [o for o, on in zip(feasible, mask, strict=True) if on]

    def _move(self, p: Param, value: Any) -> Any:
        if p.kind == "categorical":
            others = [c for c in p.choices if c != value]
            return self._rng.choice(others) if others else value
        if p.discrete:
            vals = p.values()
            i = min(range(len(vals)), key=lambda j: abs(float(vals[j]) - float(value)))
            span = max(1, round(0.15 * len(vals)))
            j = i
            while j == i and len(vals) > 1:
                j = min(len(vals) - 1, max(0, i + round(self._rng.gauss(0, span)) or
                                           self._rng.choice((-1, 1))))
            return vals[j]
        lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
        if p.log and lo > 0:
            v = math.log(value) + self._rng.gauss(0, 0.15 * (math.log(hi) - math.log(lo)))
            return min(hi, max(lo, math.exp(v)))
        return min(hi, max(lo, value + self._rng.gauss(0, 0.15 * (hi - lo))))

    def _local(self) -> Config | None:
        front = self._front()
        if not front:
            return None
        for _ in range(30):
            parent = self._rng.choice(front).config
            active = [p.name for p in self.space if p.name in parent]
            if not active:
                return None
            moved = set(self._rng.sample(active, min(len(active), 1 + (self._rng.random() < 0.3))))
            child: Config = {}
            for p in self.space:  # a changed switch may activate a parameter the parent lacks
                if not self.space.is_active(p, child):
                    continue
                if p.name not in parent:
                    child[p.name] = random_value(p, self._rng)
                else:
                    child[p.name] = self._move(p, parent[p.name]) if p.name in moved \
                        else parent[p.name]
            if self.space.invalid_reason(child) is None and not self._seen(child):
                return child
        return None

    def _model(self) -> Config | None:
        for _ in range(self.cfg["max_retries"] + 1):
            config = self.inner.suggest()
            known = self._observed.get(config_key(config))
            if known is None and config_key(config) not in self._proposed:
                if self.space.invalid_reason(config) is None:
                    return config
                self.inner.observe(Observation(config, None, state="invalid"))
                continue
            if known is not None:  # answered from the record: the sampler learns it again
                self.inner.observe(Observation(config, known.values, known.violations,
                                               state=known.state, metrics=known.metrics))
            else:
                self.inner.observe(Observation(config, None, state="failed"))
        return None

    # ------------------------------------------------------------------ Agent API
    def suggest(self) -> Config:
        self._n += 1
        n_obs = len(self._observed)
        config: Config | None = None
        kind = "spread"
        if n_obs >= self.cfg["n_initial"]:
            local = self.cfg["local_every"] and self._n % self.cfg["local_every"] == 0
            if local:
                config, kind = self._local(), "local"
            if config is None:
                config, kind = self._model(), "model"
        if config is None:
            config, kind = self._spread(), "spread"
        if config is None:  # every valid configuration has been observed: let the model choose
            config, kind = self.inner.suggest(), "model"
        self.kinds.append(kind)
        self._proposed[config_key(config)] = dict(config)
        return dict(config)

    def observe(self, obs: Observation) -> None:
        k = config_key(obs.config)
        self._proposed.pop(k, None)
        self._observed[k] = obs
        self.inner.observe(obs)

    def close(self) -> None:
        self.inner.close()
