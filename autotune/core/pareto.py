"""Pareto analysis of finished trials: fronts, hypervolume, knee points and selection rules.

Pure numpy; nothing here imports Optuna or MLflow, so reports and tests can use it on plain data.

Conventions
-----------
* ``points`` is an ``(n, m)`` array of raw metric values, one row per trial, and ``directions``
  says for each column whether it is minimized or maximized.  Internally every function works on
  the *minimization* view (:func:`to_minimization` negates maximized columns).
* Rows holding NaN or ±inf are never on a front: :func:`non_dominated_sort` ranks them after every
  finite row and :func:`hypervolume` ignores them.
* A point dominates another when it is at least as good in every objective and strictly better in
  one.  Duplicates do not dominate each other, so copies of a front point are on the front too.

Hypervolume and the reference point
-----------------------------------
:func:`hypervolume` measures the region that the points dominate, bounded by a *reference point*
given in the raw metric values (the user's directions).  Only points strictly better than the
reference in every objective contribute.  The result is exact for any number of objectives:

* 1 objective: the distance from the best point to the reference;
* 2 objectives: sort by the first objective and sweep, O(n log n);
* 3 objectives: a sweep over the third objective that keeps the 2-D staircase of the points seen
  so far and its area up to date (Beume et al.'s HV3D idea), O(n log n) search plus list updates;
* 4 or more objectives: the WFG recursion (While, Bradstreet & Barone 2012).  The points are sorted
  worst-first in the last objective, so each point's exclusive contribution is its box minus the
  hypervolume of a "limit set" whose last coordinate is constant; that set is reduced to its
  non-dominated points and measured one dimension down.  This is exact but its cost grows like
  O(n^(m-2) log n) in the worst case: fine for hundreds of points at m = 4, slow beyond.

Hypervolumes are only comparable when computed against the *same* reference point: moving the
reference changes every value, and not by the same factor.  The tuner therefore fixes the
reference once per study (from :func:`default_reference` over the baseline and the first finished
trials, or from the job file) and stores it with the study; use that stored reference when
comparing runs.

:func:`default_reference` rule: for each objective take the worst value among the (finite) points
and move it further in the worse direction by ``margin`` times the range of that objective; when
the range is 0, by ``margin × |value|``; when the value is 0 too, by ``margin``.  The result is
always strictly worse than every finite point (at least by one ulp), so each of them counts.

Knee point
----------
:func:`knee_point` normalises each objective to [0, 1] over the first front (0 = best).  With two
objectives and at least three distinct front points, the extremes of the front are (0, 1) and
(1, 0) and the knee is the point furthest from the line joining them, on the ideal side of that
line (the "elbow" of a convex front).  If no point lies strictly on the ideal side (a straight or
concave front), with fewer than three front points, or with more than two objectives, the knee is
the front point closest (Euclidean, normalised) to the ideal point (0, …, 0).  Ties go to the
lower index.

Selection rules
---------------
:func:`parse_rule` reads the sentences people use to pick one configuration, e.g.
``fastest with accuracy_drop <= 1% and model_size_mb <= 5`` or ``max throughput_ips with
latency_p95_ms <= 80% of baseline``; see :data:`GOALS` and :class:`SelectionRule`.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from autotune.core.constraints import SYNTAX_HELP, Constraint, ConstraintSyntaxError, parse_constraint
from autotune.core.metrics import Direction
from autotune.errors import SpecError

__all__ = [
    "GOALS",
    "Direction",
    "Record",
    "SelectionRule",
    "default_reference",
    "front",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "non_dominated_sort",
    "pareto_mask",
    "parse_rule",
    "to_minimization",
]

_DIRECTIONS = ("minimize", "maximize")

# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_points(points: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """``points`` as a float ``(n, m)`` array, checked against ``directions``."""
    m = len(directions)
    if m == 0:
        raise ValueError("at least one objective direction is needed")
    for d in directions:
        if d not in _DIRECTIONS:
            raise ValueError(f"direction must be 'minimize' or 'maximize', not {d!r}")
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, m)
    if arr.ndim != 2 or arr.shape[1] != m:
        raise ValueError(
            f"points must be an (n, {m}) array for {m} objective(s); got shape {arr.shape}"
        )
    return arr


def _signs(directions: Sequence[Direction]) -> np.ndarray:
    return np.array([-1.0 if d == "maximize" else 1.0 for d in directions])


def to_minimization(points: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Return a float copy of ``points`` (``(n, m)``) with maximized columns negated.

    After this every objective is "lower is better".
    """
    return _as_points(points, directions) * _signs(directions)


def _reference_min(reference: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape[0] != len(directions):
        raise ValueError(
            f"reference has {ref.shape[0]} value(s) but there are {len(directions)} objective(s)"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference point must be finite, got {ref.tolist()}")
    return ref * _signs(directions)


# --------------------------------------------------------------------------------------------
# Dominance and non-dominated sorting
# --------------------------------------------------------------------------------------------


def _dominance_matrix(p: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when row ``i`` dominates row ``j`` (minimization, finite rows)."""
    n, m = p.shape
    le = np.ones((n, n), dtype=bool)
    lt = np.zeros((n, n), dtype=bool)
    for k in range(m):
        col = p[:, k]
        le &= col[:, None] <= col[None, :]
        lt |= col[:, None] < col[None, :]
    return le & lt


def _rank_finite(p: np.ndarray) -> np.ndarray:
    """Pareto ranks of finite minimization rows (peeling fronts off the dominance matrix)."""
    n = p.shape[0]
    rank = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return rank
    dom = _dominance_matrix(p)
    count = dom.sum(axis=0)  # how many rows dominate each row
    current = np.flatnonzero(count == 0)
    r = 0
    while current.size:
        rank[current] = r
        count = count - dom[current].sum(axis=0)
        current = np.flatnonzero((count == 0) & (rank < 0))
        r += 1
    return rank


def non_dominated_sort(points: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Pareto rank of each point: 0 for the first (non-dominated) front, 1 for the next, ….

    Works for any number of objectives: a vectorised O(n² m) dominance matrix is built and
    fronts are peeled off it as in Deb's fast non-dominated sort.  Identical points share a rank.
    Rows with NaN or ±inf get the rank after the last finite front (1 if no row is finite), so
    they are never on the first front.

    Returns an ``int64`` array of length ``n``.
    """
    p = to_minimization(points, directions)
    finite = np.all(np.isfinite(p), axis=1)
    rank = np.empty(p.shape[0], dtype=np.int64)
    fr = _rank_finite(p[finite])
    rank[finite] = fr
    rank[~finite] = (int(fr.max()) + 1) if fr.size else 1
    return rank


def pareto_mask(points: ArrayLike, directions: Sequence[Direction]) -> np.ndarray:
    """Boolean mask of the points on the first front (rank 0 of :func:`non_dominated_sort`)."""
    return non_dominated_sort(points, directions) == 0


def _nondominated_unique(p: np.ndarray) -> np.ndarray:
    """The distinct non-dominated rows of finite minimization points."""
    if p.shape[0] <= 1:
        return p
    p = np.unique(p, axis=0)
    if p.shape[0] <= 1:
        return p
    return p[_rank_finite(p) == 0]


# --------------------------------------------------------------------------------------------
# Hypervolume
# --------------------------------------------------------------------------------------------


def _hv2d(p: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by points strictly below ``ref`` (minimization), sort and sweep."""
    order = np.lexsort((p[:, 1], p[:, 0]))
    x = p[order, 0]
    y = p[order, 1]
    ymin = np.minimum.accumulate(y)
    prev = np.concatenate(([ref[1]], ymin[:-1]))
    return float(np.sum((ref[0] - x) * (prev - ymin)))


def _hv3d(p: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by points strictly below ``ref`` (minimization).

    Sweep over the third objective in increasing order, keeping the 2-D staircase (x increasing,
    y decreasing) of the points seen so far and the area it dominates; each slab between two
    consecutive z values adds ``area × thickness``.
    """
    order = np.argsort(p[:, 2], kind="stable")
    rows = p[order].tolist()
    rx, ry, rz = (float(v) for v in ref)
    zs = [r[2] for r in rows] + [rz]
    xs: list[float] = []
    ys: list[float] = []
    area = 0.0
    volume = 0.0
    for i, (x, y, z) in enumerate(rows):
        j = bisect_right(xs, x) - 1
        if j < 0 or ys[j] > y:  # not (weakly) dominated in the (x, y) projection
            lo = bisect_left(xs, x)
            top = ys[lo - 1] if lo > 0 else ry
            cur_x = x
            added = 0.0
            hi = lo
            while hi < len(xs) and ys[hi] >= y:  # staircase points the new one dominates
                added += (xs[hi] - cur_x) * (top - y)
                cur_x = xs[hi]
                top = ys[hi]
                hi += 1
            right = xs[hi] if hi < len(xs) else rx
            added += (right - cur_x) * (top - y)
            area += added
            xs[lo:hi] = [x]
            ys[lo:hi] = [y]
        volume += area * (zs[i + 1] - z)
    return volume


def _hv_wfg(p: np.ndarray, ref: np.ndarray) -> float:
    """WFG for m >= 4 on distinct non-dominated points strictly below ``ref``."""
    order = np.argsort(-p[:, -1], kind="stable")  # worst last objective first
    p = p[order]
    total = 0.0
    for k in range(p.shape[0]):
        pk = p[k]
        box = float(np.prod(ref - pk))
        rest = p[k + 1 :]
        if rest.shape[0]:
            # every later point is at least as good in the last objective, so the limit set's
            # last coordinate is pk[-1]: measure it one dimension down.
            limit = np.maximum(rest[:, :-1], pk[:-1])
            covered = (ref[-1] - pk[-1]) * _hv_min(limit, ref[:-1], clean=False)
            box -= covered
        total += max(box, 0.0)
    return total


def _hv_min(p: np.ndarray, ref: np.ndarray, *, clean: bool = True) -> float:
    """Exact hypervolume of minimization points ``p`` against minimization reference ``ref``."""
    if clean:
        keep = np.all(np.isfinite(p), axis=1) & np.all(p < ref, axis=1)
        p = p[keep]
    if p.shape[0] == 0:
        return 0.0
    m = p.shape[1]
    if m == 1:
        return float(ref[0] - p[:, 0].min())
    if m == 2:
        return _hv2d(p, ref)
    if m == 3:
        return _hv3d(p, ref)
    return _hv_wfg(_nondominated_unique(p), ref)


def hypervolume(points: ArrayLike, directions: Sequence[Direction], reference: ArrayLike) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    ``reference`` is in raw metric values (the user's directions), like ``points``.  Points with
    NaN/inf, and points not strictly better than the reference in every objective, contribute
    nothing.  See the module docstring for the algorithms (exact for every m; WFG for m >= 4)
    and for why values are only comparable under the same reference.
    """
    p = to_minimization(points, directions)
    ref = _reference_min(reference, directions)
    return _hv_min(p, ref)


def default_reference(
    points: ArrayLike, directions: Sequence[Direction], margin: float = 0.1
) -> np.ndarray:
    """A reference point just worse than every finite point, in raw metric values.

    Per objective: the worst finite value, moved further in the worse direction by
    ``margin × (max − min)``; if that range is 0, by ``margin × |value|``; if the value is 0 too,
    by ``margin`` (and always by at least one ulp, so the reference is strictly worse than every
    point).  Raises ``ValueError`` if no row is finite.
    """
    p = to_minimization(points, directions)
    p = p[np.all(np.isfinite(p), axis=1)]
    if p.shape[0] == 0:
        raise ValueError("default_reference needs at least one point with finite values")
    worst = p.max(axis=0)
    spread = worst - p.min(axis=0)
    step = np.where(spread > 0, margin * spread, margin * np.abs(worst))
    step = np.where(step > 0, step, margin)
    # when the step is below the values' resolution, still end up strictly worse than every point
    ref = np.maximum(worst + step, np.nextafter(worst, np.inf))
    return ref * _signs(directions)


def hypervolume_history(
    points_in_trial_order: ArrayLike,
    feasible: Sequence[bool],
    directions: Sequence[Direction],
    reference: ArrayLike,
) -> np.ndarray:
    """Hypervolume of the feasible points seen up to and including each trial.

    The result has one value per trial and never decreases: infeasible trials, trials with
    NaN/inf values and trials dominated by (or equal to) the current front keep the previous
    value.  A new non-dominated point adds its exclusive contribution
    ``box(point, reference) − hypervolume(limit set)``, so the work per trial is one hypervolume
    of a (usually small) limit set rather than of the whole front.
    """
    p = to_minimization(points_in_trial_order, directions)
    ref = _reference_min(reference, directions)
    feas = np.asarray(feasible, dtype=bool).reshape(-1)
    if feas.shape[0] != p.shape[0]:
        raise ValueError(f"feasible has {feas.shape[0]} entries for {p.shape[0]} points")
    out = np.zeros(p.shape[0], dtype=float)
    m = p.shape[1]
    current = np.empty((0, m))
    hv = 0.0
    for i in range(p.shape[0]):
        q = p[i]
        usable = feas[i] and np.all(np.isfinite(q)) and np.all(q < ref)
        if usable and not np.any(np.all(current <= q, axis=1)):
            limit = np.maximum(current, q)
            gain = float(np.prod(ref - q)) - _hv_min(limit, ref, clean=False)
            hv += max(gain, 0.0)
            current = np.vstack([current[~np.all(q <= current, axis=1)], q])
        out[i] = hv
    return out


# --------------------------------------------------------------------------------------------
# Knee point
# --------------------------------------------------------------------------------------------


def knee_point(points: ArrayLike, directions: Sequence[Direction]) -> int | None:
    """Index into ``points`` of the knee of the first front, or None if no row is finite.

    Rule (see the module docstring): normalise each objective to [0, 1] over the front; with two
    objectives and ≥ 3 distinct front points take the point furthest from the line through the two
    extremes on the ideal side; otherwise (or if no point is on that side) the point closest to
    the ideal point.  Among identical front points the lowest index is returned.
    """
    p = to_minimization(points, directions)
    on_front = np.flatnonzero(non_dominated_sort(points, directions) == 0)
    on_front = on_front[np.all(np.isfinite(p[on_front]), axis=1)]
    if on_front.size == 0:
        return None
    f = p[on_front]
    _, first = np.unique(f, axis=0, return_index=True)
    first = np.sort(first)  # keep the lowest index of each distinct point, in index order
    idx = on_front[first]
    f = f[first]
    lo = f.min(axis=0)
    span = f.max(axis=0) - lo
    norm = np.where(span > 0, (f - lo) / np.where(span > 0, span, 1.0), 0.0)
    if f.shape[1] == 2 and f.shape[0] >= 3:
        # extremes are (0, 1) and (1, 0): signed distance to x + y = 1, positive on the ideal side
        gap = (1.0 - norm.sum(axis=1)) / math.sqrt(2.0)
        best = int(np.argmax(gap))
        if gap[best] > 1e-12:
            return int(idx[best])
    dist = np.sqrt(np.sum(norm**2, axis=1))
    return int(idx[int(np.argmin(dist))])


# --------------------------------------------------------------------------------------------
# Records, fronts and selection rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One finished trial as the analysis sees it."""

    number: int
    metrics: Mapping[str, float]
    feasible: bool
    params: Mapping[str, Any] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        """The metric as a float; NaN when the trial did not report it."""
        v = self.metrics.get(metric)
        return math.nan if v is None else float(v)


def front(records: Sequence[Record], objectives: Sequence[tuple[str, Direction]]) -> list[Record]:
    """The feasible, finite, non-dominated records, best first in the first objective.

    Records that are infeasible or lack a finite value for any objective are left out before the
    front is computed.  Ties in the first objective are ordered by trial number.
    """
    if not objectives:
        raise ValueError("front needs at least one objective")
    names = [name for name, _ in objectives]
    directions = [d for _, d in objectives]
    candidates = [
        r for r in records if r.feasible and all(math.isfinite(r.value(name)) for name in names)
    ]
    if not candidates:
        return []
    pts = np.array([[r.value(name) for name in names] for r in candidates], dtype=float)
    mask = pareto_mask(pts, directions)
    first = pts[:, 0] * (-1.0 if directions[0] == "maximize" else 1.0)
    keep = [int(i) for i in np.flatnonzero(mask)]
    keep.sort(key=lambda i: (first[i], candidates[i].number))
    return [candidates[i] for i in keep]


GOALS: dict[str, tuple[str, Direction]] = {
    "fastest": ("latency_p95_ms", "minimize"),
    "fastest p50": ("latency_p50_ms", "minimize"),
    "cheapest": ("cost_usd_per_million", "minimize"),
    "smallest": ("model_size_mb", "minimize"),
    "leanest": ("peak_memory_mb", "minimize"),
    "highest throughput": ("throughput_ips", "maximize"),
    "most accurate": ("quality", "maximize"),
}
"""Named goals of a selection rule: the metric each optimises and in which direction."""

_RULE_HELP = (
    "A selection rule reads '<goal> [with <constraint> [and <constraint>]...]' where <goal> is one "
    f"of {', '.join(repr(g) for g in GOALS)}, 'min <metric>' or 'max <metric>'. "
    "Example: 'fastest with accuracy_drop <= 1% and model_size_mb <= 5'. A constraint may also "
    "filter on a configuration parameter: 'runtime == onnxruntime', 'quantization != bf16', "
    "'threads in [2, 4]', 'quantization not in [fp16, bf16]'."
)
_PARAM = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*(?P<op>==|!=|\s(?:not\s+)?in\s)\s*(?P<value>.+)$",
                    re.I | re.S)


def _scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@dataclass(frozen=True)
class ParamFilter:
    """``<parameter> == | != <value>`` or ``<parameter> [not] in [<value>, ...]`` on a trial's
    configuration.  Values compare as YAML scalars, or as text (``2`` matches ``"2"``)."""

    text: str
    name: str
    values: tuple[Any, ...]
    negate: bool

    def matches(self, params: Mapping[str, Any]) -> bool:
        if self.name not in params:
            return self.negate
        v = params[self.name]
        hit = any(v == w or str(v) == str(w) for w in self.values)
        return hit != self.negate


def parse_param_filter(text: str) -> ParamFilter | None:
    """A :class:`ParamFilter` if ``text`` is one, else None (a metric constraint)."""
    m = _PARAM.match(" ".join(text.split()))
    if not m:
        return None
    op = " ".join(m["op"].split()).lower()
    raw = m["value"].strip()
    if op in ("in", "not in"):
        inner = raw[1:-1] if raw[:1] in "[(" and raw[-1:] in "])" else raw
        values = tuple(_scalar(x.strip()) for x in inner.split(",") if x.strip())
        if not values:
            raise SpecError(f"'{text}' lists no values after '{op}'. {_RULE_HELP}")
    else:
        values = (_scalar(raw),)
    return ParamFilter(text=" ".join(text.split()), name=m["name"], values=values,
                       negate=op in ("!=", "not in"))
_WITH = re.compile(r"^(?P<goal>.*?)\s+with\s+(?P<rest>.*)$", re.I | re.S)
_AND = re.compile(r"\s+and\s+", re.I)
_EXPLICIT = re.compile(r"^(?P<dir>min|max)\s+(?P<metric>[A-Za-z_]\w*)$", re.I)


@dataclass(frozen=True)
class SelectionRule:
    """A parsed selection rule: optimise ``metric`` in ``direction`` subject to ``constraints``."""

    text: str
    metric: str
    direction: Direction
    constraints: tuple[Constraint, ...] = ()
    #: filters on the configuration (``runtime == onnxruntime``)
    filters: tuple[ParamFilter, ...] = ()

    def qualifies(self, record: Record, baseline: Mapping[str, float] | None = None) -> bool:
        """Feasible, has a finite value of the goal metric, passes every parameter filter and
        meets every constraint."""
        if not record.feasible or not math.isfinite(record.value(self.metric)):
            return False
        if not all(f.matches(record.params) for f in self.filters):
            return False
        for c in self.constraints:
            try:
                if c.violation(record.metrics, baseline) > 0:
                    return False
            except KeyError as exc:
                raise SpecError(
                    f"selection rule '{self.text}': constraint '{c.text}' is relative to the "
                    f"baseline, but no baseline value of {c.metric} is available"
                ) from exc
        return True

    def select(
        self, records: Sequence[Record], baseline: Mapping[str, float] | None = None
    ) -> Record | None:
        """The best qualifying record (ties: lower trial number), or None if none qualifies.

        Only feasible records count.  Relative constraints (``... of baseline``) are evaluated
        against ``baseline``; a missing baseline value raises :class:`SpecError`.
        """
        sign = -1.0 if self.direction == "maximize" else 1.0
        best: Record | None = None
        best_key: tuple[float, int] | None = None
        for r in records:
            if not self.qualifies(r, baseline):
                continue
            key = (sign * r.value(self.metric), r.number)
            if best_key is None or key < best_key:
                best, best_key = r, key
        return best

    def __str__(self) -> str:
        return self.text


def parse_rule(text: str) -> SelectionRule:
    """Parse a selection rule such as ``fastest with accuracy_drop <= 1% and model_size_mb <= 5``.

    Grammar (keywords case-insensitive): ``<goal> [with <constraint> [and <constraint>]*]``, where
    ``<goal>`` is a key of :data:`GOALS` or ``min <metric>`` / ``max <metric>``, and each
    constraint uses the syntax of :func:`autotune.core.constraints.parse_constraint`.  Raises
    :class:`SpecError` for anything else.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"empty selection rule. {_RULE_HELP}")
    clean = " ".join(text.split())
    m = _WITH.match(clean)
    if m:
        goal_text, rest = m["goal"], m["rest"]
        if not rest.strip():
            raise SpecError(f"selection rule '{clean}' has nothing after 'with'. {_RULE_HELP}")
    else:
        goal_text, rest = clean, None
    goal = goal_text.strip()
    if goal.lower() in GOALS:
        metric, direction = GOALS[goal.lower()]
    else:
        e = _EXPLICIT.match(goal)
        if not e:
            raise SpecError(
                f"cannot read the goal '{goal}' in selection rule '{clean}'. {_RULE_HELP}"
            )
        metric = e["metric"]
        direction = "minimize" if e["dir"].lower() == "min" else "maximize"
    constraints: list[Constraint] = []
    filters: list[ParamFilter] = []
    if rest is not None:
        for part in _AND.split(rest):
            pf = parse_param_filter(part)
            if pf is not None:
                filters.append(pf)
                continue
            try:
                constraints.append(parse_constraint(part))
            except ConstraintSyntaxError as exc:
                raise SpecError(
                    f"cannot read the constraint '{part}' in selection rule '{clean}'. "
                    f"{SYNTAX_HELP} {_RULE_HELP}"
                ) from exc
    return SelectionRule(
        text=clean, metric=metric, direction=direction, constraints=tuple(constraints),
        filters=tuple(filters),
    )
