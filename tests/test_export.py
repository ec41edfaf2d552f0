"""Export: picking a trial, the bundle's contents, and the round trip into a fresh process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from _deploy_job import ORT_FP32, ORT_INT8, TORCH_FP32, tuned_job
from click.testing import CliRunner

from autotune.deploy.export import export_bundle, pick_trial, write_bundle
from autotune.errors import AutotuneError, SpecError
from autotune.tuning.tuner import open_record

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# The loaded bundle and the harness's own predictor for the same config are timed in 61 short
# alternating rounds in one fresh process: the median of the per-round ratios must be within 1.5x.
# On a busy machine single rounds of this ~15 us call swing 0.5x-2.5x (a parallel test worker or
# another process on the other core); 100 ms rounds, 5 of them, failed once in a loaded run
# (ratio of medians 2.8x); the median of 61 paired 20 ms rounds stayed at 1.25-1.27x.
# The figure recorded during tuning was taken by another process at another moment, under
# whatever load the machine had then: against it the check is only that the manifest states the
# right figure (units, configuration), so the recorded 95% CI of the median is widened by 10x
# (so that a change of load between the two moments does not decide the test).
SAME_PROCESS_RATIO = 1.5
RECORDED_NOISE_FACTOR = 10.0

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from autotune.deploy import load
    from autotune.deploy.bundle import benchmark
    from autotune.measure.runtimes.onnxruntime import OrtRunner, session
    from autotune.measure.harness.stats import alternate
    bundle, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
    p = load(bundle)
    x = np.load(inputs)
    np.save(out, p.predict(x))
    # the original: the harness's predictor on the job's cached model file, same settings
    original = OrtRunner(session(p.manifest["source"]["model_cache_path"], p.deploy["config"])).positional()
    xb = np.ascontiguousarray(x[:p.batch_size])
    rounds = alternate({"bundle": lambda: p.predict(xb), "original": lambda: original([xb])},
                       rounds=61, warmup=20, min_repeats=30, max_repeats=2000, max_time_s=0.02)
    print(json.dumps({k: [s.p50_ms for s in v] for k, v in rounds.items()}
                     | {"options": p.session_options}))
""")


def test_round_trip_outputs_and_latency(tmp_path: Path) -> None:
    job = tuned_job()
    res = export_bundle(job, ORT_FP32, alias="champion")
    assert res.bundle == job.out_dir / "bundles" / f"trial-{ORT_FP32}"
    assert res.registry_error is None and res.registered is not None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    assert str(client.get_model_version_by_alias(job.name, "champion").version) == res.registered.version

    # the original model for that config, built by the harness in this process
    from autotune.measure.workloads.forward import Evaluator

    ev = Evaluator(job)
    predict, _ = ev._build(res.manifest["config"])
    x = ev.workload.inputs[0]
    want = predict([x])
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(res.bundle), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["options"]["intra_op_num_threads"] == 1
    assert "ORT_ENABLE_ALL" in report["options"]["graph_optimization_level"]
    bundle_p50 = float(np.median(report["bundle"]))
    original_p50 = float(np.median(report["original"]))
    # paired: each round's bundle block against the original's block beside it in time
    per_round = np.divide(report["bundle"], report["original"])
    rec = res.manifest["latency"]
    print(f"bundle p50 {bundle_p50:.4f} ms, original p50 {original_p50:.4f} ms, recorded p50 "
          f"{rec['p50_ms']:.4f} ms (95% CI {rec['ci95_low_ms']:.4f}..{rec['ci95_high_ms']:.4f})")
    print("bundle/original per round", np.round(per_round, 2))
    assert 1 / SAME_PROCESS_RATIO <= float(np.median(per_round)) <= SAME_PROCESS_RATIO
    assert rec["ci95_low_ms"] / RECORDED_NOISE_FACTOR <= bundle_p50 \
        <= rec["ci95_high_ms"] * RECORDED_NOISE_FACTOR


def test_manifest_and_deploy_yaml(tmp_path: Path) -> None:
    job = tuned_job()
    out = tmp_path / "b"
    manifest = write_bundle(job, pick_trial(job, ORT_INT8), out, pick=str(ORT_INT8))
    assert sorted(p.name for p in out.iterdir()) == ["deploy.yaml", "manifest.json", "model.onnx"]
    for name, info in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]
    assert (out / "model.onnx").read_bytes() == Path(manifest["source"]["model_cache_path"]).read_bytes()
    assert manifest["source"]["trial"] == ORT_INT8 and manifest["source"]["job"] == "tiny"
    lat = manifest["latency"]
    assert lat["ci95_low_ms"] <= lat["p50_ms"] <= lat["ci95_high_ms"] and lat["n"] >= 5
    (c,) = manifest["constraints"]
    assert c["constraint"] == "accuracy_drop <= 5%" and c["bound"] == pytest.approx(0.05)
    assert c["value"] == manifest["metrics"]["accuracy_drop"] and c["satisfied"] is True
    from autotune.measure.harness.hardware import fingerprint

    assert manifest["hardware"]["digest"] == fingerprint().digest()
    assert manifest["libraries"]["exported"]["onnxruntime"]
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 64]}]
    assert [o["name"] for o in manifest["outputs"]] == ["output"]
    deploy = yaml.safe_load((out / "deploy.yaml").read_text())
    assert deploy["config"] == manifest["config"]
    assert deploy["quantization"] == "int8_dynamic" and deploy["batch_size"] == 1
    assert deploy["threads"] == 1 and deploy["measured_runtime"] == "onnxruntime"
    assert deploy["measured_latency_applies"] is True


def test_torch_trial_ships_its_measured_program(tmp_path: Path) -> None:
    job = tuned_job()
    manifest = write_bundle(job, pick_trial(job, TORCH_FP32), tmp_path / "t")
    deploy = yaml.safe_load((tmp_path / "t" / "deploy.yaml").read_text())
    assert deploy["measured_runtime"] == "torch" and deploy["runtime"] == "torch"
    assert deploy["same_model_as_measured"] is True and deploy["measured_latency_applies"] is True
    assert "note" not in deploy and manifest["model"] == "model.safetensors"
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "deploy.yaml", "manifest.json", "model.safetensors"]
    from autotune.deploy import load
    from autotune.measure.workloads.forward import Evaluator

    ev = Evaluator(job)
    torch_predict, _ = ev._build(manifest["config"])  # the measured torch model
    x = ev.workload.inputs[0]
    np.testing.assert_allclose(load(tmp_path / "t").predict(x), torch_predict([x]), atol=1e-4)


def test_pick_rules() -> None:
    job = tuned_job()
    knee = pick_trial(job, "knee")
    assert knee.feasible
    fastest = pick_trial(job, "fastest with accuracy_drop <= 5%")
    feasible = [t for t in open_record(job).trials() if t.feasible]
    assert fastest.metrics["latency_p95_ms"] == min(t.metrics["latency_p95_ms"] for t in feasible)
    assert pick_trial(job, "2").number == 2
    with pytest.raises(AutotuneError, match="no trial 99"):
        pick_trial(job, 99)
    with pytest.raises(AutotuneError, match="satisfies"):
        pick_trial(job, "fastest with accuracy_drop <= -50%")
    with pytest.raises(SpecError):
        pick_trial(job, "quickest please")


def test_cli_export(tmp_path: Path) -> None:
    from autotune.cli import main

    job = tuned_job()
    out = tmp_path / "cli-bundle"
    r = CliRunner().invoke(main, ["export", job.source, "--pick", str(ORT_INT8), "--out", str(out),
                                  "--no-register"])
    assert r.exit_code == 0, r.output
    assert "bundle" in r.output and (out / "manifest.json").is_file()
    # --sign KEYFILE: load(key=...) accepts it with that key only
    from autotune.deploy import TamperedBundleError, load

    keyfile, other = tmp_path / "bundle.key", tmp_path / "other.key"
    keyfile.write_text("correct horse battery staple\n")
    other.write_text("another key of enough length\n")
    signed = tmp_path / "signed"
    r = CliRunner().invoke(main, ["export", job.source, "--pick", str(ORT_INT8), "--out",
                                  str(signed), "--no-register", "--sign", str(keyfile)])
    assert r.exit_code == 0, r.output
    assert load(signed, key=keyfile).predict(np.zeros((1, 64), np.float32)).shape == (1, 10)
    with pytest.raises(TamperedBundleError, match="invalid signature"):
        load(signed, key=other)
    with pytest.raises(TamperedBundleError, match="not signed"):
        load(out, key=keyfile)
    r = CliRunner().invoke(main, ["export", job.source, "--pick", "77", "--no-register"])
    assert r.exit_code == 2 and "no trial 77" in r.output
