"""The tuning loop (:class:`Worker`), for ``autotune run`` and for many workers on one study:
``autotune worker JOB`` on one or many machines.

``autotune run`` (:func:`autotune.tuning.tuner.run`) is the same loop in *exclusive* mode: it fails the
trials a killed earlier run left RUNNING at once.  Every process holds a liveness record
(:mod:`autotune.tuning.liveness`) while it works, so only the trials of dead processes are failed; a
second ``autotune run`` of a study a live run is using joins it as a worker.  The façade
(:mod:`autotune.tuning.tuner`) hands the loop what it does not import: the machine restriction of the
space and its observers (:class:`autotune.tuning.loop.LoopCallback`, e.g. MLflow tracking).

Every worker opens the job's Optuna storage (PostgreSQL for several machines; SQLite works for
several workers on one machine) with heartbeats enabled, and loops:

1. under the study's *slot lock* (a PostgreSQL advisory lock; an ``flock`` beside a SQLite file):
   fail the trials whose worker stopped sending heartbeats (``optuna.storages.fail_stale_trials``;
   :class:`RetryFailedTrialCallback` puts each one back as a WAITING trial), then claim a slot:
   a WAITING (re-queued) trial first, else a new RUNNING trial if the finished + running +
   waiting trials are fewer than ``budget.max_trials``.  Counting and creating happen under one
   lock, so the budget is exact across workers, never overshot.
2. replay the other workers' new finished trials into this worker's agent (``observe``) before it
   suggests, so every agent sees the whole study;
3. measure the trial with a heartbeat thread running; the measurement itself holds the host-wide
   measurement lock (:mod:`autotune.measure.harness.hostlock`), so workers sharing a host never overlap.

A configuration the study has measured (or is measuring) is never measured again by accident:
the agent is told the recorded result and the study counts the re-proposal in its ``reproposed``
attribute; the trial goes instead to the unmeasured valid configuration farthest from everything
measured (:func:`autotune.core.explore.spread_pick`, recorded with source ``explore``).  A finite space
is enumerated for this, so the run stops before its budget only once every valid configuration
has been measured; the study keeps the space's size in its ``space_size`` attribute.

A worker exits when the budget is used up and no trial is left running or waiting.  While others'
trials still run it keeps polling, so if one of them dies its re-queued trial is still measured.
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from sqlalchemy import text

from autotune.agents import create_agent
from autotune.agents.base import Agent, Observation
from autotune.core.explore import finite_configs, spread_pick
from autotune.core.space import SearchSpace, config_key
from autotune.errors import AutotuneError, TrialFailed
from autotune.job.machine import CAUSES_ATTR, forbid_causes, learned_causes
from autotune.job.portfolio import portfolio_seeds
from autotune.job.spec import Job
from autotune.measure.harness.contention import ran_quiet
from autotune.measure.harness.hostlock import file_lock
from autotune.measure.harness.isolate import IsolatedHarness
from autotune.measure.runtimes import job_default_runtime
from autotune.measure.workloads.registry import evaluator_for
from autotune.record.study import INTERRUPTED, StudyRecord, TrialView, derive_metrics, heartbeat, trial_id
from autotune.review.front import pareto_views
from autotune.tuning.confirm import remeasure_contended
from autotune.tuning.liveness import Liveness
from autotune.tuning.loop import (
    MAX_INVALID_IN_A_ROW,
    LoopCallback,
    Progress,
    Restrict,
    RunSummary,
    baseline_config,
    check_space,
    prepare,
    requiet_baseline,
    summarize,
)
from autotune.tuning.warmstart import WarmStart, from_study


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: int = 10
    grace_s: int = 30  # a RUNNING trial without a heartbeat for this long is failed and re-queued
    max_retry: int = 2  # how often one configuration is re-queued after its worker died
    poll_s: float = 1.0  # wait between checks while other workers finish the last trials

    def __post_init__(self) -> None:
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise AutotuneError(
                f"heartbeat must be >= 1 s and the grace period longer than it; got heartbeat "
                f"{self.heartbeat_s} s, grace {self.grace_s} s")


def _quiet_optuna() -> None:
    warnings.filterwarnings("ignore", category=ExperimentalWarning)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_shared_record(job: Job, opts: WorkerOptions) -> StudyRecord:
    """The job's study through a heartbeat-enabled RDB storage."""
    _quiet_optuna()

    url = job.storage_url
    if url.startswith("sqlite"):
        job.out_dir.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback
    last: Exception | None = None
    for attempt in range(5):  # fresh database: workers race to create the tables; retry
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs or None,
                    heartbeat_interval=opts.heartbeat_s, grace_period=opts.grace_s,
                    heartbeat_stale_trial_callback=retry_cls(max_retry=opts.max_retry),
                )
            break
        except Exception as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    else:
        raise AutotuneError(f"cannot open the study storage {url}: {type(last).__name__}: {last}")
    for attempt in range(5):  # and to create the study
        try:
            return StudyRecord(url, job.name, job.objective_pairs, job.parsed_constraints,
                               storage=storage)
        except Exception as exc:
            if attempt == 4 or "IntegrityError" not in type(exc).__name__ + str(exc):
                raise
            time.sleep(0.3)
    raise AssertionError("unreachable")


@contextmanager
def slot_lock(record: StudyRecord, job: Job) -> Iterator[None]:
    """Serialize 'count the trials, then create one' across every worker of the study."""
    storage = record.storage
    url = job.storage_url
    if url.startswith("postgresql"):
        key = zlib.crc32(f"autotune:{record.study.study_name}".encode())
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    # SQLite (and others): workers on this host only; an flock next to the study
    with file_lock(job.out_dir / "slot.lock"):
        yield


@dataclass(frozen=True)
class _Claim:
    number: int
    trial_id: int
    config: dict[str, Any]
    retried: bool


class Worker:
    """The tuning loop, for ``autotune run`` (``exclusive``) and ``autotune worker`` alike.

    ``exclusive`` (``autotune run``): the RUNNING trials found at the start whose process is gone
    (no live liveness record) were left by a killed earlier run; they are failed as interrupted
    at once (and do not use budget) instead of after a heartbeat grace period, and MLflow catches
    up on trials it missed before the first new one.  When a live run took the study first, this
    one joins it as a worker instead.  Each process's agent seed is ``seed + its liveness index``
    (a lone run: the seed as given).

    ``restrict`` removes what this machine cannot run from the space
    (:func:`autotune.tuning.tuner.restrict_to_machine`); ``callbacks`` observe the loop.
    """

    def __init__(self, job: Job, *, restrict: Restrict, opts: WorkerOptions | None = None,
                 max_trials: int | None = None, progress: Progress | None = None,
                 harness: Any = None, exclusive: bool = False,
                 callbacks: Sequence[LoopCallback] = ()) -> None:
        self.job = job
        self.restrict = restrict
        self.callbacks = tuple(callbacks)
        self.opts = opts or WorkerOptions()
        self.budget = max_trials or job.budget.max_trials
        self.progress = progress or Progress()
        self.harness = harness
        self.exclusive = exclusive
        self.id = worker_id()
        self.seen: set[int] = set()
        self.reproposals = 0  # proposals of configurations the study had measured already
        self.stale: list[int] = []  # trials this worker failed for a stale heartbeat, to log
        self.exhausted = False  # every valid configuration of the space has been measured
        self._finite: tuple[SearchSpace, list[dict[str, Any]] | None] | None = None
        self._live: Any = None  # this process's liveness record (autotune.tuning.liveness), in run()
        self._record: StudyRecord | None = None
        self._agent: Agent | None = None
        self._base_config: dict[str, Any] = {}  # the unmodified model's configuration, in run()
        self._told = 0  # learned failure causes already said (autotune.job.machine.forbid_causes)

    @property
    def record(self) -> StudyRecord:
        if self._record is None:
            self._record = open_shared_record(self.job, self.opts)
        return self._record

    @property
    def agent(self) -> Agent:
        assert self._agent is not None, "the agent is created by run()"
        return self._agent

    # ------------------------------------------------------------------ study views
    def _counts(self) -> tuple[int, int, int]:
        """(budget used by finished trials, running, waiting)."""
        trials = self.record.study.get_trials(deepcopy=False)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return self.record.counted(), running, waiting

    def _replay(self) -> None:
        """Feed the finished trials not seen yet (other workers', earlier runs') into the agent;
        interrupted ones are not the configuration's fault and are left out."""
        for t in self.record.trials():
            if t.number in self.seen or t.state not in ("complete", "failed"):
                continue
            self.seen.add(t.number)
            if t.reason.startswith("interrupted"):
                continue
            self.agent.observe(t.observation())

    def _claim(self, space: SearchSpace, full_space: SearchSpace,
               warm: list[tuple[dict[str, Any], str]]) -> _Claim | None:
        study, storage = self.record.study, self.record.storage
        running = {trial_id(t) for t in study.get_trials(deepcopy=False,
                                                          states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        if running:  # the ones failed just now (under the slot lock: by this worker) for MLflow
            self.stale += [t.number for t in study.get_trials(deepcopy=False,
                                                               states=(TrialState.FAIL,))
                           if trial_id(t) in running and "fail_reason" not in t.user_attrs]
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            tid = trial_id(t)
            if not storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                continue
            storage.record_heartbeat(tid)
            params = dict(t.params) or dict(t.system_attrs.get("fixed_params", {}))
            if not t.params:
                dists = full_space.distributions()
                for k, v in params.items():
                    storage.set_trial_param(tid, k, dists[k].to_internal_repr(v), dists[k])
            storage.set_trial_user_attr(tid, "worker", self.id)
            storage.set_trial_user_attr(tid, "agent", t.user_attrs.get("agent", "retry"))
            return _Claim(t.number, tid, params, retried=True)
        invalid_in_a_row = 0
        while True:
            done, running, waiting = self._counts()
            if done + running + waiting >= self.budget:
                return None
            self._replay()
            from_warm = bool(warm)
            config, source = warm.pop(0) if warm else (self.agent.suggest(), "agent")
            reason = space.invalid_reason(config)
            # a warm-start configuration the restricted space cannot hold (e.g. device cuda on a
            # machine without one): recorded, never measured, not shown to the agent
            outside = [] if reason or not from_warm else \
                [p for p in space.validate(config) if "outside the space" in p]
            earlier = None if reason or outside else self._measured_before(config)
            if earlier is not None:  # never measured twice by accident
                if from_warm:
                    continue
                self._reproposed(config, earlier)
                # the trial goes to what is left: the unmeasured configuration farthest from
                # everything measured; none left (a finite space measured in full): stop
                config, source = self._explore(space), "explore"
                if config is None:
                    self.exhausted = True
                    return None
            number = self.record.start(config, full_space, agent=self.agent.name, source=source)
            if outside:
                self.record.fail(number, f"not runnable on this machine: {outside[0]}",
                                 invalid=True)
                self.progress.on_message(f"warm start {config} skipped: {outside[0]}")
                continue
            if reason:
                self.record.fail(number, f"invalid combination: {reason}", invalid=True)
                self.agent.observe(Observation(config, None, state="invalid", number=number))
                self.seen.add(number)
                invalid_in_a_row += 1
                if invalid_in_a_row >= MAX_INVALID_IN_A_ROW:
                    raise AutotuneError(
                        f"the agent proposed {invalid_in_a_row} invalid combinations in a row; "
                        "check the 'invalid:' rules of the search space")
                continue
            tid = self.record.trial_id(number)
            storage.record_heartbeat(tid)
            storage.set_trial_user_attr(tid, "worker", self.id)
            return _Claim(number, tid, config, retried=False)

    def _measured_before(self, config: Mapping[str, Any]) -> TrialView | None:
        """The trial that measured (or is measuring) this configuration, if any: complete, or
        failed for a reason of its own (interrupted trials are re-measured; invalid ones never
        ran)."""
        key = config_key(config)
        for t in self.record.trials():
            if t.state in ("complete", "failed", "running") and config_key(t.config) == key \
                    and not t.reason.startswith("interrupted"):
                return t
        return None

    def _explore(self, space: SearchSpace) -> dict[str, Any] | None:
        """A space-filling pick among the valid configurations the study has not measured (nor
        is measuring); None when a finite space has been measured in full."""
        if self._finite is None or self._finite[0] is not space:
            self._finite = (space, finite_configs(space))
        measured = [t.config for t in self.record.trials()
                    if t.state in ("complete", "failed", "running")
                    and not t.reason.startswith("interrupted")]
        rng = random.Random(zlib.crc32(f"{self._seed()}:{len(measured)}".encode()))
        return spread_pick(space, measured, rng, candidates=self._finite[1])

    def _reproposed(self, config: Mapping[str, Any], earlier: TrialView) -> None:
        """The agent proposed a configuration the study has: it is told the recorded result
        (a running trial's result is not known yet: it hears it on replay), and the study counts
        the re-proposal in its ``reproposed`` attribute (trial number → times), so reports show
        it; it is not measured again."""
        if earlier.state != "running":
            self.agent.observe(replace(earlier.observation(), config=dict(config)))
        counts = dict(self.record.attr("reproposed") or {})
        counts[str(earlier.number)] = int(counts.get(str(earlier.number), 0)) + 1
        self.record.set_attr("reproposed", counts)
        self.reproposals += 1
        self.progress.on_message(
            f"the agent proposed trial {earlier.number}'s configuration again: not measured "
            f"twice, " + ("told its recorded result" if earlier.state != "running" else
                          "it is being measured now") + "; measuring an unmeasured one instead")

    def _measure(self, claim: _Claim, harness: Any, baseline: Mapping[str, float]) -> TrialView:
        """Measure a claimed trial with its heartbeat running, and record the outcome."""
        record, ev = self.record, self.job.evaluation
        with heartbeat(record.storage, claim.trial_id):
            try:
                result = harness.evaluate(claim.config)
            except TrialFailed as exc:
                record.fail(claim.number, str(exc))
                self._learn(claim, exc)
                return self._view(claim.number)
            # the study's baseline as it is now (another worker may have re-measured it)
            baseline = record.baseline or baseline
            # a contended figure may not rank the trial: measured again before it is recorded
            result = remeasure_contended(
                self.job, harness, claim.config, result, self._base_config, baseline,
                baseline_quiet=not record.attr("baseline_contended"),
                log=lambda m: self.progress.on_message(f"trial {claim.number}: {m}"))
            if ran_quiet(result.details):  # the cores are quiet: a contended baseline is re-measured
                baseline = requiet_baseline(self.job, record, harness, self._base_config,
                                            self.progress, trial=claim.number) or baseline
        metrics = dict(result.metrics) if ev is None else derive_metrics(  # None: custom objective
            result.metrics, baseline, ev.quality_name, ev.quality_higher_is_better)
        return record.complete(claim.number, metrics, result.details)

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunSummary:
        """Hold this process's liveness record (:mod:`autotune.tuning.liveness`) while working."""
        self._live = Liveness(self.job.out_dir / "live", self.id,
                              "run" if self.exclusive else "worker")
        with self._live:
            return self._run()

    def _fail_dead_trials(self) -> list[int]:
        """Fail as interrupted the RUNNING trials whose process is gone (a killed earlier run);
        a live process's trials (another run or worker on this study) are never touched, and
        those of other hosts are left to the heartbeat check."""
        study, out = self.record.study, []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("worker")
            if owner != self.id and self._live.owner_is_live(owner) is not False:
                continue
            trial = optuna.Trial(study, trial_id(t))
            trial.set_user_attr("fail_reason", INTERRUPTED)
            trial.set_user_attr("interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
            out.append(t.number)
        return out

    def _seed(self) -> int | None:
        """This process's seed stream: the job's seed plus its liveness index (0 for a lone run:
        the seed as given), plus a per-host offset when the study is shared between hosts."""
        seed = self.job.agent.seed
        if seed is None:
            return None
        index = self._live.index or 0
        if not self.job.storage_url.startswith("sqlite"):
            index += 0 if self.exclusive else (zlib.crc32(socket.gethostname().encode()) % 9973)
        return seed + index

    def _run(self) -> RunSummary:
        t_start = time.monotonic()
        job, progress = self.job, self.progress
        full_space = job.space
        check_space(job, full_space)
        earlier = None
        if job.agent.warm_start_from is not None:  # user errors in it surface before any measuring
            earlier = from_study(job, full_space)
        record = self.record
        # a second `autotune run` on a study a live run is using (one that took its record
        # first: a smaller index) joins it as a worker instead of taking it over
        others = [h for h in self._live.others() if h.index < self._live.index]
        if self.exclusive and others:
            progress.on_message(
                f"job '{job.name}' is being run by {others[0].describe()}: this run joins it as "
                "one more worker (the budget is shared; its trials are left alone)")
            self.exclusive = False
            dead_check = True
        else:
            dead_check = self.exclusive
        if dead_check:
            with slot_lock(record, job):  # claims set their worker under this lock
                interrupted = self._fail_dead_trials()
            if interrupted:
                progress.on_message(
                    f"trials {', '.join(map(str, interrupted))} were interrupted by an earlier run; "
                    "they are marked failed and will not count towards the budget")
        done = record.counted()
        if done >= self.budget:
            progress.on_message(f"the job is already finished: {done} of {self.budget} trials done")
            for cb in self.callbacks:  # e.g. MLflow missed trials (it was down): catch up now
                cb.on_loop_start(record, record.baseline, catch_up=True, finished=True)
            views = record.trials()
            for cb in self.callbacks:
                cb.on_loop_end(record, views, new_trials=0)
            return summarize(job, record, views, 0, t_start, finished=True,
                             tracking_error=self._callback_error())

        own_harness = self.harness is None
        harness = self.harness or IsolatedHarness(job, evaluator=evaluator_for,
                                                  on_message=progress.on_status)
        new = 0
        try:
            with slot_lock(record, job):  # one worker measures the baseline, the rest wait
                space, notices, baseline = prepare(job, record, harness, full_space, progress,
                                                   self.restrict)
                if not job.is_custom:  # (a custom objective measures its own figures)
                    self._base_config = baseline_config(space, job_default_runtime(job))
                # (only an exclusive run catches up: other workers log their own trials)
                catch_up = self.exclusive and not self._live.others()
                for cb in self.callbacks:
                    cb.on_loop_start(record, baseline, catch_up=catch_up, finished=False)
            self._finite = (space, finite_configs(space))  # None: continuous, or too large
            record.set_attr("space_size", None if self._finite[1] is None else len(self._finite[1]))
            self._agent = agent = create_agent(
                job.agent.name, space, job.objective_pairs, len(job.parsed_constraints),
                seed=self._seed(), **job.agent.options)
            self._replay()
            warm = self._warm_configs(earlier, portfolio_seeds(job, space, harness, progress))
            progress.on_start(done, self.budget)
            deadline = t_start + job.budget.timeout if job.budget.timeout else None
            while deadline is None or time.monotonic() < deadline:
                with slot_lock(record, job):
                    claim = self._claim(self._learned(space), full_space, warm)
                while self.stale:  # a dead worker's trial reaches MLflow as a failed trial
                    stale_view = self._view(self.stale.pop(0))
                    for cb in self.callbacks:
                        cb.on_trial_end(record, stale_view, record.trials())
                if claim is None:
                    if self.exhausted:
                        notices = (*notices, (
                            f"stopped early: every one of the {record.attr('space_size')} valid "
                            f"configurations of the space has been measured "
                            f"({self.reproposals} re-proposals answered from the study)"))
                        progress.on_message(notices[-1])
                        break
                    done, running, waiting = self._counts()
                    if running + waiting == 0:
                        break
                    time.sleep(self.opts.poll_s)  # others finish; re-check for stale trials
                    continue
                view = self._measure(claim, harness, baseline)
                self.seen.add(view.number)
                agent.observe(view.observation())
                new += 1
                views = record.trials()
                for cb in self.callbacks:
                    cb.on_trial_end(record, view, views)
                progress.on_trial(view, record.counted(), self.budget, pareto_views(views, job))
            agent.close()
        finally:
            if own_harness:
                harness.close()
        views = record.trials()
        summary = summarize(job, record, views, new, t_start,
                            finished=record.counted() >= self.budget,
                            tracking_error=self._callback_error(), notices=notices)
        for cb in self.callbacks:
            cb.on_loop_end(record, views, new_trials=new)
        return replace(summary, tracking_error=self._callback_error())

    def _callback_error(self) -> str | None:
        return next((cb.error for cb in self.callbacks if cb.error), None)

    def _warm_configs(self, earlier: WarmStart | None,
                      portfolio: Sequence[tuple[dict[str, Any], str]] = ()
                      ) -> list[tuple[dict[str, Any], str]]:
        """The configurations to measure first, each with its source (recorded on its trial as
        ``user_attrs["source"]``): ``agent.warm_start``, the hardware portfolio
        (:mod:`autotune.job.portfolio`), then those of ``agent.warm_start_from`` (whose measurements
        the agent observes as hints), each unless the study has it already."""
        seeds = [(dict(c), "warm_start") for c in self.job.agent.warm_start]
        have = {config_key(c) for c, _ in seeds}
        seeds += [(dict(c), src) for c, src in portfolio if config_key(c) not in have]
        if earlier is not None:
            for obs in earlier.observations:
                self.agent.observe(obs)
            have = {config_key(c) for c, _ in seeds}
            seeds += [(dict(c), "warm_start_from") for c in earlier.configs
                      if config_key(c) not in have]
            self.progress.on_message(earlier.message)
        measured = {config_key(t.config) for t in self.record.trials()}
        return [(c, src) for c, src in seeds if config_key(c) not in measured]

    # ------------------------------------------------------------------ failures teach
    def _learn(self, claim: _Claim, exc: TrialFailed) -> None:
        """A failure whose cause the configuration determines (``TrialFailed.cause``) is kept in
        the study (:data:`autotune.job.machine.CAUSES_ATTR`): no configuration sharing it is measured
        again, in this run or the next (``status`` and ``validate`` show it)."""
        cause = {k: v for k, v in (exc.cause or {}).items()
                 if k in claim.config and claim.config[k] == v}
        causes = learned_causes(self.record.attr(CAUSES_ATTR))
        if not cause or any(c["when"] == cause for c in causes):
            return
        reason = (str(exc).splitlines() or [""])[0][:300]
        self.record.set_attr(CAUSES_ATTR, [*causes, {"when": cause, "reason": reason,
                                                     "trial": claim.number}])

    def _learned(self, space: SearchSpace) -> SearchSpace:
        """``space`` less the configurations sharing a failure cause the study has learned (by
        any worker); the agent is given it too, and each new rule is said once."""
        space, notes = forbid_causes(space, learned_causes(self.record.attr(CAUSES_ATTR)))
        for note in notes[self._told:]:
            self.progress.on_message(f"{note}: not proposed again in this study")
        self._told = max(self._told, len(notes))
        if notes:
            self.agent.space = space
        return space

    def _view(self, number: int) -> TrialView:
        return self.record.view(self.record.frozen(number))


def run_worker(job: Job, *, restrict: Restrict, opts: WorkerOptions | None = None,
               max_trials: int | None = None, progress: Progress | None = None,
               harness: Any = None, callbacks: Sequence[LoopCallback] = ()) -> RunSummary:
    """Join the job's study and measure trials until its (global) budget is used up
    (``autotune worker``: :func:`autotune.tuning.tuner.run_worker` adds MLflow tracking)."""
    return Worker(job, restrict=restrict, opts=opts, max_trials=max_trials, progress=progress,
                  harness=harness, exclusive=False, callbacks=callbacks).run()
