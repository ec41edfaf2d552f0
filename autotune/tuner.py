"""The tuning loop: propose → apply and measure (isolated) → record → track.

The Optuna study is the source of truth; running the same job again continues it.  The agent is
rebuilt on every run by replaying the study's finished trials, so any agent can resume any study.
:func:`run` and ``autotune worker`` run the same loop, :class:`autotune.worker.Worker`; this module
holds what it is built from (space restriction, baseline, summaries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError, SpecError, StudyError, TrialFailed
from autotune.space import SearchSpace
from autotune.spec import Job
from autotune.study import StudyRecord, TrialView, derive_metrics

#: how many invalid combinations in a row an agent may propose before the run gives up
MAX_INVALID_IN_A_ROW = 200


@dataclass(frozen=True)
class RunSummary:
    job: str
    finished: bool  # the budget is used up
    trials: tuple[TrialView, ...]
    front: tuple[TrialView, ...]
    baseline: Mapping[str, float]
    new_trials: int
    wall_s: float
    notices: tuple[str, ...] = ()
    tracking_error: str | None = None

    @property
    def n_complete(self) -> int:
        return sum(t.state == "complete" for t in self.trials)

    @property
    def n_failed(self) -> int:
        return sum(t.state == "failed" for t in self.trials)


@dataclass
class Progress:
    """Callbacks for a UI; the CLI draws a progress bar from them."""

    on_start: Callable[[int, int], None] = lambda done, total: None
    on_trial: Callable[[TrialView, int, int, Sequence[TrialView]], None] = (
        lambda view, done, total, front: None
    )
    on_message: Callable[[str], None] = lambda msg: None
    extra: dict[str, Any] = field(default_factory=dict)


def open_record(job: Job, *, create: bool = True) -> StudyRecord:
    """The job's study; with ``create=False`` a :class:`StudyError` (not a database error) when
    the job has never run."""
    if create:
        job.out_dir.mkdir(parents=True, exist_ok=True)
    else:
        url = job.storage_url
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise StudyError(f"no study for job '{job.name}' at {url.removeprefix('sqlite:///')}; "
                             f"run the job first (autotune run {job.source}).")
    return StudyRecord(job.storage_url, job.name, job.objective_pairs, job.parsed_constraints,
                       create=create)


def baseline_config(space: SearchSpace, runtime_default: str) -> dict[str, Any]:
    """The unmodified model: fp32, unpruned, batch size and threads as the space's first/low."""
    cfg: dict[str, Any] = {"runtime": runtime_default, "quantization": "fp32",
                           "pruning_ratio": 0.0}
    if "batch_size" in space:
        p = space["batch_size"]
        cfg["batch_size"] = p.choices[0] if p.kind == "categorical" else int(p.low)
    return cfg


def pareto_views(trials: Sequence[TrialView], job: Job) -> list[TrialView]:
    from autotune.pareto import Record, front

    by_number = {t.number: t for t in trials}
    records = [Record(t.number, t.metrics, t.feasible, t.config) for t in trials
               if t.state == "complete"]
    return [by_number[r.number] for r in front(records, job.objective_pairs)]


def pareto_ranks(trials: Sequence[TrialView], job: Job) -> dict[int, int]:
    import numpy as np

    from autotune.pareto import non_dominated_sort

    done = [t for t in trials if t.feasible]
    if not done:
        return {}
    pts = np.array([[t.metrics.get(m, np.nan) for m, _ in job.objective_pairs] for t in done],
                   dtype=float)
    ranks = non_dominated_sort(pts, [d for _, d in job.objective_pairs])
    return {t.number: int(r) for t, r in zip(done, ranks, strict=True)}


def check_space(job: Job, space: SearchSpace) -> None:
    if job.is_custom:
        return  # the user's objective defines its own parameters
    from autotune.runtimes import declared_parameters

    declared = declared_parameters()
    for p in space:
        if p.name not in declared:
            raise SpecError(
                f"the harness does not know the parameter '{p.name}'.",
                file=job.source, path=f"search_space.parameters.{p.name}",
                hint=f"Known parameters: {', '.join(declared)}.",
            )


def restrict_to_machine(space: SearchSpace, caps: Mapping[str, Any], *,
                        runtime_default: str | None = None) -> tuple[SearchSpace, list[str]]:
    """See :func:`autotune.machine.restrict_to_machine` (derived from the declarations)."""
    from autotune.machine import restrict_to_machine as restrict

    return restrict(space, caps, runtime_default=runtime_default)


def forbid(space: SearchSpace, name: str, values: Sequence[Any], when: Mapping[str, Any],
           fixed: Mapping[str, Any], reason: str) -> tuple[SearchSpace, str | None]:
    """See :func:`autotune.machine.forbid`."""
    from autotune.machine import forbid as machine_forbid

    return machine_forbid(space, name, values, when, fixed, reason)


def run(job: Job, *, max_trials: int | None = None, progress: Progress | None = None,
        harness: Any = None, exclusive: bool | None = None) -> RunSummary:
    """Run (or continue) the job until its budget is used up (:class:`autotune.worker.Worker`).

    ``exclusive`` (default: when the storage is SQLite, one process per study): RUNNING trials
    left by a killed earlier run are failed as interrupted at once.  Otherwise (a shared storage)
    this run is one more worker of the study, and dead workers' trials are found by heartbeats.
    """
    from autotune.worker import Worker

    if exclusive is None:
        exclusive = job.storage_url.startswith("sqlite")
    return Worker(job, max_trials=max_trials, progress=progress, harness=harness,
                  exclusive=exclusive).run()


def prepare(job: Job, record: StudyRecord, harness: Any, full_space: SearchSpace,
            progress: Progress) -> tuple[SearchSpace, list[str], dict[str, float]]:
    """What the loop does before the first trial: restrict the space to this
    machine (with notices) and measure the baseline once per study (kept in the study)."""
    if job.is_custom:
        space, notices = full_space, []
    else:
        from autotune.runtimes import job_default_runtime

        space, notices = restrict_to_machine(full_space, harness.capabilities(),
                                             runtime_default=job_default_runtime(job))
    for n in notices:
        progress.on_message(n)
    baseline = record.baseline
    if baseline is None:
        if job.is_custom:
            baseline = _custom_baseline(job, harness, progress)
        else:
            progress.on_message("measuring the unmodified model (baseline)")
            from autotune.runtimes import job_default_runtime

            runtime_default = job_default_runtime(job)
            try:
                result = harness.evaluate(baseline_config(space, runtime_default))
            except TrialFailed as exc:
                raise AutotuneError(f"the unmodified model could not be measured: {exc}") from None
            ev = job.evaluation
            baseline = derive_metrics(result.metrics, None, ev.quality_name,
                                      ev.quality_higher_is_better)
        record.set_attr("baseline", baseline)
        record.set_attr("fingerprint", harness.fingerprint())
    return space, notices, baseline


def _custom_baseline(job: Job, harness: Any, progress: Progress) -> dict[str, float]:
    """A custom objective has a baseline only when the job names one (``baseline:``)."""
    if job.baseline is None:
        return {}
    progress.on_message("measuring the baseline configuration")
    try:
        return dict(harness.evaluate(dict(job.baseline)).metrics)
    except TrialFailed as exc:
        raise AutotuneError(f"the baseline configuration could not be measured: {exc}") from None


def front_row(t: TrialView, job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {"trial": t.number}
    row.update(t.config)
    for m, _ in job.objective_pairs:
        row[m] = t.metrics.get(m)
    for c in job.parsed_constraints:
        row.setdefault(c.metric, t.metrics.get(c.metric))
    why = (t.user_attrs.get("details") or {}).get("not_exportable")
    if why:  # said before anyone picks it (autotune status, the report's front table)
        row["export"] = f"not exportable: {why}"
    return row


def _summary(job: Job, record: StudyRecord, views: list[TrialView], new: int, t0: float, *,
             finished: bool, tracking_error: str | None,
             notices: Sequence[str] = ()) -> RunSummary:
    return RunSummary(
        job=job.name, finished=finished, trials=tuple(views),
        front=tuple(pareto_views(views, job)), baseline=record.baseline or {},
        new_trials=new, wall_s=time.monotonic() - t0, tracking_error=tracking_error,
        notices=tuple(notices),
    )



def status(job: Job) -> RunSummary:
    record = open_record(job, create=False)
    views = record.trials()
    return _summary(job, record, views, 0, time.monotonic(),
                    finished=record.counted() >= job.budget.max_trials, tracking_error=None)

