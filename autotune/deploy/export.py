"""``autotune export``: pick a measured trial, write its bundle, register it in MLflow.

Public API (the CLI and the re-tuning loop use these):

* :func:`pick_trial` — a trial number, ``knee`` or a selection rule → the study's trial.
* :func:`write_bundle` — the bundle folder for one trial (atomic per file, manifest last, so a
  server watching the folder only ever sees a complete bundle).
* :func:`register_bundle` / :func:`set_alias` — MLflow Model Registry.
* :func:`export_bundle` — all of the above.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.confirm import manifest_latency
from autotune.deploy.bundle import DEPLOY, FORMAT, MANIFEST, MODEL_ONNX, ORT_DTYPES, BundleError
from autotune.errors import AutotuneError
from autotune.files import write_atomic
from autotune.harness.evaluate import Evaluator
from autotune.harness.hardware import Fingerprint
from autotune.pareto import Record, knee_point, parse_rule
from autotune.review import pareto_views
from autotune.spec import Job
from autotune.study import StudyRecord, TrialView, open_record
from autotune.tracking import experiment_id

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
    chosen = rule.select(records, record.baseline)
    if chosen is None:
        raise AutotuneError(f"no feasible trial of job '{job.name}' satisfies the rule '{rule}'.")
    return next(t for t in views if t.number == chosen.number)


# ------------------------------------------------------------------------------------ model file
def _model_file(job: Job, view: TrialView) -> tuple[Path, dict[str, Any]]:
    """The ONNX file of the trial's transformed model, and how it relates to what was measured."""
    config = dict(view.config)
    default_rt = "torch" if job.model.factory else "onnxruntime"
    runtime = config.get("runtime") or default_rt
    details = view.user_attrs.get("details") or {}
    cached = details.get("model_path")
    if runtime == "onnxruntime":
        if cached and Path(cached).is_file():
            return Path(cached), {"measured": runtime, "same_model": True, "latency_applies": True,
                                  "materialized": False}
        path = _materialize(job, config)
        return path, {"measured": runtime, "same_model": True, "latency_applies": True,
                      "materialized": True}
    # torch: a state dict needs the user's code to run; ship the ONNX export of the same
    # transformed model instead, run by onnxruntime.
    path = _materialize(job, {**config, "runtime": "onnxruntime"})
    quant = config.get("quantization", "fp32")
    same = quant == "fp32"
    note = (
        "measured on the torch runtime; the bundle holds the ONNX export of the same "
        + ("pruned fp32 weights" if same else
           f"model quantized by ONNX Runtime ({quant}) because torch's quantized modules do not "
           "export to ONNX: outputs differ slightly from the measured model")
        + ", run by onnxruntime with the trial's threads. The recorded latency is torch's, "
        "not this runtime's."
    )
    return path, {"measured": runtime, "same_model": same, "latency_applies": False,
                  "materialized": True, "note": note}


def _materialize(job: Job, config: Mapping[str, Any]) -> Path:
    """Re-create the transformed model through the harness (same code path as the trial)."""
    try:
        _, info = Evaluator(job)._build(config)
    except AutotuneError as exc:
        raise AutotuneError(f"cannot re-create the model of this configuration for a bundle: "
                            f"{exc}") from None
    return Path(info["model_path"])


# ------------------------------------------------------------------------------------ manifest
def _redact(url: str) -> str:
    return re.sub(r"://[^/@]*@", "://***@", url)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("autotune", "onnx", "onnxruntime", "torch", "numpy", "mlflow", "optuna"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _constraints(job: Job, view: TrialView, baseline: Mapping[str, float] | None
                 ) -> list[dict[str, Any]]:
    out = []
    for c in job.parsed_constraints:
        try:
            bound: float | None = c.bound(baseline)
        except KeyError:
            bound = None
        value = view.metrics.get(c.metric)
        out.append({"constraint": c.text, "metric": c.metric, "op": c.op, "bound": bound,
                    "value": value, "satisfied": c.satisfied(view.metrics, baseline)
                    if bound is not None else None})
    return out


def _io_specs(model_bytes: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    m = onnx.load_model_from_string(model_bytes)
    init = {i.name for i in m.graph.initializer}

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dtype = ORT_DTYPES.get(f"tensor({onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if dtype is None else dtype
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return {"name": v.name, "dtype": dtype, "shape": shape}

    return ([spec(i) for i in m.graph.input if i.name not in init],
            [spec(o) for o in m.graph.output])


def deploy_settings(job: Job, view: TrialView, runtime_info: Mapping[str, Any]) -> dict[str, Any]:
    """``deploy.yaml``: every setting needed to reproduce the measured behaviour."""
    c = dict(view.config)
    threads = c.get("threads")
    return {
        "format": FORMAT,
        "model": MODEL_ONNX,
        "runtime": "onnxruntime",  # what autotune.deploy.load runs
        "measured_runtime": runtime_info["measured"],  # what the trial measured
        "same_model_as_measured": runtime_info["same_model"],
        "measured_latency_applies": runtime_info["latency_applies"],
        "execution_provider": "CPUExecutionProvider",
        "device": c.get("device", "cpu"),
        "threads": int(threads) if threads else None,  # intra-op; null = runtime default
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization": c.get("graph_optimization", "all"),
        "batch_size": int(c.get("batch_size", 1)),
        "quantization": c.get("quantization", "fp32"),
        "pruning_ratio": float(c.get("pruning_ratio", 0.0) or 0.0),
        "config": c,  # the full trial configuration
        **({"note": runtime_info["note"]} if runtime_info.get("note") else {}),
    }


def build_manifest(job: Job, record: StudyRecord, view: TrialView, *, pick: str,
                   runtime_info: Mapping[str, Any], files: Mapping[str, bytes],
                   model_source: Path) -> dict[str, Any]:
    details = dict(view.user_attrs.get("details") or {})
    fp = record.attr("fingerprint") or {}
    hw_summary = Fingerprint.from_dict(fp).short() if fp else None
    digest = details.get("fingerprint_digest") or (Fingerprint.from_dict(fp).digest() if fp else None)
    inputs, outputs = _io_specs(files[MODEL_ONNX])
    baseline = record.baseline
    return {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": MODEL_ONNX,
        "source": {
            "job": job.name, "job_file": job.source, "study": _redact(job.storage_url),
            "study_name": record.study.study_name,
            "tracking_uri": _redact(job.tracking_uri), "trial": view.number, "pick": pick,
            "agent": view.agent, "model_cache_path": str(model_source),
            "materialized": bool(runtime_info.get("materialized")),
        },
        "config": dict(view.config),
        "runtime": dict(runtime_info),
        "feasible": view.feasible,
        "objectives": [list(o) for o in job.objective_pairs],
        "metrics": dict(view.metrics),
        "latency": details.get("latency"),  # the full spread: percentiles, std, median CI, n
        # the p50 to expect and its spread (between confirmation rounds when confirmed)
        "expected_latency": manifest_latency(view),
        "baseline": baseline,
        "constraints": _constraints(job, view, baseline),
        "hardware": {"digest": digest, "summary": hw_summary, "fingerprint": fp},
        "libraries": {"measured": fp.get("libraries", {}), "exported": _versions()},
        # what scheduled re-tuning compares (set on the study by a cycle; absent otherwise)
        "model_hash": record.attr("model_hash"),
        "environment": record.attr("environment"),
        "inputs": inputs,
        "outputs": outputs,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()},
    }


# ------------------------------------------------------------------------------------ writing
def write_bundle(job: Job, view: TrialView, out: Path, *, pick: str = "",
                 record: StudyRecord | None = None) -> dict[str, Any]:
    """Write (or overwrite) the bundle folder ``out`` for ``view``; returns the manifest.

    Each file is replaced atomically and ``manifest.json`` last, so a reader that checks the
    manifest's files always sees a complete bundle; files of an earlier bundle that the new one
    does not list are removed afterwards.
    """
    import yaml

    record = record or open_record(job, create=False)
    model_path, runtime_info = _model_file(job, view)
    files = {
        MODEL_ONNX: model_path.read_bytes(),
        DEPLOY: yaml.safe_dump(deploy_settings(job, view, runtime_info), sort_keys=False).encode(),
    }
    manifest = build_manifest(job, record, view, pick=pick, runtime_info=runtime_info,
                              files=files, model_source=model_path)
    out.mkdir(parents=True, exist_ok=True)
    old: set[str] = set()
    if (out / MANIFEST).is_file():
        with contextlib.suppress(ValueError):
            old = set(json.loads((out / MANIFEST).read_text()).get("files", {}))
    for name, data in files.items():
        write_atomic(out / name, data)
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
    for stale in old - set(files):
        (out / stale).unlink(missing_ok=True)
    return manifest


# ------------------------------------------------------------------------------------ registry
def _mlflow_quiet() -> None:
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)


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

    _mlflow_quiet()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    bundle = Path(bundle)
    manifest_sha = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    manifest = json.loads((bundle / MANIFEST).read_text())
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
                                      if v and k in ("onnxruntime", "numpy", "pyyaml")] + ["autotune"],
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
    _mlflow_quiet()
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, alias, str(version))


# ------------------------------------------------------------------------------------ all of it
def export_bundle(job: Job, pick: str | int, *, out: Path | None = None, register: bool = True,
                  alias: str | None = "champion", model_name: str | None = None) -> ExportResult:
    """Pick a trial, write its bundle (default ``job.out_dir/bundles/trial-N``) and register it.

    A registry failure does not undo the bundle: it is reported in ``registry_error``.
    """
    record = open_record(job, create=False)
    view = pick_trial(job, pick, record)
    dest = Path(out) if out else job.out_dir / "bundles" / f"trial-{view.number}"
    manifest = write_bundle(job, view, dest, pick=str(pick), record=record)
    notes = (manifest["runtime"]["note"],) if manifest["runtime"].get("note") else ()
    if not view.feasible:
        notes += (f"trial {view.number} violates the job's constraints.",)
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
