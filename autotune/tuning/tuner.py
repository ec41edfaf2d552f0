"""The façade of the tuning loop: ``run``, ``run_worker`` and ``status`` of a job.

The Optuna study is the source of truth; running the same job again continues it.  The agent is
rebuilt on every run by replaying the study's finished trials, so any agent can resume any study.
:func:`run` and ``autotune worker`` run the same loop, :class:`autotune.tuning.worker.Worker`, built from
:mod:`autotune.tuning.loop`; this module assembles it: the machine restriction of the space
(:func:`restrict_to_machine`) and MLflow tracking as a loop callback
(:class:`autotune.tuning.callbacks.TrackingCallback`).

Names that used to live here are re-exported (study access: :mod:`autotune.record.study`, the front:
:mod:`autotune.review.front`, the loop's parts: :mod:`autotune.tuning.loop`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from autotune.job.machine import CAUSES_ATTR, forbid, forbid_causes, learned_causes, restrict_to_machine
from autotune.job.spec import Job
from autotune.record.study import open_record
from autotune.review.front import front_row, pareto_views
from autotune.tuning.callbacks import TrackingCallback
from autotune.tuning.loop import (
    MAX_INVALID_IN_A_ROW,
    LoopCallback,
    Progress,
    RunSummary,
    baseline_config,
    check_space,
    summarize,
)
from autotune.tuning.worker import Worker, WorkerOptions
from autotune.tuning.worker import run_worker as _run_worker

__all__ = [
    "MAX_INVALID_IN_A_ROW",
    "LoopCallback",
    "Progress",
    "RunSummary",
    "WorkerOptions",
    "baseline_config",
    "check_space",
    "forbid",
    "front_row",
    "open_record",
    "pareto_views",
    "restrict_to_machine",
    "run",
    "run_worker",
    "status",
]



def default_callbacks(job: Job) -> list[LoopCallback]:
    """The loop's observers for a job: MLflow tracking (it does nothing when disabled)."""
    return [TrackingCallback(job)]


def run(job: Job, *, max_trials: int | None = None, progress: Progress | None = None,
        harness: Any = None, exclusive: bool | None = None,
        callbacks: Sequence[LoopCallback] | None = None) -> RunSummary:
    """Run (or continue) the job until its budget is used up (:class:`autotune.tuning.worker.Worker`).

    ``exclusive`` (default: when the storage is SQLite, one process per study): RUNNING trials
    left by a killed earlier run are failed as interrupted at once.  Otherwise (a shared storage)
    this run is one more worker of the study, and dead workers' trials are found by heartbeats.
    ``callbacks`` observe the loop (default: MLflow tracking, :func:`default_callbacks`).
    """
    if exclusive is None:
        exclusive = job.storage_url.startswith("sqlite")
    return Worker(job, restrict=restrict_to_machine, max_trials=max_trials, progress=progress,
                  harness=harness, exclusive=exclusive,
                  callbacks=default_callbacks(job) if callbacks is None else callbacks).run()


def run_worker(job: Job, *, opts: WorkerOptions | None = None, max_trials: int | None = None,
               progress: Progress | None = None, harness: Any = None,
               callbacks: Sequence[LoopCallback] | None = None) -> RunSummary:
    """``autotune worker``: join the job's study and measure trials until its (global) budget is
    used up (:func:`autotune.tuning.worker.run_worker` with this machine's restriction and tracking)."""
    return _run_worker(job, restrict=restrict_to_machine, opts=opts, max_trials=max_trials,
                       progress=progress, harness=harness,
                       callbacks=default_callbacks(job) if callbacks is None else callbacks)


def status(job: Job) -> RunSummary:
    record = open_record(job, create=False)
    views = record.trials()
    _, learned = forbid_causes(job.space, learned_causes(record.attr(CAUSES_ATTR)))
    return summarize(job, record, views, 0, time.monotonic(),
                     finished=record.counted() >= job.budget.max_trials, tracking_error=None,
                     notices=learned)
