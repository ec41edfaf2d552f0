"""A runtime and a metric from outside autotune.

``onnx-reference`` runs ONNX files with ``onnx.reference.ReferenceEvaluator`` (onnx's pure-Python
reference implementation): slow, but a real, different runtime.  ``top2_accuracy`` is a quality
metric: the share of items whose target is among the two highest outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from autotune.measure.runtimes.base import (
    BuildContext,
    Built,
    BundleFiles,
    IOSpec,
    Parameter,
    Runner,
    Runtime,
)


class ReferenceRunner(Runner):
    def __init__(self, model: Any) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        self._ev = ReferenceEvaluator(proto)
        init = {i.name for i in proto.graph.initializer}
        self.inputs = tuple(IOSpec(i.name, "float32", tuple(d.dim_value or None for d in
                                                            i.type.tensor_type.shape.dim))
                            for i in proto.graph.input if i.name not in init)
        self.outputs = tuple(IOSpec(o.name, "float32", ()) for o in proto.graph.output)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._ev.run(None, dict(feed))
        return {s.name: np.asarray(o) for s, o in zip(self.outputs, outs, strict=True)}


class ReferenceRuntime(Runtime):
    name = "onnx-reference"
    takes = "onnx"
    description = "onnx.reference.ReferenceEvaluator (pure Python)"

    def parameters(self) -> list[Parameter]:
        return [Parameter("quantization", "categorical", "fp32", "fp32 only", ("fp32",),
                          owner=self.name)]

    def build(self, model: Any, config: Mapping[str, Any], ctx: BuildContext) -> Built:
        return Built(ReferenceRunner(str(model.path)), model.path, model, {})

    def write_bundle(self, built: Built, config: Mapping[str, Any]) -> BundleFiles:
        settings = {"batch_size": config.get("batch_size", 1),
                    "quantization": config.get("quantization", "fp32")}
        return BundleFiles({"model.onnx": built.model_path.read_bytes()}, "model.onnx", settings)

    def load_bundle(self, files: Callable[[str], bytes], settings: Mapping[str, Any],
                    io: tuple[Sequence[IOSpec], Sequence[IOSpec]]) -> Runner:
        return ReferenceRunner(files(str(settings.get("model", "model.onnx"))))


def top2_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    top2 = np.argsort(outputs, axis=-1)[:, -2:]
    return float((top2 == np.asarray(targets)[:, None]).any(axis=1).mean())
