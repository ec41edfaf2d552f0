"""MLflow as the review surface, written from the study.

* Parent run per job: the job spec as the artifact ``job.yaml`` and a few ``autotune.*`` tags
  (objectives, constraints, agent, search space, budget) -- no params, so the runs table's
  parameter columns are the trials' configuration only --, the hardware fingerprint
  (``hardware.json`` + ``hardware.*`` tags), autotune and library versions (``autotune.version``,
  ``lib.*`` tags), the baseline's measurements (``baseline.*`` metrics) and ``hypervolume`` with
  the trial number as step (reference point: :mod:`autotune.review.front`).
* Nested run per trial, named after its configuration (``ort int8_dynamic b1 t2 #12``), with the
  trial's own start and end time: params = configuration, metrics = every measurement (with
  spread and n) plus ``feasible`` (1/0) and ``pareto_rank`` (0 = on the front; absent when not
  ranked: failed or infeasible), so the front is ``metrics.pareto_rank = 0`` and sorts
  numerically; tags = ``state``, ``fail_reason``, ``agent``.  Ranks change as trials arrive, so
  :meth:`Tracker.finish` logs the ranks that changed (the latest value is the rank).
* Parent artifacts (:meth:`Tracker.finish`): ``trials.csv``, ``trials.parquet``,
  ``pareto_front.csv`` and ``plots.html`` (every interactive plot on one page, plotly.js inlined
  once and compressed: :func:`autotune.review.plots.plots_page`).

MLflow is never the record: if it is unreachable the tuning goes on (after the first failure the
tracker stays quiet for the rest of the run), and :meth:`Tracker.sync` writes the missing runs
later from the study (``autotune sync``, and at the start of every run).  Nested runs carry the
trial number as a tag, so nothing is written twice; a nested run left half-written (still
RUNNING) by a connection lost mid-write is deleted and written again.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autotune._version import __version__
from autotune.job.spec import Job, dump_job
from autotune.record.study import StudyRecord, TrialView, open_record
from autotune.review.front import front_table, hypervolume_series, pareto_ranks, study_reference, trial_table
from autotune.review.plots import study_figures, write_figures

log = logging.getLogger("autotune.review.tracking")

TRIAL_TAG = "autotune.trial_number"
JOB_TAG = "autotune.job"


def experiment_id(client: Any, name: str, tracking_uri: str, artifacts: Path | None) -> str:
    """The MLflow experiment ``name``, created when missing (every autotune writer goes through
    this).  A local store (SQLite, a folder) keeps its artifacts in the folder ``artifacts``
    (``<out_dir>/mlartifacts``); a server chooses its own."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if artifacts is not None and (tracking_uri.startswith("sqlite:") or "://" not in tracking_uri):
        location = Path(artifacts).resolve().as_uri()
    # the kind makes MLflow 3's UI open the runs table (not the GenAI traces overview)
    return str(client.create_experiment(
        name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"},
    ))


class Tracker:
    def __init__(self, job: Job, record: StudyRecord) -> None:
        self.job = job
        self.record = record
        self.enabled = job.tracking.enabled
        self.uri = job.tracking_uri
        self.experiment_name = job.tracking.experiment or f"autotune-{job.name}"
        self._client: Any = None
        self._parent: str | None = None
        self.last_error: str | None = None
        self._down = False
        self._ranks: dict[int, int] | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            import os

            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
            logging.getLogger("alembic").setLevel(logging.WARNING)
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _reachable(self) -> bool:
        """For an HTTP server, a quick TCP connect (the MLflow client itself would retry for
        minutes); always True for a local store."""
        from urllib.parse import urlparse

        u = urlparse(self.uri)
        if u.scheme not in ("http", "https") or not u.hostname:
            return True
        import socket

        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            with socket.create_connection((u.hostname, port), timeout=3):
                return True
        except OSError as exc:
            self.last_error = f"cannot connect to {self.uri}: {exc}"
            return False

    def _safe(self, what: str, fn: Any, *args: Any) -> Any:
        if not self.enabled or self._down:
            return None
        if not self._reachable():  # a TCP connect per call: bounds the wait on a dead server
            self._down = True
            log.warning("MLflow unavailable (%s); trials stay in the study and will be synced "
                        "later with 'autotune sync'.", self.last_error)
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*args)
        except Exception as exc:  # tracking must never stop tuning
            self.last_error = f"{what}: {type(exc).__name__}: {exc}"
            log.warning("MLflow unavailable (%s); trials stay in the study and will be synced "
                        "later with 'autotune sync'.", self.last_error)
            self._parent = None
            self._down = True  # do not wait on a dead server again in this run
            return None

    def _experiment_id(self) -> str:
        return experiment_id(self.client, self.experiment_name, self.uri,
                             self.job.out_dir / "mlartifacts")

    def parent_run_id(self) -> str:
        if self._parent:
            return self._parent
        saved = self.record.attr("mlflow_parent_run_id")
        if saved:
            try:
                self.client.get_run(saved)
                self._parent = saved
                return saved
            except Exception:  # store was reset or moved: start a new parent, then sync
                pass
        exp_id = self._experiment_id()
        run = self.client.create_run(
            exp_id, run_name=self.job.name,
            tags={JOB_TAG: self.job.name, "autotune.record.study": self.record.study.study_name},
        )
        rid = run.info.run_id
        spec = dump_job(self.job)
        from mlflow.entities import RunTag

        self.client.log_batch(rid, tags=[RunTag(k, v) for k, v in spec_tags(self.job, spec).items()])
        import yaml

        self.client.log_text(rid, yaml.safe_dump(spec, sort_keys=False), "job.yaml")
        self.record.set_attr("mlflow_parent_run_id", rid)
        self._parent = rid
        return rid

    # ------------------------------------------------------------------ public
    def start(self, fingerprint: Mapping[str, Any] | None, baseline: Mapping[str, float] | None
              ) -> None:
        def go() -> None:
            rid = self.parent_run_id()
            from mlflow.entities import RunTag

            tags = {"autotune.version": __version__}
            if fingerprint:
                self.client.log_dict(rid, dict(fingerprint), "hardware.json")
                tags.update(hardware_tags(fingerprint))
            self.client.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
            if baseline:
                from mlflow.entities import Metric

                self.client.log_batch(rid, metrics=[
                    Metric(f"baseline.{k}", float(v), 0, 0) for k, v in baseline.items()
                    if isinstance(v, int | float) and math.isfinite(v)
                ])

        self._safe("start", go)

    def log_trial(self, view: TrialView, *, rank: int | None = None,
                  views: Sequence[TrialView] | None = None) -> None:
        """Write the trial's nested run; with ``views`` (all trials so far) also the parent's
        ``hypervolume`` at this trial's step (and its Pareto rank among them)."""
        if rank is None and views is not None:
            rank = self._ranks_of(views).get(view.number)
        self._safe("log_trial", self._log_trial, view, rank)
        if views is not None:
            self._safe("hypervolume", self._log_hypervolume, views)

    def _log_hypervolume(self, views: Sequence[TrialView]) -> int:
        """Log the ``hypervolume`` steps the parent run does not have yet; returns how many."""
        from mlflow.entities import Metric

        ref = study_reference(self.record, self.job, views)
        if ref is None:
            return 0
        rid = self.parent_run_id()
        have = {m.step for m in self.client.get_metric_history(rid, "hypervolume")}
        now = _now_ms()
        new = [Metric("hypervolume", hv, now, n)
               for n, hv in hypervolume_series(views, self.job.objective_pairs, ref)
               if n not in have]
        for i in range(0, len(new), 1000):
            self.client.log_batch(rid, metrics=new[i:i + 1000])
        return len(new)

    def _log_trial(self, view: TrialView, rank: int | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        parent = self.parent_run_id()
        start = _ms(view.started)
        end = _ms(view.completed)
        run = self.client.create_run(
            self.client.get_run(parent).info.experiment_id,
            run_name=run_name(view),
            start_time=start,
            tags={"mlflow.parentRunId": parent, TRIAL_TAG: str(view.number), JOB_TAG: self.job.name},
        )
        rid = run.info.run_id
        stamp = end or start or _now_ms()
        params = [Param(k, str(v)[:6000]) for k, v in view.config.items()]
        metrics = [Metric(k, float(v), stamp, 0) for k, v in view.metrics.items()
                   if isinstance(v, int | float) and math.isfinite(float(v))]
        metrics.append(Metric("feasible", 1.0 if view.feasible else 0.0, stamp, 0))
        if rank is not None:
            metrics.append(Metric("pareto_rank", float(rank), stamp, 0))
        tags = [RunTag("state", view.state), RunTag("agent", view.agent or ""),
                RunTag("source", str(view.user_attrs.get("source", "")))]  # agent / portfolio / ...
        if view.reason:
            tags.append(RunTag("fail_reason", view.reason[:4900]))
        self.client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        self.client.set_terminated(rid, "FINISHED" if view.state == "complete" else "FAILED",
                                   end_time=end)

    def nested_runs(self) -> list[Any]:
        """The parent's nested runs that carry a trial number (active ones only)."""
        parent = self.parent_run_id()
        exp = self.client.get_run(parent).info.experiment_id
        runs = self.client.search_runs(
            [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000,
        )
        return [r for r in runs if TRIAL_TAG in r.data.tags]

    def logged_trials(self) -> set[int]:
        """Trial numbers whose nested run was fully written; half-written ones are deleted."""
        done = set()
        for r in self.nested_runs():
            if r.info.status == "RUNNING":  # connection lost between create_run and log_batch
                self.client.delete_run(r.info.run_id)
            else:
                done.add(int(r.data.tags[TRIAL_TAG]))
        return done

    def sync(self, views: Iterable[TrialView]) -> int:
        """Write nested runs for finished trials that MLflow does not have yet, and the missing
        ``hypervolume`` steps; returns the number of nested runs written."""
        views = list(views)
        done = self._safe("sync", self.logged_trials)
        if done is None:
            return 0
        ranks = self._ranks_of(views)
        n = 0
        for v in views:
            # like the loop: measured trials only (invalid proposals were never run)
            if v.state in ("complete", "failed") and v.number not in done:
                self.log_trial(v, rank=ranks.get(v.number))
                n += 1 if not self._down else 0
        self._safe("hypervolume", self._log_hypervolume, views)
        return n

    def _ranks_of(self, views: Sequence[TrialView]) -> dict[int, int]:
        return pareto_ranks(views, self.job.objective_pairs)

    def update_ranks(self, views: Sequence[TrialView]) -> int:
        """Log a new ``pareto_rank`` value on every nested run whose rank changed (the runs
        table shows the latest); returns how many changed.  Ranks are over feasible trials, and
        feasibility does not change, so a ranked run stays ranked."""
        from mlflow.entities import Metric

        ranks = self._ranks_of(views)
        n = 0
        now = _now_ms()
        for r in self.nested_runs():
            want = ranks.get(int(r.data.tags[TRIAL_TAG]))
            if want is not None and r.data.metrics.get("pareto_rank") != float(want):
                self.client.log_batch(r.info.run_id,
                                      metrics=[Metric("pareto_rank", float(want), now, 0)])
                n += 1
        return n

    def needs_finish(self) -> bool:
        """Whether the parent run lacks its write-up: still RUNNING (a run killed while writing
        it) or without its ``trials.csv`` artifact."""
        def check() -> bool:
            rid = self.parent_run_id()
            if self.client.get_run(rid).info.status != "FINISHED":
                return True
            return "trials.csv" not in {f.path for f in self.client.list_artifacts(rid)}

        return bool(self._safe("check the parent run", check))

    def finish(self, views: Sequence[TrialView]) -> None:
        """Rank tags, then the parent's artifacts: trial table (CSV, Parquet), the front (CSV)
        and the interactive plots; the parent is marked FINISHED."""
        views = list(views)
        self._safe("ranks", self.update_ranks, views)
        self._safe("finish", self._finish, views)

    def _finish(self, views: Sequence[TrialView]) -> None:
        import tempfile

        rid = self.parent_run_id()
        with tempfile.TemporaryDirectory(prefix="autotune-artifacts-") as tmp:
            folder = Path(tmp)
            write_review_files(self.job, self.record, views, folder)
            self.client.log_artifacts(rid, str(folder))
        self.client.set_terminated(rid, "FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


_SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt", "torch": "torch",
          "l1_unstructured": "l1", "structured": "struct", "gradient": "grad"}


def run_name(view: TrialView) -> str:
    """A short summary of the configuration, e.g. ``ort int8_dynamic l1 0.6 b1 t2 #15``: runtime,
    device when not the CPU, quantization, pruning when any, batch size, threads, trial number."""
    c = view.config
    parts = [_SHORT.get(str(c["runtime"]), str(c["runtime"]))] if "runtime" in c else []
    if c.get("device") not in (None, "cpu"):
        parts.append(str(c["device"]))
    if "quantization" in c:
        parts.append(str(c["quantization"]))
    method, ratio = c.get("pruning_method"), c.get("pruning_ratio")
    if method not in (None, "none") and ratio not in (None, 0, 0.0):
        parts.append(f"{_SHORT.get(str(method), str(method))} {ratio:g}"
                     if isinstance(ratio, int | float) else f"{method} {ratio}")
    if "batch_size" in c:
        parts.append(f"b{c['batch_size']}")
    if "threads" in c:
        parts.append(f"t{c['threads']}")
    parts.append(f"#{view.number}")
    return " ".join(parts)


def spec_tags(job: Job, spec: Mapping[str, Any]) -> dict[str, str]:
    """The job spec in a few searchable parent tags (the whole spec is the ``job.yaml``
    artifact)."""
    import json

    tags = {
        "autotune.version": __version__,
        "autotune.objectives": ", ".join(f"{d} {m}" for m, d in job.objective_pairs),
        "autotune.constraints": "; ".join(job.constraints) or "none",
    }
    for key in ("agent", "budget", "search_space", "measurement"):
        if spec.get(key) is not None:
            tags[f"autotune.{key}"] = json.dumps(spec[key], default=str)[:5000]
    return tags


def hardware_tags(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """Short, searchable tags from a hardware fingerprint: ``hardware.*`` and ``lib.*``."""
    tags: dict[str, str] = {}
    for k in ("cpu_model", "cpu_arch", "physical_cores", "logical_cores", "usable_cores",
              "memory_total_mb", "os", "python"):
        if fingerprint.get(k) not in (None, ""):
            tags[f"hardware.{k}"] = str(fingerprint[k])[:5000]
    gpus = fingerprint.get("gpus") or []
    tags["hardware.gpus"] = ", ".join(str(g.get("name", g)) for g in gpus) if gpus else "none"
    for lib, version in (fingerprint.get("libraries") or {}).items():
        if version:
            tags[f"lib.{lib}"] = str(version)
    tags["autotune.hardware"] = str(fingerprint.get("cpu_model"))
    return tags


def write_review_files(job: Job, record: StudyRecord, views: Sequence[TrialView],
                       folder: Path) -> list[Path]:
    """Write ``trials.csv``, ``trials.parquet``, ``pareto_front.csv`` and ``plots.html``
    into ``folder`` (the parent run's artifact layout); returns the files written."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    table = trial_table(views, job.objective_pairs)
    table.to_csv(folder / "trials.csv", index=False)
    table.to_parquet(folder / "trials.parquet", index=False)
    rows = front_table(views, job)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    (folder / "pareto_front.csv").write_text(buf.getvalue(), encoding="utf-8")
    ref = study_reference(record, job, views)
    figs = study_figures(views, job.objective_pairs, ref)
    plots = write_figures(figs, folder, title=f"autotune · {job.name}")
    return [folder / "trials.csv", folder / "trials.parquet", folder / "pareto_front.csv", *plots]



def sync_job(job: Job) -> tuple[int, str | None]:
    """Write to MLflow what the study has and MLflow lacks (``autotune sync``): the parent run,
    missing nested runs, missing hypervolume steps, rank tags and the artifacts.  Returns the
    number of nested runs written and the tracking error, if MLflow was unreachable."""
    record = open_record(job, create=False)
    tracker = Tracker(job, record)
    views = record.trials()
    tracker.start(record.attr("fingerprint"), record.baseline)
    n = tracker.sync(views)
    tracker.finish(views)
    return n, tracker.last_error
