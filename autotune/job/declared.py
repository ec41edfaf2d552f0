"""The parameters a model job's search space may use: one function, :func:`declared_parameters`.

The spec loader checks every parameter of a model job's space (presets, overrides and inline
spaces, and the values named in ``when:``/``invalid:`` rules) against this vocabulary, so that
``runtime: tensorflow`` or ``quantization: int4`` is refused when the job is loaded instead of
failing every trial.

The vocabulary is what the runtimes and the pipeline declare (:mod:`autotune.measure.runtimes`: each
runtime's :class:`~autotune.measure.runtimes.base.Parameter` list, the transforms' ``TParam`` declarations
for the keys the pipeline passes on to them), in the form the job loader checks against; for
text-generation jobs, the generation knobs (:mod:`autotune.measure.workloads.knobs`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from autotune.core.space import DeclaredParam
from autotune.measure.runtimes import declared_parameters as runtime_parameters
from autotune.measure.workloads.knobs import GENERATION_PARAMS


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def declared_parameters() -> Mapping[str, DeclaredParam]:
    """Every parameter a model job's search space may name, with what it accepts: the runtimes'
    and the pipeline's own declarations (:func:`autotune.measure.runtimes.declared_parameters`); not
    cached, so a runtime plugin installed while a process (a notebook) runs is seen."""
    out: dict[str, DeclaredParam] = {}
    for name, p in runtime_parameters().items():
        optional: tuple[Any, ...] = (None,) if (p.nullable or p.default is None) else ()
        if p.kind == "categorical" and not p.any_string:
            out[name] = DeclaredParam(name, p.description, values=(*p.choices, *optional))
        else:
            out[name] = DeclaredParam(
                name, p.description, accepts=lambda v, p=p: p.check(v) is None,
                expected=p.expected() + (" (or null: the default)" if optional else ""),
                numeric=p.kind != "categorical", integer=p.kind == "int")
    return MappingProxyType(out)


@functools.cache
def declared_generation_parameters() -> Mapping[str, DeclaredParam]:
    """The parameters a text-generation job's space may name: the generation knobs
    (:data:`autotune.measure.workloads.knobs.GENERATION_PARAMS`)."""
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
