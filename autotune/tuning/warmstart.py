"""Warm start from an earlier study (``agent.warm_start_from``).

The earlier study's best trials — feasible under *this* job's constraints, ranked by
non-dominated sorting on *this* job's objectives, first front first, ``top_k`` of them — are used
twice:

* replayed into the agent as observations (so its model starts informed), and
* queued as the job's first configurations, to be **re-measured on this machine**: numbers from
  another run (maybe another machine, another day) are a hint, never a result.  Only the
  re-measurements enter this job's study and its Pareto front.

Every referenced configuration must be valid in this job's search space; otherwise the job stops
with a :class:`SpecError` naming the trial and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotune.agents.base import Observation
from autotune.core.pareto import non_dominated_sort
from autotune.core.space import Config, SearchSpace
from autotune.core.yamlsrc import load_located
from autotune.errors import SpecError
from autotune.job.spec import Job
from autotune.record.study import trial_metrics

FIELD = "agent.warm_start_from"


@dataclass(frozen=True)
class WarmStart:
    observations: tuple[Observation, ...]
    configs: tuple[Config, ...]
    message: str


def storage_url(raw: str, base_dir: str | Path) -> str:
    """An Optuna storage URL as given, or a path (relative to the job file) to a SQLite file."""
    if "://" in raw:
        return raw
    path = Path(raw)
    if not path.is_absolute():
        path = Path(base_dir) / path
    return f"sqlite:///{path.resolve()}"


def _error(job: Job, message: str, sub: str = "", hint: str | None = None) -> SpecError:
    loc: tuple[str | int, ...] = ("agent", "warm_start_from", *([sub] if sub else []))
    line = None
    if job.source and Path(job.source).is_file():
        line = load_located(job.source).line_of(loc)
    return SpecError(message, file=job.source if job.source != "<memory>" else None, line=line,
                     path=".".join(map(str, loc)), hint=hint)


def from_study(job: Job, space: SearchSpace) -> WarmStart:
    import optuna
    from optuna.trial import TrialState

    ws = job.agent.warm_start_from
    assert ws is not None
    url = storage_url(ws.storage, job.base_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise _error(job, f"no study file at {url.removeprefix('sqlite:///')}.", "storage")
    try:
        storage = optuna.storages.get_storage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception as exc:
        raise _error(job, f"cannot open the storage {ws.storage}: {exc}.", "storage") from None
    if ws.study not in names:
        raise _error(job, f"no study named '{ws.study}' in {ws.storage}.", "study",
                     hint=f"Studies there: {', '.join(sorted(names)) or 'none'}.")
    study = optuna.load_study(study_name=ws.study, storage=storage)
    baseline = study.user_attrs.get("baseline") or {}
    objectives = job.objective_pairs
    rows: list[tuple[Any, dict[str, float], tuple[float, ...]]] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = trial_metrics(t.user_attrs)
        if not metrics and t.values is not None:  # a study written by another tool
            saved = study.user_attrs.get("objectives") or []
            metrics = {str(m): float(v) for (m, _), v in zip(saved, t.values, strict=False)}
        if not all(m in metrics and math.isfinite(metrics[m]) for m, _ in objectives):
            continue
        try:
            violations = tuple(c.violation(metrics, baseline) for c in job.parsed_constraints)
        except KeyError:  # a relative constraint the earlier study has no baseline for
            violations = tuple(math.inf for _ in job.parsed_constraints)
        if all(v <= 0 for v in violations):
            rows.append((t, metrics, violations))
    chosen: list[tuple[Any, dict[str, float], tuple[float, ...]]] = []
    if rows:
        pts = np.array([[m[name] for name, _ in objectives] for _, m, _ in rows], dtype=float)
        ranks = non_dominated_sort(pts, [d for _, d in objectives])
        order = sorted(range(len(rows)), key=lambda i: (int(ranks[i]), rows[i][0].number))
        chosen = [rows[i] for i in order[: ws.top_k]]
    observations, configs = [], []
    for t, metrics, violations in chosen:
        config = dict(t.params)
        problems = space.validate(config)
        if problems:
            raise _error(
                job, f"trial {t.number} of study '{ws.study}' is not a configuration of this "
                f"job's search space: {problems[0]}.",
                hint="Warm-start from a study over the same parameters, or widen the space.",
            )
        configs.append(config)
        observations.append(Observation(
            config=config, values=tuple(metrics[m] for m, _ in objectives),
            violations=violations, metrics=metrics,
        ))
    message = (f"warm start: {len(configs)} configuration(s) from study '{ws.study}' "
               f"({len(rows)} feasible there) will be re-measured first")
    return WarmStart(tuple(observations), tuple(configs), message)
