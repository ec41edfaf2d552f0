"""Transforms on a real (tiny) Hugging Face transformer with three named inputs: static int8
calibration, ONNX Runtime's transformer fusion, exclusion of nodes, structured pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _tiny_bert import texts, tiny_bert

from autotune.measure.transforms.base import Context, ModelRef, apply, data_digest
from autotune.measure.transforms.fusion import fusion_params
from autotune.measure.workloads.model import hf_encoder

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """(module, eval inputs, calibration inputs): mean-pooled tiny BERT, texts padded to 24."""
    folder = tiny_bert(tmp_path_factory.mktemp("bert") / "b", layers=2, hidden=64, heads=4,
                       intermediate=128)
    module, tok = hf_encoder(str(folder), "feature-extraction")
    assert module.input_names == NAMES

    def enc(items: list[str]) -> tuple[np.ndarray, ...]:
        e = tok(items, padding="max_length", truncation=True, max_length=24, return_tensors="np")
        return tuple(e[n].astype(np.int64) for n in NAMES)

    return module, enc(texts(32, seed=1)), enc(texts(32, seed=2))


def _ctx(ev, cal) -> Context:
    ex = tuple(x[:2] for x in ev)
    return Context(example_inputs=ex, calibration=cal, input_names=NAMES,
                   output_names=("sentence_embedding",), digest=data_digest(*ex, *cal) + "names")


def _run(path: Path, ev) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(NAMES)
    assert [o.name for o in sess.get_outputs()] == ["sentence_embedding"]
    return np.concatenate([sess.run(None, {n: x[i:i + 1] for n, x in zip(NAMES, ev, strict=True)})[0]
                           for i in range(len(ev[0]))])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def _reference(module, ev) -> np.ndarray:
    with torch.inference_mode():
        return module(*[torch.from_numpy(x) for x in ev]).numpy()


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_static_int8_of_a_multi_input_transformer(encoder, tmp_path, exporter, calibration):
    module, ev, cal = encoder
    ctx = _ctx(ev, cal)
    ref = _reference(module, ev)
    onnx_ref = apply("export_onnx", ModelRef.torch(module, "tinybert"), ctx, cache_dir=tmp_path,
                     exporter=exporter)
    q = apply("ort_int8_static", onnx_ref, ctx, cache_dir=tmp_path, calibration=calibration,
              per_channel=True)
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    cos = _cosine(_run(q.path, ev), ref)
    print(f"static int8 ({exporter}, {calibration}): cosine {cos:.4f}")
    assert cos >= 0.98, f"static int8 fidelity {cos:.4f}"


def test_outlier_ranges_are_kept_float(encoder, tmp_path):
    """The attention mask becomes a float-minimum additive bias: an int8 scale for it would
    crush every other value, so the nodes touching it stay float."""
    module, ev, cal = encoder
    ctx = _ctx(ev, cal)
    onnx_ref = apply("export_onnx", ModelRef.torch(module, "tinybert"), ctx, cache_dir=tmp_path,
                     exporter="torchscript")
    q = apply("ort_int8_static", onnx_ref, ctx, cache_dir=tmp_path)
    assert q.lineage[-1].info["kept_float_outliers"] > 0


def test_fusion_then_int8(encoder, tmp_path):
    module, ev, cal = encoder
    ctx = _ctx(ev, cal)
    assert fusion_params(module) == {"num_heads": 4, "hidden_size": 64}
    onnx_ref = apply("export_onnx", ModelRef.torch(module, "tinybert"), ctx, cache_dir=tmp_path,
                     exporter="torchscript")
    fused = apply("ort_fusion", onnx_ref, ctx, cache_dir=tmp_path, **fusion_params(module))
    info = fused.lineage[-1].info["fused"]
    assert info.get("Attention") == 2 and info.get("SkipLayerNormalization", 0) >= 2
    ref = _reference(module, ev)
    assert _cosine(_run(fused.path, ev), ref) > 0.9999
    q = apply("ort_int8_dynamic", fused, ctx, cache_dir=tmp_path, per_channel=True)
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert "QAttention" in ops or "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops
    cos = _cosine(_run(q.path, ev), ref)
    print(f"fused + dynamic int8: cosine {cos:.4f}")
    assert cos >= 0.98
    # multi-head attention: separate Q/K/V MatMuls (int8 like the others), a float
    # MultiHeadAttention, no QAttention
    mha = apply("ort_fusion", onnx_ref, ctx, cache_dir=tmp_path, attention="multihead",
                **fusion_params(module))
    assert mha.lineage[-1].info["fused"].get("MultiHeadAttention") == 2
    qm = apply("ort_int8_dynamic", mha, ctx, cache_dir=tmp_path, per_channel=True)
    ops = [n.op_type for n in onnx.load(str(qm.path)).graph.node]
    assert "MultiHeadAttention" in ops and "QAttention" not in ops
    assert _cosine(_run(qm.path, ev), ref) >= 0.98
    # excluding the first quantizable node (a fused Attention here) keeps it float
    q2 = apply("ort_int8_dynamic", fused, ctx, cache_dir=tmp_path, exclude_nodes="first")
    assert sum(n.op_type == "Attention" for n in onnx.load(str(q2.path)).graph.node) >= 1


def test_fusion_refuses_a_graph_without_transformer_blocks(mlp_onnx, mlp_context, tmp_path):
    from autotune.errors import TrialFailed

    with pytest.raises(TrialFailed, match="no transformer pattern"):
        apply("ort_fusion", mlp_onnx, mlp_context, cache_dir=tmp_path)


def test_structured_pruning_of_hugging_face_blocks(encoder, tmp_path):
    """Attention heads and FFN intermediate units of BertLayer blocks are removed (the weights
    really shrink), the pruned model still runs, exports with its names, and stays close."""
    from autotune.measure.transforms.prune import n_parameters

    module, ev, cal = encoder
    ctx = _ctx(ev, cal)
    pruned = apply("prune_structured", ModelRef.torch(module, "tinybert"), ctx,
                   cache_dir=tmp_path, ratio=0.25)
    info = pruned.lineage[-1].info
    assert (info["heads_before"], info["heads_after"]) == (8, 6)
    assert (info["hidden_before"], info["hidden_after"]) == (256, 192)
    assert n_parameters(pruned.module) < n_parameters(module)
    layer = pruned.module.model.encoder.layer[0]
    assert layer.attention.self.query.out_features == 48
    assert layer.intermediate.dense.out_features == 96
    ref = _reference(module, ev)
    got = _reference(pruned.module, ev)
    cos = _cosine(got, ref)
    print(f"structured 25%: cosine {cos:.4f}")
    assert 0.5 < cos < 0.99999
    exported = apply("export_onnx", pruned, ctx, cache_dir=tmp_path)
    np.testing.assert_allclose(_run(exported.path, ev), got, rtol=1e-3, atol=1e-4)
