"""Quantization transforms produce really quantized models whose outputs stay close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from autotune.errors import TrialFailed
from autotune.measure.harness.hardware import fingerprint
from autotune.measure.transforms import base
from autotune.measure.transforms.base import Context, ModelRef, apply, get_transform
from autotune.measure.transforms.quantize import resolve_exclude

INT_TYPES = {TensorProto.INT8, TensorProto.UINT8}

#: full-range int8 weights saturate ONNX Runtime's u8s8 kernels on CPUs without VNNI (relative
#: error 0.13-0.15 on an AVX2-only machine); ONNX Runtime's advice there is reduce_range
NO_VNNI = not ({"avx512_vnni", "avx_vnni"} & set(fingerprint().cpu_flags))


def run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def graph(ref: ModelRef) -> onnx.GraphProto:
    return onnx.load(str(ref.path)).graph


def assert_close_not_equal(out: np.ndarray, ref: np.ndarray, tol: float) -> None:
    assert out.shape == ref.shape
    assert not np.array_equal(out, ref), "the quantized model computes exactly what fp32 does"
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < tol, f"relative error {rel:.3f}"


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_int8_static_is_really_int8(mlp_onnx, mlp_context, mlp_data, cache, fmt):
    q = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, quant_format=fmt,
              reduce_range=NO_VNNI)
    g = graph(q)
    ops = {n.op_type for n in g.node}
    int_inits = [i for i in g.initializer if i.data_type in INT_TYPES and len(i.dims) == 2]
    assert len(int_inits) == 3  # the three weight matrices
    if fmt == "qdq":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert not any(o.startswith("QLinear") or o == "QGemm" for o in ops)
    else:
        assert any(o.startswith("QLinear") or o == "QGemm" for o in ops)
    _, x = mlp_data
    assert_close_not_equal(run(q.path, x), run(mlp_onnx.path, x), 0.1)


def test_qoperator_on_matmul_gives_qlinear_nodes(tokens_onnx, tokens_context, cache):
    q = apply("ort_int8_static", tokens_onnx, tokens_context, cache_dir=cache,
              quant_format="qoperator", op_types="MatMul")
    ops = [n.op_type for n in graph(q).node]
    assert "QLinearMatMul" in ops
    assert "MatMul" not in ops or ops.count("QLinearMatMul") >= 1


def _scales(ref: ModelRef) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in graph(ref).initializer
            if i.name.endswith("_scale")}


def test_calibration_methods_all_run_and_differ(mlp_onnx, mlp_context, mlp_data, cache):
    scales = {}
    _, x = mlp_data
    for method in ("minmax", "entropy", "percentile"):
        q = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, calibration=method)
        assert q.lineage[-1].params["calibration"] == method
        scales[method] = _scales(q)
        assert np.isfinite(run(q.path, x)).all()
    names = sorted(scales["minmax"])
    assert names == sorted(scales["entropy"]) == sorted(scales["percentile"])
    for a, b in (("minmax", "entropy"), ("minmax", "percentile"), ("entropy", "percentile")):
        assert any(not np.allclose(scales[a][n], scales[b][n]) for n in names), (a, b)


def test_per_channel_gives_per_channel_scales(mlp_onnx, mlp_context, cache):
    flat = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, per_channel=False)
    per = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, per_channel=True)
    assert all(v.size == 1 for v in _scales(flat).values())
    sizes = sorted(v.size for n, v in _scales(per).items() if n.endswith("weight_scale"))
    assert sizes == [4, 32, 32]  # one scale per output unit of each Linear


@pytest.mark.parametrize("kind", ["ort_int8_static", "ort_int8_dynamic"])
def test_excluded_nodes_stay_float(mlp_onnx, mlp_context, mlp_data, cache, kind):
    first, last = resolve_exclude(mlp_onnx.path, "first_last", None)
    q = apply(kind, mlp_onnx, mlp_context, cache_dir=cache, exclude_nodes="first_last")
    g = graph(q)
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    for name in (first, last):
        # kept in float: the Gemm (the dynamic quantizer rewrites Gemm as MatMul + Add first)
        node = nodes[name] if kind == "ort_int8_static" else nodes[f"{name}_MatMul"]
        assert node.op_type in ("Gemm", "MatMul")
        assert inits[node.input[1]].data_type == TensorProto.FLOAT
    int_weights = [i for i in g.initializer if i.data_type in INT_TYPES and len(i.dims) == 2]
    assert len(int_weights) == 1  # only the middle layer is int8
    # by name, too
    q2 = apply(kind, mlp_onnx, mlp_context, cache_dir=cache, exclude_nodes=first)
    int_weights = [i for i in graph(q2).initializer if i.data_type in INT_TYPES and len(i.dims) == 2]
    assert len(int_weights) == 2
    with pytest.raises(TrialFailed, match="no node named"):
        apply(kind, mlp_onnx, mlp_context, cache_dir=cache, exclude_nodes="no_such_node")
    _, x = mlp_data
    assert run(q.path, x).shape == (64, 4)


def test_dynamic_int8_weight_types_and_reduce_range(mlp_onnx, mlp_data, cache):
    _, x = mlp_data
    ref = run(mlp_onnx.path, x)
    for wt, tp in (("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8)):
        q = apply("ort_int8_dynamic", mlp_onnx, cache_dir=cache, weight_type=wt,
                  reduce_range=NO_VNNI)
        g = graph(q)
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in g.node}
        w = [i for i in g.initializer if len(i.dims) == 2]
        assert w and all(i.data_type == tp for i in w)
        assert_close_not_equal(run(q.path, x), ref, 0.1)
    rr = apply("ort_int8_dynamic", mlp_onnx, cache_dir=cache, reduce_range=True)
    w = [onnx.numpy_helper.to_array(i) for i in graph(rr).initializer if len(i.dims) == 2]
    assert max(int(np.abs(a.astype(np.int32)).max()) for a in w) <= 64  # 7-bit weights


def test_op_types_limit_what_is_quantized(tokens_onnx, cache):
    every = [n.op_type for n in graph(apply("ort_int8_dynamic", tokens_onnx, cache_dir=cache)).node]
    only_gemm = apply("ort_int8_dynamic", tokens_onnx, cache_dir=cache, op_types="Gemm")
    ops = [n.op_type for n in graph(only_gemm).node]
    # MatMul weights stay float when only Gemm is listed
    assert ops.count("MatMulInteger") < every.count("MatMulInteger")
    assert ops.count("MatMul") > every.count("MatMul")


def test_fp16_onnx_has_float16_initializers(mlp_onnx, mlp_data, cache):
    h = apply("ort_fp16", mlp_onnx, cache_dir=cache)
    g = graph(h)
    weights = [i for i in g.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    _, x = mlp_data
    assert_close_not_equal(run(h.path, x), run(mlp_onnx.path, x), 0.01)


@pytest.mark.parametrize("mode", ["int8_dynamic", "int8_weight_only"])
def test_torch_int8_weights_are_quantized_tensors(mlp, mlp_data, mode):
    from torchao.utils import TorchAOBaseTensor

    q = apply("quantize_torch", ModelRef.torch(mlp, "mlp-seed0"), mode=mode)
    assert all(isinstance(q.module[i].weight, TorchAOBaseTensor) for i in (0, 2, 4))
    assert not isinstance(mlp[0].weight, TorchAOBaseTensor)  # the input is untouched
    _, x = mlp_data
    with torch.inference_mode():
        out, ref = q.module(torch.from_numpy(x)).numpy(), mlp(torch.from_numpy(x)).numpy()
    assert_close_not_equal(out, ref, 0.1)


@pytest.mark.parametrize(("mode", "dtype", "tol"),
                         [("fp16", torch.float16, 0.01), ("bf16", torch.bfloat16, 0.05)])
def test_torch_half_precisions(mlp, mlp_data, mode, dtype, tol):
    q = apply("quantize_torch", ModelRef.torch(mlp, "mlp-seed0"), mode=mode)
    assert all(p.dtype == dtype for p in q.module.parameters())
    assert all(p.dtype == torch.float32 for p in mlp.parameters())
    _, x = mlp_data
    with torch.inference_mode():
        out = q.module(torch.from_numpy(x).to(dtype)).float().numpy()
        ref = mlp(torch.from_numpy(x)).numpy()
    assert_close_not_equal(out, ref, tol)


def test_cache_hit_and_lineage(mlp_onnx, mlp_context, cache):
    params = {"calibration": "percentile", "per_channel": True, "activation_type": "int8"}
    first = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, **params)
    again = apply("ort_int8_static", mlp_onnx, mlp_context, cache_dir=cache, **params)
    step = again.lineage[-1]
    assert step.cached and step.seconds == 0.0
    assert not first.lineage[-1].cached or first.lineage[-1].seconds == 0.0
    assert again.path == first.path and again.model_id == first.model_id
    assert step.parent == mlp_onnx.model_id and step.transform == "ort_int8_static"
    assert step.params["per_channel"] is True and step.params["quant_format"] == "qdq"
    assert [s.transform for s in again.lineage] == ["export_onnx", "ort_int8_static"]
    # other data -> another cache entry
    other = Context(calibration=(mlp_context.calibration[0][:32],), digest="other")
    assert apply("ort_int8_static", mlp_onnx, other, cache_dir=cache, **params).model_id \
        != first.model_id
    # torch results that do not pickle (torchao) are still a hit within the process
    ref = ModelRef.torch(mlp_onnx and torch.nn.Linear(4, 4), "lin")
    apply("quantize_torch", ref, cache_dir=cache, mode="int8_dynamic")
    assert apply("quantize_torch", ref, cache_dir=cache, mode="int8_dynamic").lineage[-1].cached
    # torch results are never written to disk (they could only be read back by unpickling):
    # a "new process" (memo cleared) rebuilds them
    apply("quantize_torch", ref, cache_dir=cache, mode="fp16")
    assert apply("quantize_torch", ref, cache_dir=cache, mode="fp16").lineage[-1].cached
    base._MEMO.clear()
    rebuilt = apply("quantize_torch", ref, cache_dir=cache, mode="fp16")
    assert not rebuilt.lineage[-1].cached and rebuilt.module.weight.dtype == torch.float16
    assert not list(Path(cache).glob("*.pt"))


def test_parameters_are_declared_and_checked():
    cls = get_transform("ort_int8_static")
    assert set(cls.params) >= {"quant_format", "calibration", "per_channel", "reduce_range",
                               "weight_type", "activation_type", "op_types", "exclude_nodes"}
    defaults = cls.search_defaults()
    assert defaults["calibration"]["choices"] == ["minmax", "entropy", "percentile"]
    from autotune.core.space import parse_space

    space = parse_space({"parameters": defaults})
    assert "per_channel" in space
    with pytest.raises(ValueError, match="has no parameter 'per_chanel'"):
        cls.resolve_params({"per_chanel": True})
    with pytest.raises(ValueError, match="'calibration' parameter of ort_int8_static"):
        cls.resolve_params({"calibration": "kl"})


def test_subclasses_register_by_name():
    class Identity(base.Transform):
        name = "test_identity"
        takes = gives = "torch"

        def transform(self, model, params, context, out):
            return model.module, {}

    try:
        assert get_transform("test_identity") is Identity
        out = base.apply("test_identity", ModelRef.torch(torch.nn.Identity(), "id"))
        assert out.lineage[-1].transform == "test_identity" and out.model_id != "id"
    finally:
        base.TRANSFORMS.pop("test_identity")
    with pytest.raises(TrialFailed, match="takes a onnx model"):
        apply("ort_fp16", ModelRef.torch(torch.nn.Identity(), "id"))


def test_entropy_threshold_matches_onnx_runtimes_search() -> None:
    """Our array version of the KL threshold search picks what ONNX Runtime's loop picks."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from autotune.measure.transforms.quantize import entropy_threshold

    rng = np.random.default_rng(0)
    samples = {"normal": rng.normal(0, 1, 20000),
               "heavy tail": rng.standard_t(2, 20000),
               "skewed, sparse": np.concatenate([rng.exponential(0.3, 3000), [40.0, -2.0]])}
    ort_search = HistogramCollector("entropy", symmetric=False, num_bins=2048,
                                    num_quantized_bins=128, percentile=99.99,
                                    scenario="same").get_entropy_threshold
    for name, x in samples.items():
        x = x.astype(np.float32)
        top = float(np.abs(x).max())
        hist, edges = np.histogram(x, 2048, range=(-top, top))
        histogram = (hist, edges.astype(np.float32), np.float32(x.min()), np.float32(x.max()))
        ours = entropy_threshold(histogram, 128)
        theirs = ort_search(histogram, 128)
        assert [float(v) for v in ours] == [float(v) for v in theirs], name
        assert float(ours[1]) < top  # a real clipping threshold, not the whole range
