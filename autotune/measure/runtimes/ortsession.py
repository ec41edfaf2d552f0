"""ONNX Runtime session options from a configuration, in one place.

The harness measures with these options and a deployed bundle runs with them, so the two cannot
drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GRAPH_LEVELS = ("disabled", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")


def session_options(settings: Mapping[str, Any]) -> Any:
    """``onnxruntime.SessionOptions`` for ``graph_optimization``, ``threads``,
    ``inter_op_threads``, ``execution_mode`` and ``intra_op_spinning`` (False: the thread pools
    block instead of spin-waiting for work); raises ValueError for an unknown value."""
    import onnxruntime as ort

    level = settings.get("graph_optimization") or "all"
    if level not in GRAPH_LEVELS:
        raise ValueError(f"graph_optimization must be one of {', '.join(GRAPH_LEVELS)}; "
                         f"found {level!r}")
    mode = settings.get("execution_mode") or "sequential"
    if mode not in EXECUTION_MODES:
        raise ValueError(f"execution_mode must be one of {', '.join(EXECUTION_MODES)}; "
                         f"found {mode!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if settings.get("threads"):
        so.intra_op_num_threads = int(settings["threads"])
    so.inter_op_num_threads = int(settings.get("inter_op_threads") or 1)
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.log_severity_level = 3
    if settings.get("intra_op_spinning") is False:  # ORT's default: the pool spin-waits
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so
