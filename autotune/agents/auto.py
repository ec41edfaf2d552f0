"""The default agent (``auto``): a space-filling start, then a model that sees every
observation, never proposing a configuration it has seen.

Each suggestion is one of:

1. **space-filling** (the first ``n_initial``): the unmeasured valid configuration farthest from
   everything observed (:func:`autotune.core.explore.spread_pick`), a design that covers the space;
   with the ``gp`` model (a numeric space too large to enumerate) a Latin hypercube of
   ``n_initial`` points instead: the farthest of random candidates in a box are its corners;
2. **model**, by the ``inner`` model; by default ``pool`` when the space can be enumerated (every
   parameter discrete, at most 20,000 valid configurations: the tuning spaces of quantization,
   runtime, threads, batch...), else as Optuna's AutoSampler chooses: ``gp`` (Optuna's Gaussian
   process with log-EHVI) when every parameter is numeric and unconditional, ``tpe`` (multivariate
   TPE) otherwise.

   * ``pool`` (:class:`PoolGP`): Gaussian processes with a per-parameter kernel (categorical and
     conditional parameters included) predict every objective and constraint at *every*
     unmeasured configuration, and the pick is the one whose optimistic prediction (mean minus
     ``beta`` standard deviations) adds the most hypervolume to the observed feasible front,
     weighted by its probability of satisfying the constraints.  The models fit log-scaled
     throughput and latency; the hypervolume is measured in throughput's own units (on a log
     scale a configuration at a twentieth of the best throughput that might tie the front's
     accuracy looks almost as good as a top one, and the search spent dozens of picks on such
     ties) and on latency's log scale (in its units the slow tail stretches the range, and the
     same happens the other way round).  Scoring the whole enumerated
     space replaces the acquisition optimizers of GP/TPE, which search a continuous relaxation
     and re-propose measured points on small discrete spaces.
   * ``gp`` / ``tpe``: a proposal of the inner Optuna sampler.  A proposal of a configuration
     observed already is answered from the record (the sampler is told the known result) and
     asked again; after ``max_retries`` the pick is space-filling.  The inner GPSampler searches
     its acquisition with 1,024 random points and 5 local searches (Optuna's 2,048 and 10 cost
     up to 1 s per suggestion on a 3-objective problem at 100 trials) and, with 3 or more
     objectives, estimates log-EHVI from 32 QMC samples instead of 128 (1.3 s per suggestion at
     70 trials of DTLZ2 with 128, 0.5 s with 32);
3. **local** (a share of the suggestions, ``gp`` only by default): a move around the front,
   half of the time the best of up to 256 distinct unmeasured valid moves, scored like the
   ``pool`` model's picks (the same Gaussian processes, fitted to every observation, predict each
   move; the largest optimistic hypervolume improvement times the probability of meeting the
   constraints), else one drawn at random (where the model is blind, such as a piece of a
   disconnected front far from what was measured, random moves still find it).  Half of the
   moves are a configuration a random fraction of the way between two front configurations (feasible
   and non-dominated; every numeric parameter moved by that fraction, so what the two share stays
   as it is: the parameters a front has converged on), the others a random front configuration
   (the least-violating one while nothing is feasible) with one or two parameters moved (a
   numeric one by a step drawn around 15 % of its range, a categorical one to another choice).
   This fills the front between the points the model found: GP with expected hypervolume
   improvement settles at a front's ends (ZDT2's concave front), and a one-parameter move mostly
   moves a parameter the front has converged on (7 of ZDT's 8), so the model chooses among
   many.  The share switches on evidence:
   ``1 / local_every`` at first, then moved towards the kind of suggestion (local or model) whose
   picks joined the feasible front more often (success rates smoothed by one success in two
   picks), within 10-75 %.

Defaults per inner model (:data:`_PER_INNER`): 10 space-filling picks with ``pool`` and ``gp``
(with ``gp`` 10 per objective beyond the first: 20 with 3 objectives, where log-EHVI spent its
first picks on the axes of the objective space, points such as (0, 2.2, 0) on DTLZ2), local
moves on a third of the suggestions at first with ``gp``; with ``tpe`` neither (TPE's own random
start).
Choices and what did not work are in experiments/bench_agents.py's results.  Deterministic for a
fixed seed and the same observations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from autotune.agents.base import Agent, Observation, finite
from autotune.core.explore import Encoder, finite_configs, random_value, spread_pick
from autotune.core.metrics import Direction
from autotune.core.pareto import hypervolume, pareto_mask
from autotune.core.space import Config, Param, SearchSpace, config_key
from autotune.errors import SpecError

_DEFAULTS: dict[str, Any] = {
    "inner": "choose",
    "n_initial": None,  # 10 with pool and gp, 0 with tpe (its own random start)
    "local_every": None,  # 3 with gp, 0 (never) with pool and tpe
    "max_retries": 3,
    "beta": 1.0,  # pool: optimism, in posterior standard deviations
}
#: the defaults of n_initial and local_every per inner sampler, chosen on
#: experiments/bench_agents.py: they lift GP on ZDT2 (whose concave front GP alone covers only at
#: its ends) and cost TPE hypervolume on the categorical serving-mixed problem
_PER_INNER = {"gp": {"n_initial": 10, "local_every": 3}, "tpe": {"n_initial": 0, "local_every": 0},
              "pool": {"n_initial": 10, "local_every": 0}}
#: the pool model's kernel scales (a common weight per parameter tried first) and noise levels
#: (variance, in standardized units) searched by the marginal likelihood
_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
_NOISES = (1e-3, 1e-2, 1e-1)
#: candidates (the closest to improving the front) whose hypervolume improvement is computed
_HVI_TOP = 64
#: the pool model re-chooses its kernel after this many new observations
_REFIT = 4
#: the inner GPSampler's acquisition search: random preliminary points and local searches (Optuna's
#: defaults 2048 and 10 cost up to 1 s per suggestion on a 3-objective problem at 100 trials)
_GP_ACQF_SEARCH = (1024, 5)
#: with 3 or more objectives, the QMC samples of the inner GPSampler's log-EHVI (Optuna's 128): each
#: acquisition evaluation costs in proportion, over the many boxes of a 3-D front (1.3 s per
#: suggestion at 70 trials of DTLZ2 with 128, 0.5 s with 32)
_GP_EHVI_SAMPLES_3D = 32
#: bounds of the share of local moves, whatever the evidence
_LOCAL_SHARE = (0.1, 0.75)
#: the share of local moves made between two front configurations (the others move one or two
#: parameters of one)
_BETWEEN = 0.5
#: the share of local suggestions chosen by the model among ``_LOCAL_CANDIDATES`` moves; the
#: others are one move drawn at random, which keeps exploring where the model is blind (with every
#: local move the model's, ZDT3's far pieces were found on 4 seeds of 10, on 7 with half)
_GUIDED = 0.5
_LOCAL_CANDIDATES = 256


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
        if cfg["inner"] not in ("choose", "pool", "gp", "tpe"):
            raise SpecError(f"the 'inner' option of the auto agent must be choose, pool, gp or "
                            f"tpe; got {cfg['inner']!r}.", path="agent.options.inner")
        self._finite: list[Config] | bool | None = False  # False: not computed yet
        if cfg["inner"] == "pool" and self._candidates is None:
            raise SpecError("the auto agent's 'pool' model needs a finite space (every "
                            "parameter discrete, at most 20,000 configurations).",
                            path="agent.options.inner", hint="Use inner: gp or tpe.")
        if cfg["inner"] == "choose":  # an enumerable space: every candidate scored by the pool
            numeric = all(p.kind != "categorical" and not p.when for p in space)
            cfg["inner"] = "pool" if self._candidates is not None else "gp" if numeric else "tpe"
        for k, v in _PER_INNER[cfg["inner"]].items():
            if cfg[k] is None:
                cfg[k] = v
        if options.get("n_initial") is None and cfg["inner"] == "gp":
            cfg["n_initial"] *= max(1, len(objectives) - 1)  # a front surface needs more points
        for k in ("n_initial", "local_every", "max_retries"):
            if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 0:
                raise SpecError(f"the '{k}' option of the auto agent must be an int >= 0; got "
                                f"{cfg[k]!r}.", path=f"agent.options.{k}")
        if not isinstance(cfg["beta"], int | float) or not cfg["beta"] >= 0:
            raise SpecError(f"the 'beta' option of the auto agent must be a number >= 0; got "
                            f"{cfg['beta']!r}.", path="agent.options.beta")
        self.cfg = cfg
        self.inner: Any = None
        self._pool: PoolGP | None = None
        self._local_model: PoolGP | None = None  # scores the local moves (gp)
        if cfg["inner"] != "pool":
            from autotune.agents.optuna import OptunaAgent

            self.inner = OptunaAgent(space, objectives, n_constraints, sampler=cfg["inner"],
                                     seed=seed, **dict(options.get("inner_options") or {}))
            if cfg["inner"] == "gp":  # private attributes of GPSampler: set only where present
                smp = self.inner.study.sampler
                search = (*_GP_ACQF_SEARCH, _GP_EHVI_SAMPLES_3D if len(objectives) >= 3 else None)
                for attr, v in zip(("_n_preliminary_samples", "_n_local_search",
                                    "_n_qmc_samples_ehvi"), search, strict=True):
                    if v is not None and isinstance(getattr(smp, attr, None), int):
                        setattr(smp, attr, v)
        self._rng = random.Random(seed)
        self._observed: dict[str, Observation] = {}
        self._proposed: dict[str, Config] = {}  # suggested, not observed yet
        self._n = 0
        #: how each suggestion was made ("spread", "model", "local"), in order
        self.kinds: list[str] = []
        self._lhs: list[Config] | None = None  # the gp model's start, not proposed yet
        self._kind_of: dict[str, str] = {}  # proposed, not observed yet: how
        #: per kind of suggestion: (picks that joined the feasible front, picks)
        self._record: dict[str, list[int]] = {"model": [0, 0], "local": [0, 0]}

    # ------------------------------------------------------------------ helpers
    @property
    def _candidates(self) -> list[Config] | None:
        if self._finite is False:
            self._finite = finite_configs(self.space)
        return self._finite  # type: ignore[return-value]

    @cached_property
    def _encoder(self) -> Encoder:
        return Encoder(self.space)

    def _seen(self, config: Config) -> bool:
        k = config_key(config)
        return k in self._observed or k in self._proposed

    def _design(self) -> Config | None:
        """The next point of a Latin hypercube of ``n_initial`` points (numeric spaces)."""
        if self._lhs is None:
            from scipy.stats import qmc

            n = max(1, int(self.cfg["n_initial"]))
            u = qmc.LatinHypercube(d=len(self.space), optimization="random-cd",
                                   seed=self.seed).random(n)
            self._lhs = []
            for row in u:
                c: Config = {}
                for p, x in zip(self.space, row, strict=True):
                    if p.discrete:
                        vals = p.values()
                        c[p.name] = vals[min(len(vals) - 1, int(x * len(vals)))]
                    else:
                        lo, hi = float(p.low), float(p.high)  # type: ignore[arg-type]
                        c[p.name] = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))) \
                            if p.log and lo > 0 else lo + x * (hi - lo)
                self._lhs.append(c)
        while self._lhs:
            c = self._lhs.pop(0)
            if self.space.invalid_reason(c) is None and not self._seen(c):
                return c
        return None

    def _spread(self) -> Config | None:
        if self.cfg["inner"] == "gp" and len(self._observed) < self.cfg["n_initial"]:
            c = self._design()
            if c is not None:
                return c
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

    def _local_share(self) -> float:
        """The chance that the next suggestion is a local move: ``1 / local_every`` while the
        two kinds have the same record, shifted towards the kind whose picks join the feasible
        front more often (rates smoothed by one success in two picks), within ``_LOCAL_SHARE``."""
        (sl, nl), (sm, nm) = self._record["local"], self._record["model"]
        rl, rm = (sl + 1) / (nl + 2), (sm + 1) / (nm + 2)
        share = rl / (rl + (self.cfg["local_every"] - 1) * rm)
        return min(_LOCAL_SHARE[1], max(_LOCAL_SHARE[0], share))

    def _joins_front(self, obs: Observation) -> bool:
        """Whether ``obs`` is feasible and no feasible observation so far dominates it."""
        if not (obs.feasible and obs.values is not None and finite(obs.values)):
            return False
        new = np.array(obs.scalarized(self.directions), dtype=float)
        old = np.array([o.scalarized(self.directions) for o in self._observed.values()
                        if o.feasible and o.values is not None and finite(o.values)], dtype=float)
        if not len(old):
            return True
        return not bool(((old <= new).all(axis=1) & (old < new).any(axis=1)).any())

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

    def _between(self, a: Config, b: Config) -> Config | None:
        """A configuration a random fraction of the way from ``a`` to ``b``: every numeric
        parameter moved by that fraction (a discrete one to the nearest value), a categorical one
        taken from either.  None when they are the same configuration or have different active
        parameters."""
        if a.keys() != b.keys() or config_key(a) == config_key(b):
            return None
        u = self._rng.uniform(0.1, 0.9)
        child: Config = {}
        for p in self.space:
            if p.name not in a:
                continue
            va, vb = a[p.name], b[p.name]
            if p.kind == "categorical" or va == vb:
                child[p.name] = self._rng.choice((va, vb))
            elif p.discrete:
                x = float(va) + u * (float(vb) - float(va))
                child[p.name] = min(p.values(), key=lambda v: abs(float(v) - x))
            elif p.log and float(p.low) > 0:  # type: ignore[arg-type]
                child[p.name] = math.exp(math.log(va) + u * (math.log(vb) - math.log(va)))
            else:
                child[p.name] = va + u * (vb - va)
        return child

    def _local_move(self, front: Sequence[Observation]) -> Config | None:
        """One unmeasured valid configuration near ``front``: part-way between two of its
        configurations (a share ``_BETWEEN``), else one of them with one or two parameters moved;
        None after 30 tries."""
        for _ in range(30):
            parent = self._rng.choice(front).config
            if len(front) > 1 and self._rng.random() < _BETWEEN:
                child = self._between(parent, self._rng.choice(front).config)
                if child is not None and self.space.invalid_reason(child) is None and \
                        not self._seen(child):
                    return child
                continue
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

    def _local(self) -> Config | None:
        """A move around the front: drawn at random (a share ``1 - _GUIDED``), else the one the
        model expects to add the most: up to ``_LOCAL_CANDIDATES`` distinct moves
        (:meth:`_local_move`) scored by :class:`PoolGP` fitted to every observation (optimistic
        hypervolume improvement times the probability of meeting the constraints; its kernel
        kept between picks and re-chosen every ``_REFIT`` observations)."""
        front = self._front()
        if not front:
            return None
        if self._rng.random() >= _GUIDED:
            return self._local_move(front)
        moves: dict[str, Config] = {}
        for _ in range(_LOCAL_CANDIDATES):
            child = self._local_move(front)
            if child is None:
                break
            moves.setdefault(config_key(child), child)
        if len(moves) < 2:
            return next(iter(moves.values()), None)
        if self._local_model is None:
            self._local_model = PoolGP(self._encoder, [], float(self.cfg["beta"]))
        self._local_model.reset(list(moves.values()))
        pick = self._local_model.pick(list(self._observed.values()), set(), self.directions,
                                      self.n_constraints, self._rng)
        return pick if pick is not None else next(iter(moves.values()))

    def _model(self) -> Config | None:
        if self.inner is None:
            if self._pool is None:
                self._pool = PoolGP(self._encoder, self._candidates or [], float(self.cfg["beta"]))
            seen = set(self._observed) | set(self._proposed)
            return self._pool.pick(list(self._observed.values()), seen, self.directions,
                                   self.n_constraints, self._rng)
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
            local = bool(self.cfg["local_every"]) and self._rng.random() < self._local_share()
            if local:
                config, kind = self._local(), "local"
            if config is None:
                config, kind = self._model(), "model"
        if config is None:
            config, kind = self._spread(), "spread"
        if config is None:  # every valid configuration has been observed: let the model choose
            if self.inner is not None:
                config, kind = self.inner.suggest(), "model"
            else:  # measure a front configuration again
                config, kind = dict(self._rng.choice(self._front() or
                                                     list(self._observed.values())).config), "model"
        self.kinds.append(kind)
        self._proposed[config_key(config)] = dict(config)
        self._kind_of[config_key(config)] = kind
        return dict(config)

    def observe(self, obs: Observation) -> None:
        k = config_key(obs.config)
        self._proposed.pop(k, None)
        kind = self._kind_of.pop(k, None)
        if kind in self._record:
            self._record[kind][0] += self._joins_front(obs)
            self._record[kind][1] += 1
        self._observed[k] = obs
        if self.inner is not None:
            self.inner.observe(obs)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class PoolGP:
    """Gaussian processes over a set of candidates (an enumerated space, or the local moves of a
    numeric one), one per objective and constraint, and the pick of the unmeasured candidate with
    the largest optimistic hypervolume improvement.

    Kernel: a product over parameters of ``exp(-w_p * d_p)``, ``d_p`` the parameter's distance in
    :class:`~autotune.core.explore.Encoder` (categorical: 1 when the choices differ; numeric: the
    difference on the unit range; active vs inactive: at least 1).  The weights (which knobs
    matter) and the noise are chosen by the marginal likelihood: a common weight first, then one
    sweep that scales each parameter's by 0.2 and 5; both are re-chosen every ``_REFIT`` new
    observations.  Objectives are modelled standardized, in log where their values keep one sign
    (a warp that keeps the order, so dominance is unchanged, and keeps heavy-tailed metrics such as
    throughput from swamping the fit); constraints standardized, their threshold kept.

    The pick: each candidate's optimistic point (mean minus ``beta`` standard deviations, in the
    minimization view of the warped objectives), mapped back to its own units for a positive
    objective to maximize (the log kept for one to minimize: the scale on which an objective's
    good end is spread out) and scaled to the observed ranges, is scored by its hypervolume
    improvement over the feasible observed front (reference: beyond every observation by a tenth
    of the range), times its probability of satisfying every constraint; while nothing is
    feasible, the most probably feasible candidate; while no optimistic point improves the front,
    the one closest to improving it.
    """

    def __init__(self, encoder: Encoder, candidates: Sequence[Config], beta: float) -> None:
        self.encoder = encoder
        self.slots: list[tuple[int, int]] = []  # each parameter's columns in the encoding
        for p in encoder.space:
            start = self.slots[-1][1] if self.slots else 0
            self.slots.append((start, start + 1 + (len(p.choices) if p.kind == "categorical"
                                                   else 1)))
        assert self.slots[-1][1] == encoder.width
        self.beta = beta
        #: per model (objective j, constraint m + j): kernel weights, noise, observations then
        self._hyper: dict[int, tuple[np.ndarray, float, int]] = {}
        self.reset(candidates)

    def reset(self, candidates: Sequence[Config]) -> None:
        """Score these candidates from now on (the kernels stay as chosen)."""
        self.candidates = list(candidates)
        self.keys = [config_key(c) for c in self.candidates]
        self.x = self.encoder.encode(self.candidates) if self.candidates else \
            np.zeros((0, self.encoder.width))
        #: per observed configuration, its per-parameter distances to every candidate
        self._cols: dict[str, np.ndarray] = {}

    def _dist(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b), n_params) per-parameter distances."""
        return np.stack([np.abs(a[:, None, s:e] - b[None, :, s:e]).sum(-1) for s, e in self.slots],
                        axis=-1)

    @staticmethod
    def _fit(d: np.ndarray, y: np.ndarray, prior: tuple[np.ndarray, float] | None
             ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """Kernel weights and noise of the best marginal likelihood (only ``prior``'s when
        given), with the Cholesky factor and the weights of the targets."""
        eye = np.eye(len(y))
        best: tuple[float, np.ndarray, float, Any] = (-np.inf, np.ones(d.shape[-1]), 1e-2, None)

        def consider(w: np.ndarray, noises: Sequence[float]) -> None:
            nonlocal best
            k = np.exp(-(d @ w))
            for noise in noises:
                try:
                    chol = np.linalg.cholesky(k + noise * eye)
                except np.linalg.LinAlgError:
                    continue
                a = np.linalg.solve(chol, y)
                lml = float(-0.5 * a @ a - np.log(np.diag(chol)).sum())
                if lml > best[0]:
                    best = (lml, w.copy(), noise, chol)

        if prior is not None:
            consider(*((prior[0], (prior[1],))))
        if best[3] is None:
            for scale in _SCALES:
                consider(np.full(d.shape[-1], scale), _NOISES)
            for j in range(d.shape[-1]):
                base = best[1]
                for f in (0.2, 5.0):
                    w = base.copy()
                    w[j] *= f
                    consider(w, _NOISES)
        chol = best[3]
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
        return best[1], best[2], chol, alpha

    def _predict(self, model: int, d: np.ndarray, dc: np.ndarray, y: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of ``y`` at the candidates; the kernel is
        re-chosen every ``_REFIT`` observations, kept in between."""
        import scipy.linalg

        mean = float(y.mean())
        prior = self._hyper.get(model)
        refit = prior is None or len(y) >= prior[2] + _REFIT
        w, noise, chol, alpha = self._fit(d, y - mean, None if refit else prior[:2])
        if refit:
            self._hyper[model] = (w, noise, len(y))
        kc = np.exp(-(dc @ w.astype(np.float32)))
        mu = kc @ alpha.astype(np.float32) + mean
        v = scipy.linalg.solve_triangular(chol.astype(np.float32), kc.T, lower=True)
        var = 1.0 - np.einsum("ij,ij->j", v, v)
        return mu, np.sqrt(np.maximum(var, 1e-12))

    def pick(self, observed: Sequence[Observation], seen: set[str],
             directions: Sequence[Direction], n_constraints: int,
             rng: random.Random) -> Config | None:
        from scipy.special import ndtr

        done = [o for o in observed if o.state == "complete" and finite(o.values)]
        left = [i for i, k in enumerate(self.keys) if k not in seen]
        if len(done) < 2 or not left:
            return None
        x = self.encoder.encode([o.config for o in done])
        for o, row in zip(done, x, strict=True):
            k = config_key(o.config)
            if k not in self._cols:
                self._cols[k] = self._dist(self.x, row[None, :])[:, 0, :].astype(np.float32)
        dc = np.stack([self._cols[config_key(o.config)] for o in done], axis=1)[left]
        d = self._dist(x, x)
        m = len(directions)
        sign = np.array([1.0 if dr == "minimize" else -1.0 for dr in directions])
        raw = np.array([o.values for o in done], dtype=float) * sign  # minimization view
        # the models fit the log of an objective whose observed values keep one sign (throughput,
        # latency), standardized: heavy-tailed metrics do not swamp the fit
        positive = (raw > 0).all(axis=0)
        one_sign = positive | (raw < 0).all(axis=0)
        warped = np.where(one_sign, np.sign(raw) * np.log(np.abs(np.where(raw == 0, 1, raw))), raw)
        center, spread = warped.mean(0), np.where(warped.std(0) > 0, warped.std(0), 1.0)
        z = (warped - center) / spread
        opt = np.empty((len(left), m))
        for j in range(m):
            mu, sd = self._predict(j, d, dc, z[:, j])
            opt[:, j] = mu - self.beta * sd
        # ... but the hypervolume is measured on the scale that spreads out each objective's
        # good end: a positive quantity to maximize (throughput) in its own units, whose tail is
        # its good end (on the log scale a configuration at a twentieth of the best throughput,
        # whose accuracy might tie the front's, looks almost as good as a top one), one to
        # minimize (latency) on the log scale (in its units the slow tail stretches the range and
        # a twenty times slower configuration looks close to the best); scaled to the observed
        # ranges
        maximized = one_sign & ~positive
        opt = opt * spread + center
        opt = np.where(maximized, -np.exp(np.clip(-opt, -700.0, 700.0)), opt)
        scale = np.where(maximized, raw, warped)
        low, span = scale.min(0), np.where(np.ptp(scale, 0) > 0, np.ptp(scale, 0), 1.0)
        opt, y = (opt - low) / span, (scale - low) / span
        pof = np.ones(len(left))
        for j in range(n_constraints):
            g = np.array([o.violations[j] if j < len(o.violations) and math.isfinite(
                o.violations[j]) else 1e6 for o in done], dtype=float)
            scale = float(g.std()) or 1.0
            mu, sd = self._predict(m + j, d, dc, (g - g.mean()) / scale)
            pof *= ndtr((-g.mean() / scale - mu) / sd)
        feasible = np.array([o.feasible for o in done])
        jitter = np.array([rng.random() for _ in left]) * 1e-9
        if not feasible.any():
            return dict(self.candidates[left[int(np.argmax(pof + jitter))]])
        front = y[feasible]
        front = front[pareto_mask(front, ["minimize"] * m)]
        ref = np.full(m, 1.1 + 1e-6)  # beyond every observation by a tenth of the range
        # how far each optimistic point is from being dominated (> 0: it would improve the front)
        margin = (front[None, :, :] - opt[:, None, :]).max(axis=2).min(axis=1)
        improving = np.flatnonzero((margin > 0) & (pof > 1e-3))
        if not len(improving):
            return dict(self.candidates[left[int(np.argmax(margin + np.log(pof + 1e-12) + jitter))]])
        top = improving[np.argsort(-(margin[improving] * pof[improving]))[:_HVI_TOP]]
        base = hypervolume(front, ["minimize"] * m, ref)
        score = [(hypervolume(np.vstack([front, np.minimum(opt[i], ref - 1e-9)]),
                              ["minimize"] * m, ref) - base) * pof[i] + jitter[i] for i in top]
        return dict(self.candidates[left[int(top[int(np.argmax(score))])]])

