"""torch → ONNX conversion with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def export_onnx(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: Path,
                *, opset: int | None = None) -> Path:
    """Export with torch's (dynamo) exporter; the first axis of every input is dynamic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"input_{i}" for i in range(len(example_inputs))]
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    kwargs = {"opset_version": opset} if opset else {}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), tuple(example_inputs), str(path), input_names=names,
            output_names=["output"], dynamic_shapes=dynamic_shapes, external_data=False, **kwargs,
        )
    return path
