"""The transform framework: declared parameters, a registry, caching, lineage and timing.

A transform is a class with a ``name``, the kind of model it takes and gives (``torch`` or
``onnx``), and its parameters declared with their defaults and search defaults::

    class Int8Static(Transform):
        name = "ort_int8_static"
        takes, gives = "onnx", "onnx"
        params = {"per_channel": TParam(False, Categorical([False, True]), "scales per channel")}

        def transform(self, model, p, ctx, out): ...

Subclasses register themselves by ``name`` (:data:`TRANSFORMS`, :func:`get_transform`).  The public
:meth:`Transform.apply` validates the parameters, looks the result up in the cache (key = hash of
the input model's id, the transform's name and its parameters, plus the digest of the data it
reads), records lineage (parent model id, transform, parameters, seconds taken, cached or not) and
times the work; the subclass only implements :meth:`Transform.transform`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from autotune.errors import TrialFailed

Kind = Literal["torch", "onnx"]

#: every registered transform, by name
TRANSFORMS: dict[str, type[Transform]] = {}
#: torch results of this process, most recent last.  They are never written to disk: a
#: ``torch.save``d module can only be read back by unpickling it, and whoever can write the cache
#: folder would then run code at the next ``autotune run`` (the harness's child process lives
#: across trials, so this memo still serves the repeated lookups).  ONNX results are cached on
#: disk: they are protobuf files read by ONNX Runtime, never unpickled.
_MEMO: OrderedDict[tuple[str, str], tuple[Any, dict[str, Any]]] = OrderedDict()
_MEMO_SIZE = 4


# ------------------------------------------------------------------------ search defaults
@dataclass(frozen=True)
class Categorical:
    """Search default: one of ``choices``."""

    choices: Sequence[Any]

    def to_yaml(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True)
class Range:
    """Search default: a number in [low, high] (optional step)."""

    low: float
    high: float
    step: float | None = None

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class TParam:
    """A transform parameter: its default, its search default and what it means."""

    default: Any
    search: Categorical | Range | None = None
    description: str = ""
    check: Callable[[Any], bool] | None = None
    expected: str = ""


# ------------------------------------------------------------------------ models and lineage
@dataclass(frozen=True)
class Lineage:
    """One step in a model's history."""

    parent: str
    transform: str
    params: Mapping[str, Any]
    seconds: float
    cached: bool
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent, "transform": self.transform, "params": dict(self.params),
                "seconds": self.seconds, "cached": self.cached, "info": dict(self.info)}


@dataclass(frozen=True)
class ModelRef:
    """A model at some point of a transform chain: a torch module or an ONNX file."""

    kind: Kind
    model_id: str
    module: Any = None
    path: Path | None = None
    lineage: tuple[Lineage, ...] = ()

    @classmethod
    def torch(cls, module: Any, model_id: str) -> ModelRef:
        return cls("torch", model_id, module=module)

    @classmethod
    def onnx(cls, path: Path, model_id: str | None = None) -> ModelRef:
        mid = model_id or hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        return cls("onnx", mid, path=Path(path))

    @property
    def info(self) -> dict[str, Any]:
        """What the steps reported (e.g. sparsity), later steps winning."""
        out: dict[str, Any] = {}
        for step in self.lineage:
            out.update(step.info)
        return out


@dataclass(frozen=True)
class Context:
    """Data some transforms read: example inputs (export), calibration inputs and targets
    (static quantization, gradient importance) and a loss.  ``digest`` identifies the data and
    joins the cache key of transforms that read it."""

    example_inputs: tuple[np.ndarray, ...] = ()
    calibration: tuple[np.ndarray, ...] = ()
    calibration_targets: np.ndarray | None = None
    loss: Callable[..., Any] | None = None
    loss_name: str = ""
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    digest: str = ""
    #: the model's input / output names (the ONNX export keeps them); None: input_<i> / output
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------ the base class
class Transform(ABC):
    """Base of every transform; see the module docstring."""

    name: ClassVar[str]
    takes: ClassVar[Kind]
    gives: ClassVar[Kind]
    params: ClassVar[dict[str, TParam]] = {}
    #: transforms whose result depends on the context's data set this
    reads_data: ClassVar[bool] = False
    #: what the job must provide for this transform to run at all ('loss': evaluation.loss or
    #: metric accuracy; 'targets': a dataset); a job without it cannot run the transform, and
    #: the space drops it with a notice (:func:`autotune.job.machine.restrict_to_job`)
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in TRANSFORMS and TRANSFORMS[name] is not cls:
                raise TypeError(f"a transform named {name!r} is already registered")
            TRANSFORMS[name] = cls

    def __init__(self, cache_dir: Path | str | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    # -------------------------------------------------------------- parameters
    @classmethod
    def resolve_params(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in; unknown names and values that fail their check raise."""
        unknown = set(given) - set(cls.params)
        if unknown:
            raise ValueError(
                f"The transform {cls.name!r} has no parameter {sorted(unknown)[0]!r}. "
                f"Its parameters: {', '.join(cls.params) or 'none'}."
            )
        out = {}
        for k, p in cls.params.items():
            v = given.get(k, p.default)
            if p.check is not None and not p.check(v):
                raise ValueError(
                    f"The {k!r} parameter of {cls.name} must be {p.expected}. Got {v!r} instead."
                )
            out[k] = v
        return out

    @classmethod
    def search_defaults(cls) -> dict[str, dict[str, Any]]:
        """The parameters' search defaults in the search-space YAML vocabulary."""
        return {k: {**p.search.to_yaml(), "description": p.description}
                for k, p in cls.params.items() if p.search is not None}

    # -------------------------------------------------------------- public entry point
    def apply(self, model: ModelRef, context: Context | None = None, **params: Any) -> ModelRef:
        """Transform ``model`` (never mutated); cached by (model id, transform, params[, data])."""
        if model.kind != self.takes:
            raise TrialFailed(f"the transform {self.name} takes a {self.takes} model, "
                              f"not a {model.kind} model")
        ctx = context or Context()
        p = self.resolve_params(params)
        key = digest(model.model_id, self.name, p, ctx.digest if self.reads_data else "")
        cached = self._load(key)
        if cached is not None:
            result, info = cached
            step = Lineage(model.model_id, self.name, p, 0.0, True, info)
            return self._wrap(result, key, model, step)
        t0 = time.perf_counter()
        out_path = None
        if self.gives == "onnx":
            out_path = self._onnx_path(key)
            tmp = out_path.with_suffix(f".{os.getpid()}.tmp.onnx")
        try:
            result, info = self.transform(model, p, ctx, tmp if out_path is not None else None)
        except TrialFailed:
            raise
        except Exception as exc:
            raise TrialFailed(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc
        if out_path is not None:
            Path(result).replace(out_path)
            result = out_path
        seconds = time.perf_counter() - t0
        step = Lineage(model.model_id, self.name, p, seconds, False, dict(info))
        self._store(key, result, step)
        return self._wrap(result, key, model, step)

    @abstractmethod
    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        """Do the work: return (new module, or the path written, normally ``out``) and info."""

    # -------------------------------------------------------------- caching
    def _wrap(self, result: Any, key: str, parent: ModelRef, step: Lineage) -> ModelRef:
        lineage = (*parent.lineage, step)
        if self.gives == "onnx":
            return ModelRef("onnx", key, path=Path(result), lineage=lineage)
        return ModelRef("torch", key, module=result, lineage=lineage)

    def _onnx_path(self, key: str) -> Path:
        base = self.cache_dir or Path(tempfile.mkdtemp(prefix="autotune-"))
        base.mkdir(parents=True, exist_ok=True)
        return base / f"{self.name}-{key}.onnx"

    def _meta_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self.name}-{key}.json"

    def _load(self, key: str) -> tuple[Any, dict[str, Any]] | None:
        memo = _MEMO.get((str(self.cache_dir), key))
        if memo is not None:
            _MEMO.move_to_end((str(self.cache_dir), key))
            module, info = memo
            # a copy, as a fresh load would give: callers may move or mutate it (tensor
            # subclasses without deepcopy support stay shared, as before)
            with contextlib.suppress(Exception):
                module = copy.deepcopy(module)
            return module, dict(info)
        if self.gives != "onnx":  # torch results live in the memo only (no unpickling)
            return None
        meta = self._meta_path(key)
        if meta is None or not meta.exists():
            return None
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("file"), str) \
                or Path(data["file"]).name != data["file"] or not data["file"].endswith(".onnx"):
            return None  # only an ONNX file in the cache folder itself is ever read
        target = self.cache_dir / data["file"]  # type: ignore[operator]
        if not target.is_file():
            return None
        return target, data.get("info", {})

    def _store(self, key: str, result: Any, step: Lineage) -> None:
        if self.cache_dir is None:  # no cache folder: nothing is kept
            return
        if self.gives != "onnx":  # kept in this process only (see _MEMO)
            _MEMO[(str(self.cache_dir), key)] = (result, dict(step.info))
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
            return
        meta = self._meta_path(key)
        if meta is None:  # no cache folder: nothing is kept
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        fname = Path(result).name
        tmp_meta = meta.with_suffix(f".{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps({"file": fname, **step.to_dict()}, default=str))
        tmp_meta.replace(meta)


#: the modules of the built-in transforms, loaded by name on first lookup (importing one registers
#: its transforms).  They import this module, so it names them rather than importing them: base
#: stays the leaf of the transforms and no import cycle forms.
BUILTIN_MODULES = ("autotune.measure.transforms.convert", "autotune.measure.transforms.fusion",
                   "autotune.measure.transforms.prune", "autotune.measure.transforms.quantize")


def get_transform(name: str) -> type[Transform]:
    if name not in TRANSFORMS:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}") \
            from None


def apply(name: str, model: ModelRef, context: Context | None = None, *,
          cache_dir: Path | None = None, **params: Any) -> ModelRef:
    """Apply the registered transform ``name`` (see :meth:`Transform.apply`)."""
    return get_transform(name)(cache_dir).apply(model, context, **params)


def in_range(low: float, high: float, *, high_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        return low <= v < high if high_open else low <= v <= high

    return check


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


__all__ = ["TRANSFORMS", "Categorical", "Context", "Lineage", "ModelRef", "Range", "TParam",
           "Transform", "apply", "data_digest", "digest", "get_transform"]
