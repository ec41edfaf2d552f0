"""How many floating-point operations one forward pass costs: the numerator of ``achieved_gflops``.

Counted once per (model, batch size) on the *unmodified* model, so every configuration of a job is
charged the same work for the same batch: a quantized or pruned variant that answers faster gets a
higher achieved rate ("dense-equivalent" FLOP/s), which is what makes the figures comparable.  One
multiply-add counts as 2 FLOPs.

* torch models: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward (matmuls,
  convolutions, attention).  The forward runs with autograd enabled, which keeps torch off fused
  inference fast paths (e.g. ``nn.TransformerEncoder``'s) that the counter cannot see into.
* ONNX models: MatMul / Gemm / Conv / ConvTranspose nodes, from the graph's shapes after fixing the
  first (batch) axis of every input and running ONNX shape inference.  Other operators are
  ignored: they are memory-bound and small next to these.

Results are remembered in ``<cache_dir>/flops.json`` keyed by the model's content hash and batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_MEMO: dict[str, float] = {}
_FILE = "flops.json"


def torch_forward_flops(module: Any, inputs: Sequence[np.ndarray]) -> float:
    """FLOPs of ``module(*inputs)`` counted by torch's FlopCounterMode (one multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        module(*tensors)
    return float(counter.get_total_flops())


def _dims(shape: Any) -> list[int] | None:
    out = []
    for d in shape.dim:
        if not d.HasField("dim_value"):
            return None
        out.append(int(d.dim_value))
    return out


def onnx_forward_flops(path: str | os.PathLike[str], batch_size: int) -> float:
    """FLOPs of one run of the ONNX model at ``batch_size`` (MatMul, Gemm, Conv, ConvTranspose)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch_size
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int] | None] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = _dims(vi.type.tensor_type.shape)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    total = 0.0
    for node in model.graph.node:
        op = node.op_type
        ins = [shapes.get(n) for n in node.input]
        out = shapes.get(node.output[0]) if node.output else None
        if op in ("MatMul", "MatMulInteger") and ins and ins[0] and out:
            k = ins[0][-1]
            total += 2.0 * math.prod(out) * k
        elif op == "Gemm" and ins and ins[0] and out:
            attrs = {a.name: a for a in node.attribute}
            trans_a = attrs["transA"].i if "transA" in attrs else 0
            k = ins[0][0] if trans_a else ins[0][-1]
            total += 2.0 * math.prod(out) * k
        elif op in ("Conv", "ConvInteger", "ConvTranspose") and len(ins) > 1 and ins[1] and out \
                and ins[0]:
            w = ins[1]
            if op == "ConvTranspose":  # weight (C_in, C_out/g, k...): every input pixel scatters
                total += 2.0 * math.prod(ins[0]) * math.prod(w[1:])
            else:  # weight (C_out, C_in/g, k...)
                total += 2.0 * math.prod(out) * math.prod(w[1:])
    return total


def forward_flops(workload: Any, batch_size: int, cache_dir: Path | None = None) -> float:
    """FLOPs of one forward of the workload's unmodified model at ``batch_size`` (cached)."""
    key = f"{workload.model_id}|batch={int(batch_size)}"
    if key in _MEMO:
        return _MEMO[key]
    path = Path(cache_dir) / _FILE if cache_dir is not None else None
    if path is not None:
        with contextlib.suppress(Exception):
            value = json.loads(path.read_text())[key]
            if isinstance(value, int | float) and value >= 0:
                _MEMO[key] = float(value)
                return float(value)
    if workload.module is not None:
        value = torch_forward_flops(workload.module, workload.batch(int(batch_size)))
    else:
        value = onnx_forward_flops(workload.onnx_path, int(batch_size))
    _MEMO[key] = value
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            data: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                data = json.loads(path.read_text())
            data[key] = value
            fd, tmp = tempfile.mkstemp(prefix=".flops.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    return value
