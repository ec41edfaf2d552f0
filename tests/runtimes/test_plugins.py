"""Plugins: a distribution kept under tests/plugins/ registers a runtime and a metric through
entry points; once installed (pip, into a folder on the path), a job searches the runtime and is
judged by the metric, and the runtime's trial exports and loads like a built-in one."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "plugins" / "autotune_demo_plugin"
pytestmark = pytest.mark.slow

JOB = """
name: plugged
model:
  factory: digits_model:build
  options: {hidden: 16, epochs: 1}
evaluation:
  dataset: digits_model:validation_data
  metric: top2_accuracy
  max_samples: 64
search_space:
  parameters:
    runtime: [onnx-reference, onnxruntime]
    threads: [1]
objectives: [latency_p95_ms, top2_accuracy]
agent: {name: grid, seed: 0}
budget: {max_trials: 2}
measurement: {warmup: 1, min_repeats: 3, max_repeats: 5, max_time_s: 0.05,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "site"
    src = shutil.copytree(PLUGIN, tmp_path / "plugin-src",
                          ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(target.glob("autotune_demo_plugin-*.dist-info"))
    monkeypatch.syspath_prepend(str(target))  # importlib.metadata now sees the dist-info
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]))  # the measuring process
    importlib.invalidate_caches()
    yield target
    from autotune.measure.runtimes import _load

    _load.cache_clear()


def test_a_plugin_runtime_and_metric_from_a_real_job(installed: Path, tmp_path: Path) -> None:
    from autotune.deploy import load
    from autotune.deploy.export import write_bundle
    from autotune.job.spec import load_job
    from autotune.measure.runtimes import declared_parameters, get_runtime, registered
    from autotune.tuning.tuner import run

    assert "onnx-reference" in registered()
    assert get_runtime("onnx-reference").description.startswith("onnx.reference")
    assert "onnx-reference" in declared_parameters()["runtime"].choices
    shutil.copy(ROOT / "experiments" / "digits_model.py", tmp_path / "digits_model.py")
    (tmp_path / "job.yaml").write_text(JOB.lstrip())
    job = load_job(tmp_path / "job.yaml")
    summary = run(job)
    by_rt = {t.config["runtime"]: t for t in summary.trials}
    assert set(by_rt) == {"onnx-reference", "onnxruntime"}
    assert all(t.state == "complete" for t in by_rt.values()), [t.error for t in summary.trials]
    ref, ort = by_rt["onnx-reference"], by_rt["onnxruntime"]
    # the plugin metric judged both; the same model gives the same top-2 accuracy on both
    assert 0.3 < ref.metrics["top2_accuracy"] <= 1.0
    assert ref.metrics["top2_accuracy"] == pytest.approx(ort.metrics["top2_accuracy"])
    bundle = tmp_path / "bundle"
    manifest = write_bundle(job, ref, bundle)
    assert manifest["model"] == "model.onnx"
    p = load(bundle)
    assert p.runtime == "onnx-reference"
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    np.testing.assert_allclose(p.predict(x), load(write_bundle(job, ort, tmp_path / "o") and
                                                 tmp_path / "o").predict(x), rtol=1e-4, atol=1e-5)
