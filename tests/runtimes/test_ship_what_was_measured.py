"""Issue 11's "done when": a job whose space holds torch fp32, bf16 and int8 and ONNX Runtime with
``execution_mode: parallel`` and ``inter_op_threads: 2`` is tuned; every front trial (in fact every
trial) is exported; each bundle is loaded in a fresh process; its outputs are checked against the
trial's model and its deploy.yaml against the trial's configuration, key by key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

JOB = """
name: shipped
model:
  factory: digits_model:build
  options: {hidden: 32, epochs: 2}
evaluation:
  dataset: digits_model:validation_data
  metric: accuracy
  max_samples: 128
search_space:
  parameters:
    runtime: [torch, onnxruntime]
    quantization:
      choices: [fp32, bf16, int8_dynamic]
      invalid:
        - values: [bf16]
          when: {runtime: onnxruntime}
    execution_mode: {choices: [parallel], when: {runtime: onnxruntime}}
    inter_op_threads: {choices: [2], when: {runtime: onnxruntime}}
    threads: [1]
    batch_size: [4]
objectives: [latency_p95_ms, accuracy]
agent: {name: grid, seed: 0}
budget: {max_trials: 5}
measurement: {warmup: 1, min_repeats: 3, max_repeats: 10, max_time_s: 0.05,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from autotune.deploy import load
    x = np.load(sys.argv[1])
    out = {}
    for b in sys.argv[3:]:
        p = load(b)
        out[b] = {"y": p.predict({p.inputs[0].name: x}).tolist(),
                  "options": p.session_options, "inputs": [s.name for s in p.inputs],
                  "outputs": [s.name for s in p.outputs], "runtime": p.runtime}
    open(sys.argv[2], "w").write(json.dumps(out))
""")


def test_every_trial_ships_as_measured(tmp_path: Path) -> None:
    from autotune.deploy.export import write_bundle
    from autotune.job.spec import load_job
    from autotune.measure.workloads.forward import Evaluator
    from autotune.tuning.tuner import open_record, pareto_views, run

    shutil.copy(ROOT / "experiments" / "digits_model.py", tmp_path / "digits_model.py")
    (tmp_path / "job.yaml").write_text(JOB.lstrip())
    job = load_job(tmp_path / "job.yaml")
    summary = run(job)
    done = [t for t in summary.trials if t.state == "complete"]
    kinds = {(t.config["runtime"], t.config["quantization"]) for t in done}
    expected = {("torch", "fp32"), ("torch", "bf16"), ("torch", "int8_dynamic"),
                ("onnxruntime", "fp32"), ("onnxruntime", "int8_dynamic")}
    if any("quantization = bf16 with runtime=torch" in n for n in summary.notices):
        expected.discard(("torch", "bf16"))  # a CPU without native bf16: left out, and said so
    assert kinds == expected, summary.notices
    front = {t.number for t in pareto_views(list(summary.trials), job)}
    assert front
    record = open_record(job, create=False)
    bundles = {}
    for t in done:  # every front trial, and the others too
        out = tmp_path / f"b{t.number}"
        manifest = write_bundle(job, t, out, record=record)
        deploy = yaml.safe_load((out / "deploy.yaml").read_text())
        # deploy.yaml against the configuration, key by key: every key the trial set is there
        # with the measured value, and the runtime is the measured one
        for key, value in t.config.items():
            if key in ("pruning_ratio",):
                continue
            assert deploy[key] == value, (t.number, key, deploy.get(key), value)
        assert deploy["runtime"] == deploy["measured_runtime"] == t.config["runtime"]
        assert deploy["measured_latency_applies"] is True and deploy["same_model_as_measured"]
        assert manifest["inputs"][0]["name"] == "input"  # nn.Sequential.forward(input)
        bundles[str(out)] = t
    x = np.ascontiguousarray(Evaluator(job).workload.inputs[0][:16])
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "x.npy"),
                           str(tmp_path / "y.json"), *bundles], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads((tmp_path / "y.json").read_text())
    ev = Evaluator(job)
    for path, t in bundles.items():
        got = loaded[path]
        assert got["runtime"] == t.config["runtime"] and got["outputs"] == ["output"]
        predict, _ = ev._build(t.config)  # the trial's model, rebuilt by the harness
        want = predict([x])
        np.testing.assert_allclose(np.asarray(got["y"], np.float32), want, rtol=1e-5, atol=1e-5)
        if t.config["runtime"] == "onnxruntime":  # the session really runs as measured
            assert got["options"]["inter_op_num_threads"] == 2
            assert "PARALLEL" in got["options"]["execution_mode"]
            assert got["options"]["intra_op_num_threads"] == 1
