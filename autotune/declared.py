"""The parameters a model job's search space may use: one function, :func:`declared_parameters`.

The spec loader checks every parameter of a model job's space (presets, overrides and inline
spaces, and the values named in ``when:``/``invalid:`` rules) against this vocabulary, so that
``runtime: tensorflow`` or ``quantization: int4`` is refused when the job is loaded instead of
failing every trial.

Today the vocabulary is derived from what the harness and the transforms declare: the harness's
configuration keys (:data:`autotune.harness.evaluate.HARNESS_PARAMS`), the categorical values its
code accepts (``QUANTIZATIONS``, ONNX Runtime's graph levels, execution modes and providers) and the
transforms' :class:`~autotune.transforms.base.TParam` declarations for the keys the harness passes
on to them.  It is the one place to change when the runtimes declare their own parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autotune.space import DeclaredParam


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@functools.cache
def declared_parameters() -> Mapping[str, DeclaredParam]:
    """Every parameter a model job's search space may name, with what it accepts."""
    # heavy (the transforms import torch), so imported here and only once per process
    from autotune.harness.evaluate import (
        _ORT_QUANT_KEYS,
        _ORT_STATIC_KEYS,
        _PROVIDERS,
        HARNESS_PARAMS,
        QUANTIZATIONS,
    )
    from autotune.harness.ortsession import EXECUTION_MODES, GRAPH_LEVELS
    from autotune.transforms import convert, prune, quantize  # noqa: F401 - they register
    from autotune.transforms.base import TRANSFORMS

    closed: dict[str, tuple[Any, ...]] = {
        # the values the harness's code branches on (Evaluator._build, ort_providers)
        "runtime": ("torch", "onnxruntime"),
        "device": ("cpu", "cuda"),
        "quantization": QUANTIZATIONS,
        "pruning_method": ("l1_unstructured", "structured", "gradient"),
        "graph_optimization": GRAPH_LEVELS,
        "execution_mode": EXECUTION_MODES,
        "execution_provider": tuple(_PROVIDERS),
    }
    counts = {"batch_size": "an integer >= 1", "threads": "an integer >= 1",
              "inter_op_threads": "an integer >= 1"}
    # harness key -> the transform parameter it is passed to
    via_transform: dict[str, Any] = {
        "pruning_ratio": TRANSFORMS["prune_magnitude"].params["ratio"],
        "pruning_scope": TRANSFORMS["prune_magnitude"].params["scope"],
    }
    static = TRANSFORMS["ort_int8_static"].params
    for key, tkey in {**_ORT_QUANT_KEYS, **_ORT_STATIC_KEYS}.items():
        via_transform[key] = static[tkey]

    out: dict[str, DeclaredParam] = {}
    for name, (description, default) in HARNESS_PARAMS.items():
        optional: tuple[Any, ...] = (None,) if default is None else ()
        if name in closed:
            out[name] = DeclaredParam(name, description, values=(*closed[name], *optional))
        elif name in counts:
            out[name] = DeclaredParam(
                name, description, numeric=True, integer=True,
                expected=counts[name] + (" (or null: the default)" if optional else ""),
                accepts=_positive_int if not optional else
                (lambda v: v is None or _positive_int(v)))
        elif name in via_transform:
            tp = via_transform[name]
            numeric = name == "pruning_ratio"
            out[name] = DeclaredParam(name, description, accepts=tp.check,
                                      expected=tp.expected, numeric=numeric)
        else:  # a key the harness reads whose values nothing declares: any value
            out[name] = DeclaredParam(name, description, numeric=True)
    return MappingProxyType(out)


@functools.cache
def declared_generation_parameters() -> Mapping[str, DeclaredParam]:
    """The parameters a text-generation job's space may name: the generation knobs
    (:data:`autotune.workloads.knobs.GENERATION_PARAMS`)."""
    from autotune.workloads.knobs import GENERATION_PARAMS

    out: dict[str, DeclaredParam] = {}
    for k in GENERATION_PARAMS:
        optional: tuple[Any, ...] = (None,) if k.default is None else ()
        if k.choices is not None:
            out[k.name] = DeclaredParam(k.name, k.description, values=(*k.choices, *optional))
        else:
            low, high = k.low or 1, k.high
            out[k.name] = DeclaredParam(
                k.name, k.description, numeric=True, integer=True,
                expected=f"an integer >= {low}" + (f" and <= {high}" if high else ""),
                accepts=lambda v, lo=low, hi=high, opt=bool(optional): (v is None and opt) or (
                    isinstance(v, int) and not isinstance(v, bool) and v >= lo
                    and (hi is None or v <= hi)))
    return MappingProxyType(out)
