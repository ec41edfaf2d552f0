"""What the tuning loop is built from: its summary, its observers and what it does before the
first trial.

The loop itself is :class:`autotune.tuning.worker.Worker`; :mod:`autotune.tuning.tuner` is the façade that
assembles it (machine restrictions, MLflow tracking) for ``autotune run`` and ``autotune worker``.
Observers of the loop are :class:`LoopCallback` objects, as Optuna's ``callbacks=`` are for
``study.optimize``: they are told what happened (MLflow tracking is one, see
:mod:`autotune.tuning.callbacks`) and never feed back into measuring, so the loop imports none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.core.space import SearchSpace, config_key
from autotune.errors import AutotuneError, SpecError, TrialFailed
from autotune.job.machine import restrict_to_job
from autotune.job.spec import Job
from autotune.measure.harness.contention import note as contention_note
from autotune.measure.harness.contention import wait_quiet
from autotune.measure.runtimes import job_default_runtime
from autotune.measure.workloads.registry import harness_params_for
from autotune.record.study import StudyRecord, TrialCounts, TrialView, derive_metrics
from autotune.review.front import pareto_views

#: how many invalid combinations in a row an agent may propose before the run gives up
MAX_INVALID_IN_A_ROW = 200

#: removes from a space what this machine cannot run: ``(space, capabilities, runtime_default=)``
#: → ``(space, notices)``; :func:`autotune.tuning.tuner.restrict_to_machine`
Restrict = Callable[..., tuple[SearchSpace, list[str]]]


@dataclass(frozen=True)
class RunSummary(TrialCounts):
    job: str
    finished: bool  # the budget is used up
    trials: tuple[TrialView, ...]
    front: tuple[TrialView, ...]
    baseline: Mapping[str, float]
    new_trials: int
    wall_s: float
    notices: tuple[str, ...] = ()
    tracking_error: str | None = None
    #: valid configurations the (machine-restricted) space holds; None: continuous or too many
    space_size: int | None = None
    #: distinct configurations measured (complete, or failed for a reason of their own)
    measured_configs: int = 0


@dataclass
class Progress:
    """Callbacks for a UI; the CLI draws a progress bar from them."""

    on_start: Callable[[int, int], None] = lambda done, total: None
    on_trial: Callable[[TrialView, int, int, Sequence[TrialView]], None] = (
        lambda view, done, total, front: None
    )
    on_message: Callable[[str], None] = lambda msg: None
    #: what the loop is waiting for right now (starting the measuring process, the host
    #: measurement lock); transient, where ``on_message`` is a line worth keeping
    on_status: Callable[[str], None] = lambda msg: None
    extra: dict[str, Any] = field(default_factory=dict)


class LoopCallback:
    """An observer of the loop; every hook is optional (these do nothing).

    A callback must not raise for a failure of its own (a server that is down): it keeps the
    problem in :attr:`error`, which the run's summary reports as ``tracking_error``.
    """

    #: the last problem this observer hit, if any
    error: str | None = None

    def on_loop_start(self, record: StudyRecord, baseline: Mapping[str, float] | None, *,
                      catch_up: bool, finished: bool) -> None:
        """The loop is ready (baseline measured).  ``catch_up``: no other worker writes now, so
        the observer may catch up on trials it missed; ``finished``: the budget was used up
        before this run started, so no trial will follow."""

    def on_trial_end(self, record: StudyRecord, view: TrialView,
                     views: Sequence[TrialView]) -> None:
        """A trial this worker measured is recorded; ``views`` are all trials so far."""

    def on_loop_end(self, record: StudyRecord, views: Sequence[TrialView], *,
                    new_trials: int) -> None:
        """The loop stopped (budget used up, timeout, or the study was already finished)."""


def check_space(job: Job, space: SearchSpace) -> None:
    """Every parameter of the space is one the harness knows (a custom objective: any)."""
    if job.is_custom:
        return  # the user's objective defines its own parameters
    known = harness_params_for(job)
    for p in space:
        if p.name not in known:
            raise SpecError(
                f"the harness does not know the parameter '{p.name}'.",
                file=job.source, path=f"search_space.parameters.{p.name}",
                hint=f"Known parameters: {', '.join(known)}.",
            )


def baseline_config(space: SearchSpace, runtime_default: str) -> dict[str, Any]:
    """The unmodified model: fp32, unpruned, batch size and threads as the space's first/low."""
    cfg: dict[str, Any] = {"runtime": runtime_default, "quantization": "fp32",
                           "pruning_ratio": 0.0}
    if "batch_size" in space:
        p = space["batch_size"]
        cfg["batch_size"] = p.choices[0] if p.kind == "categorical" else int(p.low)
    return cfg


def prepare(job: Job, record: StudyRecord, harness: Any, full_space: SearchSpace,
            progress: Progress, restrict: Restrict) -> tuple[SearchSpace, list[str], dict[str, float]]:
    """What the loop does before the first trial: restrict the space to this machine (with
    notices) and measure the baseline once per study (kept in the study)."""
    if job.is_custom:
        space, notices = full_space, []
    else:
        space, notices = restrict(
            full_space, harness.capabilities(),
            runtime_default=job_default_runtime(job))
        space, cannot = restrict_to_job(space, job)  # e.g. gradient pruning without a loss
        notices = [*notices, *cannot]
    for n in notices:
        progress.on_message(n)
    baseline = record.baseline
    if baseline is None:
        if job.is_custom:
            baseline = _custom_baseline(job, harness, progress)
        else:
            progress.on_message("measuring the unmodified model (baseline)")
            runtime_default = job_default_runtime(job)
            try:
                result = harness.evaluate(baseline_config(space, runtime_default))
                if loose_baseline(result.metrics, job.measurement.target_ci):  # once more
                    progress.on_message("the baseline's latency is unstable; re-measuring it")
                    again = harness.evaluate(baseline_config(space, runtime_default))
                    if again.metrics.get("latency_ci_rel", math.inf) < \
                            result.metrics.get("latency_ci_rel", math.inf):
                        result = again
                if (busy := contention_note(result.details)) is not None:
                    # every ratio rests on it: measured again once the cores are quiet
                    progress.on_message(f"baseline: {busy}")
                    m = job.measurement
                    _, waited = wait_quiet(m.quiet_wait_s,
                                           threshold_pct=m.contention_threshold_pct)
                    again = harness.evaluate(baseline_config(space, runtime_default))
                    if not contention_note(again.details):
                        result = again
                        progress.on_message(f"baseline: re-measured on quiet cores after "
                                            f"{waited:.0f} s")
                    else:
                        record.set_attr("baseline_contended", busy)
                        progress.on_message(
                            f"baseline: the cores stayed busy ({m.quiet_wait_s:g} s): its figure "
                            "is flagged contended; trials are ranked by their interleaved ratios "
                            "to it and the confirmation step re-measures it")
            except TrialFailed as exc:
                raise AutotuneError(f"the unmodified model could not be measured: {exc}") from None
            warn = loose_baseline(result.metrics, job.measurement.target_ci)
            if warn:
                progress.on_message(f"WARNING: {warn}")
                record.set_attr("baseline_unstable", warn)
            ev = job.evaluation
            baseline = derive_metrics(result.metrics, None, ev.quality_name,
                                      ev.quality_higher_is_better)
        record.set_attr("baseline", baseline)
        record.set_attr("fingerprint", harness.fingerprint())
    return space, notices, baseline


#: the baseline's latency figures a quiet re-measurement replaces (what ratios rest on)
_BASELINE_LATENCY = ("latency_p50_ms", "latency_p95_ms", "latency_per_item_ms", "throughput_ips")


def requiet_baseline(job: Job, record: StudyRecord, harness: Any, base_config: Mapping[str, Any],
                     progress: Progress, *, trial: int | None = None) -> dict[str, float] | None:
    """A study baseline whose figure ran contended (study attr ``baseline_contended``, set by
    :func:`prepare` when the cores stayed busy), measured again now that the cores are quiet (the
    caller knows: the trial it just measured ran quiet).  Every trial's ratio rests on that
    figure, and a trial ranked by its interleaved ratio is that ratio times it, so a contended
    baseline would inflate them all.  On quiet cores the new figure replaces the study's baseline
    (from ``trial`` on), ``baseline_contended`` is cleared and ``baseline_remeasured`` says why,
    how, and what the contended figure was; returns the new baseline.  None (nothing changed):
    the baseline was not contended, or this measurement ran contended too, or it failed."""
    busy = record.attr("baseline_contended")
    if not busy or job.is_custom or job.evaluation is None:
        return None
    try:
        result = harness.evaluate(dict(base_config))
    except TrialFailed as exc:
        progress.on_message(f"baseline: re-measuring it on quiet cores failed ({exc}); its figure "
                            "stays flagged contended")
        return None
    if contention_note(result.details) is not None:
        return None
    ev = job.evaluation
    old = record.baseline or {}
    new = derive_metrics(result.metrics, None, ev.quality_name, ev.quality_higher_is_better)
    record.set_attr("baseline", new)
    record.set_attr("baseline_contended", None)
    record.set_attr("baseline_remeasured", {
        "why": "its first figure was " + str(busy).removesuffix(
            "; it is measured again before it ranks"), "how": "quiet", "before_trial": trial,
        "contended": {k: old[k] for k in _BASELINE_LATENCY if k in old}})
    progress.on_message(
        f"baseline: re-measured on quiet cores: {new.get('latency_p50_ms', math.nan):.3g} ms "
        f"instead of the contended {old.get('latency_p50_ms', math.nan):.3g} ms; trials from "
        f"{'now' if trial is None else f'trial {trial}'} on are ranked against it")
    return new


def loose_baseline(metrics: Mapping[str, float], target_ci: float) -> str | None:
    """Why the baseline's latency cannot be trusted (its median's 95 % CI is wider than the job's
    ``measurement.target_ci``), or None."""
    ci = metrics.get("latency_ci_rel")
    if ci is None or ci <= target_ci:
        return None
    return (f"the baseline's latency is unstable: its median is known to +-{ci:.0%} (n="
            f"{metrics.get('latency_n', 0):.0f}), wider than measurement.target_ci "
            f"{target_ci:.0%}; speedups rest on it until the confirmation step (autotune confirm) "
            "re-measures it side by side")


def _custom_baseline(job: Job, harness: Any, progress: Progress) -> dict[str, float]:
    """A custom objective has a baseline only when the job names one (``baseline:``)."""
    if job.baseline is None:
        return {}
    progress.on_message("measuring the baseline configuration")
    try:
        return dict(harness.evaluate(dict(job.baseline)).metrics)
    except TrialFailed as exc:
        raise AutotuneError(f"the baseline configuration could not be measured: {exc}") from None


def summarize(job: Job, record: StudyRecord, views: list[TrialView], new: int, t0: float, *,
              finished: bool, tracking_error: str | None,
              notices: Sequence[str] = ()) -> RunSummary:
    measured = {config_key(t.config) for t in views if t.state in ("complete", "failed")
                and not t.reason.startswith("interrupted")}
    size = record.attr("space_size")
    return RunSummary(
        job=job.name, finished=finished, trials=tuple(views),
        front=tuple(pareto_views(views, job)), baseline=record.reported_baseline or {},
        new_trials=new, wall_s=time.monotonic() - t0, tracking_error=tracking_error,
        notices=tuple(notices), space_size=None if size is None else int(size),
        measured_configs=len(measured),
    )


def coverage(summary: RunSummary) -> str:
    """'12 of 29 valid configurations measured' (or '12 distinct configurations measured (the
    space is continuous or too large to count)')."""
    if summary.space_size is None:
        return (f"{summary.measured_configs} distinct configurations measured (the space is "
                "continuous or too large to count)")
    return f"{summary.measured_configs} of {summary.space_size} valid configurations measured"
