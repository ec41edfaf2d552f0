"""Quantization transforms for torch (torchao) and ONNX Runtime."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from autotune.errors import DependencyError


def torch_int8_dynamic(model: nn.Module) -> nn.Module:
    """int8 weights and dynamically quantized int8 activations for Linear layers (torchao).

    ``torch.ao.quantization`` is deprecated; torchao's ``quantize_`` is the current path.
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise DependencyError("int8 quantization on the torch runtime needs torchao: "
                              "pip install torchao") from exc
    out = copy.deepcopy(model)
    quantize_(out, Int8DynamicActivationInt8WeightConfig())
    return out


def ort_int8_dynamic(src: Path, dst: Path, *, per_channel: bool = False,
                     reduce_range: bool = False) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized at run time."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's value_info describes initializers in their pre-quantization layout; the
    # quantizer rewrites them (e.g. transposed Gemm weights) and shape inference then clashes.
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    staged = dst.with_suffix(".stage.onnx")
    onnx.save(model, str(staged))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" is advice, not a problem
    try:
        quantize_dynamic(
            str(staged), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
            reduce_range=reduce_range,
        )
    finally:
        root.setLevel(level)
        staged.unlink(missing_ok=True)
    return dst
