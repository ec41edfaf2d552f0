"""Scheduled re-tuning: follow drift of the machine, the libraries and the model.

One *cycle* (``autotune retune JOB``; ``autotune schedule JOB`` runs cycles on the job's
``schedule:``):

1. take the job's cycle lock (``flock`` on ``<out_dir>/retune.lock``: the kernel releases it when
   the holder dies, so a crashed cycle never blocks the next one; a second concurrent cycle is
   skipped, not queued);
2. fingerprint the hardware and the library versions, hash the model source (factory module file
   or ONNX file);
3. find the champion (the bundle the alias ``retune.alias`` points to) and re-measure its
   configuration;
4. if the environment or the model changed, or an objective drifted by more than
   ``retune.drift_threshold`` (relative), re-tune in a new study warm-started from the earlier
   study's best configurations (re-measured) with ``retune.budget`` trials;
5. measure champion and challenger side by side (``stats.alternate``); promote only when the
   challenger wins by more than both ``retune.margin`` and the spread of the per-round ratios;
   then export it and move the alias (a running server watching the alias swaps to it);
6. record the cycle: an MLflow run tagged with what changed, what was measured and the decision,
   and a line in ``<out_dir>/retune/history.jsonl``.

Export and loading go through a :class:`Deployer` (``export_trial``, ``load``, ``resolve``).
:class:`LocalDeployer` is a small self-contained one (copy of the trial's model artifact + a JSON
manifest; the alias is a JSON pointer file replaced atomically).  ``autotune.deploy`` plugs in
through :func:`default_deployer`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from autotune.errors import AutotuneError, StudyError, TrialFailed
from autotune.spec import BudgetSpec, Job
from autotune.study import TrialView

BUNDLE_FORMAT = "autotune-bundle/0"
MANIFEST = "manifest.json"
_LIBS = ("torch", "onnxruntime", "onnx", "numpy")
LATENCY_METRICS = ("latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
                   "latency_mean_ms")


# ---------------------------------------------------------------------- the deploy seam
@runtime_checkable
class Deployer(Protocol):
    """What re-tuning needs from export/deploy."""

    def export_trial(self, job: Job, trial_number: int, out_dir: Path, alias: str | None) -> Path:
        """Write a deployable bundle of ``trial_number`` of ``job``'s study under ``out_dir``
        and, when ``alias`` is given, point the alias at it.  Returns the bundle path."""

    def load(self, bundle: Path) -> Any:
        """Load a bundle (checks it is intact)."""

    def resolve(self, job: Job, alias: str) -> Path | None:
        """The bundle ``alias`` points to, or None."""

    def manifest(self, bundle: Path) -> dict[str, Any]:
        """The bundle's manifest: at least study, trial, config, metrics, model_hash, env."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@dataclass(frozen=True)
class LoadedBundle:
    path: Path
    manifest: Mapping[str, Any]
    model_file: Path


class LocalDeployer:
    """Minimal export: the trial's model artifact + ``manifest.json``; aliases are pointer files
    ``<job.out_dir>/aliases/<alias>.json`` replaced atomically (``os.replace``)."""

    def export_trial(self, job: Job, trial_number: int, out_dir: Path, alias: str | None) -> Path:
        from autotune.tuner import open_record

        record = open_record(job, create=False)
        views = {t.number: t for t in record.trials()}
        if trial_number not in views or views[trial_number].state != "complete":
            raise StudyError(f"trial {trial_number} of study '{job.name}' is not a complete trial")
        view = views[trial_number]
        details = view.user_attrs.get("details", {})
        src = Path(details.get("model_path", ""))
        if not src.is_file():
            raise AutotuneError(f"the model artifact of trial {trial_number} is gone ({src})")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        bundle = Path(out_dir) / f"{job.name}-trial{trial_number}-{stamp}"
        bundle.mkdir(parents=True)
        dst = bundle / f"model{src.suffix}"
        shutil.copy2(src, dst)
        manifest = {
            "format": BUNDLE_FORMAT, "job": job.name, "study": job.name, "trial": trial_number,
            "config": dict(view.config), "metrics": dict(view.metrics),
            "model_file": dst.name, "model_sha256": _sha256(dst),
            "model_hash": record.attr("model_hash") or model_hash(job),
            "env": record.attr("environment") or {}, "created": stamp,
        }
        _write_json_atomic(bundle / MANIFEST, manifest)
        if alias:
            self.set_alias(job, alias, bundle)
        return bundle

    @staticmethod
    def _alias_file(job: Job, alias: str) -> Path:
        return job.out_dir / "aliases" / f"{alias}.json"

    def set_alias(self, job: Job, alias: str, bundle: Path) -> None:
        _write_json_atomic(self._alias_file(job, alias), {"bundle": str(Path(bundle).resolve())})

    def resolve(self, job: Job, alias: str) -> Path | None:
        f = self._alias_file(job, alias)
        if not f.is_file():
            return None
        return Path(json.loads(f.read_text())["bundle"])

    def manifest(self, bundle: Path) -> dict[str, Any]:
        return json.loads((Path(bundle) / MANIFEST).read_text())

    def load(self, bundle: Path) -> LoadedBundle:
        m = self.manifest(bundle)
        model = Path(bundle) / m["model_file"]
        if _sha256(model) != m["model_sha256"]:
            raise AutotuneError(f"bundle {bundle} is corrupt: the model file does not match its "
                                "manifest's sha256")
        return LoadedBundle(Path(bundle), m, model)


def default_deployer() -> Deployer:
    """The deployer re-tuning uses.  When ``autotune.deploy`` exists (branch 'deploy'), wire it
    here (see docs/retune.md, "Merging with autotune.deploy")."""
    return LocalDeployer()


# ---------------------------------------------------------------------- what can change
def model_hash(job: Job) -> str:
    """sha256 of the model's source: the factory's module file, or the ONNX file."""
    base = Path(job.base_dir)
    if job.model.onnx:
        return _sha256((base / job.model.onnx).resolve())
    module = str(job.model.factory).split(":", 1)[0]
    rel = Path(*module.split("."))
    for root in (base, Path.cwd()):
        for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if cand.is_file():
                return _sha256(cand)
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise AutotuneError(f"cannot find the source of model.factory module '{module}'")
    return _sha256(Path(spec.origin))


def environment(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """What a cycle compares: the hardware digest and the versions of the measuring libraries."""
    from autotune.harness.hardware import Fingerprint

    try:
        digest = Fingerprint.from_dict(fingerprint).digest()
    except (KeyError, TypeError, ValueError):
        hw = {k: v for k, v in fingerprint.items() if k not in ("libraries", "python", "os")}
        digest = hashlib.sha256(json.dumps(hw, sort_keys=True, default=str).encode()
                                ).hexdigest()[:16]
    libs = fingerprint.get("libraries", {}) or {}
    return {"hardware": digest, "libraries": {k: libs.get(k) for k in _LIBS}}


def _env_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if not old:
        return []
    out = []
    if old.get("hardware") != new.get("hardware"):
        out.append(f"hardware {old.get('hardware')} -> {new.get('hardware')}")
    for k, v in new.get("libraries", {}).items():
        was = old.get("libraries", {}).get(k)
        if was != v:
            out.append(f"{k} {was} -> {v}")
    return out


# ---------------------------------------------------------------------- a cycle
@dataclass(frozen=True)
class CycleResult:
    job: str
    decision: str  # initial | keep | promote | refresh | skipped
    why: str
    changed: tuple[str, ...] = ()
    champion: Mapping[str, Any] | None = None  # bundle, study, trial, config
    challenger: Mapping[str, Any] | None = None
    measured: Mapping[str, Any] = field(default_factory=dict)
    bundle: str | None = None  # the bundle the alias points to after the cycle
    started: str = ""
    wall_s: float = 0.0
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relative(now: float, then: float) -> float:
    return abs(now - then) / max(abs(then), 1e-12)


def _best(views: Sequence[TrialView], job: Job, k: int) -> list[TrialView]:
    """The ``k`` best feasible trials on the first objective (the one a champion is chosen by)."""
    metric, direction = job.objective_pairs[0]
    ok = [t for t in views if t.feasible and metric in t.metrics]
    ok.sort(key=lambda t: t.metrics[metric] * (1 if direction == "minimize" else -1))
    return ok[:k]


def _job_for_study(job: Job, study: str) -> Job:
    """The job reading another study of the same storage (a re-tune's)."""
    return job.model_copy(update={"name": study, "output_dir": str(job.out_dir.resolve()),
                                  "storage": job.storage_url})


class Cycle:
    def __init__(self, job: Job, *, deployer: Deployer | None = None,
                 harness_factory: Callable[[Job], Any] | None = None,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.job = job
        self.policy = job.retune
        self.deployer = deployer or default_deployer()
        self.harness_factory = harness_factory or _isolated
        self.log = log
        self.bundles = job.out_dir / "bundles"

    def run(self) -> CycleResult:
        from autotune.harness.hostlock import file_lock

        t0 = time.monotonic()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        lock = self.job.out_dir / "retune.lock"
        with file_lock(lock, blocking=False) as got:
            if not got:
                holder = lock.read_text().strip() if lock.exists() else "?"
                res = CycleResult(self.job.name, "skipped",
                                  f"another cycle of this job is running (pid {holder})",
                                  started=started)
                self._record(res)
                return res
            res = self._cycle(started)
            res = CycleResult(**{**res.to_dict(), "wall_s": time.monotonic() - t0})
            run_id = self._track(res)
            res = CycleResult(**{**res.to_dict(), "mlflow_run_id": run_id})
            self._record(res)
            return res

    # ------------------------------------------------------------------ steps
    def _cycle(self, started: str) -> CycleResult:
        from autotune.tuner import open_record

        job, policy = self.job, self.policy
        harness = self.harness_factory(job)
        try:
            env = environment(harness.fingerprint())
            mhash = model_hash(job)
            bundle = self.deployer.resolve(job, policy.alias)
            if bundle is None:
                return self._initial(started, env, mhash)
            self.deployer.load(bundle)  # the champion's artifact is intact
            man = self.deployer.manifest(bundle)
            champ_cfg = dict(man["config"])
            champion = {"bundle": str(bundle), "study": man["study"], "trial": man["trial"],
                        "config": champ_cfg}
            changed = _env_changes(man.get("env", {}), env)
            if man.get("model_hash") != mhash:
                changed.append(f"model {str(man.get('model_hash'))[:12]} -> {mhash[:12]}")
            self.log("re-measuring the champion "
                     f"(study {man['study']}, trial {man['trial']})")
            measured: dict[str, Any] = {}
            try:
                now = harness.evaluate(champ_cfg).metrics
            except TrialFailed as exc:
                changed.append(f"the champion no longer runs: {exc}")
                now = {}
            drift = {m: _relative(float(now[m]), float(man["metrics"][m]))
                     for m, _ in job.objective_pairs if m in now and m in man["metrics"]}
            measured["champion_then"] = {m: man["metrics"].get(m) for m, _ in job.objective_pairs}
            measured["champion_now"] = {m: now.get(m) for m, _ in job.objective_pairs}
            measured["drift"] = drift
            drifted = {m: d for m, d in drift.items() if d > policy.drift_threshold}
            if drifted:
                changed += [f"{m} drifted {d:.1%} (> {policy.drift_threshold:.1%})"
                            for m, d in drifted.items()]
            if not changed:
                worst = max(drift.values(), default=0.0)
                return CycleResult(
                    job.name, "keep",
                    f"nothing changed: same environment and model, largest drift {worst:.1%} "
                    f"<= {policy.drift_threshold:.1%}",
                    champion=champion, measured=measured, bundle=str(bundle), started=started)
        finally:
            harness.close()

        # ---- re-tune, warm-started from the champion's study
        self.log(f"re-tuning: {'; '.join(changed)}")
        old = open_record(_job_for_study(job, man["study"]), create=False)
        warm = [champ_cfg] + [dict(t.config) for t in _best(old.trials(), job, policy.warm_start)]
        space = job.space
        seen, warm_ok = set(), []
        for c in warm:
            c = {k: v for k, v in c.items() if k in space}
            key = repr(sorted(c.items()))
            if key not in seen and not space.validate(c):
                seen.add(key)
                warm_ok.append(c)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        sub = job.model_copy(update={
            "name": f"{job.name}.r{stamp}",
            "output_dir": str(job.out_dir.resolve()),  # same folder, study file and MLflow store
            "storage": job.storage_url, "tracking": job.tracking.model_copy(update={
                "uri": job.tracking_uri,
                "experiment": job.tracking.experiment or f"autotune-{job.name}"}),
            "agent": job.agent.model_copy(update={"warm_start": warm_ok}),
            "budget": BudgetSpec(max_trials=max(policy.budget, len(warm_ok))),
        })
        from autotune.tuner import run as run_job

        harness = self.harness_factory(job)
        try:
            summary = run_job(sub, harness=harness)
            rec = open_record(sub, create=False)
            rec.set_attr("model_hash", mhash)
            rec.set_attr("environment", env)
            best = _best(summary.trials, sub, 1)
            if not best:
                return CycleResult(job.name, "keep", "the re-tune found no feasible configuration",
                                   changed=tuple(changed), champion=champion, measured=measured,
                                   bundle=str(bundle), started=started)
            ch = best[0]
            challenger = {"study": sub.name, "trial": ch.number, "config": dict(ch.config)}
            same = repr(sorted(ch.config.items())) == repr(sorted(champ_cfg.items()))
            if same:
                decision, why = "keep", "the re-tune found no better configuration than the champion"
            else:
                decision, why = self._compare(harness, champ_cfg, dict(ch.config), ch, measured)
        finally:
            harness.close()
        model_changed = any(c.startswith("model ") for c in changed) or any(
            c.split(" ")[0] in _LIBS for c in changed)
        if decision == "promote":
            new = self.deployer.export_trial(sub, ch.number, self.bundles, policy.alias)
            return CycleResult(job.name, "promote", why, changed=tuple(changed),
                               champion=champion, challenger=challenger, measured=measured,
                               bundle=str(new), started=started)
        if model_changed:
            # same configuration, but the deployed artifact was built from the old model/libraries
            twin = [t for t in summary.trials if t.state == "complete"
                    and repr(sorted(t.config.items())) == repr(sorted(champ_cfg.items()))]
            if twin:
                new = self.deployer.export_trial(sub, twin[0].number, self.bundles, policy.alias)
                return CycleResult(job.name, "refresh",
                                   f"{why}; the champion's configuration was re-exported from the "
                                   "changed model", changed=tuple(changed), champion=champion,
                                   challenger=challenger, measured=measured, bundle=str(new),
                                   started=started)
        return CycleResult(job.name, "keep", why, changed=tuple(changed), champion=champion,
                           challenger=challenger, measured=measured, bundle=str(bundle),
                           started=started)

    def _compare(self, harness: Any, champ: dict[str, Any], chall: dict[str, Any],
                 ch: TrialView, measured: dict[str, Any]) -> tuple[str, str]:
        """Side by side, same cycle, same constraints: promote only on a clear win."""
        policy = self.policy
        metric, direction = self.job.objective_pairs[0]
        out = harness.compare({"champion": champ, "challenger": chall}, policy.rounds)
        key = {"latency_p90_ms": "p90_ms", "latency_p95_ms": "p95_ms",
               "latency_p99_ms": "p99_ms", "latency_mean_ms": "mean_ms"}.get(metric, "p50_ms")
        ratios = [b[key] / a[key] for a, b in zip(out["champion"], out["challenger"],
                                                    strict=True) if a[key] > 0]
        import numpy as np

        r = np.asarray(ratios, dtype=float)
        med, lo, hi = float(np.median(r)), float(r.min()), float(r.max())
        spread = (hi - lo) / 2
        measured["side_by_side"] = {"metric": key, "rounds": len(ratios), "ratio_median": med,
                                    "ratio_min": lo, "ratio_max": hi, "spread": spread,
                                    "champion_ms": [a[key] for a in out["champion"]],
                                    "challenger_ms": [b[key] for b in out["challenger"]]}
        if metric in LATENCY_METRICS:
            gain = 1 - med
        else:  # other objectives (size, cost, quality) are not noisy: this cycle's values
            now = measured.get("champion_now", {}).get(metric)
            then = ch.metrics.get(metric)
            if now is None or then is None:
                return "keep", f"no measurement of {metric} to compare"
            gain = (now - then) / abs(now) if direction == "minimize" else (then - now) / abs(now)
            spread = 0.0
        need = max(policy.margin, spread)
        measured["gain"], measured["needed"] = gain, need
        if gain > need:
            return "promote", (f"the challenger is better on {metric} by {gain:.1%}, more than "
                               f"the margin {policy.margin:.1%} and the spread {spread:.1%} "
                               f"({len(ratios)} side-by-side rounds)")
        return "keep", (f"the challenger's gain on {metric} ({gain:.1%}) is not larger than the "
                        f"margin {policy.margin:.1%} / spread {spread:.1%}")

    def _initial(self, started: str, env: dict[str, Any], mhash: str) -> CycleResult:
        """No champion yet: finish the job's own study if needed and deploy its best trial."""
        from autotune.tuner import open_record
        from autotune.tuner import run as run_job

        job = self.job
        try:
            rec = open_record(job, create=False)
            views = rec.trials()
        except StudyError:
            rec, views = None, []
        if rec is None or rec.counted() < job.budget.max_trials:
            self.log("no champion yet: running the job first")
            harness = self.harness_factory(job)
            try:
                views = list(run_job(job, harness=harness).trials)
            finally:
                harness.close()
            rec = open_record(job, create=False)
        rec.set_attr("model_hash", mhash)
        rec.set_attr("environment", env)
        best = _best(views, job, 1)
        if not best:
            raise AutotuneError(f"job '{job.name}' has no feasible trial to deploy")
        bundle = self.deployer.export_trial(job, best[0].number, self.bundles, self.policy.alias)
        return CycleResult(job.name, "initial", "no champion yet: deployed the study's best trial",
                           champion={"study": job.name, "trial": best[0].number,
                                     "config": dict(best[0].config)},
                           bundle=str(bundle), started=started)

    # ------------------------------------------------------------------ records
    def _record(self, res: CycleResult) -> None:
        path = self.job.out_dir / "retune" / "history.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(res.to_dict(), default=str) + "\n")

    def _track(self, res: CycleResult) -> str | None:
        """One MLflow run per cycle in the job's experiment; never fails the cycle."""
        if not self.job.tracking.enabled:
            return None
        try:
            import warnings

            from mlflow.tracking import MlflowClient

            from autotune.tracking import JOB_TAG

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client = MlflowClient(tracking_uri=self.job.tracking_uri)
                name = self.job.tracking.experiment or f"autotune-{self.job.name}"
                exp = client.get_experiment_by_name(name)
                if exp is not None:
                    exp_id = exp.experiment_id
                else:
                    uri = self.job.tracking_uri
                    art = (self.job.out_dir / "mlartifacts").resolve().as_uri() \
                        if uri.startswith("sqlite:") or "://" not in uri else None
                    exp_id = client.create_experiment(name, artifact_location=art)
                tags = {
                    JOB_TAG: self.job.name, "autotune.kind": "retune",
                    "autotune.retune.decision": res.decision,
                    "autotune.retune.why": res.why[:5000],
                    "autotune.retune.changed": "; ".join(res.changed)[:5000] or "nothing",
                    "autotune.retune.bundle": res.bundle or "",
                }
                if res.champion:
                    tags["autotune.retune.champion"] = f"{res.champion['study']}#{res.champion['trial']}"
                if res.challenger:
                    tags["autotune.retune.challenger"] = (
                        f"{res.challenger['study']}#{res.challenger['trial']}")
                run = client.create_run(exp_id, run_name=f"retune {res.started}", tags=tags)
                rid = run.info.run_id
                for k, v in _flat_numbers(res.measured).items():
                    client.log_metric(rid, k, v)
                client.log_dict(rid, res.to_dict(), "cycle.json")
                client.set_terminated(rid)
            return rid
        except Exception as exc:  # tracking must never stop re-tuning
            self.log(f"MLflow unavailable: {type(exc).__name__}: {exc}")
            return None


def _flat_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_numbers(v, f"{key}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _isolated(job: Job) -> Any:
    from autotune.harness.isolate import IsolatedHarness

    return IsolatedHarness(job)


def retune_once(job: Job, *, deployer: Deployer | None = None,
                log: Callable[[str], None] = lambda m: None) -> CycleResult:
    """Run one re-tuning cycle (``autotune retune``)."""
    return Cycle(job, deployer=deployer, log=log).run()


def run_schedule(job: Job, *, deployer: Deployer | None = None, max_cycles: int | None = None,
                 log: Callable[[str], None] = lambda m: None,
                 on_cycle: Callable[[CycleResult], None] = lambda r: None,
                 sleep: Callable[[float], None] = time.sleep) -> list[CycleResult]:
    """Run cycles on ``job.schedule`` in the foreground (``autotune schedule``)."""
    from autotune.cron import parse_schedule

    if not job.schedule:
        raise AutotuneError(f"job '{job.name}' has no 'schedule:' (a cron expression or an "
                            "interval like '6h')")
    sched = parse_schedule(job.schedule)
    results: list[CycleResult] = []
    while max_cycles is None or len(results) < max_cycles:
        now = dt.datetime.now().astimezone()
        nxt = sched.next_after(now)
        log(f"next re-tune cycle at {nxt.isoformat(timespec='seconds')}")
        sleep(max(0.0, (nxt - dt.datetime.now().astimezone()).total_seconds()))
        try:
            res = Cycle(job, deployer=deployer, log=log).run()
        except AutotuneError as exc:  # a failed cycle is logged; the schedule goes on
            log(f"cycle failed: {exc}")
            res = CycleResult(job.name, "failed", str(exc))
        results.append(res)
        on_cycle(res)
    return results
