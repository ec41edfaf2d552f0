"""``autotune export``: pick a measured trial, write its bundle, register it in MLflow.

Public API (the CLI and the re-tuning loop use these):

* :func:`pick_trial` — a trial number, ``knee`` or a selection rule → the study's trial.
* :func:`write_bundle` — the bundle folder for one trial (atomic per file, manifest last, so a
  server watching the folder only ever sees a complete bundle).
* :func:`register_bundle` / :func:`set_alias` — MLflow Model Registry.
* :func:`export_bundle` — all of the above.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.core.files import write_atomic
from autotune.core.metrics import REFERENCE_PREFIX, REFERENCE_SOURCE
from autotune.core.pareto import Record, knee_point, parse_rule
from autotune.deploy.bundle import (
    DEPLOY,
    FORMAT,
    MANIFEST,
    MODEL_ONNX,
    BundleError,
    constraint_report,
    library_versions,
    mlflow_quiet,
    read_manifest,
    redact_url,
    safe_name,
    write_manifest,
)
from autotune.deploy.genserve import write_generation_bundle
from autotune.errors import AutotuneError
from autotune.job.spec import Job
from autotune.measure.harness.hardware import Fingerprint
from autotune.measure.runtimes import get_runtime, job_default_runtime
from autotune.measure.runtimes.base import Built
from autotune.measure.workloads.forward import Evaluator
from autotune.record.study import CONFIRMATION, StudyRecord, TrialView, open_record
from autotune.review.front import pareto_views
from autotune.review.tracking import experiment_id
from autotune.tuning.confirm import manifest_latency

#: the MLflow "model from code" file: a PythonModel that loads the bundle with autotune.deploy.load
MLFLOW_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
BUNDLE_TAG = "autotune.bundle_sha256"
BUNDLE_PATH_TAG = "autotune.bundle_path"  # where the bundle was written (this machine)


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str | None
    model_uri: str  # models:/name/version
    run_id: str


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    trial: int
    manifest: Mapping[str, Any]
    registered: Registered | None = None
    registry_error: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------ picking
def pick_trial(job: Job, pick: str | int, record: StudyRecord | None = None) -> TrialView:
    """The trial ``pick`` names: a trial number, ``knee`` (knee of the feasible Pareto front) or
    a selection rule such as ``fastest with accuracy_drop <= 1%``."""
    import numpy as np

    record = record or open_record(job, create=False)
    views = record.trials()
    text = str(pick).strip()
    if re.fullmatch(r"\d+", text):
        number = int(text)
        found = [t for t in views if t.number == number]
        if not found:
            raise AutotuneError(f"job '{job.name}' has no trial {number} (it has "
                                f"{len(views)} trials).")
        if found[0].state != "complete":
            raise AutotuneError(f"trial {number} is {found[0].state}, not complete: it has no "
                                "measured model to export.")
        return found[0]
    if text.lower() == "knee":
        front = pareto_views(views, job)
        if not front:
            raise AutotuneError(f"job '{job.name}' has no feasible trial: no knee to export.")
        pts = np.array([[t.metrics[m] for m, _ in job.objective_pairs] for t in front], float)
        k = knee_point(pts, [d for _, d in job.objective_pairs])
        if k is None:
            raise AutotuneError("the Pareto front has no finite point: no knee to export.")
        return front[k]
    rule = parse_rule(text)
    records = [Record(t.number, t.metrics, t.feasible, t.config) for t in views
               if t.state == "complete"]
    chosen = rule.select(records, record.reported_baseline)
    if chosen is None:
        raise AutotuneError(f"no feasible trial of job '{job.name}' satisfies the rule '{rule}'.")
    return next(t for t in views if t.number == chosen.number)


# ------------------------------------------------------------------------------------ model file
def _model_file(job: Job, view: TrialView) -> tuple[Any, dict[str, Any]]:
    """The trial's artifact and settings, generated through its runtime
    (:meth:`~autotune.measure.runtimes.base.Runtime.write_bundle`), and how they relate to what was
    measured: ``latency_applies`` only when the artifact's bytes are the measured ones and no
    setting differs.

    The measured artifact is taken from the job's cache when it is still there with the recorded
    SHA-256; otherwise the model is re-created through the harness.  Either way the bundle's files
    are then loaded once by the runtime (as :func:`autotune.deploy.load` will), which also gives
    the model's named inputs and outputs."""
    config = dict(view.config)
    details = view.user_attrs.get("details") or {}
    if details.get("not_exportable"):
        raise AutotuneError(f"trial {view.number} is not exportable: {details['not_exportable']}")
    recorded = details.get("model_sha256")
    cached = Path(str(details.get("model_path") or ""))
    runtime = get_runtime(str(config.get("runtime") or job_default_runtime(job)))
    if recorded and cached.is_file() and _sha256(cached.read_bytes()) == recorded:
        built = Built(None, cached, None, {})  # type: ignore[arg-type]
        materialized = False
    else:
        runtime, built, info = _materialize(job, config)
        if info.get("not_exportable"):
            raise AutotuneError(f"trial {view.number} is not exportable: {info['not_exportable']}")
        materialized = True
    try:
        bundle = runtime.write_bundle(built, config)
        runner = runtime.load_bundle(lambda name: bundle.files[name],
                                     {**bundle.settings, "model": bundle.model}, ((), ()))
    except AutotuneError as exc:
        raise AutotuneError(f"trial {view.number} is not exportable: {exc}") from None
    if recorded:
        same = _sha256(bundle.files[bundle.model]) == recorded
    else:  # recorded before artifacts were hashed: the same cached file at least
        same = details.get("model_path") == str(built.model_path)
    measured = details.get("runtime") or runtime.name
    applies = same and not bundle.differs and measured == runtime.name
    runtime_info: dict[str, Any] = {
        "measured": measured, "same_model": same, "latency_applies": applies,
        "materialized": materialized, "differs": list(bundle.differs),
        "settings": dict(bundle.settings),
    }
    if not applies:
        why = [] if same else ["the artifact's bytes differ from the measured one's"]
        why += [f"{k} differs from the measured configuration" for k in bundle.differs]
        runtime_info["note"] = "the recorded latency may not apply: " + "; ".join(
            why or [f"measured on {measured}"])
    return (runtime, built, bundle, runner), runtime_info


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _materialize(job: Job, config: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Re-create the trial's model through the harness (same code path as the trial, the same
    transform cache): (runtime, built, info)."""
    try:
        return Evaluator(job).build(config)
    except AutotuneError as exc:
        raise AutotuneError(f"cannot re-create the model of this configuration for a bundle: "
                            f"{exc}") from None


# ------------------------------------------------------------------------------------ manifest
def _io_specs(runner: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's named inputs and outputs (forward signature names, dict keys), as its
    runtime reports them for the loaded bundle."""
    return ([s.to_dict() for s in runner.inputs], [s.to_dict() for s in runner.outputs])


def deploy_settings(job: Job, view: TrialView, runtime_info: Mapping[str, Any]) -> dict[str, Any]:
    """``deploy.yaml``: the runtime's settings for this trial (generated from the trial's
    configuration by :meth:`~autotune.measure.runtimes.base.Runtime.write_bundle`), and how they relate
    to what was measured."""
    c = dict(view.config)
    settings = dict(runtime_info["settings"])
    return {
        "format": FORMAT,
        "model": runtime_info["model"],
        "runtime": runtime_info["runtime"],  # what autotune.deploy.load runs
        "measured_runtime": runtime_info["measured"],  # what the trial measured
        "same_model_as_measured": runtime_info["same_model"],
        "measured_latency_applies": runtime_info["latency_applies"],
        **settings,
        "pruning_ratio": float(c.get("pruning_ratio", 0.0) or 0.0),
        "config": c,  # the full trial configuration
        **({"note": runtime_info["note"]} if runtime_info.get("note") else {}),
    }


def build_manifest(job: Job, record: StudyRecord, view: TrialView, *, pick: str,
                   runtime_info: Mapping[str, Any], files: Mapping[str, bytes],
                   model_source: Path, runner: Any = None) -> dict[str, Any]:
    details = dict(view.user_attrs.get("details") or {})
    fp = record.attr("fingerprint") or {}
    hw_summary = Fingerprint.from_dict(fp).short() if fp else None
    digest = details.get("fingerprint_digest") or (Fingerprint.from_dict(fp).digest() if fp else None)
    inputs, outputs = _io_specs(runner) if runner is not None else ([], [])
    baseline = record.reported_baseline
    return {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": runtime_info["model"],
        "source": {
            "job": job.name, "job_file": job.source, "study": redact_url(job.storage_url),
            "study_name": record.study.study_name,
            "tracking_uri": redact_url(job.tracking_uri), "trial": view.number, "pick": pick,
            "agent": view.agent, "model_cache_path": str(model_source),
            "materialized": bool(runtime_info.get("materialized")),
        },
        "config": dict(view.config),
        "runtime": {k: v for k, v in runtime_info.items() if k != "settings"},
        "feasible": view.feasible,
        "objectives": [list(o) for o in job.objective_pairs],
        "metrics": dict(view.metrics),
        "latency": details.get("latency"),  # the full spread: percentiles, std, median CI, n
        # the p50 to expect and its spread (between confirmation rounds when confirmed)
        "expected_latency": manifest_latency(view),
        "baseline": baseline,
        # the baseline's first figure ran contended: re-measured on quiet cores during tuning
        # (why, and the contended figure), or still flagged (autotune.tuning.loop.requiet_baseline)
        "baseline_remeasured": record.attr("baseline_remeasured"),
        "baseline_contended": record.attr("baseline_contended"),
        "constraints": constraint_report(job, view, baseline),
        "hardware": {"digest": digest, "summary": hw_summary, "fingerprint": fp},
        "libraries": {"measured": fp.get("libraries", {}), "exported": library_versions()},
        # what scheduled re-tuning compares (set on the study by a cycle; absent otherwise)
        "model_hash": record.attr("model_hash"),
        "environment": record.attr("environment"),
        "inputs": inputs,
        "outputs": outputs,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()},
    }


# ------------------------------------------------------------------------------------ writing
def _listed_files(out: Path) -> set[str]:
    """The file names an existing bundle's manifest lists (unverified: only used to remove stale
    files, so names that could leave the folder are dropped)."""
    try:
        files = json.loads((out / MANIFEST).read_bytes()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    names = set()
    for name in files if isinstance(files, Mapping) else ():
        try:
            safe_name(out, name)
        except BundleError:
            continue
        if "/" not in name and name != MANIFEST:
            names.add(name)
    return names


def write_bundle(job: Job, view: TrialView, out: Path, *, pick: str = "",
                 record: StudyRecord | None = None, key: bytes | None = None) -> dict[str, Any]:
    """Write (or overwrite) the bundle folder ``out`` for ``view``; returns the manifest.

    Each file is replaced atomically and ``manifest.json`` last, so a reader that checks the
    manifest's files always sees a complete bundle; files of an earlier bundle that the new one
    does not list are removed afterwards.  With ``key`` the manifest is signed (HMAC-SHA256);
    :func:`autotune.deploy.load` with the same key refuses anything else.
    """
    import yaml

    record = record or open_record(job, create=False)
    if job.is_generation:  # weights + tokenizer + tuned generation settings
        return write_generation_bundle(job, view, out, pick=pick, record=record)
    (runtime, built, bundle, runner), runtime_info = _model_file(job, view)
    runtime_info = {**runtime_info, "runtime": runtime.name, "model": bundle.model}
    files = {
        **bundle.files,
        DEPLOY: yaml.safe_dump(deploy_settings(job, view, runtime_info), sort_keys=False).encode(),
    }
    manifest = build_manifest(job, record, view, pick=pick, runtime_info=runtime_info,
                              files=files, model_source=Path(built.model_path), runner=runner)
    out.mkdir(parents=True, exist_ok=True)
    old = _listed_files(out)
    for name, data in files.items():
        write_atomic(out / name, data)
    manifest = write_manifest(out, manifest, key=key)
    for stale in old - set(files):
        (out / stale).unlink(missing_ok=True)
    return manifest


# ------------------------------------------------------------------------------------ registry
def model_signature(manifest: Mapping[str, Any]) -> Any:
    """The MLflow signature of a bundle: one tensor per model input and output, as the manifest
    lists them (``None`` dimensions, such as the batch axis, become -1)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(specs: Any) -> Schema | None:
        tensors = [TensorSpec(np.dtype(s["dtype"]), tuple(-1 if d is None else int(d)
                                                          for d in s["shape"]), s["name"])
                   for s in specs or ()]
        return Schema(tensors) if tensors else None

    inputs = schema(manifest.get("inputs"))
    return ModelSignature(inputs=inputs, outputs=schema(manifest.get("outputs"))) if inputs \
        else None


class _BundleFlavor:
    """``Model.log`` flavor: the pyfunc model from code (:data:`MLFLOW_MODEL_CODE`), plus the
    ``onnx`` flavor over the bundle's ``model.onnx`` when there is one, so that
    ``mlflow.onnx.load_model`` and ONNX tooling read the registered model directly."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, *, bundle: Path, **kwargs: Any) -> None:
        import mlflow

        mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        onnx_file = Path(path) / "artifacts" / bundle.name / MODEL_ONNX
        if onnx_file.is_file():
            import onnx

            mlflow_model.add_flavor(
                "onnx", onnx_version=onnx.__version__,
                data=onnx_file.relative_to(path).as_posix(),
                providers=["CPUExecutionProvider"], code=None,
            )
            mlflow_model.save(str(Path(path) / "MLmodel"))


def register_bundle(bundle: Path, *, tracking_uri: str, name: str, alias: str | None = "champion",
                    experiment: str | None = None, artifacts: Path | None = None) -> Registered:
    """Log ``bundle`` as an MLflow model (pyfunc from code: :data:`MLFLOW_MODEL_CODE`, which loads
    it with :func:`autotune.deploy.load`; plus the ``onnx`` flavor for an ONNX bundle), with the
    signature of the model's inputs and outputs; register it as ``name`` and point ``alias`` at
    it."""
    import warnings

    mlflow_quiet()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    bundle = Path(bundle)
    manifest = read_manifest(bundle)  # checked: digest, file names
    manifest_sha = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    src = manifest.get("source", {})
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp_id = experiment_id(client, experiment or f"autotune-{src.get('job', name)}",
                           tracking_uri, artifacts)
    prev_tracking, prev_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    config = manifest.get("config", {})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mlflow.start_run(experiment_id=exp_id,
                                  run_name=f"export trial {src.get('trial')}",
                                  tags={"autotune.job": str(src.get("job")),
                                        "autotune.trial_number": str(src.get("trial")),
                                        "autotune.kind": "export"}) as run:
                mlflow.log_params({f"config.{k}": v for k, v in config.items()})
                info = Model.log(
                    None, _BundleFlavor, name="bundle", bundle=bundle,
                    python_model=str(MLFLOW_MODEL_CODE), artifacts={"bundle": str(bundle)},
                    signature=model_signature(manifest),
                    pip_requirements=[f"{k}=={v}" for k, v in manifest["libraries"]["exported"].items()
                                      if v and k in (manifest["runtime"].get("runtime"),
                                                     "safetensors", "numpy", "pyyaml")]
                    + ["autotune"],
                    metadata={"autotune_trial": src.get("trial"), "autotune_job": src.get("job")},
                )
                run_id = run.info.run_id
            mv = mlflow.register_model(info.model_uri, name, tags={
                BUNDLE_TAG: manifest_sha, BUNDLE_PATH_TAG: str(bundle.resolve())})
    finally:
        mlflow.set_tracking_uri(prev_tracking)
        mlflow.set_registry_uri(prev_registry)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return Registered(name=name, version=str(mv.version), alias=alias,
                      model_uri=f"models:/{name}/{mv.version}", run_id=run_id)


def set_alias(tracking_uri: str, name: str, alias: str, version: str | int) -> None:
    """Point ``models:/name@alias`` at ``version`` (a server watching the alias swaps to it)."""
    mlflow_quiet()
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, alias, str(version))


def reference_notes(view: TrialView) -> tuple[str, ...]:
    """What a pick is worth against the job's hand recipes (``vs <name>`` metrics): said when it
    is one of them, and loudly when a hand recipe is faster."""
    src = str(view.user_attrs.get("source", ""))
    out: tuple[str, ...] = ()
    if src.startswith(REFERENCE_SOURCE):
        out += (f"trial {view.number} is the hand recipe '{src[len(REFERENCE_SOURCE):]}' itself: "
                "no tuned configuration beat it.",)
    for m, v in sorted(view.metrics.items()):
        if m.startswith(REFERENCE_PREFIX) and v < 1.0 and not src.endswith(m[len(REFERENCE_PREFIX):]):
            out += (f"trial {view.number} is SLOWER than the hand recipe "
                    f"'{m[len(REFERENCE_PREFIX):]}' ({m}: {v:.2f}x).",)
    return out


# ------------------------------------------------------------------------------------ all of it
def export_bundle(job: Job, pick: str | int, *, out: Path | None = None, register: bool = True,
                  alias: str | None = "champion", model_name: str | None = None,
                  key: bytes | None = None) -> ExportResult:
    """Pick a trial, write its bundle (default ``job.out_dir/bundles/trial-N``) and register it.

    A registry failure does not undo the bundle: it is reported in ``registry_error``.
    """
    record = open_record(job, create=False)
    view = pick_trial(job, pick, record)
    dest = Path(out) if out else job.out_dir / "bundles" / f"trial-{view.number}"
    manifest = write_bundle(job, view, dest, pick=str(pick), record=record, key=key)
    notes = (manifest["runtime"]["note"],) if manifest["runtime"].get("note") else ()
    if not view.feasible:
        notes += (f"trial {view.number} violates the job's constraints.",)
    notes += reference_notes(view)
    if (manifest.get("expected_latency") or {}).get("source") == "trial" \
            and record.attr(CONFIRMATION):
        notes += (f"trial {view.number} was not among the confirmed trials: its latency is one "
                  f"measurement; 'autotune confirm {job.source}' re-measures it side by side.",)
    if not register:
        return ExportResult(dest, view.number, manifest, notes=notes)
    try:
        reg = register_bundle(dest, tracking_uri=job.tracking_uri, name=model_name or job.name,
                              alias=alias, experiment=job.tracking.experiment,
                              artifacts=job.out_dir / "mlartifacts")
    except BundleError:
        raise
    except Exception as exc:  # the bundle stands on its own; say what failed
        return ExportResult(dest, view.number, manifest, registry_error=f"{type(exc).__name__}: "
                            f"{exc}", notes=notes)
    return ExportResult(dest, view.number, manifest, registered=reg, notes=notes)
