"""What reviewers look at, computed from the study: the feasible front, the trial table, Pareto
ranks and the hypervolume history against a reference point fixed once per study.

Everything here reads :class:`~autotune.record.study.TrialView` objects (the study is the record); MLflow
artifacts (:mod:`autotune.review.tracking`), plots (:mod:`autotune.review.plots`) and the HTML report
(:mod:`autotune.review.report`) are drawn from the same functions, so they always agree.

Hypervolume reference point
---------------------------
Hypervolumes are only comparable under one reference point, so it is fixed **once per study** and
stored in the study's user attrs under :data:`REFERENCE_ATTR` (raw metric values, one per
objective, in the job's objective order):

1. if the job declares ``report: {reference: {metric: value, ...}}`` for every objective, that;
2. otherwise, as soon as the unmodified model (baseline) has been measured:
   :func:`autotune.core.pareto.default_reference` over the baseline point alone (margin 0.1), i.e. "10 %
   worse than the unmodified model" in every objective (by ``0.1 × |value|``, or 0.1 when the value
   is 0).  The hypervolume then measures how much of the objective space the feasible trials
   cover *beyond* (roughly) the baseline; a trial worse than that in any objective adds nothing;
3. if the baseline lacks an objective, the same rule over the baseline and the finished trials
   known at that moment.

Once stored, the reference never changes, even if the job file's ``report.reference`` is edited
later (delete the attr, or start a new study, to change it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autotune.core.constraints import parse_constraint
from autotune.core.metrics import REFERENCE_PREFIX, REFERENCE_SOURCE, Direction
from autotune.core.pareto import Record, default_reference, front, hypervolume_history, non_dominated_sort
from autotune.job.spec import Job
from autotune.record.study import StudyRecord, TrialView

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

REFERENCE_ATTR = "hypervolume_reference"

Objectives = Sequence[tuple[str, Direction]]


def objective_points(views: Sequence[TrialView], objectives: Objectives) -> list[list[float]]:
    """One row of objective values per view (NaN where a metric is missing)."""
    return [[_num(v.metrics.get(m)) for m, _ in objectives] for v in views]


def _num(x: Any) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f


def pareto_views(views: Sequence[TrialView], job: Job) -> list[TrialView]:
    """The feasible Pareto front of the complete trials, in the order of
    :func:`autotune.core.pareto.front`."""
    by_number = {t.number: t for t in views}
    records = [Record(t.number, t.metrics, t.feasible, t.config) for t in views
               if t.state == "complete"]
    return [by_number[r.number] for r in front(records, job.objective_pairs)]


def front_row(t: TrialView, job: Job) -> dict[str, Any]:
    """One front trial as a row: number, configuration, objectives, constrained metrics."""
    row: dict[str, Any] = {"trial": t.number}
    row.update(t.config)
    for m, _ in job.objective_pairs:
        row[m] = t.metrics.get(m)
    for c in job.parsed_constraints:
        row.setdefault(c.metric, t.metrics.get(c.metric))
    src = str(t.user_attrs.get("source", ""))
    if src.startswith(REFERENCE_SOURCE):  # a hand recipe on the front
        row["recipe"] = src
    for m, v in t.metrics.items():  # "vs hand int8: 1.31x" (autotune.record.study.with_reference_speedups)
        if m.startswith(REFERENCE_PREFIX):
            row[m] = f"{v:.2f}x"
    why = (t.user_attrs.get("details") or {}).get("not_exportable")
    if why:  # said before anyone picks it (autotune status, the report's front table)
        row["export"] = f"not exportable: {why}"
    return row


def pareto_ranks(views: Sequence[TrialView], objectives: Objectives) -> dict[int, int]:
    """Non-dominated rank (0 = on the front) of every feasible trial with finite objectives."""
    done = [t for t in views if t.feasible]
    pts = objective_points(done, objectives)
    keep = [i for i, p in enumerate(pts) if all(math.isfinite(x) for x in p)]
    if not keep:
        return {}
    ranks = non_dominated_sort([pts[i] for i in keep], [d for _, d in objectives])
    return {done[i].number: int(r) for i, r in zip(keep, ranks, strict=True)}


def compute_reference(objectives: Objectives, baseline: Mapping[str, float] | None,
                      views: Sequence[TrialView] = (),
                      declared: Mapping[str, float] | None = None) -> list[float] | None:
    """The reference point by the rule in the module docstring (None if nothing is known yet)."""
    names = [m for m, _ in objectives]
    dirs = [d for _, d in objectives]
    if declared and all(m in declared for m in names):
        return [float(declared[m]) for m in names]
    rows: list[list[float]] = []
    if baseline:
        rows.append([_num(baseline.get(m)) for m in names])
    if not rows or not all(math.isfinite(x) for x in rows[0]):
        rows += objective_points([v for v in views if v.state == "complete"], objectives)
    rows = [r for r in rows if all(math.isfinite(x) for x in r)]
    if not rows:
        return None
    return [float(x) for x in default_reference(rows, dirs)]


def study_reference(record: StudyRecord, job: Job,
                    views: Sequence[TrialView] | None = None) -> list[float] | None:
    """The study's stored reference point; computed and stored the first time it is known."""
    saved = record.attr(REFERENCE_ATTR)
    if saved is not None:
        return [float(x) for x in saved]
    declared = job.report.reference if getattr(job, "report", None) is not None else None
    ref = compute_reference(job.objective_pairs, record.baseline,
                            views if views is not None else record.trials(), declared)
    if ref is not None:
        record.set_attr(REFERENCE_ATTR, ref)
    return ref


def hypervolume_series(views: Sequence[TrialView], objectives: Objectives,
                       reference: Sequence[float]) -> list[tuple[int, float]]:
    """``(trial number, hypervolume of the feasible trials up to it)`` for every finished trial
    (complete or failed), in trial-number order; never decreases."""
    done = sorted((v for v in views if v.state in ("complete", "failed")), key=lambda v: v.number)
    if not done:
        return []
    pts = objective_points(done, objectives)
    hv = hypervolume_history(pts, [v.feasible for v in done], [d for _, d in objectives],
                             list(reference))
    return [(v.number, float(h)) for v, h in zip(done, hv, strict=True)]


def trial_table(views: Sequence[TrialView], objectives: Objectives,
                ranks: Mapping[int, int] | None = None) -> pd.DataFrame:
    """Every trial as one row: number, state, feasibility, Pareto rank, agent, duration, reason,
    then the configuration, then every measurement (objectives first).

    A configuration value whose type differs between trials (e.g. a conditional parameter) is
    written as text so the table stores as Parquet.
    """
    import pandas as pd

    ranks = pareto_ranks(views, objectives) if ranks is None else ranks
    param_names = list(dict.fromkeys(k for v in views for k in v.config))
    obj_names = [m for m, _ in objectives]
    metric_names = list(dict.fromkeys(
        [m for m in obj_names if any(m in v.metrics for v in views)]
        + sorted({k for v in views for k in v.metrics})))
    rows = []
    for v in sorted(views, key=lambda t: t.number):
        row: dict[str, Any] = {
            "trial": v.number, "state": v.state, "feasible": v.feasible,
            "pareto_rank": ranks.get(v.number), "agent": v.agent, "duration_s": v.duration_s,
            "reason": v.reason,
        }
        for p in param_names:
            row[p] = v.config.get(p)
        for m in metric_names:
            key = m if m not in row else f"metric.{m}"
            row[key] = v.metrics.get(m)
        rows.append(row)
    columns = ["trial", "state", "feasible", "pareto_rank", "agent", "duration_s", "reason",
               *param_names, *[m if m not in param_names else f"metric.{m}" for m in metric_names]]
    df = pd.DataFrame(rows, columns=columns)
    df["pareto_rank"] = df["pareto_rank"].astype("Int64")
    for p in param_names:
        kinds = {type(x) for x in df[p] if x is not None and not (isinstance(x, float) and math.isnan(x))}
        if len(kinds) > 1 or (kinds and not kinds <= {int, float, bool, str}):
            df[p] = [None if x is None else str(x) for x in df[p]]
    return df


def front_table(views: Sequence[TrialView], job: Job) -> list[dict[str, Any]]:
    """The feasible Pareto front as rows (trial, configuration, objectives, constrained metrics)."""
    return [front_row(t, job) for t in pareto_views(list(views), job)]




# ------------------------------------------------------------------ values as the user wrote them
def percent_metrics(job: Job) -> set[str]:
    """Metrics the job's constraints or selection rules bound with a percentage (``accuracy_drop
    <= 2%``): the report shows their values as percentages too."""
    texts = list(job.constraints) + [part for rule in (job.report.rules or ())
                                     for part in _rule_constraints(rule)]
    out = set()
    for text in texts:
        try:
            c = parse_constraint(text)
        except ValueError:
            continue
        rhs = text.split(c.op, 1)[-1]
        if "%" in rhs and "baseline" not in rhs:
            out.add(c.metric)
    return out


def _rule_constraints(rule: str) -> list[str]:
    import re

    m = re.match(r"^.*?\s+with\s+(.*)$", " ".join(rule.split()), re.I)
    return re.split(r"\s+and\s+", m.group(1), flags=re.I) if m else []


def format_value(metric: str, value: Any, percent: set[str] | frozenset[str] = frozenset()) -> str:
    """A measurement as a reader expects it: a percentage where the job wrote one (``-0.24 %``),
    whole megabytes with thousands separators (``24,110 MB`` reads better than ``2.411e+04``),
    otherwise 4 significant digits without exponent notation for everyday magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if metric in percent:
        return f"{v * 100:.3g} %" if abs(v) >= 0.001 or v == 0 else f"{v * 100:.2g} %"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if metric.endswith("_mb") and abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4g}"


# ------------------------------------------------------------------ why a recommendation
def unstable(view: TrialView, target_ci: float) -> str:
    """``""`` when the latency estimate is as tight as the job asked for, else a short warning
    (``latency CI ±197 % (target ±3 %)``)."""
    ci = view.metrics.get("latency_ci_rel")
    if ci is None or not math.isfinite(float(ci)):
        return ""
    if float(ci) > target_ci or view.metrics.get("latency_stable") == 0:
        return f"unstable: latency CI ±{float(ci) * 100:.3g} % (target ±{target_ci * 100:.3g} %)"
    return ""


def why_line(view: TrialView, baseline: Mapping[str, float] | None, quality_name: str,
             percent: set[str] | frozenset[str] = frozenset()) -> str:
    """One sentence against the unmodified model: speed-up, quality change (in percentage points
    for accuracy-like metrics or when the job bounds the drop with a percentage), size change."""
    if not baseline:
        return "no baseline measured: nothing to compare against"
    parts = []
    sp = view.metrics.get("speedup")
    if sp is not None and math.isfinite(float(sp)):
        sp = float(sp)
        parts.append(f"{sp:.3g}× faster per item" if sp >= 1 or sp <= 0
                     else f"{1 / sp:.3g}× slower per item")
    q, bq = view.metrics.get("quality"), baseline.get("quality")
    if q is not None and bq is not None:
        d = float(q) - float(bq)
        fraction = quality_name in ("accuracy", "top1_agreement") or \
            f"{quality_name}_drop" in percent or "quality_drop" in percent
        if fraction:  # a share of items: percentage points
            parts.append(f"{quality_name} {float(q) * 100:.4g} % ({d * 100:+.2f} points)")
        else:
            parts.append(f"{quality_name} {float(q):.4g} ({d:+.3g})")
    s, bs = view.metrics.get("model_size_mb"), baseline.get("model_size_mb")
    if s is not None and bs:
        change = (float(s) / float(bs) - 1) * 100
        parts.append(f"model {format_value('model_size_mb', float(s))} MB "
                     f"({change:+.0f} %, was {format_value('model_size_mb', float(bs))} MB)")
    return "vs the unmodified model: " + ", ".join(parts) if parts else ""


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Objectives) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one (missing or
    non-finite values never dominate)."""
    better = False
    for m, d in objectives:
        x, y = _num(a.get(m)), _num(b.get(m))
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better
