"""Loading bundles: checksums, settings as measured, hardware warnings, the MLflow model."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from _deploy_job import ORT_FP32, ORT_INT8, tuned_job

from autotune.deploy import (
    BundleError,
    HardwareMismatchWarning,
    TamperedBundleError,
    load,
    verify,
)
from autotune.deploy.export import pick_trial, write_bundle, write_manifest
from autotune.errors import AutotuneError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    job = tuned_job()
    out = tmp_path_factory.mktemp("bundle") / "b"
    write_bundle(job, pick_trial(job, ORT_INT8), out)
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_load_predicts_with_measured_settings(bundle: Path) -> None:
    p = load(bundle)
    assert p.batch_size == 1 and p.runtime == "onnxruntime"
    opts = p.session_options
    assert opts["intra_op_num_threads"] == 1 and opts["inter_op_num_threads"] == 1
    assert "ORT_ENABLE_ALL" in opts["graph_optimization_level"]
    assert "SEQUENTIAL" in opts["execution_mode"]
    assert opts["providers"] == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    out = p.predict(x)
    assert out.shape == (5, 10)
    np.testing.assert_array_equal(p.predict(x.tolist()), out)  # nested lists, cast to float32
    np.testing.assert_array_equal(p.predict({"input": x}), out)
    # one item without its batch axis (int8 dynamic: activation scales depend on the batch)
    np.testing.assert_array_equal(p.predict(x[0]), p.predict(x[:1]))
    with pytest.raises(BundleError, match="axis 1 must be 64"):
        p.predict(np.zeros((2, 63), np.float32))


def test_tampered_model_is_refused_naming_the_file(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    model = b / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    model.write_bytes(bytes(data))
    with pytest.raises(TamperedBundleError, match=r"model\.onnx was modified") as err:
        load(b)
    assert str(model) in str(err.value) and isinstance(err.value, AutotuneError)
    with pytest.raises(TamperedBundleError, match=r"model\.onnx"):
        verify(b)


def test_tampered_settings_and_extra_files(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    d = b / "deploy.yaml"
    d.write_text(d.read_text().replace("threads: 1", "threads: 2"))
    with pytest.raises(TamperedBundleError, match=r"deploy\.yaml"):
        load(b)
    b2 = tmp_path / "missing"
    shutil.copytree(bundle, b2)
    (b2 / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load(b2)
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load(tmp_path)


def test_hardware_mismatch_warns(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HardwareMismatchWarning)
        load(b)  # same machine: no warning
    m = json.loads((b / "manifest.json").read_text())
    m["hardware"]["digest"] = "0000000000000000"
    write_manifest(b, m)  # re-sealed: an edit without the digest is refused (test_bundle_safety)
    with pytest.warns(HardwareMismatchWarning, match="other hardware"):
        load(b)


def test_load_never_unpickles(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("load() unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert load(bundle).predict(np.zeros((1, 64), np.float32)).shape == (1, 10)


def test_registered_mlflow_model_loads_through_the_bundle(tmp_path: Path) -> None:
    import mlflow

    from autotune.deploy.export import register_bundle

    job = tuned_job()
    out = tmp_path / "reg"
    write_bundle(job, pick_trial(job, ORT_FP32), out)
    reg = register_bundle(out, tracking_uri=job.tracking_uri, name="deploy-test", alias="staging",
                          artifacts=job.out_dir / "mlartifacts")
    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_registry_uri(job.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/deploy-test@staging")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x), load(out).predict(x))
    assert reg.model_uri == f"models:/deploy-test/{reg.version}"
