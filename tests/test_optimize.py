"""``autotune optimize``: the job derived from a Hugging Face model's config and this machine, the
hand recipes as reference contenders (``vs hand int8``), and the whole command on tiny models."""

from __future__ import annotations

import re

import pytest
import yaml
from _tiny_bert import texts, tiny_bert
from click.testing import CliRunner

from autotune.core.metrics import REFERENCE_SOURCE
from autotune.errors import SpecError
from autotune.job.optimize import ModelFacts, derive_job, model_facts, sample_texts
from autotune.job.portfolio import parse_portfolio
from autotune.job.spec import load_job
from autotune.record.study import TrialView, with_reference_speedups
from tests.conftest import UNCONTENDED

FAST = {"warmup": 1, "min_repeats": 5, "max_repeats": 30, "max_time_s": 0.1, **UNCONTENDED}


def _facts(model_type: str = "bert", task: str = "feature-extraction") -> ModelFacts:
    from autotune.measure.transforms.fusion import fusion_type

    return ModelFacts(source="m", name="m", model_type=model_type, task=task, layers=2,
                      hidden_size=32, heads=4, vocab_size=32, max_positions=64,
                      fusion=fusion_type(model_type))


def test_model_facts_read_the_config(tmp_path):
    enc = model_facts(str(tiny_bert(tmp_path / "enc")))
    assert (enc.task, enc.model_type, enc.fusion, enc.hidden_size, enc.heads, enc.layers) == \
        ("feature-extraction", "bert", "bert", 32, 4, 2)
    cls = model_facts(str(tiny_bert(tmp_path / "cls", task="text-classification")))
    assert cls.task == "text-classification"
    with pytest.raises(SpecError, match="offline"):
        model_facts(str(tmp_path / "missing"))


def test_derived_job_has_the_hand_recipes_and_follows_the_model():
    job = derive_job(_facts(), texts="t.txt", threads=2, runtimes=["onnxruntime", "torch"],
                     n_texts=40)
    entries = parse_portfolio(job["search_space"]["portfolio"])
    refs = {e.name: e.config for e in entries if e.reference}
    assert set(refs) == {"ORT fp32", "hand int8", "fused int8"}
    assert refs["hand int8"] == {"runtime": "onnxruntime", "quantization": "int8_dynamic",
                                 "per_channel": True, "reduce_range": False,
                                 "quant_op_types": "all", "ort_fusion": "none"}
    assert refs["fused int8"]["ort_fusion"] == "bert"
    assert refs["fused int8"]["ort_attention"] == "fused"
    mha = next(e.config for e in entries if e.name == "fused int8, multi-head attention")
    assert mha == {**refs["fused int8"], "ort_attention": "multihead"}
    params = job["search_space"]["parameters"]
    assert params["runtime"]["choices"] == ["onnxruntime", "torch"]  # only what is installed
    assert "ov_quant_preset" not in params
    assert job["constraints"] == ["cosine >= 0.99"]
    assert job["evaluation"]["max_samples"] == 20 and job["evaluation"]["sequence_length"] == 64
    # a model_type ONNX Runtime's optimizer does not know: no fusion knob, no fused recipe
    other = derive_job(_facts("gpt_bigcode"), texts="t.txt", threads=2,
                       runtimes=["onnxruntime", "openvino", "torch"], n_texts=40)
    assert "ort_fusion" not in other["search_space"]["parameters"]
    assert "ort_attention" not in other["search_space"]["parameters"]
    names = [e["name"] for e in other["search_space"]["portfolio"]]
    assert "fused int8" not in names and "OpenVINO int8 (NNCF, calibrated)" in names
    thr = derive_job(_facts(task="text-classification"), texts="t.txt", threads=1,
                     objective="throughput", runtimes=["onnxruntime"])
    assert thr["objectives"] == ["throughput_ips", "top1_agreement"]
    assert thr["search_space"]["parameters"]["batch_size"]["choices"] == [1, 8, 32]


def test_reference_speedups_compare_like_with_like():
    def view(n, p50, source="agent", confirmed=None):
        attrs = {"source": source}
        metrics = {"latency_per_item_ms": p50}
        if confirmed is not None:
            attrs.update(confirmed={"p50_ms": confirmed}, measured={"latency_per_item_ms": p50})
            metrics["latency_per_item_ms"] = confirmed
        return TrialView(n, "complete", {}, metrics, (p50,), (0.0,), user_attrs=attrs)

    views = with_reference_speedups([
        view(0, 10.0, f"{REFERENCE_SOURCE}hand int8", confirmed=12.0),
        view(1, 5.0, confirmed=8.0),  # both confirmed: 12 / 8
        view(2, 4.0),  # not confirmed: its own figure against the reference's own, 10 / 4
        TrialView(3, "failed", {}, {}),
    ])
    assert views[1].metrics["vs hand int8"] == pytest.approx(1.5)
    assert views[2].metrics["vs hand int8"] == pytest.approx(2.5)
    assert views[0].metrics["vs hand int8"] == pytest.approx(1.0)
    assert "vs hand int8" not in views[3].metrics


def _run(args, cwd):
    from autotune.cli import main

    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_optimize_writes_a_job_that_validates_and_reruns(tmp_path, monkeypatch):
    """``--write-only`` writes the job; edited (fast measurement, fewer runtimes, 3 trials) it
    runs with ``autotune run``, and the status shows every front point against the hand int8."""
    monkeypatch.chdir(tmp_path)
    tiny_bert(tmp_path / "bert")
    (tmp_path / "texts.txt").write_text("\n".join(texts(40)) + "\n")
    out = _run(["optimize", "bert", "--texts", "texts.txt", "--write-only", "--job",
                "job.yaml", "--sequence-length", "16", "--max-trials", "3", "--budget", "1h"],
               tmp_path)
    assert "job.yaml" in out
    text = (tmp_path / "job.yaml").read_text()
    assert text.startswith("# Written by 'autotune optimize'")
    data = yaml.safe_load(text)
    load_job(tmp_path / "job.yaml")  # validates as written
    data["measurement"] = FAST
    data["search_space"]["parameters"]["runtime"]["choices"] = ["onnxruntime", "torch"]
    data["search_space"]["portfolio"] = [e for e in data["search_space"]["portfolio"]
                                         if e["config"]["runtime"] != "openvino"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    _run(["validate", "job.yaml", "--import-timeout", "0"], tmp_path)
    _run(["run", "job.yaml", "--quiet", "--no-confirm"], tmp_path)
    from autotune.tuning.tuner import status

    summary = status(load_job(tmp_path / "job.yaml"))
    sources = [t.user_attrs.get("source") for t in summary.trials]
    assert sources[:3] == [f"{REFERENCE_SOURCE}ORT fp32", f"{REFERENCE_SOURCE}hand int8",
                           f"{REFERENCE_SOURCE}fused int8"]
    done = [t for t in summary.trials if t.state == "complete"]
    assert done and all("vs hand int8" in t.metrics and "vs ORT fp32" in t.metrics for t in done)
    shown = _run(["status", "job.yaml"], tmp_path)
    assert re.search(r"\d\.\d\dx", shown) and "vs" in shown


@pytest.mark.parametrize("task", ["text-classification"])
def test_optimize_one_command_tunes_confirms_exports(tmp_path, monkeypatch, task):
    """The whole command on a tiny classifier: tunes (few trials), confirms, exports a bundle
    that loads; the export names the hand recipe it beat or the one it is."""
    from autotune.deploy import load
    from autotune.job import optimize as opt

    # the command as typed, with the test's tiny measurement budget written into the job it
    # derives (the defaults time each of ~4 trials and 5+ confirmation rounds for seconds, and
    # wait up to 30 s for quiet cores per contended figure)
    derive = opt.derive_job
    monkeypatch.setattr(opt, "derive_job", lambda *a, **k: {
        **derive(*a, **k), "measurement": {**FAST, "quiet_wait_s": 0, "trial_timeout_s": 300}})
    monkeypatch.chdir(tmp_path)
    tiny_bert(tmp_path / "cls", task=task)
    (tmp_path / "texts.txt").write_text("\n".join(sample_texts(40)) + "\n")
    out = _run(["optimize", "cls", "--texts", "texts.txt", "--max-trials", "3", "--budget", "1h",
                "--sequence-length", "16", "--threads", "1", "--no-register", "--quiet",
                "--job", "job.yaml"], tmp_path)
    assert "bundle" in out
    job = load_job(tmp_path / "job.yaml")
    bundle = job.out_dir / "bundle"
    assert (bundle / "manifest.json").is_file()
    p = load(bundle, check_hardware=False)
    assert [o.name for o in p.outputs] == ["logits"]
    assert job.model.task == "text-classification" and job.constraints == ["top1_agreement >= 0.99"]
    assert job.measurement.max_time_s == FAST["max_time_s"]  # the written job is what ran


def test_sensitivity_pass_finds_the_layer_with_outlier_activations(tmp_path):
    """Two MatMuls; the second one's input has one channel 300x the others (as the residual
    stream of pretrained encoders has): per-tensor uint8 activations crush the other channels, so
    the pass ranks it first, and ``exclude_nodes: sensitive1`` keeps exactly it in float."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from autotune.measure.transforms.quantize import ort_int8_dynamic, sensitive_nodes

    rng = np.random.default_rng(0)
    scale = np.ones(16, np.float32)
    scale[3] = 300.0
    w2 = rng.standard_normal((16, 16)).astype(np.float32)
    w2[3] /= 300.0  # the outlier channel's weights are small: it does not dominate the output
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(scale, "s"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
         helper.make_node("Mul", ["h", "s"], ["hs"], name="scale"),
         helper.make_node("MatMul", ["hs", "w2"], ["y"], name="second")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])], inits)
    src = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(src))
    cal = (rng.standard_normal((8, 16)).astype(np.float32),)
    ranked = sensitive_nodes(src, cal, 2)
    assert [n for n, _ in ranked] == ["second", "first"] and ranked[0][1] > 3 * ranked[1][1]
    dst = ort_int8_dynamic(src, tmp_path / "q.onnx", exclude_nodes="sensitive1", calibration=cal)
    ops = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ops["second"] == "MatMul"  # kept float
    assert "first" not in ops or ops["first"] != "MatMul"  # quantized
