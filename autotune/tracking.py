"""MLflow as the review surface, written from the study.

One parent run per job, one nested run per trial (params = configuration, metrics =
measurements, tags = state, reason, feasibility, agent), the feasible Pareto front as a CSV
artifact on the parent.  MLflow is never the record: if it is unreachable the tuning goes on, and
:meth:`Tracker.sync` writes the missing runs later from the study (nested runs carry the trial
number as a tag, so nothing is written twice).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autotune.spec import Job, dump_job
from autotune.study import StudyRecord, TrialView

log = logging.getLogger("autotune.tracking")

TRIAL_TAG = "autotune.trial_number"
JOB_TAG = "autotune.job"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:6000]
    return out


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

    def _safe(self, what: str, fn: Any, *args: Any) -> Any:
        if not self.enabled:
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
            return None

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            artifacts = (self.job.out_dir / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment_name, artifact_location=artifacts)

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
            tags={JOB_TAG: self.job.name, "autotune.study": self.record.study.study_name},
        )
        rid = run.info.run_id
        spec = dump_job(self.job)
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _flatten(spec).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(rid, params=params[i:i + 100])
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
            if fingerprint:
                self.client.log_dict(rid, dict(fingerprint), "hardware.json")
                self.client.set_tag(rid, "autotune.hardware", str(fingerprint.get("cpu_model")))
            if baseline:
                from mlflow.entities import Metric

                self.client.log_batch(rid, metrics=[
                    Metric(f"baseline.{k}", float(v), 0, 0) for k, v in baseline.items()
                    if isinstance(v, int | float) and math.isfinite(v)
                ])

        self._safe("start", go)

    def log_trial(self, view: TrialView, *, rank: int | None = None) -> None:
        self._safe("log_trial", self._log_trial, view, rank)

    def _log_trial(self, view: TrialView, rank: int | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        parent = self.parent_run_id()
        run = self.client.create_run(
            self.client.get_run(parent).info.experiment_id,
            run_name=f"trial-{view.number:04d}",
            tags={"mlflow.parentRunId": parent, TRIAL_TAG: str(view.number), JOB_TAG: self.job.name},
        )
        rid = run.info.run_id
        params = [Param(k, str(v)) for k, v in view.config.items()]
        metrics = [Metric(k, float(v), 0, view.number) for k, v in view.metrics.items()
                   if isinstance(v, int | float) and math.isfinite(float(v))]
        tags = [RunTag("state", view.state), RunTag("agent", view.agent or ""),
                RunTag("feasible", str(view.feasible).lower())]
        if view.reason:
            tags.append(RunTag("fail_reason", view.reason[:4900]))
        if rank is not None:
            tags.append(RunTag("pareto_rank", str(rank)))
        self.client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        self.client.set_terminated(rid, "FINISHED" if view.state == "complete" else "FAILED")

    def logged_trials(self) -> set[int]:
        from mlflow.entities import ViewType

        parent = self.parent_run_id()
        exp = self.client.get_run(parent).info.experiment_id
        runs = self.client.search_runs(
            [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
            run_view_type=ViewType.ALL, max_results=50000,
        )
        return {int(r.data.tags[TRIAL_TAG]) for r in runs if TRIAL_TAG in r.data.tags}

    def sync(self, views: Iterable[TrialView]) -> int:
        """Write nested runs for finished trials that MLflow does not have yet."""
        done = self._safe("sync", self.logged_trials)
        if done is None:
            return 0
        n = 0
        for v in views:
            if v.state != "running" and v.number not in done:
                self.log_trial(v)
                n += 1
        return n

    def finish(self, front_rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
        def go() -> None:
            rid = self.parent_run_id()
            buf = io.StringIO()
            import csv

            w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            w.writerows(front_rows)
            self.client.log_text(rid, buf.getvalue(), "pareto_front.csv")
            self.client.set_terminated(rid, "FINISHED")

        self._safe("finish", go)


def artifact_dir(job: Job) -> Path:
    return job.out_dir / "mlartifacts"
