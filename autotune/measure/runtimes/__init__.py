"""Runtimes behind one interface (:class:`~autotune.measure.runtimes.base.Runtime`), and the one
parameter vocabulary.

Registry: the built-ins (:data:`BUILTIN`, imported lazily so that validating a job imports no
backend) plus every entry point of the group ``autotune.runtimes`` (a third-party distribution
declares ``[project.entry-points."autotune.runtimes"] myrt = "mypkg.rt:MyRuntime"``).

:func:`declared_parameters` is the single list of every configuration key a trial may hold:
the pipeline's own keys (``runtime``, ``device``, ``batch_size``, ``threads``, pruning — the
pruning keys derived from the pruning transforms' declarations) and each registered runtime's
:meth:`~autotune.measure.runtimes.base.Runtime.parameters`.  The harness's parameter table, preset
validation and the machine restrictions (:mod:`autotune.job.machine`) are derived from it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autotune.errors import DependencyError, SpecError
from autotune.measure.runtimes.base import Parameter, Runtime
from autotune.measure.transforms.base import TRANSFORMS, Categorical, Range, get_transform

if TYPE_CHECKING:
    from autotune.measure.runtimes.base import Parameter, Runtime

#: built-in runtimes, name → "module:Class"; the order matters: the default runtime for a model
#: kind is the first one that takes that kind natively (:func:`default_runtime`)
BUILTIN: dict[str, str] = {
    "torch": "autotune.measure.runtimes.torch:TorchRuntime",
    "onnxruntime": "autotune.measure.runtimes.onnxruntime:OnnxRuntime",
    "openvino": "autotune.measure.runtimes.openvino:OpenVinoRuntime",
}

#: entry-point groups through which plugins register
GROUPS = ("autotune.runtimes", "autotune.transforms", "autotune.agents", "autotune.metrics")


def entry_points(group: str) -> dict[str, Any]:
    """The installed entry points of ``group``, by name (not loaded)."""
    from importlib.metadata import entry_points as eps

    return {ep.name: ep for ep in eps(group=group)}


def registered() -> dict[str, str]:
    """Every runtime name → where it comes from (``module:Class``)."""
    out = dict(BUILTIN)
    for name, ep in entry_points("autotune.runtimes").items():
        out.setdefault(name, ep.value)
    return out


@functools.cache
def _load(name: str, target: str) -> Runtime:
    import importlib

    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DependencyError(f"the runtime '{name}' ({target}) cannot be imported: {exc}; "
                              "install its package, or leave it out of the search space.") from exc
    inst = obj() if isinstance(obj, type) else obj
    if not isinstance(inst, Runtime) or inst.name != name:
        raise TypeError(f"{target} must be a Runtime subclass whose name is {name!r}")
    return inst


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name`` (a :class:`SpecError` listing the known ones if none)."""
    known = registered()
    if name not in known:
        raise SpecError(f"unknown runtime '{name}'.", path="runtime",
                        hint=f"Known runtimes: {', '.join(known)}.")
    return _load(name, known[name])


def runtimes() -> list[Runtime]:
    """Every registered runtime that can be imported here (one that cannot is skipped)."""
    out = []
    for name, target in registered().items():
        try:
            out.append(_load(name, target))
        except Exception:
            continue
    return out


def default_runtime(model_kind: str) -> str:
    """The runtime a configuration without ``runtime`` runs on, for a model of ``model_kind``
    (``torch``: a factory model, ``onnx``: an ONNX file): the first registered runtime that
    takes that kind natively."""
    for rt in runtimes():
        if rt.takes == model_kind:
            return rt.name
    raise SpecError(f"no installed runtime runs a {model_kind} model.")


def job_model_kind(job: Any) -> str:
    """``onnx`` for a job whose model is an ONNX file; ``torch`` for a model factory or a Hugging
    Face model (loaded as a torch module)."""
    return "onnx" if job.model.onnx else "torch"


def job_default_runtime(job: Any) -> str:
    return default_runtime(job_model_kind(job))


# ------------------------------------------------------------------------ the vocabulary
def _pipeline_parameters() -> list[Parameter]:
    """Keys the pipeline itself reads: which runtime, where, batch, threads, pruning."""
    get_transform("prune_magnitude")  # imports the built-in transforms
    load_transform_plugins()
    pruners = {cls.pruning_method: cls for cls in TRANSFORMS.values()  # type: ignore[attr-defined]
               if getattr(cls, "pruning_method", None)}
    scoped = tuple(m for m, cls in pruners.items() if "scope" in cls.params)
    out = [
        Parameter("runtime", "categorical", None, "which runtime runs the model (default: the "
                  "first that takes the model's kind)", choices=tuple(registered()),
                  owner="pipeline", nullable=True),
        Parameter("device", "categorical", "cpu", "where the model runs", ("cpu", "cuda"),
                  search={"choices": ["cpu"]}, owner="pipeline"),
        Parameter("batch_size", "int", 1, "items per inference call", low=1, high=None,
                  search={"choices": [1, 8, 32]}, owner="pipeline"),
        Parameter("threads", "int", None, "intra-op threads (None: the runtime's default)",
                  low=1, high=None, search={"low": 1, "high": "cores"}, owner="pipeline",
                  nullable=True),
    ]
    if pruners:
        ratio = next(cls.params["ratio"] for cls in pruners.values() if "ratio" in cls.params)
        out.append(Parameter(
            "pruning_method", "categorical", "l1_unstructured" if "l1_unstructured" in pruners
            else next(iter(pruners)), "; ".join(f"{m}: {cls.__doc__ or cls.name}".split("\n")[0]
                                                for m, cls in pruners.items()),
            tuple(pruners), search={"choices": list(pruners)}, owner="pipeline"))
        out.append(_from_tparam("pruning_ratio", ratio, "pipeline", kind="float",
                                low=0.0, high=0.999999))
        if scoped:
            scope = pruners[scoped[0]].params["scope"]
            out.append(_from_tparam("pruning_scope", scope, "pipeline",
                                    when={"pruning_method": scoped}))
    return out


def _from_tparam(name: str, tp: Any, owner: str, *, kind: str | None = None,
                 when: Mapping[str, tuple[Any, ...]] | None = None, any_string: bool = False,
                 low: float | None = None, high: float | None = None) -> Parameter:
    """A configuration key declared by a transform's :class:`TParam` (one declaration, two uses)."""
    search = tp.search.to_yaml() if tp.search is not None else None
    if isinstance(tp.search, Categorical) and kind in (None, "categorical"):
        return Parameter(name, "categorical", tp.default, tp.description,
                         tuple(tp.search.choices), search=search, when=dict(when or {}),
                         owner=owner, any_string=any_string)
    k = kind or ("float" if isinstance(tp.default, float) else "int")
    if isinstance(tp.search, Range):
        low = tp.search.low if low is None else low
        high = tp.search.high if high is None else high
    return Parameter(name, k, tp.default, tp.description, low=low, high=high,  # type: ignore[arg-type]
                     search=search, when=dict(when or {}), owner=owner,
                     expected_text=tp.expected)


from_tparam = _from_tparam


def load_transform_plugins() -> list[str]:
    """Import every ``autotune.transforms`` entry point (a transform registers on import)."""
    loaded = []
    for name, ep in entry_points("autotune.transforms").items():
        try:
            ep.load()
        except Exception:
            continue
        loaded.append(name)
    return loaded


def declared_parameters() -> dict[str, Parameter]:
    """Every configuration key a trial may hold → its :class:`Parameter` (type, allowed values or
    range, default, search default, condition, description, owner).  Keys declared by several
    runtimes (``quantization``, ``threads``) are merged: their choices are the union."""
    out: dict[str, Parameter] = {}
    for p in _pipeline_parameters():
        out[p.name] = p
    for rt in runtimes():
        for p in rt.parameters():
            out[p.name] = out[p.name].merged(p) if p.name in out else p
    return out


def parameter_table() -> dict[str, tuple[str, Any]]:
    """``{key: (description, default)}`` (the old ``HARNESS_PARAMS`` form), derived."""
    return {k: (p.description, p.default) for k, p in declared_parameters().items()}


__all__ = ["BUILTIN", "GROUPS", "declared_parameters", "default_runtime", "entry_points",
           "get_runtime", "job_default_runtime", "parameter_table", "registered", "runtimes"]
