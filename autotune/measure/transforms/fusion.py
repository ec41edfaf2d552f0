"""ONNX Runtime's transformer graph fusion (``onnxruntime.transformers.optimizer``).

``ort_fusion`` rewrites the exported graph of a BERT-family encoder into ONNX Runtime's fused
contrib operators: ``Attention`` (or ``MultiHeadAttention``), ``SkipLayerNormalization``,
``EmbedLayerNormalization``, ``BiasGelu`` / ``FastGelu``.  Fewer, larger kernels run faster on CPU,
and int8 quantization applied afterwards quantizes the fused ``Attention`` weights as well
(ONNX Runtime's quantizer knows the fused operators).  The harness applies it before int8
(configuration key ``ort_fusion: none | bert``).

``attention`` (configuration key ``ort_attention``): ``fused`` — one ``Attention`` operator with
the packed Q/K/V projection, which dynamic int8 turns into ``QAttention``; ``multihead`` — the
Q/K/V projections stay separate MatMuls (quantized like every other MatMul, to
``DynamicQuantizeMatMul``) feeding a float ``MultiHeadAttention``.  On an AVX2 CPU without VNNI a
profile of all-MiniLM-L6-v2 (batch 1, sequence 128, 2 threads) spent 35 % of the fused int8
model's time in ``QAttention`` against about 25 % for the projections plus ``MultiHeadAttention``
of the ``multihead`` graph; which is faster is measured per machine, not assumed.

``num_heads`` / ``hidden_size`` of 0 let the optimizer detect them from the graph;
:func:`fusion_params` reads them from a Hugging Face module's ``config`` when there is one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from autotune.errors import TrialFailed
from autotune.measure.transforms.base import Categorical, Context, ModelRef, TParam, Transform, one_of
from autotune.measure.transforms.quantize import quiet_logging

MODEL_TYPES = ("bert",)
ATTENTION = ("fused", "multihead")
#: Hugging Face ``model_type`` → the fusion ONNX Runtime's optimizer applies to its encoder graph
#: (BERT-family encoders share the ``bert`` patterns; Optimum's ORTConfigManager maps them alike).
#: A model_type missing here is tuned without fusion; a wrong guess fails its trials with a
#: reason ("found no transformer pattern"), never silently.
HF_MODEL_TYPES = {t: "bert" for t in (
    "bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "albert", "mpnet",
    "deberta", "deberta-v2", "big_bird", "nystromformer")}


def fusion_type(model_type: str) -> str:
    """The ``ort_fusion`` value for a Hugging Face ``model_type`` (``none`` when ONNX Runtime's
    optimizer has no patterns for it)."""
    return HF_MODEL_TYPES.get(model_type.lower(), "none")
#: fused contrib operators whose presence shows that a fusion happened
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization",
             "SkipSimplifiedLayerNormalization")


def fusion_params(module: Any) -> dict[str, int]:
    """``num_heads`` and ``hidden_size`` from the first ``config`` found in ``module`` (a Hugging
    Face model or a wrapper holding one), else zeros (the optimizer detects them)."""
    if module is None:
        return {"num_heads": 0, "hidden_size": 0}
    mods = list(module.modules()) if hasattr(module, "modules") else [module]
    for m in mods:  # heads pruned (prune_structured): let the optimizer read the graph
        heads = getattr(m, "num_attention_heads", None)
        size = getattr(m, "attention_head_size", None)
        cfg = getattr(m, "config", None)
        if isinstance(heads, int) and isinstance(size, int) \
                and heads * size != getattr(cfg, "hidden_size", heads * size):
            return {"num_heads": 0, "hidden_size": 0}
    for m in mods:
        cfg = getattr(m, "config", None)
        heads = getattr(cfg, "num_attention_heads", None)
        hidden = getattr(cfg, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return {"num_heads": heads, "hidden_size": hidden}
    return {"num_heads": 0, "hidden_size": 0}


def ort_fuse(src: Path, dst: Path, *, model_type: str = "bert", num_heads: int = 0,
             hidden_size: int = 0, attention: str = "fused") -> tuple[Path, dict[str, int]]:
    """Fuse ``src`` into ``dst``; returns the path and the fused operators' counts."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    if attention == "multihead":  # separate Q/K/V MatMuls (with their biases) + MultiHeadAttention
        options.use_multi_head_attention = True
        options.disable_multi_head_attention_bias = True

    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale shapes from the exporter confuse shape inference
    staged = dst.with_suffix(".stage.onnx")
    onnx.save(model, str(staged))
    try:
        with quiet_logging():
            opt = optimize_model(str(staged), model_type=model_type, num_heads=num_heads,
                                 hidden_size=hidden_size, opt_level=0, use_gpu=False,
                                 optimization_options=options)
    finally:
        staged.unlink(missing_ok=True)
    before = Counter(n.op_type for n in model.graph.node)
    after = Counter(n.op_type for n in opt.model.graph.node)
    fused = {op: after[op] - before.get(op, 0) for op in FUSED_OPS if after[op] > before.get(op, 0)}
    if not any(op in fused for op in ("Attention", "MultiHeadAttention", "SkipLayerNormalization",
                                      "EmbedLayerNormalization")):
        raise TrialFailed(
            f"ort_fusion '{model_type}' found no transformer pattern to fuse in this graph "
            f"(nodes {sum(before.values())} before and {sum(after.values())} after); it needs a "
            "BERT-family encoder", cause={"ort_fusion": model_type})
    opt.save_model_to_file(str(dst))
    return dst, fused


class OrtFusion(Transform):
    name = "ort_fusion"
    takes = gives = "onnx"
    params: ClassVar[dict[str, TParam]] = {
        "model_type": TParam("bert", Categorical(list(MODEL_TYPES)), "fusion patterns",
                             one_of(*MODEL_TYPES), f"one of {', '.join(MODEL_TYPES)}"),
        "num_heads": TParam(0, None, "attention heads (0: detect)",
                            lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
        "hidden_size": TParam(0, None, "hidden size (0: detect)",
                              lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
        "attention": TParam("fused", Categorical(list(ATTENTION)),
                            "one Attention operator (packed Q/K/V; QAttention under int8) or "
                            "separate Q/K/V MatMuls and a MultiHeadAttention",
                            one_of(*ATTENTION), f"one of {', '.join(ATTENTION)}"),
    }

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        assert out is not None
        path, fused = ort_fuse(model.path, out, **params)
        return path, {"fused": fused}
