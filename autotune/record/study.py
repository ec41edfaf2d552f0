"""The Optuna study as the record of every trial, whichever agent proposed it.

Trials are written with their full configuration (params), every measurement as its own numeric
user attr (``metric.<name>``, so optuna-dashboard can sort, filter and plot each), the trial's
details one user attr per key (``detail.<key>``), the constraint violations and, for failures, the
reason.  The study carries the objectives' names (``study.set_metric_names``).  Constraints are
written twice: per key (``trial.set_constraint("c0", ...)``, Optuna 5's form) and as the list in
the ``constraints`` system attr that optuna-dashboard 0.21 reads (Optuna reads both; the keys
differ, so nothing is overwritten).  Studies written before per-metric attrs (one JSON ``metrics``
/ ``details`` attr) are read the same way.  Everything else (MLflow, reports, export, re-tuning)
reads from here.

This is also the only module that touches Optuna's private API (the section "Optuna internals"
below: trial and study ids, the heartbeat thread); a test keeps it that way.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from autotune.agents.base import Observation
from autotune.core.constraints import Constraint
from autotune.core.metrics import REFERENCE_SOURCE, Direction, baseline_ratios, reference_metric
from autotune.core.space import SearchSpace
from autotune.errors import StudyError
from autotune.job.spec import Job

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC_PREFIX = "metric."
DETAIL_PREFIX = "detail."
DASHBOARD_CONSTRAINTS = "constraints"  # the system attr optuna-dashboard 0.21 shows and reads
#: study attr written by :mod:`autotune.tuning.confirm`: ``{"baseline": {...}, "trials": {"N": {...}}}``
#: (finished trials cannot take new user attrs in Optuna, so confirmed figures live on the study)
CONFIRMATION = "confirmation"

INTERRUPTED = "interrupted: the run stopped before this trial finished"
STALE = "interrupted: the worker measuring this trial stopped sending heartbeats (it was re-queued)"


@dataclass(frozen=True)
class TrialView:
    """One trial as autotune reads it back from the study."""

    number: int
    state: str  # complete | failed | invalid | running
    config: Mapping[str, Any]
    metrics: Mapping[str, float] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    violations: tuple[float, ...] = ()
    reason: str = ""
    agent: str = ""
    duration_s: float | None = None
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    started: float | None = None  # POSIX seconds (the study's datetime_start)
    completed: float | None = None  # POSIX seconds (datetime_complete)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.violations)

    def observation(self) -> Observation:
        return Observation(
            config=self.config, values=self.values, violations=self.violations,
            state=self.state if self.state != "running" else "failed",  # type: ignore[arg-type]
            number=self.number, metrics=self.metrics,
        )



def derive_metrics(
    metrics: Mapping[str, float], baseline: Mapping[str, float] | None, quality_name: str,
    higher_is_better: bool,
) -> dict[str, float]:
    """Add the job-specific names and the ratios to the baseline.

    ``<quality>``, ``quality_drop``, ``<quality>_drop``; the ratios the metrics declare
    (:attr:`autotune.core.metrics.MetricInfo.ratio_of`: ``latency_ratio``, this trial's median latency
    per item over the baseline's, per item so that batch sizes compare, and ``speedup``, its
    inverse).  The baseline itself (``baseline=None``) gets ratio and speedup 1.
    """
    out = {**metrics, **baseline_ratios(metrics, baseline)}
    q = out.get("quality")
    if q is not None:
        out.setdefault(quality_name, q)
        if baseline and "quality" in baseline:
            drop = baseline["quality"] - q if higher_is_better else q - baseline["quality"]
            out["quality_drop"] = drop
            out.setdefault(f"{quality_name}_drop", drop)
    return out


def with_confirmed(view: TrialView, confirmation: Mapping[str, Any] | None,
                   constraints: Sequence[Constraint] = ()) -> TrialView:
    """``view`` with the figures of the confirmation step (:mod:`autotune.tuning.confirm`) in place of
    its own latency figures, the constraints re-checked against the confirmed baseline; the
    trial's own measurement stays in ``user_attrs["measured"]`` and the confirmation in
    ``user_attrs["confirmed"]``."""
    conf = ((confirmation or {}).get("trials") or {}).get(str(view.number))
    if not conf or view.state != "complete":
        return view
    overlay = {k: float(v) for k, v in (conf.get("metrics") or {}).items()}
    metrics = {**view.metrics, **overlay}
    base = (confirmation or {}).get("baseline", {}).get("metrics")
    violations = tuple(c.violation(metrics, base) for c in constraints) if base and constraints \
        else view.violations
    return replace(view, metrics=metrics, violations=violations, user_attrs={
        **view.user_attrs, "confirmed": dict(conf),
        "measured": {k: view.metrics[k] for k in overlay if k in view.metrics}})


def references(views: Sequence[TrialView]) -> list[tuple[str, TrialView]]:
    """The complete trials of hand recipes (portfolio entries with ``reference: true``), each with
    its entry's name, in trial order."""
    return [(str(v.user_attrs["source"])[len(REFERENCE_SOURCE):], v) for v in views
            if v.state == "complete" and str(v.user_attrs.get("source", "")).startswith(
                REFERENCE_SOURCE) and v.metrics.get("latency_per_item_ms")]


def with_reference_speedups(views: Sequence[TrialView]) -> list[TrialView]:
    """Every complete trial with its speed-up over each hand recipe measured in the study
    (metric ``vs <name>``: the reference's latency per item / the trial's).  Both figures come
    from the confirmation when it re-measured both side by side, else from their own
    measurements (one confirmed figure is not compared with an unconfirmed one)."""
    refs = references(views)
    if not refs:
        return list(views)
    key = "latency_per_item_ms"

    def own(v: TrialView) -> float:
        return float((v.user_attrs.get("measured") or {}).get(key, v.metrics[key]))

    out = []
    for v in views:
        mine = v.metrics.get(key)
        if v.state != "complete" or not mine:
            out.append(v)
            continue
        extra = {}
        for name, r in refs:
            both = "confirmed" in v.user_attrs and "confirmed" in r.user_attrs
            ratio = (r.metrics[key] / mine) if both else own(r) / own(v)
            extra[reference_metric(name).name] = float(ratio)
        out.append(replace(v, metrics={**v.metrics, **extra}))
    return out


def measurement_warnings(record: StudyRecord) -> list[str]:
    """What the study says about its own measurements: an unstable baseline (until the
    confirmation re-measured it: from then on the figures rest on the confirmed baseline, whose
    own stability the confirmation's warnings report), a confirmation that ran contended or did
    not settle (``autotune.tuning.confirm``)."""
    out = []
    conf = record.attr(CONFIRMATION) or {}
    if record.attr("baseline_unstable") and not conf.get("baseline"):
        out.append(str(record.attr("baseline_unstable")))
    again = record.attr("baseline_remeasured")
    if isinstance(again, Mapping):  # which baseline figure was re-measured, and why
        was = (again.get("contended") or {}).get("latency_p50_ms")
        out.append(f"the baseline was re-measured on quiet cores (before trial "
                   f"{again.get('before_trial')}): {again.get('why')}"
                   + (f", p50 {was:.3g} ms" if isinstance(was, int | float) else "")
                   + "; trials recorded before it were ranked against the contended figure")
    elif record.attr("baseline_contended") and not conf.get("baseline"):
        out.append(f"the baseline's figure was {record.attr('baseline_contended')}; the cores were "
                   "never quiet since: trials' ratios rest on it until 'autotune confirm' "
                   "re-measures it side by side")
    out += [str(w) for w in conf.get("warnings", [])]
    return out


def trial_metrics(user_attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's measurements from its user attrs: the ``metric.<name>`` attrs, or the single
    ``metrics`` dict of studies written by earlier versions."""
    out = {k[len(METRIC_PREFIX):]: float(v) for k, v in user_attrs.items()
           if k.startswith(METRIC_PREFIX) and isinstance(v, int | float)}
    if not out:
        out = {k: float(v) for k, v in (user_attrs.get("metrics") or {}).items()}
    return out


def trial_details(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's details (``detail.<key>`` attrs, or the single ``details`` dict of older
    studies)."""
    out = {k[len(DETAIL_PREFIX):]: v for k, v in user_attrs.items() if k.startswith(DETAIL_PREFIX)}
    return out or dict(user_attrs.get("details") or {})


def _violations(constraints: Mapping[str, float]) -> tuple[float, ...]:
    """``c0``, ``c1``, ... in order (the legacy list's ``"0"``, ``"1"`` keys are the same values
    again, written for optuna-dashboard)."""
    out = []
    while f"c{len(out)}" in constraints:
        out.append(constraints[f"c{len(out)}"])
    return tuple(out)


class TrialCounts:
    """``n_complete`` / ``n_failed`` of a result holding ``trials`` (a run's summary, the
    notebook API's results)."""

    trials: tuple[TrialView, ...]

    @property
    def n_complete(self) -> int:
        return sum(t.state == "complete" for t in self.trials)

    @property
    def n_failed(self) -> int:
        return sum(t.state == "failed" for t in self.trials)


class StudyRecord:
    """A job's Optuna study (created on first use, continued afterwards)."""

    def __init__(
        self,
        storage_url: str,
        study_name: str,
        objectives: Sequence[tuple[str, Direction]],
        constraints: Sequence[Constraint] = (),
        *,
        create: bool = True,
        storage: Any = None,
    ) -> None:
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        if storage is not None:  # e.g. a heartbeat-enabled RDBStorage shared by workers
            self.storage = storage
        else:
            self.storage = optuna.storages.get_storage(storage_url) if "://" in storage_url \
                else storage_url
        try:
            if create:
                self.study = optuna.create_study(
                    study_name=study_name, storage=self.storage,
                    directions=[d for _, d in objectives], load_if_exists=True,
                )
            else:
                self.study = optuna.load_study(study_name=study_name, storage=self.storage)
        except KeyError:
            raise StudyError(
                f"no study named '{study_name}' in {storage_url}; run the job first."
            ) from None
        self._check_objectives()
        names = [m for m, _ in self.objectives]
        if create and self.study.metric_names != names:
            import warnings

            with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.0
                warnings.simplefilter("ignore")
                self.study.set_metric_names(names)  # optuna-dashboard labels the objectives

    def _check_objectives(self) -> None:
        saved = self.study.user_attrs.get("objectives")
        mine = [list(o) for o in self.objectives]
        if saved is None:
            self.study.set_user_attr("objectives", mine)
            self.study.set_user_attr("constraints", [c.text for c in self.constraints])
        elif saved != mine:
            raise StudyError(
                f"the study '{self.study.study_name}' was created with objectives {saved}, but "
                f"the job now asks for {mine}. Give the job a new name (or output_dir) to start a "
                "new study, or restore the objectives."
            )

    # ------------------------------------------------------------------ study-level attrs
    @property
    def baseline(self) -> dict[str, float] | None:
        """The unmodified model's first measurement (what trials' ratios were derived from)."""
        return self.study.user_attrs.get("baseline")

    @property
    def reported_baseline(self) -> dict[str, float] | None:
        """The baseline as status, the report and the run summary show it: once the confirmation
        step re-measured it (the confirmed front's ratios rest on that), its confirmed figures
        over the first measurement's (:func:`autotune.tuning.confirm.confirm` records them merged)."""
        confirmed = ((self.attr(CONFIRMATION) or {}).get("baseline") or {}).get("metrics")
        return dict(confirmed) if confirmed else self.baseline

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)

    # ------------------------------------------------------------------ writing trials
    def start(self, config: Mapping[str, Any], space: SearchSpace, *, agent: str,
              source: str = "agent") -> int:
        """Create a RUNNING trial holding ``config``; returns its number.  ``source`` says where
        the configuration came from: ``agent`` (proposed by it), ``warm_start``,
        ``warm_start_from`` or ``portfolio: <entry name>``."""
        dists = space.distributions()
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=dict(config),
            distributions={k: dists[k] for k in config},
            user_attrs={"agent": agent, "source": source},
        )
        trial_id = self.storage.create_new_trial(study_id(self.study), template_trial=template)
        return self.storage.get_trial_number_from_id(trial_id)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (what the storage API takes)."""
        return self.storage.get_trial_id_from_study_id_trial_number(study_id(self.study), number)

    def frozen(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self.trial_id(number))

    def _trial(self, number: int) -> optuna.Trial:
        return optuna.Trial(self.study, self.trial_id(number))

    def complete(self, number: int, metrics: Mapping[str, float],
                 details: Mapping[str, Any] | None = None) -> TrialView:
        trial = self._trial(number)
        baseline = self.baseline
        values = [float(metrics[m]) for m, _ in self.objectives]
        violations = [c.violation(metrics, baseline) for c in self.constraints]
        for k, v in metrics.items():
            trial.set_user_attr(f"{METRIC_PREFIX}{k}", float(v))
        for k, v in (details or {}).items():
            trial.set_user_attr(f"{DETAIL_PREFIX}{k}", v)
        capped = [min(v, 1e300) for v in violations]
        for i, v in enumerate(capped):
            trial.set_constraint(f"c{i}", v)
        if capped:
            self.storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS, capped)
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("fail_reason", f"non-finite objective values {values}")
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, values)
        return self.view(self.storage.get_trial(trial_id(trial)))

    def fail(self, number: int, reason: str, *, invalid: bool = False) -> None:
        trial = self._trial(number)
        trial.set_user_attr("fail_reason", reason[:4000])
        if invalid:
            trial.set_user_attr("invalid", True)
        self.study.tell(number, state=TrialState.PRUNED if invalid else TrialState.FAIL)

    def mark_interrupted(self) -> list[int]:
        """Fail the RUNNING trials a crashed or killed single-process run left behind."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.Trial(self.study, trial_id(t))
            trial.set_user_attr("fail_reason", INTERRUPTED)
            trial.set_user_attr("interrupted", True)
            self.study.tell(t.number, state=TrialState.FAIL)
            out.append(t.number)
        return out

    # ------------------------------------------------------------------ reading
    def view(self, t: FrozenTrial) -> TrialView:
        state: str = {
            TrialState.COMPLETE: "complete", TrialState.FAIL: "failed",
            TrialState.PRUNED: "invalid", TrialState.RUNNING: "running",
            TrialState.WAITING: "running",
        }[t.state]
        violations = _violations(t.constraints)
        duration = t.duration.total_seconds() if isinstance(t.duration, dt.timedelta) else None
        return TrialView(
            number=t.number, state=state, config=dict(t.params),
            metrics=trial_metrics(t.user_attrs),
            values=tuple(t.values) if t.values is not None else None,
            violations=violations,
            reason=t.user_attrs.get("fail_reason", STALE if state == "failed" else ""),
            agent=t.user_attrs.get("agent", ""), duration_s=duration,
            user_attrs={**{k: v for k, v in t.user_attrs.items()
                           if not k.startswith((METRIC_PREFIX, DETAIL_PREFIX))},
                        "details": trial_details(t.user_attrs)},
            started=t.datetime_start.timestamp() if t.datetime_start else None,
            completed=t.datetime_complete.timestamp() if t.datetime_complete else None,
        )

    def trials(self) -> list[TrialView]:
        confirmed = self.attr(CONFIRMATION)
        views = [self.view(t) for t in self.study.get_trials(deepcopy=False)]
        if confirmed:
            views = [with_confirmed(v, confirmed, self.constraints) for v in views]
        return with_reference_speedups(views)

    def counted(self) -> int:
        """Trials that use up the budget: finished ones, not interrupted or invalid ones."""
        return sum(
            1 for t in self.study.get_trials(deepcopy=False,
                                             states=(TrialState.COMPLETE, TrialState.FAIL))
            if not _interrupted(t)
        )


def _interrupted(t: FrozenTrial) -> bool:
    """Interrupted trials do not use budget.  Every failure autotune records carries a
    ``fail_reason``; a FAIL without one was failed by Optuna's heartbeat check (its worker died)."""
    if t.user_attrs.get("interrupted"):
        return True
    return t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs


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


# ------------------------------------------------------------------------ Optuna internals
# Everything autotune needs from Optuna that is not public API, in one place (checked against
# optuna 5.0, the version pinned in constraints.txt).  Outside this module, autotune uses only
# Optuna's public API; tests/test_layering.py fails on any other private access.

def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (the storage API takes it; Optuna keeps it private)."""
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of ``trial`` (a frozen or a live trial)."""
    return trial._trial_id


@contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Send ``trial_id``'s heartbeats while the block runs (a no-op for a storage without
    heartbeats), as :meth:`optuna.Study.optimize` does around each trial."""
    with get_heartbeat_thread(trial_id, storage):
        yield
