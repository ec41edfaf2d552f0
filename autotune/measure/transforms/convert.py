"""torch → ONNX conversion with dynamic batch (and sequence) axes.

Inputs carry the names of the model's ``forward`` parameters and outputs the keys of the mapping
it returns (``output`` for a single tensor, ``output_<i>`` for a sequence).

Axis 0 of every input is the dynamic batch.  Integer inputs of rank ≥ 2 (token ids, masks) get a
dynamic sequence axis 1 as well.  Other axes can be declared per input (``model.dynamic_axes`` in
the job: ``{input_0: {1: seq}}``, inputs named ``input_<i>`` or by index); the same name on two
inputs means the same size.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autotune.measure.transforms.base import Categorical, Context, ModelRef, TParam, Transform


def input_names(module: Any, n: int) -> list[str]:
    """The first ``n`` positional parameter names of ``module.forward`` (``input_<i>`` where the
    signature does not say, e.g. ``*args``): the names a bundle's inputs carry."""
    import inspect

    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"input_{i}" for i in range(len(names), n)]


_signature_names = input_names  # (export_onnx has a parameter of that name)


def flatten_outputs(out: Any) -> tuple[list[str], list[Any]]:
    """A forward's output as (names, tensors): a tensor is ``output``, a mapping its keys, a
    sequence ``output_<i>``."""
    if isinstance(out, torch.Tensor):
        return ["output"], [out]
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return [k for k, _ in items], [v for _, v in items]
    if isinstance(out, list | tuple):
        pairs = [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        return [k for k, _ in pairs], [v for _, v in pairs]
    raise TypeError(f"the model's forward returned {type(out).__name__}; expected a tensor, a "
                    "mapping of tensors or a sequence of tensors")


def default_axes(example_inputs: Sequence[Any],
                 declared: Mapping[Any, Mapping[Any, str]] | None = None,
                 names: Sequence[str] = ()) -> list[dict[int, str]]:
    """The dynamic axes of each input: batch, sequence for integer token inputs, declared ones
    (keyed by the input's index, ``input_<i>`` or its name)."""
    axes: list[dict[int, str]] = []
    for i, x in enumerate(example_inputs):
        a: dict[int, str] = {0: "batch"}
        is_int = not torch.is_floating_point(x) and not torch.is_complex(x) and x.dtype != torch.bool
        if x.dim() >= 2 and is_int:
            a[1] = "sequence"
        for key in (i, str(i), f"input_{i}", *names[i:i + 1]):
            for ax, name in (declared or {}).get(key, {}).items():  # type: ignore[call-overload]
                a[int(ax)] = str(name)
        axes.append(a)
    return axes


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path,
                *, opset: int | None = None,
                dynamic_axes: Mapping[Any, Mapping[Any, str]] | None = None,
                input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None, exporter: str = "dynamo") -> Path:
    """Export with torch's (dynamo) exporter; see the module docstring for the dynamic axes.
    The graph's inputs are ``input_names`` (default: the names of ``forward``'s parameters), its
    outputs ``output_names`` (default: ``output``, the keys of a mapping, ``output_<i>``).
    ``exporter="torchscript"``: torch's TorchScript-based exporter, whose graphs ONNX Runtime's
    transformer fusion (:mod:`autotune.measure.transforms.fusion`) recognises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(input_names) if input_names else _signature_names(model, len(example_inputs))
    if output_names:
        outputs = list(output_names)
    else:
        with torch.inference_mode():
            outputs = flatten_outputs(model.eval()(*example_inputs))[0]
    axes = default_axes(example_inputs, dynamic_axes, names)
    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(
        {ax: dims.setdefault(name, torch.export.Dim(name, min=1, max=65536))
         for ax, name in a.items()}
        for a in axes
    )
    kwargs = {"opset_version": opset} if opset else {}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model.eval(), tuple(example_inputs), str(path), input_names=names,
                output_names=outputs, dynamo=False,
                dynamic_axes={n: dict(a) for n, a in zip(names, axes, strict=True)},
                opset_version=opset or 17,
            )
        else:
            torch.onnx.export(
                model.eval(), tuple(example_inputs), str(path), input_names=names,
                output_names=outputs, dynamic_shapes=dynamic_shapes, external_data=False,
                **kwargs,
            )
    return path


class ExportOnnx(Transform):
    """torch module → ONNX file; reads the example inputs (and declared axes) of the context."""

    name = "export_onnx"
    takes = "torch"
    gives = "onnx"
    reads_data = True
    params: ClassVar[dict[str, TParam]] = {
        "opset": TParam(None, Categorical([None, 18, 20]), "ONNX opset (None: exporter's)",
                        lambda v: v is None or (isinstance(v, int) and v >= 7),
                        "None or an opset number >= 7"),
        "exporter": TParam("dynamo", Categorical(["dynamo", "torchscript"]),
                           "torch.export-based exporter, or the TorchScript one (the graphs ONNX "
                           "Runtime's transformer fusion recognises)",
                           lambda v: v in ("dynamo", "torchscript"), "'dynamo' or 'torchscript'"),
    }

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        assert out is not None
        if not context.example_inputs:
            raise ValueError("exporting to ONNX needs example inputs in the context")
        example = [torch.from_numpy(x) for x in context.example_inputs]
        export_onnx(model.module, example, out, opset=params["opset"],
                    dynamic_axes=context.dynamic_axes, input_names=context.input_names,
                    output_names=context.output_names, exporter=params["exporter"])
        return out, {"dynamic_axes": [dict(a) for a in default_axes(
            example, context.dynamic_axes, context.input_names or ())]}
