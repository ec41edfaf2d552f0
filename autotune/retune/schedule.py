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
5. measure champion and challenger side by side, in interleaved rounds, each in a measuring
   process of its own (:class:`autotune.tuning.confirm.SeparateProcesses`, as the confirmation
   step); promote only when the challenger wins by more than both ``retune.margin`` and the
   spread of the per-round ratios;
   then export it and move the alias (a running server watching the alias swaps to it);
6. record the cycle: an MLflow run tagged with what changed, what was measured and the decision,
   and a line in ``<out_dir>/retune/history.jsonl``.

Export and loading go through a :class:`Deployer`; :class:`BundleDeployer` (the default) uses
:mod:`autotune.deploy`: bundles registered in the MLflow Model Registry, the alias moved there,
with a local alias record as the fallback when MLflow is unreachable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from autotune.core.cron import parse_schedule
from autotune.core.files import sha256_file, write_json_atomic
from autotune.core.space import config_key
from autotune.deploy import load
from autotune.deploy.bundle import mlflow_quiet, read_manifest
from autotune.deploy.export import BUNDLE_PATH_TAG, export_bundle, register_bundle
from autotune.deploy.genserve import is_generation_bundle, verified_bundle
from autotune.deploy.serve import RegistrySource
from autotune.errors import AutotuneError, StudyError, TrialFailed
from autotune.job.spec import BudgetSpec, Job
from autotune.measure.harness.hardware import Fingerprint
from autotune.measure.harness.hostlock import file_lock
from autotune.measure.harness.isolate import IsolatedHarness
from autotune.measure.workloads.generation import folder_digest, model_folder
from autotune.measure.workloads.registry import evaluator_for
from autotune.record.study import TrialView, open_record
from autotune.review.tracking import JOB_TAG, experiment_id
from autotune.tuning.confirm import SeparateProcesses
from autotune.tuning.tuner import run as run_job

_LIBS = ("torch", "onnxruntime", "onnx", "numpy")
LATENCY_METRICS = ("latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
                   "latency_mean_ms")


# ---------------------------------------------------------------------- deploying
@runtime_checkable
class Deployer(Protocol):
    """What re-tuning needs from export/deploy (:class:`BundleDeployer` in production)."""

    def export_trial(self, job: Job, study: str, trial_number: int, out_dir: Path,
                     alias: str | None) -> Path:
        """Write a deployable bundle of trial ``trial_number`` of ``study`` (a study of ``job``'s
        storage) under ``out_dir`` and, when ``alias`` is given, point the alias at it.
        Returns the bundle path."""

    def load(self, bundle: Path) -> Any:
        """Load a bundle (checks it is intact)."""

    def resolve(self, job: Job, alias: str) -> Path | None:
        """The bundle ``alias`` points to, or None."""

    def manifest(self, bundle: Path) -> dict[str, Any]:
        """The bundle's manifest: at least study, trial, config, metrics, model_hash, env."""


class BundleDeployer:
    """:class:`Deployer` over :mod:`autotune.deploy`.

    * ``export_trial``: :func:`autotune.deploy.export.export_bundle` (model file, ``deploy.yaml``,
      ``manifest.json`` with SHA-256s) into a new folder, registered in the MLflow Model Registry
      of the job's tracking URI as model ``job.name`` with ``alias`` moved to the new version (a
      running ``autotune serve models:/NAME@ALIAS`` swaps to it).
    * a local alias record ``<out_dir>/aliases/<alias>.json`` (bundle path, registered version)
      is replaced atomically after every export.  MLflow being down never stops a cycle: the
      export is recorded locally with ``version: null`` and registered (alias moved) by the next
      ``resolve`` that reaches the registry.
    * ``resolve``: the registry alias's version → its bundle (the local record when it is the same
      version, else the version's ``autotune.bundle_path`` tag, else a download of its artifacts);
      when the registry is unreachable, the local record, and it says so through ``log``.
    """

    def __init__(self, log: Callable[[str], None] = lambda m: None) -> None:
        self.log = log

    # ------------------------------------------------------------------ export
    def export_trial(self, job: Job, study: str, trial_number: int, out_dir: Path,
                     alias: str | None) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        bundle = (Path(out_dir) / f"{study}-trial{trial_number}-{stamp}").resolve()
        res = export_bundle(_job_for_study(job, study), trial_number, out=bundle,
                            register=job.tracking.enabled, alias=alias, model_name=job.name)
        version = res.registered.version if res.registered else None
        if res.registry_error:
            self.log(f"MLflow registry unreachable ({res.registry_error}); alias '{alias}' moved "
                     "in the local alias record only, registered on the next cycle that reaches "
                     "MLflow")
        if alias:
            self._write_record(job, alias, bundle, version)
        return bundle

    # ------------------------------------------------------------------ the alias
    @staticmethod
    def _record_file(job: Job, alias: str) -> Path:
        return job.out_dir / "aliases" / f"{alias}.json"

    def _write_record(self, job: Job, alias: str, bundle: Path, version: str | None) -> None:
        write_json_atomic(self._record_file(job, alias),
                          {"bundle": str(bundle), "model": job.name, "version": version})

    def _read_record(self, job: Job, alias: str) -> dict[str, Any] | None:
        f = self._record_file(job, alias)
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and Path(rec.get("bundle", "")).is_dir() else None

    def resolve(self, job: Job, alias: str) -> Path | None:
        rec = self._read_record(job, alias)
        local = Path(rec["bundle"]) if rec else None
        if not job.tracking.enabled:
            return local
        mlflow_quiet()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
        try:
            mv = client.get_model_version_by_alias(job.name, alias)
        except Exception as exc:
            # the registry answered "no such model / alias"; anything else: it is unreachable
            if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST",
                                                      "INVALID_PARAMETER_VALUE"):
                self.log(f"MLflow registry unreachable ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); using the local alias record "
                         f"{self._record_file(job, alias)}")
                return local
            mv = None
        if rec is not None and rec.get("version") is None and local is not None:
            # exported while the registry was down: register it now and move the alias
            try:
                reg = register_bundle(local, tracking_uri=job.tracking_uri, name=job.name,
                                      alias=alias, experiment=job.tracking.experiment,
                                      artifacts=job.out_dir / "mlartifacts")
            except Exception as exc:
                self.log(f"cannot register {local} yet ({type(exc).__name__}: {exc}); using the "
                         "local alias record")
                return local
            self.log(f"registered {local} as {job.name} version {reg.version} and moved "
                     f"'{alias}' to it (exported while MLflow was unreachable)")
            self._write_record(job, alias, local, reg.version)
            return local
        if mv is None:
            return None  # the registry is reachable and has no such alias
        version = str(mv.version)
        if rec is not None and str(rec.get("version")) == version:
            return local
        # the alias was moved outside re-tuning (e.g. `autotune export`): follow the registry
        tagged = Path(mv.tags.get(BUNDLE_PATH_TAG, ""))
        if mv.tags.get(BUNDLE_PATH_TAG) and (tagged / "manifest.json").is_file():
            bundle = tagged
        else:
            bundle = self._download(job, alias, version)
        self._write_record(job, alias, bundle, version)
        return bundle

    def _download(self, job: Job, alias: str, version: str) -> Path:
        src = RegistrySource(f"models:/{job.name}@{alias}", job.tracking_uri)
        fetched = src.fetch(version)
        dest = (job.out_dir / "bundles" / f"registry-{job.name}-v{version}").resolve()
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(fetched, dest)
        src.release(fetched)
        return dest

    # ------------------------------------------------------------------ reading
    def load(self, bundle: Path) -> Any:
        if is_generation_bundle(bundle):  # a language model: checksums verified, not ONNX
            return verified_bundle(bundle)
        return load(bundle)

    def manifest(self, bundle: Path) -> dict[str, Any]:
        """The bundle's ``manifest.json`` plus the flat keys a cycle reads (study, trial, env)."""
        m = read_manifest(bundle)
        src = m.get("source", {})
        return {**m, "study": src.get("study_name") or src.get("job"), "trial": src.get("trial"),
                "env": m.get("environment") or {}}


def default_deployer(log: Callable[[str], None] = lambda m: None) -> Deployer:
    """The deployer re-tuning uses: bundles, the MLflow Model Registry and its aliases."""
    return BundleDeployer(log)


# ---------------------------------------------------------------------- what can change
def model_hash(job: Job) -> str:
    """sha256 of the model's source: the factory's module file, or the ONNX file."""
    base = Path(job.base_dir)
    if job.model.onnx:
        return sha256_file((base / job.model.onnx).resolve())
    if job.model.huggingface:  # a language model's folder: config, weights, tokenizer
        return folder_digest(model_folder(job))
    module = str(job.model.factory).split(":", 1)[0]
    rel = Path(*module.split("."))
    for root in (base, Path.cwd()):
        for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if cand.is_file():
                return sha256_file(cand)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise AutotuneError(f"cannot find the source of model.factory module '{module}'")
    return sha256_file(Path(spec.origin))


def environment(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """What a cycle compares: the hardware digest and the versions of the measuring libraries."""
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
    """The job reading another study of the same storage, output folder and MLflow experiment
    (a re-tune's)."""
    return job.model_copy(update={
        "name": study, "output_dir": str(job.out_dir.resolve()), "storage": job.storage_url,
        "tracking": job.tracking.model_copy(update={
            "uri": job.tracking_uri,
            "experiment": job.tracking.experiment or f"autotune-{job.name}"}),
    })


class Cycle:
    def __init__(self, job: Job, *, deployer: Deployer | None = None,
                 harness_factory: Callable[[Job], Any] | None = None,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.job = job
        self.policy = job.retune
        self.deployer = deployer or default_deployer(log)
        self.harness_factory = harness_factory or _isolated
        self.log = log
        self.bundles = job.out_dir / "bundles"

    def run(self) -> CycleResult:
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
        job, policy = self.job, self.policy
        # one measuring process for the cycle's own measurements (the champion again, the
        # re-tune's trials); the side-by-side comparison runs each contender in its own
        harness = self.harness_factory(job)
        try:
            env = environment(harness.fingerprint())
            mhash = model_hash(job)
            bundle = self.deployer.resolve(job, policy.alias)
            if bundle is None:
                return self._initial(started, env, mhash, harness)
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

            # ---- re-tune, warm-started from the champion's study, in the same process (it
            # loaded the model and libraries now on disk)
            self.log(f"re-tuning: {'; '.join(changed)}")
            old = open_record(_job_for_study(job, man["study"]), create=False)
            warm = [champ_cfg] + [dict(t.config)
                                  for t in _best(old.trials(), job, policy.warm_start)]
            space = job.space
            seen, warm_ok = set(), []
            for c in warm:
                c = {k: v for k, v in c.items() if k in space}
                key = config_key(c)
                if key not in seen and not space.validate(c):
                    seen.add(key)
                    warm_ok.append(c)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            sub = _job_for_study(job, f"{job.name}.r{stamp}").model_copy(update={
                "agent": job.agent.model_copy(update={"warm_start": warm_ok}),
                "budget": BudgetSpec(max_trials=max(policy.budget, len(warm_ok))),
            })
            summary = run_job(sub, harness=harness)
        finally:
            harness.close()
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
        if config_key(ch.config) == config_key(champ_cfg):
            decision, why = "keep", "the re-tune found no better configuration than the champion"
        else:
            decision, why = self._compare(champ_cfg, dict(ch.config), ch, measured)
        model_changed = any(c.startswith("model ") for c in changed) or any(
            c.split(" ")[0] in _LIBS for c in changed)
        if decision == "promote":
            new = self.deployer.export_trial(job, sub.name, ch.number, self.bundles, policy.alias)
            return CycleResult(job.name, "promote", why, changed=tuple(changed),
                               champion=champion, challenger=challenger, measured=measured,
                               bundle=str(new), started=started)
        if model_changed:
            # same configuration, but the deployed artifact was built from the old model/libraries
            twin = [t for t in summary.trials if t.state == "complete"
                    and config_key(t.config) == config_key(champ_cfg)]
            if twin:
                new = self.deployer.export_trial(job, sub.name, twin[0].number, self.bundles,
                                                 policy.alias)
                return CycleResult(job.name, "refresh",
                                   f"{why}; the champion's configuration was re-exported from the "
                                   "changed model", changed=tuple(changed), champion=champion,
                                   challenger=challenger, measured=measured, bundle=str(new),
                                   started=started)
        return CycleResult(job.name, "keep", why, changed=tuple(changed), champion=champion,
                           challenger=challenger, measured=measured, bundle=str(bundle),
                           started=started)

    def _compare(self, champ: dict[str, Any], chall: dict[str, Any], ch: TrialView,
                 measured: dict[str, Any]) -> tuple[str, str]:
        """Side by side, same cycle, same constraints: promote only on a clear win.

        Champion and challenger are timed in interleaved rounds, each in a measuring process of
        its own (:class:`autotune.tuning.confirm.SeparateProcesses`, as the confirmation step
        does): in one process, one contender's thread pools and allocator bias the other's
        figure (issue 25), and each is deployed as a lone process."""
        policy = self.policy
        metric, direction = self.job.objective_pairs[0]
        self.log(f"measuring champion and challenger side by side, {policy.rounds} rounds, each "
                 "in its own process")
        apart = SeparateProcesses(self.job, self.harness_factory)
        try:
            out = apart.compare({"champion": champ, "challenger": chall}, policy.rounds)
        finally:
            apart.close()
        key = {"latency_p90_ms": "p90_ms", "latency_p95_ms": "p95_ms",
               "latency_p99_ms": "p99_ms", "latency_mean_ms": "mean_ms"}.get(metric, "p50_ms")
        ratios = [b[key] / a[key] for a, b in zip(out["champion"], out["challenger"],
                                                    strict=True) if a[key] > 0]
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

    def _initial(self, started: str, env: dict[str, Any], mhash: str, harness: Any
                 ) -> CycleResult:
        """No champion yet: finish the job's own study if needed (measured by ``harness``, the
        cycle's measuring process) and deploy its best trial."""
        job = self.job
        try:
            rec = open_record(job, create=False)
            views = rec.trials()
        except StudyError:
            rec, views = None, []
        if rec is None or rec.counted() < job.budget.max_trials:
            self.log("no champion yet: running the job first")
            views = list(run_job(job, harness=harness).trials)
            rec = open_record(job, create=False)
        rec.set_attr("model_hash", mhash)
        rec.set_attr("environment", env)
        best = _best(views, job, 1)
        if not best:
            raise AutotuneError(f"job '{job.name}' has no feasible trial to deploy")
        bundle = self.deployer.export_trial(job, job.name, best[0].number, self.bundles,
                                             self.policy.alias)
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
            from mlflow.tracking import MlflowClient

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client = MlflowClient(tracking_uri=self.job.tracking_uri)
                exp_id = experiment_id(
                    client, self.job.tracking.experiment or f"autotune-{self.job.name}",
                    self.job.tracking_uri, self.job.out_dir / "mlartifacts")
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
    return IsolatedHarness(job, evaluator=evaluator_for)


def retune_once(job: Job, *, deployer: Deployer | None = None,
                log: Callable[[str], None] = lambda m: None) -> CycleResult:
    """Run one re-tuning cycle (``autotune retune``)."""
    return Cycle(job, deployer=deployer, log=log).run()


def run_schedule(job: Job, *, deployer: Deployer | None = None, max_cycles: int | None = None,
                 log: Callable[[str], None] = lambda m: None,
                 on_cycle: Callable[[CycleResult], None] = lambda r: None,
                 sleep: Callable[[float], None] = time.sleep) -> list[CycleResult]:
    """Run cycles on ``job.schedule`` in the foreground (``autotune schedule``)."""
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
