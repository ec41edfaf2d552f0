"""The façade of the tuning loop: ``run``, ``run_worker`` and ``status`` of a job.

The Optuna study is the source of truth; running the same job again continues it.  The agent is
rebuilt on every run by replaying the study's finished trials, so any agent can resume any study.
:func:`run` and ``autotune worker`` run the same loop, :class:`autotune.worker.Worker`, built from
:mod:`autotune.loop`; this module assembles it: the machine restriction of the space
(:func:`restrict_to_machine`) and MLflow tracking as a loop callback
(:class:`autotune.callbacks.TrackingCallback`).

Names that used to live here are re-exported (study access: :mod:`autotune.study`, the front:
:mod:`autotune.review`, the loop's parts: :mod:`autotune.loop`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from autotune.callbacks import TrackingCallback
from autotune.loop import (
    MAX_INVALID_IN_A_ROW,
    LoopCallback,
    Progress,
    RunSummary,
    baseline_config,
    check_space,
    summarize,
)
from autotune.review import front_row, pareto_views
from autotune.space import Invalid, SearchSpace
from autotune.spec import Job
from autotune.study import open_record
from autotune.worker import Worker, WorkerOptions
from autotune.worker import run_worker as _run_worker

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


def restrict_to_machine(space: SearchSpace, caps: Mapping[str, Any], *,
                        runtime_default: str | None = None) -> tuple[SearchSpace, list[str]]:
    """Remove choices this machine cannot run; each removal is a notice the user sees.

    Whole choices go (device cuda without a GPU, ONNX Runtime providers that are not installed);
    choices that only some combinations cannot run become ``invalid`` rules (fp16 on a CPU
    without fp16 arithmetic, with torch), also with a notice.
    """
    notices: list[str] = []

    def note(n: Any) -> None:
        if n:
            notices.append(str(n))

    allowed_devices = ["cpu"] + (["cuda"] if caps.get("cuda") else [])
    space, n = space.restrict("device", allowed_devices, "no CUDA device on this machine")
    note(n)
    if not caps.get("ort_available", True):
        space, n = space.restrict("runtime", ["torch"], "onnxruntime is not installed")
        note(n)
    providers = set(caps.get("ort_providers") or ("CPUExecutionProvider",))
    allowed_eps = ["cpu"]
    if "CUDAExecutionProvider" in providers and caps.get("cuda", True):
        allowed_eps.append("cuda")
    if caps.get("tensorrt") or "TensorrtExecutionProvider" in providers:
        allowed_eps.append("tensorrt")
    space, n = space.restrict("execution_provider", allowed_eps,
                              "ONNX Runtime here has no such execution provider")
    note(n)
    fixed = {"device": "cpu", "runtime": runtime_default}
    cpu_torch = {"device": "cpu", "runtime": "torch"}
    if not caps.get("cpu_fp16"):
        space, n = forbid(space, "quantization", ["fp16"], cpu_torch, fixed,
                          "this CPU has no native fp16 arithmetic (torch would emulate it)")
        note(n)
    if not caps.get("cpu_bf16"):
        space, n = forbid(space, "quantization", ["bf16"], cpu_torch, fixed,
                          "this CPU has no native bf16 arithmetic (torch would emulate it)")
        note(n)
    if caps.get("cuda"):
        if not caps.get("cuda_bf16"):
            space, n = forbid(space, "quantization", ["bf16"], {"device": "cuda"}, fixed,
                              "this GPU has no native bf16")
            note(n)
        if not caps.get("cuda_fp16"):
            space, n = forbid(space, "quantization", ["fp16"], {"device": "cuda"}, fixed,
                              "this GPU has no fast fp16")
            note(n)
    return space, notices


def forbid(space: SearchSpace, name: str, values: Sequence[Any], when: Mapping[str, Any],
           fixed: Mapping[str, Any], reason: str) -> tuple[SearchSpace, str | None]:
    """Add an ``invalid`` rule: ``name`` in ``values`` cannot run when ``when`` holds.

    Conditions on parameters that are not in the space are decided with ``fixed`` (their
    value when unsearched; None: unknown, the condition is kept as always true)."""
    if name not in space:
        return space, None
    p = space[name]
    vals = tuple(v for v in values if p.contains(v))
    if not vals:
        return space, None
    cond: dict[str, tuple[Any, ...]] = {}
    for k, v in when.items():
        if k in space:
            cond[k] = (v,)
        elif fixed.get(k) is not None and fixed[k] != v:
            return space, None  # the condition can never hold
    new = replace(p, invalid=(*p.invalid, Invalid(vals, cond, reason)))
    space = replace(space, params=tuple(new if q.name == name else q for q in space.params))
    where = f" with {', '.join(f'{k}={v[0]}' for k, v in cond.items())}" if cond else ""
    return space, (f"search space: removed {name} = {', '.join(map(str, vals))}{where} "
                   f"({reason})")


def default_callbacks(job: Job) -> list[LoopCallback]:
    """The loop's observers for a job: MLflow tracking (it does nothing when disabled)."""
    return [TrackingCallback(job)]


def run(job: Job, *, max_trials: int | None = None, progress: Progress | None = None,
        harness: Any = None, exclusive: bool | None = None,
        callbacks: Sequence[LoopCallback] | None = None) -> RunSummary:
    """Run (or continue) the job until its budget is used up (:class:`autotune.worker.Worker`).

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
    used up (:func:`autotune.worker.run_worker` with this machine's restriction and tracking)."""
    return _run_worker(job, restrict=restrict_to_machine, opts=opts, max_trials=max_trials,
                       progress=progress, harness=harness,
                       callbacks=default_callbacks(job) if callbacks is None else callbacks)


def status(job: Job) -> RunSummary:
    record = open_record(job, create=False)
    views = record.trials()
    return summarize(job, record, views, 0, time.monotonic(),
                     finished=record.counted() >= job.budget.max_trials, tracking_error=None)
