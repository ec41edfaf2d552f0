"""Quantization transforms for torch (torchao, dtype casts) and ONNX Runtime.

torch (``quantize_torch``):
  ``int8_dynamic`` (int8 weights, activations quantized per call; torchao
  ``Int8DynamicActivationInt8WeightConfig``), ``int8_weight_only`` (torchao
  ``Int8WeightOnlyConfig``), ``fp16`` / ``bf16`` (the module's floating-point tensors cast).
  ``torch.ao.quantization`` is deprecated; torchao's ``quantize_`` is the current path.

ONNX Runtime:
  ``ort_int8_dynamic`` — weights int8 offline, activations quantized at run time;
  ``ort_int8_static`` — weights and activations quantized offline with scales calibrated on the
  job's calibration split (``minmax`` | ``entropy`` | ``percentile``), as QDQ pairs or QOperator
  (``QLinear*``) nodes;
  ``ort_fp16`` — float initializers and compute in float16, float32 inputs and outputs kept.
  Both int8 transforms take: ``per_channel``, ``reduce_range`` (7-bit weights, for CPUs without
  VNNI), ``weight_type`` (int8 | uint8), ``op_types`` ("all" or a comma list such as
  "MatMul,Gemm") and ``exclude_nodes`` (mixed precision: "none", "first", "last", "first_last"
  — the first/last quantizable node of the graph —, "sensitive<K>" — the K nodes a sensitivity
  pass over the layers finds most hurt by int8 on the calibration split (:func:`sensitive_nodes`)
  — or a comma list of node names).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from autotune.errors import DependencyError, TrialFailed
from autotune.measure.transforms.base import Categorical, Context, ModelRef, TParam, Transform, one_of

# ------------------------------------------------------------------------ torch
TORCH_MODES = ("int8_dynamic", "int8_weight_only", "fp16", "bf16")


def _torchao() -> Any:
    try:
        from torchao import quantization
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise DependencyError("int8 quantization on the torch runtime needs torchao: "
                              "pip install torchao") from exc
    return quantization


def torch_quantize(model: nn.Module, mode: str) -> nn.Module:
    """A quantized (or cast) copy of ``model``; see the module docstring for the modes."""
    import torch

    if mode not in TORCH_MODES:
        raise ValueError(f"The 'mode' parameter of torch_quantize must be one of "
                         f"{', '.join(TORCH_MODES)}. Got {mode!r} instead.")
    out = copy.deepcopy(model)
    if mode in ("fp16", "bf16"):
        return out.to({"fp16": torch.float16, "bf16": torch.bfloat16}[mode])
    q = _torchao()
    config = (q.Int8DynamicActivationInt8WeightConfig() if mode == "int8_dynamic"
              else q.Int8WeightOnlyConfig())
    q.quantize_(out, config)
    return out


class TorchQuantize(Transform):
    name = "quantize_torch"
    takes = gives = "torch"
    params: ClassVar[dict[str, TParam]] = {"mode": TParam("int8_dynamic", Categorical(list(TORCH_MODES)),
                             "int8 (dynamic or weight-only, torchao) or a float16/bfloat16 cast",
                             one_of(*TORCH_MODES), f"one of {', '.join(TORCH_MODES)}")}

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        return torch_quantize(model.module, params["mode"]), {"precision": params["mode"]}


# ------------------------------------------------------------------------ ONNX Runtime
@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" is advice, not a problem
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            yield
    finally:
        root.setLevel(level)


def _staged(src: Path, dst: Path) -> Path:
    """A copy of ``src`` without value_info: the exporter's value_info describes initializers in
    their pre-quantization layout; the quantizer rewrites them (e.g. transposed Gemm weights) and
    shape inference then clashes."""
    import onnx

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    staged = dst.with_suffix(".stage.onnx")
    onnx.save(model, str(staged))
    return staged


DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Conv", "Attention")


def _op_types(spec: str) -> list[str] | None:
    if spec in ("", "all"):
        return None
    return [s.strip() for s in spec.split(",") if s.strip()]


SENSITIVE = re.compile(r"sensitive(\d+)")


def _weighted(model: Any, kinds: list[str]) -> list[tuple[Any, Any]]:
    """(node, its 2-D constant weight as a float array oriented [in, out]) for each quantizable
    node taking an activation first and a constant weight second (MatMul, Gemm, the fused
    Attention's packed QKV weight)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in kinds or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype("float32")
        if w.ndim != 2:
            continue
        if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
            w = w.T
        out.append((n, w))
    return out


def sensitive_nodes(path: Path, calibration: tuple[Any, ...], k: int, *,
                    op_types: list[str] | None = None, per_channel: bool = False,
                    samples: int = 8) -> list[tuple[str, float]]:
    """The sensitivity pass: the ``k`` quantizable nodes whose output int8 changes most.

    One float run over (at most ``samples`` of) the calibration inputs records each node's input
    activation; each node's product is then recomputed with its activation quantized to uint8
    (asymmetric, per tensor, as ONNX Runtime's dynamic int8 does per call) and its weight to int8
    (symmetric, per tensor or per output channel), alone, and compared with the float product
    (relative Frobenius error).  Layers whose activations have outlier channels (as pretrained
    encoders' do) stand out; keeping them float is mixed precision chosen by measurement rather
    than by trial and error.  Returns ``[(node name, relative error)]``, most sensitive first."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = _weighted(model, op_types or list(DEFAULT_OP_TYPES))
    if not nodes or k <= 0:
        return []
    del model.graph.value_info[:]
    have = {o.name for o in model.graph.output}
    acts = list(dict.fromkeys(n.input[0] for n, _ in nodes))
    for a in acts:
        if a not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                a, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = min(samples, int(calibration[0].shape[0]))
    err = {node.name: [0.0, 0.0] for node, _ in nodes}
    qw = {}
    for node, w in nodes:
        scale = np.abs(w).max(axis=0 if per_channel else None, keepdims=per_channel) / 127.0
        scale = np.where(scale == 0, 1.0, scale)
        qw[node.name] = np.clip(np.round(w / scale), -127, 127) * scale
    for i in range(n):
        got = dict(zip(acts, sess.run(acts, {k_: x[i:i + 1] for k_, x in zip(names, calibration,
                                                                               strict=True)}),
                       strict=True))
        for node, w in nodes:
            x = np.asarray(got[node.input[0]], dtype=np.float32).reshape(-1, w.shape[0])
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            step = (hi - lo) / 255.0 or 1.0
            zero = np.round(-lo / step)
            xq = (np.clip(np.round(x / step) + zero, 0, 255) - zero) * step
            ref = x @ w
            e = err[node.name]
            e[0] += float(np.sum((xq @ qw[node.name] - ref) ** 2))
            e[1] += float(np.sum(ref ** 2))
    ranked = sorted(((name, (a / b) ** 0.5 if b > 0 else 0.0) for name, (a, b) in err.items()),
                    key=lambda t: -t[1])
    return ranked[:k]


def resolve_exclude(path: Path, spec: str, op_types: list[str] | None, *,
                    dynamic: bool = False, calibration: tuple[Any, ...] = (),
                    per_channel: bool = False) -> list[str]:
    """Node names for an ``exclude_nodes`` value (tokens first/last/first_last, sensitive<K>,
    or names).

    ``dynamic``: ONNX Runtime's dynamic quantizer first rewrites each Gemm ``g`` as MatMul
    ``g_MatMul`` + Add, so those names are excluded too."""
    import onnx

    if spec in ("", "none"):
        return []
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    kinds = op_types or list(DEFAULT_OP_TYPES)
    cands = [n.name for n in model.graph.node
             if n.op_type in kinds and any(i in inits for i in n.input)]
    sens = SENSITIVE.fullmatch(spec)
    if sens:
        if not calibration:
            raise TrialFailed(f"exclude_nodes '{spec}' needs calibration inputs from the job's "
                              "data (evaluation.calibration_samples)")
        names = [name for name, _ in sensitive_nodes(path, calibration, int(sens.group(1)),
                                                     op_types=op_types, per_channel=per_channel)]
    elif spec in ("first", "last", "first_last"):
        if not cands:
            return []
        names = {"first": cands[:1], "last": cands[-1:], "first_last": [cands[0], cands[-1]]}[spec]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
        all_names = {n.name for n in model.graph.node}
        missing = [n for n in names if n not in all_names]
        if missing:
            raise TrialFailed(f"exclude_nodes: no node named {missing[0]!r} in the model; "
                              f"quantizable nodes: {', '.join(cands)}")
    if dynamic:
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
        names = names + [f"{n}_MatMul" for n in names if n in gemms]
    return names


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


#: fused contrib operators (Attention, SkipLayerNormalization, ...) defeat ONNX shape
#: inference; their outputs are float
_EXTRA = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT


def ort_int8_dynamic(src: Path, dst: Path, *, per_channel: bool = False,
                     reduce_range: bool = False, weight_type: str = "int8",
                     op_types: str = "all", exclude_nodes: str = "none",
                     calibration: tuple[Any, ...] = ()) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import quantize_dynamic

    staged = _staged(src, dst)
    ops = _op_types(op_types)
    try:
        with quiet_logging():
            quantize_dynamic(
                str(staged), str(dst), weight_type=_qtype(weight_type), per_channel=per_channel,
                reduce_range=reduce_range, op_types_to_quantize=ops,
                nodes_to_exclude=resolve_exclude(staged, exclude_nodes, ops, dynamic=True,
                                                 calibration=calibration,
                                                 per_channel=per_channel),
                extra_options=_EXTRA,
            )
    finally:
        staged.unlink(missing_ok=True)
    return dst


class _Reader:
    """Feeds the calibration split to ONNX Runtime's calibrator one sample at a time, every named
    input of the model from its own array.

    One sample per call keeps every collected activation the same shape: the histogram
    calibrators (entropy, percentile) stack what they collect, and a smaller last batch made
    that fail ("setting an array element with a sequence ... inhomogeneous shape")."""

    def __init__(self, names: list[str], inputs: tuple[Any, ...]) -> None:
        import numpy as np

        if len(names) != len(inputs):
            raise TrialFailed(f"the model has {len(names)} inputs ({', '.join(names)}) but the "
                              f"calibration data has {len(inputs)} arrays")
        arrays = [np.ascontiguousarray(x) for x in inputs]
        n = int(arrays[0].shape[0])
        if any(int(x.shape[0]) != n for x in arrays):
            raise TrialFailed("the calibration arrays differ in their number of samples: "
                              + ", ".join(f"{k} {x.shape[0]}" for k, x in zip(names, arrays,
                                                                              strict=True)))
        self._feeds = [{k: x[i:i + 1] for k, x in zip(names, arrays, strict=True)}
                       for i in range(n)]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def entropy_threshold(histogram: tuple[Any, ...], num_quantized_bins: int) -> tuple[Any, Any]:
    """The KL-divergence (entropy) calibration threshold of one tensor's histogram: what ONNX
    Runtime's ``HistogramCollector.get_entropy_threshold`` returns, computed with array operations.

    ONNX Runtime's version merges and expands the bins in Python loops for each of the ~1,000
    candidate thresholds of a 2,048-bin histogram (~0.7 s per tensor, most of a minute for a small
    BERT); this one takes each candidate's merged bins with one reshape.  Same arithmetic,
    including its quirks (the expanded distribution is an int64 array, so merged counts are
    truncated, and it fills zero bins of the reference as well), so it picks the same threshold;
    ``tests/transforms/test_quantize.py`` compares the two on several histograms."""
    import numpy as np
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges, min_value, max_value = histogram[0], histogram[1], histogram[2], histogram[3]
    n = hist.size
    zero, half = n // 2, num_quantized_bins // 2
    dtype = edges.dtype
    cum = np.concatenate([[0], np.cumsum(hist)])
    total = cum[-1]
    best, best_div = None, None
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cum[start]
        p[-1] += total - cum[end]
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(1).astype(np.int64)
        quantized[-1] += sliced[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(1)
        filled = np.where(norm != 0, quantized // np.maximum(norm, 1), 0)  # int64 truncation
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(filled, merged)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        div = np.array(np.inf if ps is None or qs is None else entropy(ps, qs), dtype=dtype)
        if best_div is None or div < best_div:  # the first minimum, as np.argmin takes it
            best, best_div = (edges[start], edges[end]), div
    assert best is not None
    lo, hi = best
    if lo < min_value:
        lo = min_value
    if hi > max_value:
        hi = max_value
    return lo, hi


#: an activation whose calibrated range exceeds this in magnitude cannot be represented by 8 bits
#: (the step would exceed ~40): attention masks filled with the float minimum are the usual
#: case.  Nodes reading or writing such a tensor are kept in float.
OUTLIER_RANGE = 1e4


def outlier_tensors(ranges: Mapping[str, Any], limit: float = OUTLIER_RANGE) -> set[str]:
    """Tensors whose calibrated range exceeds ``limit`` in magnitude (or is not finite)."""
    import numpy as np

    bad = set()
    for name, td in ranges.items():
        lo, hi = td.range_value
        top = max(float(np.max(np.abs(lo))), float(np.max(np.abs(hi))))
        if not np.isfinite(top) or top > limit:
            bad.add(name)
    return bad


def nodes_touching(path: Path, tensors: set[str]) -> list[str]:
    """Names of the nodes reading or writing any of ``tensors``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node
            if n.name and (tensors.intersection(n.input) or tensors.intersection(n.output))]


CALIBRATION = ("minmax", "entropy", "percentile")


def ort_int8_static(src: Path, dst: Path, calibration_inputs: tuple[Any, ...], *,
                    quant_format: str = "qdq", calibration: str = "minmax",
                    per_channel: bool = False, reduce_range: bool = False,
                    weight_type: str = "int8", activation_type: str = "uint8",
                    op_types: str = "all", exclude_nodes: str = "none") -> tuple[Path, int]:
    """ONNX Runtime static quantization with scales calibrated on ``calibration_inputs`` (one
    array per named model input, in the model's input order); returns the path and how many
    nodes were kept in float because a tensor they touch has an outlier range."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if not calibration_inputs:
        raise TrialFailed("static quantization needs calibration inputs")
    staged = _staged(src, dst)
    ops = _op_types(op_types)
    try:
        sess = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        del sess
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[calibration]
        fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[quant_format]
        # Calibrate here rather than inside quantize_static, which cannot pass the histogram
        # size: ONNX Runtime's entropy default (128 bins = 128 quantized bins) leaves the KL
        # search one candidate, i.e. exactly minmax.  2048 bins is TensorRT's choice.
        options: dict[str, Any] = {"symmetric": False}
        if calibration == "entropy":
            options.update(num_bins=2048, num_quantized_bins=128)
        ranges = dst.with_suffix(".ranges.json")
        with quiet_logging(), tempfile.TemporaryDirectory(prefix="autotune-calib-") as tmpdir:
            reader = _Reader(names, calibration_inputs)
            # a min/max pass finds the tensors 8 bits cannot hold (e.g. an additive attention
            # mask of float minimums): their nodes stay float, and the histogram calibrators,
            # which cannot bin such ranges, skip them
            pre = create_calibrator(
                staged, ops, augmented_model_path=str(Path(tmpdir) / "minmax.onnx"),
                calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": False},
            )
            pre.collect_data(reader)
            tensors = pre.compute_data()
            del pre
            bad = outlier_tensors(tensors)
            if method != CalibrationMethod.MinMax:
                reader.rewind()
                calibrator = create_calibrator(
                    staged, ops, augmented_model_path=str(Path(tmpdir) / "augmented.onnx"),
                    calibrate_method=method, extra_options=options,
                )
                calibrator.tensors_to_calibrate = {t for t in calibrator.tensors_to_calibrate
                                                   if t not in bad}
                calibrator.collect_data(reader)
                if method == CalibrationMethod.Entropy:  # the same thresholds, in seconds
                    calibrator.collector.get_entropy_threshold = entropy_threshold
                tensors = calibrator.compute_data()
                del calibrator
            save_tensors_data(tensors, ranges)
            kept = nodes_touching(staged, bad)
            quantize_static(
                str(staged), str(dst), None, calibration_cache_path=str(ranges),
                quant_format=fmt, op_types_to_quantize=ops, per_channel=per_channel,
                reduce_range=reduce_range, activation_type=_qtype(activation_type),
                weight_type=_qtype(weight_type),
                nodes_to_exclude=sorted({*resolve_exclude(
                    staged, exclude_nodes, ops, calibration=calibration_inputs,
                    per_channel=per_channel), *kept}),
                calibrate_method=method, extra_options=_EXTRA,
            )
    finally:
        staged.unlink(missing_ok=True)
        dst.with_suffix(".ranges.json").unlink(missing_ok=True)
    return dst, len(kept)


def ort_float16(src: Path, dst: Path) -> Path:
    """float16 initializers and compute; float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    with quiet_logging():
        half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(dst))
    return dst


_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_COMMON = {
    "per_channel": TParam(False, Categorical([False, True]), "one scale per output channel",
                          *_BOOL),
    "reduce_range": TParam(False, Categorical([False, True]),
                           "7-bit weights (avoids overflow on CPUs without VNNI)", *_BOOL),
    "weight_type": TParam("int8", Categorical(["int8", "uint8"]), "weight integer type",
                          one_of("int8", "uint8"), "'int8' or 'uint8'"),
    "op_types": TParam("all", Categorical(["all", "MatMul,Gemm"]), "op types to quantize",
                       lambda v: isinstance(v, str), "'all' or a comma-separated op list"),
    "exclude_nodes": TParam("none", Categorical(["none", "first", "last", "first_last"]),
                            "nodes left in float (mixed precision)",
                            lambda v: isinstance(v, str),
                            "none|first|last|first_last|sensitive<K> or comma-separated node "
                            "names"),
}


class OrtInt8Dynamic(Transform):
    name = "ort_int8_dynamic"
    takes = gives = "onnx"
    reads_data = True  # exclude_nodes: sensitive<K> runs the sensitivity pass on them
    params: ClassVar[dict[str, TParam]] = dict(_COMMON)

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        assert out is not None
        return ort_int8_dynamic(model.path, out, calibration=tuple(context.calibration or ()),
                                **params), {"precision": "int8_dynamic"}


class OrtInt8Static(Transform):
    name = "ort_int8_static"
    takes = gives = "onnx"
    reads_data = True
    params: ClassVar[dict[str, TParam]] = {
        "quant_format": TParam("qdq", Categorical(["qdq", "qoperator"]),
                               "QuantizeLinear/DequantizeLinear pairs or QLinear* operators",
                               one_of("qdq", "qoperator"), "'qdq' or 'qoperator'"),
        "calibration": TParam("minmax", Categorical(list(CALIBRATION)),
                              "how activation ranges are calibrated", one_of(*CALIBRATION),
                              "minmax, entropy or percentile"),
        "activation_type": TParam("uint8", Categorical(["uint8", "int8"]),
                                  "activation integer type", one_of("int8", "uint8"),
                                  "'int8' or 'uint8'"),
        **_COMMON,
    }

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        assert out is not None
        if not context.calibration:
            raise TrialFailed("int8_static needs calibration inputs from the job's data")
        path, kept = ort_int8_static(model.path, out, context.calibration, **params)
        return path, {"precision": "int8_static", "kept_float_outliers": kept}


class OrtFloat16(Transform):
    name = "ort_fp16"
    takes = gives = "onnx"

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        assert out is not None
        return ort_float16(model.path, out), {"precision": "fp16"}
