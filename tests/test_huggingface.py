"""Hugging Face encoders as a model source: the spec, the workload (named inputs and outputs,
tokenized texts, fidelity against the unmodified model), a tuning job, its bundle, and selection
rules that filter on parameters."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _tiny_bert import texts, tiny_bert

from autotune.errors import SpecError
from autotune.job.spec import load_job

NAMES = ["input_ids", "attention_mask", "token_type_ids"]

JOB = """
name: hf-tiny
model: {huggingface: bert, task: TASK}
evaluation: {texts: texts.txt, sequence_length: 16, max_samples: 24, calibration_samples: 16}
search_space:
  parameters:
    runtime: [onnxruntime, torch]
    quantization: [fp32, int8_dynamic, int8_static]
    ort_fusion: {choices: [none, bert], when: {runtime: onnxruntime}}
    threads: {low: 1, high: 1}
objectives: [latency_p50_ms, METRIC]
constraints: [METRIC >= 0.9]
agent:
  name: tpe
  seed: 1
  warm_start:
    - {runtime: onnxruntime, quantization: fp32, ort_fusion: none, threads: 1}
    - {runtime: onnxruntime, quantization: int8_static, ort_fusion: bert, threads: 1}
    - {runtime: torch, quantization: fp32, threads: 1}
budget: {max_trials: 4}
measurement: {warmup: 2, min_repeats: 5, max_repeats: 50, max_time_s: 0.2,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""


def _job_dir(tmp_path: Path, task: str = "feature-extraction") -> Path:
    tiny_bert(tmp_path / "bert", task=task)
    (tmp_path / "texts.txt").write_text("\n".join(texts(40)) + "\n")
    metric = "cosine" if task == "feature-extraction" else "top1_agreement"
    (tmp_path / "job.yaml").write_text(textwrap.dedent(JOB).replace("TASK", task)
                                       .replace("METRIC", metric))
    return tmp_path / "job.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "j.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_spec_defaults_and_errors(tmp_path):
    job = load_job(_write(tmp_path, """
        name: a
        model: {huggingface: m, task: text-classification}
        evaluation: {texts: [one text, another]}
        search_space: {parameters: {runtime: [torch]}}
        objectives: [latency_p50_ms, top1_agreement]
    """))
    assert job.evaluation.metric == "top1_agreement" and job.evaluation.sequence_length == 128
    with pytest.raises(SpecError, match=r"needs 'evaluation\.texts'"):
        load_job(_write(tmp_path, """
            name: a
            model: {huggingface: m, task: feature-extraction}
            evaluation: {metric: cosine}
            search_space: {parameters: {runtime: [torch]}}
            objectives: [latency_p50_ms]
        """))
    with pytest.raises(SpecError, match="is for Hugging Face encoder jobs"):
        load_job(_write(tmp_path, """
            name: a
            model: {onnx: m.onnx}
            evaluation: {texts: [x], metric: cosine}
            search_space: {parameters: {runtime: [torch]}}
            objectives: [latency_p50_ms]
        """))
    with pytest.raises(SpecError, match="needs a 'huggingface' model"):
        load_job(_write(tmp_path, """
            name: a
            model: {factory: m:f, task: feature-extraction}
            evaluation: {texts: [x]}
            search_space: {parameters: {runtime: [torch]}}
            objectives: [latency_p50_ms]
        """))


def test_missing_model_is_a_clear_error(tmp_path):
    from autotune.measure.workloads.model import load_workload

    (tmp_path / "texts.txt").write_text("a b c\n")
    job = load_job(_write(tmp_path, """
        name: a
        model: {huggingface: no-such-folder, task: feature-extraction}
        evaluation: {texts: texts.txt}
        search_space: {parameters: {runtime: [torch]}}
        objectives: [latency_p50_ms]
    """))
    with pytest.raises(SpecError, match="cannot load the Hugging Face model 'no-such-folder' "
                                        "offline"):
        load_workload(job)


def test_classification_workload_keeps_names(tmp_path):
    from autotune.measure.workloads.forward import Evaluator

    job = load_job(_job_dir(tmp_path, "text-classification"))
    ev = Evaluator(job)
    wl = ev.workload
    assert wl.input_names == tuple(NAMES) and wl.output_names == ("logits",)
    assert [x.shape for x in wl.inputs] == [(24, 16)] * 3 and wl.calibration[0].shape == (16, 16)
    assert ev.reference_outputs().shape == (24, 3)
    _, info = ev._build({"runtime": "onnxruntime", "quantization": "fp32"})
    import onnxruntime as ort

    sess = ort.InferenceSession(info["model_path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == NAMES
    assert [o.name for o in sess.get_outputs()] == ["logits"]


@pytest.mark.slow
def test_huggingface_job_tunes_and_exports_named_io(tmp_path):
    from autotune.deploy import load
    from autotune.deploy.export import export_bundle
    from autotune.tuning.tuner import run

    job = load_job(_job_dir(tmp_path))
    summary = run(job)
    states = {t.number: t.state for t in summary.trials}
    assert len(states) == 4 and all(states[n] == "complete" for n in (0, 1, 2)), states
    views = {t.number: t for t in summary.trials}
    assert views[0].metrics["cosine"] > 0.9999  # fp32: the unmodified model itself
    assert 0.95 < views[1].metrics["cosine"] < 1.0  # fused + static int8, a real change
    steps = {s["transform"]: s for s in views[1].user_attrs["details"]["lineage"]}
    assert steps["ort_fusion"]["info"]["fused"]["Attention"] == 2
    # a selection rule filtering on a parameter picks among ONNX Runtime trials only
    res = export_bundle(job, "min latency_p50_ms with runtime == onnxruntime and "
                             "quantization in [int8_static]", out=tmp_path / "bundle",
                        register=False)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["config"]["quantization"] == "int8_static"
    assert [i["name"] for i in manifest["inputs"]] == NAMES
    assert [o["name"] for o in manifest["outputs"]] == ["sentence_embedding"]
    p = load(res.bundle, check_hardware=False)
    assert [i.name for i in p.inputs] == NAMES
    from autotune.measure.workloads.forward import Evaluator

    wl = Evaluator(job).workload
    got = np.asarray(p.predict({n: x[:4] for n, x in zip(NAMES, wl.inputs, strict=True)}))
    assert got.shape == (4, 32)


def test_selection_rule_parameter_filters():
    from autotune.core.pareto import Record, parse_rule

    recs = [Record(1, {"latency_p50_ms": 1.0}, True, {"runtime": "torch", "threads": 2}),
            Record(2, {"latency_p50_ms": 3.0}, True, {"runtime": "onnxruntime", "threads": 2}),
            Record(3, {"latency_p50_ms": 2.0}, True, {"runtime": "onnxruntime", "threads": 1})]
    assert parse_rule("min latency_p50_ms").select(recs).number == 1
    assert parse_rule("min latency_p50_ms with runtime == onnxruntime").select(recs).number == 3
    assert parse_rule("fastest p50 with runtime != torch and threads in [2, 4]").select(
        recs).number == 2
    assert parse_rule("min latency_p50_ms with threads not in (1)").select(recs).number == 1
    assert parse_rule("min latency_p50_ms with runtime == openvino").select(recs) is None
    with pytest.raises(SpecError, match="lists no values"):
        parse_rule("min latency_p50_ms with runtime in []")
