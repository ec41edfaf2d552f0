"""``autotune optimize``: from a Hugging Face encoder to a tuned job file, in one command.

:func:`model_facts` reads the model's own ``config.json`` (offline): its ``model_type``,
architecture (an encoder, a sequence classifier), attention heads, hidden size, layers,
vocabulary and position limit.  :func:`derive_job` turns those facts and this machine
(:func:`autotune.job.machine.exclusions`: the runtimes installed here and what they cannot run;
the CPU's flags and cores) into an ordinary job: the search space, the hardware portfolio, the
hand recipes every candidate is compared with (portfolio entries with ``reference: true``: a
plain ONNX Runtime fp32 export, the one-line ``quantize_dynamic(per_channel=True)`` and, where
ONNX Runtime's transformer optimizer knows the ``model_type``, its fused graph with the same
int8), the fidelity constraint and the budget.  The CLI writes that job next to the texts it
uses, so the user can read it, edit it and re-run it with ``autotune run``; then it runs,
confirms and exports it as ``autotune run`` / ``autotune export`` would.

Nothing here is specific to a model name: the same rules apply to every encoder.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import SpecError
from autotune.job.spec import ENCODER_TASKS
from autotune.measure.transforms.fusion import fusion_type

OBJECTIVES = ("latency", "throughput")
#: fidelity an optimized model must keep against the unmodified one (the task's metric)
MIN_FIDELITY = 0.99


@dataclass(frozen=True)
class ModelFacts:
    """What the model's ``config.json`` says, as :func:`derive_job` uses it."""

    source: str  # a folder or a cached model id
    name: str  # for the job's name
    model_type: str
    task: str  # feature-extraction | text-classification
    layers: int
    hidden_size: int
    heads: int
    vocab_size: int
    max_positions: int
    fusion: str  # the ort_fusion value for this model_type, or "none"


def _task_of(cfg: Any) -> str | None:
    archs = [str(a) for a in (getattr(cfg, "architectures", None) or [])]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    if getattr(cfg, "is_decoder", False) or any(a.endswith(("ForCausalLM", "LMHeadModel"))
                                                 for a in archs):
        return "text-generation"
    if any(a.endswith("Model") or a.endswith("ForMaskedLM") for a in archs) or not archs:
        return "feature-extraction"
    return None


def model_facts(source: str, task: str | None = None) -> ModelFacts:
    """The facts of the Hugging Face model at ``source`` (a folder saved with
    ``save_pretrained`` or a cached id; nothing is downloaded)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecError(f"cannot read the Hugging Face model {source!r} offline ({first}). Give "
                        "a folder written by save_pretrained (config, weights and tokenizer) or "
                        "the id of a model already in the local Hugging Face cache.",
                        path="model") from None
    derived = _task_of(cfg)
    task = task or derived
    if task == "text-generation":
        raise SpecError(f"{source!r} is a text generator ({', '.join(cfg.architectures or [])}); "
                        "'autotune optimize' tunes encoders and classifiers. Write a "
                        "text-generation job instead (README 'Language models').", path="model")
    if task not in ENCODER_TASKS:
        raise SpecError(f"cannot tell what {source!r} computes from its architectures "
                        f"{cfg.architectures}; pass --task feature-extraction or "
                        "text-classification.", path="model.task")

    def num(*names: str, default: int = 0) -> int:
        for n in names:
            v = getattr(cfg, n, None)
            if isinstance(v, int):
                return v
        return default

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source).name or source).strip("-.") or "model"
    model_type = str(getattr(cfg, "model_type", "") or "")
    return ModelFacts(
        source=source, name=name, model_type=model_type, task=task,
        layers=num("num_hidden_layers", "n_layers", "num_layers"),
        hidden_size=num("hidden_size", "dim", "d_model"),
        heads=num("num_attention_heads", "n_heads"),
        vocab_size=num("vocab_size"),
        max_positions=num("max_position_embeddings", "n_positions", default=512),
        fusion=fusion_type(model_type),
    )


def derive_job(facts: ModelFacts, *, texts: str, objective: str = "latency",
               budget: str = "10m", max_trials: int = 40, sequence_length: int = 128,
               threads: int, cpu_flags: Sequence[str] = (),
               capabilities: Mapping[str, Any] | None = None,
               runtimes: Sequence[str] = ("onnxruntime", "torch"),
               excluded: Sequence[Any] = (), n_texts: int = 96,
               model_ref: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """The job (as the dict a job file holds) tuning ``facts``' model on this machine.

    ``runtimes``: the runtimes installed here (:func:`autotune.job.machine.exclusions`);
    ``excluded``: its exclusions (values a runtime cannot run here: they are left out of the
    space rather than proposed and refused).  ``texts``: the texts file, as the job names it;
    ``n_texts`` of them: the first half (at most 64) measures fidelity, the rest (at most 64)
    calibrates static int8."""
    if objective not in OBJECTIVES:
        raise SpecError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}.",
                        path="objective")
    caps = dict(capabilities or {})
    metric = ENCODER_TASKS[facts.task]
    seq = max(8, min(int(sequence_length), facts.max_positions or sequence_length))
    excl = {(e.param, v): e for e in excluded for v in e.values}

    def cannot(param: str, value: Any, runtime: str) -> bool:
        e = excl.get((param, value))
        return e is not None and (not e.when or e.when.get("runtime") == runtime)

    rts = [r for r in ("onnxruntime", "openvino", "torch") if r in runtimes]
    ov_int8 = "openvino" in rts and not cannot("quantization", "int8_static", "openvino")
    bf16 = "torch" in rts and bool(caps.get("cpu_bf16"))
    quant = ["fp32", "int8_dynamic", "int8_static"] + (["bf16"] if bf16 else [])
    invalid = [{"values": ["int8_static"], "when": {"runtime": "torch"},
                "reason": "static int8 runs on ONNX Runtime and OpenVINO"}]
    if "openvino" in rts:
        invalid.append({"values": ["int8_dynamic"], "when": {"runtime": "openvino"},
                        "reason": "OpenVINO's int8 is NNCF's calibrated (static) quantization"})
        if not ov_int8:
            invalid.append({"values": ["int8_static"], "when": {"runtime": "openvino"},
                            "reason": "nncf is not installed"})
    if bf16:
        invalid.append({"values": ["bf16"], "when": {"runtime": [r for r in rts if r != "torch"]},
                        "reason": "bf16 is tuned on torch here"})
    ort_int8 = {"quantization": ["int8_dynamic", "int8_static"], "runtime": "onnxruntime"}
    params: dict[str, Any] = {
        "batch_size": {"choices": [batch_size] if batch_size else
                       [1] if objective == "latency" else [1, 8, 32]},
        "threads": {"choices": [threads]},
        "runtime": {"choices": rts},
        "quantization": {"choices": quant, "invalid": invalid},
    }
    if facts.fusion != "none":
        params["ort_fusion"] = {"choices": ["none", facts.fusion], "when": {"runtime": "onnxruntime"}}
        # the fused graph's attention: packed Q/K/V in one Attention (QAttention under int8) or
        # separate projections quantized like every MatMul + a float MultiHeadAttention
        params["ort_attention"] = {"choices": ["fused", "multihead"],
                                   "when": {"runtime": "onnxruntime", "ort_fusion": facts.fusion}}
    params.update({
        "per_channel": {"choices": [False, True], "when": ort_int8},
        "reduce_range": {"choices": [False, True], "when": ort_int8},
        "quant_op_types": {"choices": ["all", "MatMul,Gemm"], "when": ort_int8},
        "calibration": {"choices": ["minmax", "percentile"],
                        "when": {"quantization": "int8_static", "runtime": "onnxruntime"}},
    })
    if ov_int8:
        params["ov_quant_preset"] = {"choices": ["performance", "mixed"],
                                     "when": {"quantization": "int8_static", "runtime": "openvino"}}
    fused = {"ort_fusion": facts.fusion, "ort_attention": "fused"} \
        if facts.fusion != "none" else {}
    plain = {"ort_fusion": "none"} if facts.fusion != "none" else {}
    portfolio: list[dict[str, Any]] = [
        {"name": "ORT fp32", "reference": True,
         "note": "a plain ONNX export run by ONNX Runtime",
         "config": {"runtime": "onnxruntime", "quantization": "fp32", **plain}},
        {"name": "hand int8", "reference": True,
         "note": "the one-line onnxruntime.quantization.quantize_dynamic(per_channel=True)",
         "config": {"runtime": "onnxruntime", "quantization": "int8_dynamic", "per_channel": True,
                    "reduce_range": False, "quant_op_types": "all", **plain}},
    ]
    if fused:
        portfolio.append(
            {"name": "fused int8", "reference": True,
             "note": "onnxruntime.transformers optimize_model, then the same quantize_dynamic",
             "config": {"runtime": "onnxruntime", "quantization": "int8_dynamic",
                        "per_channel": True, "reduce_range": False, "quant_op_types": "all",
                        **fused}})
    if fused:
        portfolio.append(
            {"name": "fused int8, multi-head attention",
             "note": "the fused recipe with separate int8 Q/K/V projections and a float "
                     "MultiHeadAttention instead of QAttention",
             "config": {**portfolio[-1]["config"], "ort_attention": "multihead"}})
    if ov_int8:
        portfolio.append({"name": "OpenVINO int8 (NNCF, calibrated)",
                          "config": {"runtime": "openvino", "quantization": "int8_static",
                                     "ov_quant_preset": "performance"}})
    portfolio.append({"name": "ONNX Runtime static int8 (QDQ, per-channel)" + (
                          " on the fused graph" if fused else ""),
                      "config": {"runtime": "onnxruntime", "quantization": "int8_static",
                                 "per_channel": True, "calibration": "minmax",
                                 "quant_op_types": "all", "reduce_range": False, **fused}})
    if bf16:
        portfolio.append({"name": "bf16 on torch (native bf16)",
                          "config": {"runtime": "torch", "quantization": "bf16"}})
    n_eval = max(2, min(64, n_texts // 2))
    first = "latency_p50_ms" if objective == "latency" else "throughput_ips"
    pick = ("min latency_p50_ms" if objective == "latency" else "max throughput_ips")
    return {
        "name": f"{facts.name}-optimize",
        "model": {"huggingface": model_ref or facts.source, "task": facts.task},
        "evaluation": {"texts": texts, "sequence_length": seq, "padding": "max_length",
                       "max_samples": n_eval,
                       "calibration_samples": max(1, min(64, n_texts - n_eval))},
        "search_space": {"portfolio": portfolio, "parameters": params},
        "objectives": [first, metric],
        "constraints": [f"{metric} >= {MIN_FIDELITY}"],
        "budget": {"max_trials": int(max_trials), "timeout": budget},
        # calibrated int8 (NNCF, static QDQ) builds for minutes on a busy machine: a trial is
        # given 15 minutes before it is failed as hung
        "measurement": {"trial_timeout_s": 900},
        "report": {"rules": [f"{pick} with {metric} >= {MIN_FIDELITY}"]},
    }


def header(facts: ModelFacts, machine: str) -> str:
    """The comment on top of a written job: what it was derived from."""
    return (
        f"# Written by 'autotune optimize' from {facts.source}\n"
        f"#   model_type {facts.model_type or '?'} ({facts.task}), {facts.layers} layers, hidden "
        f"{facts.hidden_size}, {facts.heads} heads, vocabulary {facts.vocab_size}; ONNX Runtime "
        f"fusion: {facts.fusion}\n"
        f"#   machine: {machine}\n"
        "# Portfolio entries with 'reference: true' are hand recipes: every trial is compared\n"
        "# with them ('vs hand int8: 1.31x'). Edit freely and re-run with 'autotune run <this "
        "file>'.\n")


#: generic English for calibration and fidelity when no --texts is given (a notice says so:
#: the user's own texts are better)
_SUBJECTS = ("the engineer", "a small team", "our customer", "the new model", "this library",
             "the city council", "a student", "the weather service", "my neighbour",
             "the support desk", "the database", "a doctor", "the orchestra", "the driver",
             "the research group", "an old friend", "the compiler", "the river authority")
_VERBS = ("explained", "rejected", "measured", "described", "improved", "ignored", "celebrated",
          "repaired", "questioned", "announced", "predicted", "summarised", "delayed",
          "translated", "approved", "tested")
_OBJECTS = ("the quarterly report", "a faster search index", "the broken heating system",
            "several late trains", "the price of coffee", "a strange noise in the engine",
            "the final exam results", "a new vaccine trial", "the concert schedule",
            "the memory leak", "a flooded basement", "the election forecast",
            "the recipe for bread", "an unexpected error message", "the hiking route",
            "the football match")
_TAILS = ("yesterday afternoon", "before the meeting started", "because nobody else would",
          "with great care", "in front of the whole office", "after months of work",
          "without any warning", "for the third time", "during the storm", "while drinking tea",
          "as the sun went down", "in a very short email")
_ASIDES = ("Everyone was surprised.", "Nobody could explain why.",
           "It took much longer than expected.", "The results were published online.",
           "Some people complained loudly.", "The numbers did not add up.",
           "Questions remain about the cost.")


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` generic English texts of one to five sentences (seeded)."""
    rng = random.Random(seed)

    def sentence() -> str:
        return (f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
                f"{rng.choice(_OBJECTS)} {rng.choice(_TAILS)}.")

    return [" ".join([sentence()] + [rng.choice(_ASIDES) if rng.random() < 0.4 else sentence()
                                     for _ in range(rng.randint(0, 4))]) for _ in range(n)]


__all__ = ["OBJECTIVES", "ModelFacts", "derive_job", "header", "model_facts", "sample_texts"]
