"""scikit-optimize's Bayesian optimizers as agents: ``skopt-gp``, ``skopt-rf``, ``skopt-et``,
``skopt-gbrt``.

This is the only module that imports ``skopt`` (archived upstream; pinned to 0.10.2 in
constraints.txt).  skopt optimizes one scalar, so the adapter adds what autotune needs:

* **Several objectives** by random-weight scalarization (ParEGO, Knowles 2006): objectives are
  turned into minimization, normalized to [0, 1] with the observed ranges, and combined with the
  augmented Tchebycheff function ``max_i(w_i f_i) + rho * sum_i(w_i f_i)`` under a weight vector
  drawn afresh (uniform on the simplex) for every suggestion; a fresh skopt ``Optimizer`` is
  fitted on the whole history scalarized with that vector and asked for one point.
* **Constraints** by penalty: an infeasible point scores the worst scalarized value observed plus
  its squashed total violation ``v / (1 + v)`` (so it ranks below every feasible point and further
  violations rank lower still); failed or invalid points score the worst value plus 1.
* **Conditional parameters** through a flat encoding: every parameter is a dimension; a proposal
  is cut to its active parameters with :meth:`SearchSpace.complete`, and an observed config fills
  its inactive parameters with a fixed placeholder (the parameter's first value).

Options (``agent.options``): ``acq_func`` (EI, PI, LCB, gp_hedge; default gp_hedge for skopt-gp,
EI otherwise), ``n_initial_points`` (default 8), ``rho`` (0.05), ``n_points`` (candidates scored
per acquisition, default 1000), ``xi``, ``kappa``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from autotune.agents.base import Agent, Observation, finite
from autotune.core.metrics import Direction
from autotune.core.space import Config, Param, SearchSpace, config_key, same_value
from autotune.errors import SpecError

ESTIMATORS = {"skopt-gp": "GP", "skopt-rf": "RF", "skopt-et": "ET", "skopt-gbrt": "GBRT"}
ACQ_FUNCS = ("EI", "PI", "LCB", "gp_hedge")


# -------------------------------------------------------------------- the one space mapping
def dimensions(space: SearchSpace) -> list[Any]:
    """skopt dimensions for ``space`` (the only place they are derived).

    Categorical parameters become an index ``Categorical`` (so any choice type works); stepped
    ints/floats become an ``Integer`` index into their value list; continuous floats and plain ints
    map directly (log-uniform when ``log``).
    """
    from skopt.space import Categorical, Integer, Real

    dims: list[Any] = []
    for p in space:
        if p.kind == "categorical":
            dims.append(Categorical(list(range(len(p.choices))), name=p.name))
        elif p.kind == "int" and (p.step or 1) == 1:
            if p.low == p.high:
                dims.append(Categorical([0], name=p.name))
            else:
                dims.append(Integer(int(p.low), int(p.high), name=p.name,
                                    prior="log-uniform" if p.log else "uniform"))
        elif p.discrete:
            n = len(p.values())
            dims.append(Integer(0, n - 1, name=p.name) if n > 1 else Categorical([0], name=p.name))
        else:
            dims.append(Real(float(p.low), float(p.high), name=p.name,
                             prior="log-uniform" if p.log else "uniform"))
    return dims


def _decode(p: Param, x: Any) -> Any:
    if p.kind == "categorical":
        return p.choices[int(x)]
    if p.kind == "int" and (p.step or 1) == 1:
        return int(p.low) if p.low == p.high else int(x)
    if p.discrete:
        return p.values()[int(x)]
    return float(x)


def _encode(p: Param, v: Any) -> Any:
    if p.kind == "categorical":
        for i, c in enumerate(p.choices):
            if same_value(c, v):
                return i
        return 0
    if p.kind == "int" and (p.step or 1) == 1:
        return 0 if p.low == p.high else int(min(max(int(v), p.low), p.high))
    if p.discrete:
        vals = p.values()
        return int(np.argmin([abs(float(u) - float(v)) for u in vals]))  # type: ignore[arg-type]
    return float(min(max(float(v), p.low), p.high))  # type: ignore[type-var]


def _placeholder(p: Param) -> Any:
    return 0 if p.kind == "categorical" or p.discrete or p.low == p.high else float(p.low)


def _estimator(kind: str, random_state: int) -> Any:
    """skopt's estimator; GBRT is patched for scikit-learn >= 1.6 and numpy >= 2.4.

    skopt 0.10.2's ``GradientBoostingQuantileRegressor`` lists ``BaseEstimator`` before
    ``RegressorMixin``, so the tags-based ``is_regressor`` of new scikit-learn says no and
    ``Optimizer`` refuses it ("has to be a regressor"); its ``predict(return_std=True)`` calls
    ``np.in1d``, which numpy 2.4 removed.  GP, RF and ET work unpatched (checked by the tests).
    """
    if kind != "GBRT":
        return kind
    from sklearn.ensemble import GradientBoostingRegressor

    gbr = GradientBoostingRegressor(n_estimators=30, loss="quantile")
    return _gbqr_class()(base_estimator=gbr, random_state=random_state)


@functools.cache
def _gbqr_class() -> type:
    from skopt.learning import GradientBoostingQuantileRegressor

    class RegressorGBQR(GradientBoostingQuantileRegressor):  # type: ignore[misc]
        def __sklearn_tags__(self) -> Any:
            tags = super().__sklearn_tags__()
            tags.estimator_type = "regressor"
            return tags

        def predict(self, X: Any, return_std: bool = False, return_quantiles: bool = False) -> Any:
            # skopt's version calls np.in1d, removed in numpy 2.4; same computation otherwise
            if not return_std or return_quantiles:
                return super().predict(X, return_std=False, return_quantiles=return_quantiles)
            q = list(self.quantiles)
            if not all(v in q for v in (0.16, 0.5, 0.84)):
                raise ValueError("return_std needs the quantiles 0.16, 0.5 and 0.84")
            low = self.regressors_[q.index(0.16)].predict(X)
            high = self.regressors_[q.index(0.84)].predict(X)
            mean = self.regressors_[q.index(0.5)].predict(X)
            return mean, (high - low) / 2.0

    return RegressorGBQR


# -------------------------------------------------------------------- scalarization
def tchebycheff(values: np.ndarray, weights: np.ndarray, rho: float = 0.05) -> np.ndarray:
    """Augmented Tchebycheff of normalized minimization values (rows = points)."""
    wf = values * weights
    return wf.max(axis=1) + rho * wf.sum(axis=1)


def normalize(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(axis=0), values.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (values - lo) / span


class SkoptAgent(Agent):
    """A scikit-optimize ``Optimizer`` refitted on the scalarized history for every suggestion."""

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[tuple[str, Direction]],
        n_constraints: int = 0,
        *,
        estimator: str = "skopt-gp",
        seed: int | None = None,
        acq_func: str | None = None,
        n_initial_points: int = 8,
        rho: float = 0.05,
        n_points: int = 1000,
        xi: float = 0.01,
        kappa: float = 1.96,
    ) -> None:
        super().__init__(space, objectives, n_constraints, seed=seed)
        if estimator not in ESTIMATORS:
            raise SpecError(f"unknown scikit-optimize agent '{estimator}'.", path="agent.name")
        self.name = estimator
        acq = acq_func or ("gp_hedge" if estimator == "skopt-gp" else "EI")
        if acq not in ACQ_FUNCS:
            raise SpecError(
                f"The 'acq_func' option of {estimator} must be one of {', '.join(ACQ_FUNCS)}. "
                f"Got {acq!r} instead.", path="agent.options.acq_func",
            )
        if estimator != "skopt-gp" and acq == "gp_hedge":
            acq = "EI"  # gp_hedge mixes EI/PI/LCB; fine for trees too, but EI is the usual choice
        if not isinstance(n_initial_points, int) or n_initial_points < 1:
            raise SpecError(
                f"The 'n_initial_points' option must be an int in [1, inf). Got "
                f"{n_initial_points!r} instead.", path="agent.options.n_initial_points",
            )
        self.acq_func = acq
        self.n_initial_points = n_initial_points
        self.rho = float(rho)
        self.n_points = int(n_points)
        self.xi, self.kappa = float(xi), float(kappa)
        self._rng = np.random.default_rng(seed)
        self._dims: list[Any] | None = None
        self._X: list[list[Any]] = []
        self._y: list[tuple[float, ...] | None] = []  # minimization values; None = failed/invalid
        self._viol: list[float] = []
        self._keys: set[str] = set()

    @property
    def dims(self) -> list[Any]:
        if self._dims is None:
            self._dims = dimensions(self.space)
        return self._dims

    # ------------------------------------------------------------------ encoding
    def encode(self, config: Config) -> list[Any]:
        return [_encode(p, config[p.name]) if p.name in config else _placeholder(p)
                for p in self.space]

    def decode(self, x: Sequence[Any]) -> Config:
        full = {p.name: _decode(p, v) for p, v in zip(self.space, x, strict=True)}
        return self.space.complete(full)

    # ------------------------------------------------------------------ scalarized history
    def scalarized_history(self, weights: np.ndarray) -> list[float]:
        done = [i for i, y in enumerate(self._y) if y is not None]
        out = [math.nan] * len(self._y)
        if done:
            vals = np.array([self._y[i] for i in done], dtype=float)
            s = tchebycheff(normalize(vals), weights, self.rho)
            for i, v in zip(done, s, strict=True):
                out[i] = float(v)
        worst = max((out[i] for i in done), default=1.0)
        for i in range(len(out)):
            if self._y[i] is None:
                out[i] = worst + 1.0
            elif self._viol[i] > 0:
                v = self._viol[i]
                out[i] = worst + (v / (1.0 + v) if math.isfinite(v) else 1.0)
        return out

    # ------------------------------------------------------------------ interface
    def suggest(self) -> Config:
        from skopt import Optimizer

        state = int(self._rng.integers(2**31 - 1))
        weights = self._rng.dirichlet(np.ones(len(self.directions)))
        opt = Optimizer(
            self.dims, base_estimator=_estimator(ESTIMATORS[self.name], state),
            n_initial_points=self.n_initial_points, initial_point_generator="random",
            acq_func=self.acq_func, acq_optimizer="sampling", random_state=state,
            acq_func_kwargs={"xi": self.xi, "kappa": self.kappa},
            acq_optimizer_kwargs={"n_points": self.n_points},
        )
        from threadpoolctl import threadpool_limits

        # the surrogates' matrices are tiny: multi-threaded BLAS only adds contention (6x slower
        # GP fits on a busy 2-core machine)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            if self._X:
                # skopt counts told points towards its random start, so the initial phase
                # ends after n_initial_points observations, whoever proposed them.
                opt.tell([list(x) for x in self._X], self.scalarized_history(weights))
            x = opt.ask()
            config = self.decode(x)
            # tree models are flat between observations and may propose a measured point again;
            # spend the trial on an unmeasured one instead (unless the space seems exhausted)
            for _ in range(50):
                if config_key(config) not in self._keys:
                    break
                config = self.decode(opt.space.rvs(random_state=self._rng.integers(2**31 - 1))[0])
        return config

    def observe(self, obs: Observation) -> None:
        self._X.append(self.encode(dict(obs.config)))
        self._keys.add(config_key(obs.config))
        ok = obs.state == "complete" and finite(obs.values)
        self._y.append(obs.scalarized(self.directions) if ok else None)
        self._viol.append(obs.total_violation if ok else math.inf)



def _factory(estimator: str) -> type[SkoptAgent]:
    class _Agent(SkoptAgent):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, estimator=estimator, **kwargs)

    _Agent.__name__ = _Agent.__qualname__ = f"Skopt{ESTIMATORS[estimator]}Agent"
    return _Agent


SkoptGPAgent = _factory("skopt-gp")
SkoptRFAgent = _factory("skopt-rf")
SkoptETAgent = _factory("skopt-et")
SkoptGBRTAgent = _factory("skopt-gbrt")
