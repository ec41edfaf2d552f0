"""The confirmation step: re-measure the baseline and the leading candidates side by side.

A trial's latency was measured once, alone, at whatever moment the tuner reached it; on a shared
machine that figure can be off by tens of percent.  A figure measured contended never ranks: the
loop measures such a trial again beside the baseline before recording it
(:func:`remeasure_contended`).  Before a front is reported or exported, :func:`confirm` measures
the unmodified model (the baseline) and the best feasible trials (at most ``k``, the front
ordered by the first objective, plus the trials that could be on the front within their
uncertainty and every trial whose only figure is contended: :func:`candidates`) in interleaved
rounds, each contender in a measuring process of its own (:class:`SeparateProcesses`; the processes
take turns, so only one measures at a time): every round times each configuration once, so drift
of the machine hits all of them alike, and no contender's thread pools share a process with
another's, so each figure is what the configuration runs at as a lone deployed process.  Rounds
are added until the ratio of every candidate to the baseline is stable (the half-range of its
per-round ratios within ``tolerance`` of their median, at least ``min_rounds``), or
``max_rounds`` / ``max_time_s`` run out (then the result says ``stable: false``).

Per trial the study records (study attr ``confirmation``, :data:`autotune.record.study.CONFIRMATION`):
the confirmed p50/p95 (median over rounds), the ratio to the baseline (median of the per-round
ratios, per item), the spread between rounds (min and max of the per-round p50s and ratios), the
95 % prediction interval of one more measurement of its p50 (:func:`prediction_interval`: what a
re-measurement, e.g. in a fresh process minutes later, should land in; it includes the machine's
drift over minutes, :func:`drift_sd`, estimated from the confirmed trials' own measurements during
tuning), the rounds, and whether any round ran contended.  :meth:`autotune.record.study.StudyRecord.trials`
overlays
the confirmed figures on the trial's metrics (its own measurement stays under
``user_attrs["measured"]``), so the front, the selection rules, the report and ``autotune
export``'s manifest use them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from autotune.errors import AutotuneError, TrialFailed
from autotune.job.spec import Job
from autotune.measure.harness.contention import QUIET, RATIO, Contention, only_contended, wait_quiet
from autotune.measure.harness.isolate import IsolatedHarness
from autotune.measure.harness.result import TrialResult
from autotune.measure.harness.stats import rotation
from autotune.measure.runtimes import job_default_runtime
from autotune.measure.workloads.forward import CONTENTION_KEY
from autotune.measure.workloads.registry import evaluator_for
from autotune.record.study import CONFIRMATION, StudyRecord, TrialView, open_record, references
from autotune.review.front import dominates, pareto_views
from autotune.tuning.loop import baseline_config

#: the per-round latency keys and the metric each confirms
_LATENCY_KEYS = {"p50_ms": "latency_p50_ms", "p90_ms": "latency_p90_ms",
                 "p95_ms": "latency_p95_ms", "p99_ms": "latency_p99_ms",
                 "mean_ms": "latency_mean_ms"}
BASELINE = "baseline"


@dataclass(frozen=True)
class Confirmed:
    """One configuration's confirmed figures (the baseline's ratio is 1)."""

    name: str
    trial: int | None
    p50_ms: float
    p95_ms: float
    p50_low_ms: float
    p50_high_ms: float
    ratio: float  # per item, to the baseline, median over rounds
    ratio_low: float
    ratio_high: float
    spread_rel: float  # half-range of the per-round ratios over their median
    rounds: int
    stable: bool
    contended_rounds: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    predict_low_ms: float = math.nan  # 95 % prediction interval of a re-measured p50
    predict_high_ms: float = math.nan
    drift_sd: float = 0.0  # the machine's drift over minutes the interval includes (log sd)

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "p50_low_ms": self.p50_low_ms, "p50_high_ms": self.p50_high_ms,
                "predict_low_ms": self.predict_low_ms, "predict_high_ms": self.predict_high_ms,
                "drift_sd": self.drift_sd,
                "ratio": self.ratio, "ratio_low": self.ratio_low, "ratio_high": self.ratio_high,
                "spread_rel": self.spread_rel, "rounds": self.rounds, "stable": self.stable,
                "contended_rounds": self.contended_rounds, "metrics": dict(self.metrics)}


@dataclass(frozen=True)
class ConfirmResult:
    job: str
    baseline: Confirmed
    trials: tuple[Confirmed, ...]
    rounds: int
    stable: bool
    wall_s: float
    contended: bool = False
    warnings: tuple[str, ...] = ()


#: an unconfirmed trial whose first objective lies within this share of a confirmed candidate's
#: could overtake it once the candidate's figure is confirmed (one measurement on a shared machine
#: is off by several per cent), so it is confirmed too
NEAR = 0.10


def candidates(views: Sequence[TrialView], job: Job, k: int, near: float = NEAR
               ) -> list[TrialView]:
    """What the confirmation re-measures:

    * the feasible front ordered by the first objective (at most ``k`` trials);
    * every other feasible trial that could be on the front within its uncertainty: one no
      front trial dominates once its latency figures (the objectives named ``latency_*``,
      ``throughput_*``, ``cost_*``, ``speedup``) are moved by ``near`` (or by its own
      measurement's CI, if wider) in its favour -- one measurement on a shared machine is off by
      several per cent, and a pick made after the leaders are confirmed could otherwise fall on
      a lucky figure or miss an unlucky one -- at most ``2 * k`` in all, nearest first;
    * every feasible trial whose only latency figure was measured contended
      (:func:`autotune.measure.harness.contention.only_contended`), however far behind that figure
      puts it: a contended figure may not decide that a trial is dominated.

    Returned in the order of the first objective."""
    metric, direction = job.objective_pairs[0]
    sign = 1 if direction == "minimize" else -1
    front = [t for t in pareto_views(views, job) if metric in t.metrics]
    front.sort(key=lambda t: sign * t.metrics[metric])
    lead = front[:k]
    chosen = {t.number for t in lead}
    rest = [t for t in views if t.feasible and t.number not in chosen and metric in t.metrics]
    busy = [t for t in rest if only_contended(t.user_attrs.get("details"))]
    close = [t for t in rest if t not in busy and _could_lead(t, front, job, near)]
    close.sort(key=lambda t: min(_gap(t, c, metric) for c in lead) if lead else 0.0)
    picked = lead + close[:max(0, 2 * k - len(lead))] + busy
    # the hand recipes (autotune.record.study.references) are re-measured beside them: "vs hand int8"
    # then compares figures from the same rounds
    taken = {t.number for t in picked}
    picked += [t for _, t in references(views) if t.number not in taken and metric in t.metrics]
    return sorted(picked, key=lambda t: sign * t.metrics[metric])


def _noisy(metric: str) -> bool:
    return metric.startswith(("latency", "throughput", "cost")) or metric == "speedup"


def _could_lead(t: TrialView, front: Sequence[TrialView], job: Job, near: float) -> bool:
    """Whether no front trial dominates ``t`` once its noisy objectives move by its
    uncertainty (``near``, or its own measurement's CI when wider) in its favour."""
    u = max(near, float(t.metrics.get("latency_ci_rel") or 0.0))
    hope = dict(t.metrics)
    for m, d in job.objective_pairs:
        if _noisy(m) and m in hope:
            hope[m] = hope[m] * (1 - u) if d == "minimize" else hope[m] * (1 + u)
    return not any(dominates(f.metrics, hope, job.objective_pairs) for f in front)


def _gap(t: TrialView, c: TrialView, metric: str) -> float:
    return abs(t.metrics[metric] - c.metrics[metric]) / max(abs(c.metrics[metric]), 1e-12)


#: two-sided 95 % quantiles of Student's t by degrees of freedom (1..30; beyond: 1.96 + 2.4/df)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def prediction_interval(p50s: Sequence[float], drift_sd: float = 0.0) -> tuple[float, float]:
    """95 % prediction interval of one more per-round p50, from the per-round p50s.

    The min-max range of ``n`` rounds holds a further measurement only with probability
    (n-1)/(n+1) (50 % for 3 rounds) even when nothing changes, so a manifest stating that range
    is overconfident.  Latency noise is multiplicative, so the interval is taken on logarithms:
    ``exp(mean ± t(n-1) · sd · sqrt(1 + 1/n))`` (Student's t, 95 %, two-sided).  ``drift_sd`` (a
    standard deviation of log latency, :func:`drift_sd`) adds how far the machine's speed moves
    over minutes, which rounds taken within one minute do not see: the half-widths add in
    quadrature (``1.96 · drift_sd``).  Needs 2 rounds."""
    xs = [math.log(x) for x in p50s if x > 0]
    n = len(xs)
    if n < 2:
        return math.nan, math.nan
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96 + 2.4 / (n - 1)
    half = math.hypot(t * sd * math.sqrt(1 + 1 / n), 1.96 * drift_sd)
    return math.exp(mean - half), math.exp(mean + half)


def drift_sd(pairs: Sequence[tuple[float, float]]) -> float:
    """How far a configuration's p50 moves between two measurements minutes apart on this machine:
    the root mean square of ``log(later / earlier)`` over ``pairs`` (each configuration's own
    measurement during tuning and its confirmed p50).  0 without pairs."""
    logs = [math.log(b / a) for a, b in pairs if a > 0 and b > 0]
    return math.sqrt(sum(x * x for x in logs) / len(logs)) if logs else 0.0


def _spread(xs: Sequence[float]) -> float:
    med = float(np.median(xs))
    return (max(xs) - min(xs)) / 2 / med if med > 0 else math.inf


def _summarize(name: str, trial: int | None, rounds: list[Mapping[str, Any]],
               base_rounds: list[Mapping[str, Any]], batch: int, base_batch: int,
               tolerance: float, min_rounds: int, contended: list[bool],
               own: Mapping[str, float]) -> Confirmed:
    ratios = [(r["p50_ms"] / batch) / (b["p50_ms"] / base_batch)
              for r, b in zip(rounds, base_rounds, strict=True) if b["p50_ms"] > 0]
    p50s = [float(r["p50_ms"]) for r in rounds]
    spread = _spread(ratios) if name != BASELINE else _spread(p50s)
    metrics: dict[str, float] = {m: float(np.median([float(r[k]) for r in rounds]))
                                 for k, m in _LATENCY_KEYS.items() if all(k in r for r in rounds)}
    p50 = metrics["latency_p50_ms"]
    metrics["latency_per_item_ms"] = p50 / batch
    metrics["throughput_ips"] = batch / (p50 / 1000.0)
    ratio = float(np.median(ratios))
    metrics["latency_ratio"] = ratio
    metrics["speedup"] = 1.0 / ratio if ratio > 0 else math.inf
    if own.get("cost_usd_per_million") and own.get("latency_p50_ms"):
        metrics["cost_usd_per_million"] = own["cost_usd_per_million"] * p50 / own["latency_p50_ms"]
    return Confirmed(
        name=name, trial=trial, p50_ms=p50, p95_ms=metrics.get("latency_p95_ms", math.nan),
        p50_low_ms=min(p50s), p50_high_ms=max(p50s), ratio=ratio, ratio_low=min(ratios),
        ratio_high=max(ratios), spread_rel=spread, rounds=len(rounds),
        stable=len(rounds) >= min_rounds and spread <= tolerance,
        contended_rounds=sum(contended), metrics=metrics)


def confirm(job: Job, *, harness: Any = None, record: StudyRecord | None = None, k: int = 4,
            min_rounds: int = 5, max_rounds: int = 10, tolerance: float = 0.05,
            max_time_s: float = 300.0, log: Callable[[str], None] = lambda m: None
            ) -> ConfirmResult:
    """Re-measure the baseline and the leading ``k`` candidates interleaved until their ratios to
    the baseline are stable; record the confirmed figures in the study.  See the module doc."""
    if job.is_custom:
        raise AutotuneError("confirmation needs the built-in harness (a custom objective measures "
                            "its own figures)")
    if min_rounds < 2 or max_rounds < min_rounds:
        raise AutotuneError(f"confirmation rounds: need 2 <= min_rounds <= max_rounds (got "
                            f"{min_rounds}, {max_rounds})")
    t0 = time.monotonic()
    record = record or open_record(job, create=False)
    views = record.trials()
    picks = candidates(views, job, k)
    if not picks:
        raise AutotuneError(f"job '{job.name}' has no feasible trial to confirm")
    # the baseline runs where the loop measured it: a huggingface: model is a torch model too
    configs: dict[str, dict[str, Any]] = {
        BASELINE: baseline_config(job.space, job_default_runtime(job))}
    for t in picks:
        configs[f"trial{t.number}"] = dict(t.config)
    own_harness = harness is None
    if own_harness:
        harness = SeparateProcesses(job)
    log(f"confirming the baseline and {len(picks)} leading trial(s) "
        f"({', '.join(str(t.number) for t in picks)}) side by side, {min_rounds}-{max_rounds} "
        "rounds")
    per: dict[str, list[Mapping[str, Any]]] = {n: [] for n in configs}
    contended: list[bool] = []
    active = dict(configs)
    try:
        want = min_rounds
        while True:
            try:
                out = harness.compare(active, want)
            except TrialFailed as exc:
                bad = [n for n in active if n != BASELINE and n == str(exc).split(":")[0]]
                if not bad:
                    raise AutotuneError(f"the confirmation could not measure: {exc}") from None
                log(f"{bad[0]} no longer runs ({exc}); confirming without it")
                for n in bad:
                    active.pop(n)
                    per.pop(n)
                if len(active) < 2:
                    raise AutotuneError("no candidate left to confirm") from None
                continue
            busy = out.get(CONTENTION_KEY) or {}
            contended += [bool(busy.get("contended"))] * want
            for n in active:
                per[n].extend(out[n])
            done = len(per[BASELINE])
            interim = _all(*_usable(per, contended, min_rounds), configs, views, tolerance,
                           min_rounds)
            # the candidates' ratios decide; the baseline's own drift is reported, not waited out
            unstable = [c.name for c in interim if not c.stable and c.name != BASELINE]
            quiet = contended.count(False)
            if not unstable and (quiet >= min_rounds or not any(contended)):
                break
            if done >= max_rounds or time.monotonic() - t0 > max_time_s:
                if unstable:
                    log(f"ratios still moving after {done} rounds: {', '.join(unstable)} "
                        f"(spread over {tolerance:.0%}); recorded as unstable")
                break
            want = min(2, max_rounds - done)
            why = f"{', '.join(unstable)} not yet stable" if unstable else \
                f"rounds ran contended ({busy.get('other_cpu_pct', 0):.0f}% of the cores used " \
                "by other processes); re-measuring"
            log(f"round {done}: {why}; {want} more round(s)")
    finally:
        if own_harness:
            harness.close()
    kept, used_contended = _usable(per, contended, min_rounds)
    results = _all(kept, used_contended, configs, views, tolerance, min_rounds)
    # the cores never became quiet: the interleaved ratios (which load hits alike) rank, as the
    # ratio times the baseline's quiet p50 from the study
    scale, ref = {c.name: 1.0 for c in results}, (record.baseline or {}).get("latency_per_item_ms")
    by_ratio = bool(any(used_contended) and ref and not record.attr("baseline_contended"))
    if by_ratio:
        scale = {c.name: c.ratio * ref * int(configs[c.name].get("batch_size", 1)) / c.p50_ms
                 for c in results}
        results = [_scaled(c, scale[c.name]) for c in results]
    # the stated intervals also cover the machine's drift over minutes, estimated from each
    # confirmed trial's own (uncontended) measurement during tuning against its confirmed p50
    drift = drift_sd([pair for c in results if (pair := _then_and_now(c, views)) is not None])
    results = [_with_interval(c, [float(r["p50_ms"]) * scale[c.name] for r in kept[c.name]],
                              drift) for c in results]
    base = next(c for c in results if c.name == BASELINE)
    trials = tuple(c for c in results if c.name != BASELINE)
    warnings: list[str] = []
    if not base.stable:
        warnings.append(
            f"the baseline's own latency is unstable: its per-round p50 spans "
            f"{base.p50_low_ms:.3g}-{base.p50_high_ms:.3g} ms (+-{base.spread_rel:.0%}) over "
            f"{base.rounds} rounds; speedups rest on it")
    if by_ratio:
        warnings.append(f"the confirmation itself ran contended: {sum(used_contended)} of "
                        f"{len(used_contended)} rounds it rests on ran while other processes used "
                        "the cores (they never became quiet); each figure is its interleaved "
                        "ratio to the baseline times the baseline's quiet p50 "
                        f"({base.p50_ms:.3g} ms)")
    elif any(used_contended):
        warnings.append(f"the confirmation itself ran contended: {sum(used_contended)} of "
                        f"{len(used_contended)} rounds it rests on ran while other processes used "
                        "the cores; the confirmed figures may not hold on a quiet machine")
    elif any(contended):
        log(f"{sum(contended)} contended round(s) left out; the figures rest on "
            f"{len(used_contended)} quiet rounds")
    _record(record, job, base, trials, contended, warnings)
    return ConfirmResult(job=job.name, baseline=base, trials=trials, rounds=base.rounds,
                         stable=all(c.stable for c in trials), wall_s=time.monotonic() - t0,
                         contended=any(used_contended), warnings=tuple(warnings))


class SeparateProcesses:
    """Each contender in its own measuring process, the processes taking turns.

    ``compare(configs, rounds)`` has the shape of the harness's own (one list of per-round
    summaries per name, plus the contention of the rounds) but measures every contender in a
    measuring process of its own (``factory(job)``, an :class:`IsolatedHarness` by default), kept
    until :meth:`close`: round ``r`` times one block of each contender, one process after the
    other, in the order :func:`autotune.measure.harness.stats.rotation` gives (as
    ``stats.alternate`` does in one process).  No contender shares a process (its thread pools,
    allocator, OpenMP runtime) with another one, so each runs with its deployed settings as a lone
    deployed process does (issue 25: in ONE process, beside a torch baseline, the same ONNX
    bundle measured 8.8 ms against 4.9 ms for a plain session of that file; each alone in its own
    process, 4.8 ms).  The processes not measuring wait on their pipe (blocked, not spinning);
    each block starts after the harness's settle pause.  The confirmation step and re-tuning's
    champion/challenger comparison (:mod:`autotune.retune.schedule`) measure through it."""

    def __init__(self, job: Job, factory: Callable[[Job], Any] | None = None) -> None:
        self.job = job
        self._factory = factory or (lambda j: IsolatedHarness(j, evaluator=evaluator_for))
        self._procs: dict[str, Any] = {}

    def compare(self, configs: Mapping[str, Mapping[str, Any]], rounds: int) -> dict[str, Any]:
        names = list(configs)
        out: dict[str, Any] = {n: [] for n in names}
        busy: list[Mapping[str, Any]] = []
        self._start([n for n in names if n not in self._procs])
        for r in range(rounds):
            for name in rotation(names, r):
                try:
                    got = self._procs[name].compare({name: dict(configs[name])}, 1)
                except TrialFailed as exc:
                    msg = str(exc)
                    raise TrialFailed(msg if msg.startswith(f"{name}:") else f"{name}: {msg}",
                                      cause=exc.cause) from None
                out[name].extend(got[name])
                if got.get(CONTENTION_KEY):
                    busy.append(got[CONTENTION_KEY])
        worst = max(busy, key=lambda b: (bool(b.get("contended")),
                                         float(b.get("other_cpu_pct") or 0.0)), default=None)
        out[CONTENTION_KEY] = dict(worst) if worst else None
        return out

    def _start(self, names: Sequence[str]) -> None:
        """Start the processes of ``names`` at the same time (each imports the libraries and
        loads the model: seconds), before any round measures, so no start-up overlaps a block."""
        for name in names:
            self._procs[name] = self._factory(self.job)
        ready = [self._procs[n] for n in names if hasattr(self._procs[n], "fingerprint")]
        if len(ready) > 1:
            with ThreadPoolExecutor(len(ready)) as pool:  # a failed start shows on its 1st block
                list(pool.map(_started, ready))

    def close(self) -> None:
        for h in self._procs.values():
            h.close()
        self._procs.clear()


def _started(harness: Any) -> None:
    with contextlib.suppress(Exception):
        harness.fingerprint()


def _scaled(c: Confirmed, f: float) -> Confirmed:
    """``c`` with its latency figures times ``f`` (its ratios unchanged)."""
    metrics = {k: v / f if k == "throughput_ips" else v * f if k in _REPLACED else v
               for k, v in c.metrics.items()}
    return replace(c, p50_ms=c.p50_ms * f, p95_ms=c.p95_ms * f, p50_low_ms=c.p50_low_ms * f,
                   p50_high_ms=c.p50_high_ms * f, metrics=metrics)


def _with_interval(c: Confirmed, p50s: Sequence[float], drift: float) -> Confirmed:
    lo, hi = prediction_interval(p50s, drift)
    return replace(c, predict_low_ms=lo, predict_high_ms=hi, drift_sd=drift)


def _then_and_now(c: Confirmed, views: Sequence[TrialView]) -> tuple[float, float] | None:
    """(the trial's own p50 from tuning, its confirmed p50), or None for the baseline and for a
    trial whose own measurement ran contended."""
    view = next((t for t in views if t.number == c.trial), None)
    if view is None:
        return None
    details = view.user_attrs.get("details") or {}
    if (details.get("contention") or {}).get("contended"):
        return None
    own = (view.user_attrs.get("measured") or view.metrics).get("latency_p50_ms")
    return (float(own), c.p50_ms) if own else None


def _usable(per: Mapping[str, list[Mapping[str, Any]]], contended: list[bool], min_rounds: int
            ) -> tuple[dict[str, list[Mapping[str, Any]]], list[bool]]:
    """The rounds the figures rest on: the uncontended ones when there are ``min_rounds`` of
    them, else all (then the result says how many ran contended)."""
    quiet = [i for i, c in enumerate(contended) if not c]
    if len(quiet) >= min_rounds and len(quiet) < len(contended):
        return {n: [r[i] for i in quiet] for n, r in per.items()}, [False] * len(quiet)
    return dict(per), list(contended)


def _all(per: Mapping[str, list[Mapping[str, Any]]], contended: list[bool],
         configs: Mapping[str, Mapping[str, Any]], views: Sequence[TrialView], tolerance: float,
         min_rounds: int) -> list[Confirmed]:
    by_number = {t.number: t for t in views}
    base_batch = int(configs[BASELINE].get("batch_size", 1))
    out = []
    for name, rounds in per.items():
        number = None if name == BASELINE else int(name.removeprefix("trial"))
        own = dict(by_number[number].user_attrs.get("measured") or {}) if number is not None \
            else {}
        if number is not None:
            own = {**by_number[number].metrics, **own}
        out.append(_summarize(name, number, rounds, per[BASELINE],
                              int(configs[name].get("batch_size", 1)), base_batch, tolerance,
                              min_rounds, contended, own))
    return out


def _record(record: StudyRecord, job: Job, base: Confirmed, trials: Sequence[Confirmed],
            contended: list[bool], warnings: list[str]) -> None:
    base_metrics = {**(record.baseline or {}), **base.metrics}
    base_dict = {**base.to_dict(), "metrics": base_metrics}
    record.set_attr(CONFIRMATION, {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": base.rounds, "rounds_measured": len(contended),
        "contended_rounds": sum(contended),
        "baseline": base_dict, "warnings": list(warnings),
        "trials": {str(c.trial): c.to_dict() for c in trials},
    })


#: interleaved rounds of the re-measurement of a contended trial beside the baseline
REMEASURE_ROUNDS = 3
#: the latency metrics a re-measurement replaces (the rest of a trial's figures do not depend on
#: how busy the cores were)
_REPLACED = (*_LATENCY_KEYS.values(), "latency_per_item_ms", "throughput_ips",
             "cost_usd_per_million")


def remeasure_contended(job: Job, harness: Any, config: Mapping[str, Any], result: TrialResult,
                        base_config: Mapping[str, Any], baseline: Mapping[str, float] | None, *,
                        baseline_quiet: bool = True, rounds: int = REMEASURE_ROUNDS,
                        log: Callable[[str], None] = lambda m: None) -> TrialResult:
    """A trial whose measurement ran contended, measured again before it may rank anything.

    It waits up to ``measurement.quiet_wait_s`` for quiet cores, then measures the trial beside
    the baseline in ``rounds`` interleaved rounds (``harness.compare``).  If those rounds ran on
    quiet cores, their medians replace the contended figures (``how: quiet``); if the cores never
    became quiet, the figures are the trial's median per-round ratio to the baseline (which load
    hits alike, so it survives it) times the study's baseline p50 (``how: ratio``), and the run
    says so -- but only when that baseline figure ran quiet (``baseline_quiet``): a contended
    baseline figure would inflate the trial's by as much as the load slowed the baseline, so then
    the trial keeps its contended figure, flagged (``how: failed``, with the ratio; the loop
    re-measures the baseline at the first quiet moment, :func:`autotune.tuning.loop.requiet_baseline`,
    and the confirmation step measures the trial).  The contended figures and why it was
    re-measured stay in ``details["remeasured"]``; a re-measurement that fails leaves the result
    as it was (flagged contended, so the confirmation step takes it).  A result that did not run
    contended is returned as it is."""
    details = dict(result.details or {})
    busy = details.get("contention") or {}
    if not busy.get("contended") or job.is_custom or not baseline:
        return result
    m = job.measurement
    c = Contention(**{k: busy[k] for k in Contention.__dataclass_fields__ if k in busy})
    why = f"its measurement ran contended ({c.describe()})"
    quiet, waited = wait_quiet(m.quiet_wait_s, threshold_pct=m.contention_threshold_pct)
    log(f"{why}: re-measuring it beside the baseline"
        + (f" after {waited:.0f} s waiting for quiet cores" if waited >= 1 else "")
        + ("" if quiet else f" (the cores stayed busy for {m.quiet_wait_s:g} s)"))
    try:
        out = harness.compare({BASELINE: dict(base_config), "trial": dict(config)}, rounds)
    except TrialFailed as exc:
        log(f"the re-measurement failed ({exc}); the contended figure stays flagged until the "
            "confirmation step measures it")
        details["remeasured"] = {"why": why, "how": "failed", "error": str(exc)}
        return replace(result, details=details)
    ran_busy = bool((out.get(CONTENTION_KEY) or {}).get("contended"))
    batch, base_batch = int(config.get("batch_size", 1)), int(base_config.get("batch_size", 1))
    got = _summarize("trial", None, out["trial"], out[BASELINE], batch, base_batch, 0.05, rounds,
                     [ran_busy] * rounds, result.metrics)
    figures = {k: v for k, v in got.metrics.items() if k in _REPLACED}
    base_p50 = float(baseline.get("latency_per_item_ms") or 0.0) * batch
    if ran_busy and not (base_p50 > 0 and baseline_quiet):
        error = ("its rounds ran contended and the study's baseline has no latency to scale its "
                 "ratio by") if not base_p50 > 0 else (
            f"its rounds ran contended and the study's baseline figure ran contended too: no "
            f"quiet figure to scale its interleaved ratio (x{got.ratio:.3f}) by; its contended "
            "figure stays flagged until the confirmation step measures it")
        log(error)
        details["remeasured"] = {"why": why, "how": "failed", "error": error, "ratio": got.ratio,
                                 "rounds": rounds, "rounds_contended": ran_busy}
        return replace(result, details=details)
    if ran_busy:  # never quiet: the ratio, which load hits alike, decides
        scale = got.ratio * base_p50 / got.p50_ms
        figures = {k: v / scale if k == "throughput_ips" else v * scale
                   for k, v in figures.items()}
        how = RATIO
        log(f"the cores never became quiet: ranked by its interleaved ratio to the baseline "
            f"(x{got.ratio:.3f} over {rounds} rounds, +-{got.spread_rel:.0%}), "
            f"{figures['latency_p50_ms']:.3g} ms instead of the contended "
            f"{result.metrics.get('latency_p50_ms', math.nan):.3g} ms")
    else:
        how = QUIET
        log(f"re-measured on quiet cores: {figures['latency_p50_ms']:.3g} ms instead of the "
            f"contended {result.metrics.get('latency_p50_ms', math.nan):.3g} ms")
    metrics = dict(result.metrics)
    old_p50 = float(metrics.get("latency_p50_ms") or 0.0)
    for k in ("achieved_gflops", "roofline_pct"):  # work per second, inversely to latency
        if k in metrics and figures["latency_p50_ms"] > 0:
            metrics[k] = metrics[k] * old_p50 / figures["latency_p50_ms"]
    metrics.update(figures)
    details["remeasured"] = {
        "why": why, "how": how, "rounds": rounds, "ratio": got.ratio,
        "ratio_low": got.ratio_low, "ratio_high": got.ratio_high, "spread_rel": got.spread_rel,
        "waited_s": waited, "rounds_contended": ran_busy,
        "contended": {k: result.metrics[k] for k in _REPLACED if k in result.metrics}}
    if how == RATIO:  # the quiet baseline figure its ratio was scaled by
        details["remeasured"]["baseline_p50_ms"] = base_p50
    return replace(result, metrics=metrics, details=details)


def manifest_latency(view: TrialView) -> dict[str, Any] | None:
    """What a bundle's manifest states as the pick's latency (``source`` says which):

    * confirmed: the confirmed p50 and, as ``spread_low_ms``..``spread_high_ms``, the 95 %
      prediction interval of a re-measured p50 from the spread between the confirmation's rounds
      (:func:`prediction_interval`); the rounds' own range is ``rounds_low_ms``..``rounds_high_ms``;
    * otherwise the trial's own p50 and the 95 % interval of the median of its one measurement,
      which says how well that measurement pinned its median, not where a re-measurement lands.
    """
    out = _manifest_latency(view)
    again = (view.user_attrs.get("details") or {}).get("remeasured")
    if out is not None and isinstance(again, Mapping):  # which figures were re-measured, and why
        out["remeasured"] = {k: again[k] for k in ("why", "how", "rounds", "ratio", "contended",
                                                   "baseline_p50_ms", "error") if k in again}
    return out


def _manifest_latency(view: TrialView) -> dict[str, Any] | None:
    conf = view.user_attrs.get("confirmed")
    if conf:
        lo, hi = conf.get("predict_low_ms"), conf.get("predict_high_ms")
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = conf["p50_low_ms"], conf["p50_high_ms"]  # recorded before intervals existed
        return {"source": "confirmation", "p50_ms": conf["p50_ms"], "p95_ms": conf["p95_ms"],
                "spread_low_ms": lo, "spread_high_ms": hi,
                "spread": f"95% prediction interval of a re-measured p50, from the spread "
                          f"between {conf['rounds']} interleaved rounds and the machine's drift "
                          f"over minutes (+-{conf.get('drift_sd', 0.0):.1%} sd)",
                "rounds_low_ms": conf["p50_low_ms"], "rounds_high_ms": conf["p50_high_ms"],
                "ratio_to_baseline": conf["ratio"], "ratio_low": conf["ratio_low"],
                "ratio_high": conf["ratio_high"], "rounds": conf["rounds"],
                "stable": conf["stable"], "contended_rounds": conf.get("contended_rounds", 0)}
    lat = (view.user_attrs.get("details") or {}).get("latency")
    if not isinstance(lat, Mapping) or "p50_ms" not in lat:
        return None
    again = (view.user_attrs.get("details") or {}).get("remeasured") or {}
    if again.get("how") in (QUIET, RATIO):  # its own measurement ran contended; this replaced it
        p50, p95 = view.metrics["latency_p50_ms"], view.metrics.get("latency_p95_ms")
        return {"source": "re-measurement", "p50_ms": p50, "p95_ms": p95,
                "spread_low_ms": p50 * again["ratio_low"] / again["ratio"],
                "spread_high_ms": p50 * again["ratio_high"] / again["ratio"],
                "spread": f"range of its ratio to the baseline over {again['rounds']} interleaved "
                          "rounds (its own measurement ran contended; not a prediction of a "
                          "re-measurement: 'autotune confirm' measures that)"}
    return {"source": "trial", "p50_ms": lat["p50_ms"], "p95_ms": lat.get("p95_ms"),
            "spread_low_ms": lat.get("ci95_low_ms"), "spread_high_ms": lat.get("ci95_high_ms"),
            "spread": "95% interval of the median within the trial's one measurement (not a "
                      "prediction of a re-measurement: 'autotune confirm' measures that)"}
