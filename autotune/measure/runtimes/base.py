"""The runtime interface: one class per runtime (torch, ONNX Runtime, OpenVINO, a plugin's).

A runtime is as small as Optuna's ``BaseSampler``; four methods are abstract:

* :meth:`Runtime.parameters` — the configuration keys it reads, each declared once
  (:class:`Parameter`: type, allowed values or range, default, search default, condition);
* :meth:`Runtime.build` — a model (:class:`~autotune.measure.transforms.base.ModelRef`) + a trial's
  configuration → a :class:`Built`: its :class:`Runner` (named inputs → named outputs) and the
  file that *is* the measured artifact;
* :meth:`Runtime.write_bundle` — that artifact and the settings it runs with, as bundle files;
* :meth:`Runtime.load_bundle` — bundle files back into a :class:`Runner` (no unpickling).

Optional hooks with defaults: :meth:`Runtime.available` (can it run here, from the hardware
capabilities), :meth:`Runtime.excluded` (which declared values this machine cannot run, and why),
:meth:`Runtime.exportable` (why a configuration could not be shipped, or None).

Nothing outside a runtime's own module branches on its name: the harness, the machine
restrictions, the export and the bundle loader all go through this interface
(:func:`autotune.measure.runtimes.get_runtime`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Kind = Literal["categorical", "int", "float"]


# ------------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class Parameter:
    """One configuration key, declared once by whoever reads it (a runtime or the pipeline).

    ``choices`` (categorical) or ``low``/``high`` (int, float; ``high`` may be ``None``: no upper
    bound) say what is allowed; ``search`` is the search default in the search-space YAML
    vocabulary (``{"choices": [...]}`` / ``{"low":, "high":}``); ``when`` is the condition under
    which the key means anything (e.g. ``{"runtime": ("onnxruntime",)}``); ``owner`` names the
    declaring runtime/transform.  ``any_string`` accepts free text besides the choices (node
    lists such as ``exclude_nodes: "Gemm_0,Gemm_3"``).
    """

    name: str
    kind: Kind
    default: Any = None
    description: str = ""
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    search: Mapping[str, Any] | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    owner: str = ""
    any_string: bool = False
    nullable: bool = False
    #: what is allowed, in words, when the declaration says it better than the range (a transform's
    #: ``TParam.expected``, e.g. "a number in [0, 1)")
    expected_text: str = ""

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (None: it is)."""
        if value is None and (self.nullable or self.default is None):
            return None
        if self.kind == "categorical":
            if any(_same(value, c) for c in self.choices):
                return None
            if self.any_string and isinstance(value, str):
                return None
            return self.expected()
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"a number ({self.expected()})"
        if self.kind == "int" and int(value) != value:
            return f"an integer ({self.expected()})"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return self.expected()
        return None

    def expected(self) -> str:
        if self.expected_text:
            return self.expected_text
        if self.kind == "categorical":
            if set(map(repr, self.choices)) == {"False", "True"}:
                return "true or false"
            return f"one of {', '.join(map(str, self.choices))}"
        what = "an integer" if self.kind == "int" else "a number"
        if self.high is None:
            return what if self.low is None else f"{what} >= {self.low:g}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        return f"{what} in [{lo}, {self.high:g}]"

    def merged(self, other: Parameter) -> Parameter:
        """The union of two declarations of the same key (e.g. ``quantization`` per runtime)."""
        from dataclasses import replace

        choices = self.choices + tuple(c for c in other.choices
                                       if not any(_same(c, d) for d in self.choices))
        when = {k: tuple(dict.fromkeys((*v, *other.when[k])))
                for k, v in self.when.items() if k in other.when}
        owners = ", ".join(dict.fromkeys(filter(None, (*self.owner.split(", "), other.owner))))
        return replace(self, choices=choices, when=when, owner=owners,
                       any_string=self.any_string or other.any_string,
                       nullable=self.nullable or other.nullable)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "default": self.default,
                               "description": self.description, "owner": self.owner}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
            if self.any_string:
                out["any_string"] = True
        else:
            out["low"], out["high"] = self.low, self.high
        if self.search is not None:
            out["search"] = dict(self.search)
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


@dataclass(frozen=True)
class Exclusion:
    """Values of ``param`` this machine cannot run (when ``when`` holds; empty: never)."""

    param: str
    values: tuple[Any, ...]
    reason: str
    when: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ running
@dataclass(frozen=True)
class IOSpec:
    """One named input or output: numpy dtype name and shape (None: dynamic; axis 0 = batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IOSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d.get("shape") or ()))


class Runner(ABC):
    """A ready model: ``run`` takes and returns arrays by name."""

    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]

    @abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call: input name → array (batch first) in, output name → array out."""

    def first(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The first output only (runtimes may skip building the others' arrays)."""
        out = self.run(feed)
        return out[self.outputs[0].name] if self.outputs else next(iter(out.values()))

    def settings(self) -> dict[str, Any]:
        """The settings this runner actually runs with, read back from the runtime."""
        return {}

    def positional(self) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        """``predict(list of arrays in input order) -> first output`` (the harness's form)."""
        names = [s.name for s in self.inputs]

        def predict(batch: Sequence[np.ndarray]) -> np.ndarray:
            return self.first(dict(zip(names, batch, strict=True)))

        return predict


@dataclass(frozen=True)
class BuildContext:
    """What :meth:`Runtime.build` may use: the transform context and the cache folder."""

    transform_context: Any  # autotune.measure.transforms.base.Context
    cache_dir: Path


@dataclass(frozen=True)
class Built:
    """A configuration built by a runtime: the runner, the artifact measured, and what it did."""

    runner: Runner
    model_path: Path  # the artifact (the one :meth:`Runtime.write_bundle` ships)
    model_ref: Any  # the final ModelRef (lineage)
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleFiles:
    """What a runtime ships: file name → bytes, and the settings written into deploy.yaml."""

    files: Mapping[str, bytes]
    model: str  # the main file's name (manifest["model"])
    settings: Mapping[str, Any]
    #: settings that differ from the measured configuration: empty when the bundle runs exactly
    #: as measured (then ``measured_latency_applies`` is true)
    differs: tuple[str, ...] = ()


# ------------------------------------------------------------------------ the interface
class Runtime(ABC):
    """Base of every runtime; see the module docstring."""

    #: the value of the ``runtime`` configuration key
    name: ClassVar[str]
    #: the model kind :meth:`build` needs (``torch`` or ``onnx``); the pipeline converts to it
    takes: ClassVar[str] = "onnx"
    #: one line for people
    description: ClassVar[str] = ""

    def available(self, caps: Mapping[str, Any]) -> str | None:
        """Why this runtime cannot run on a machine with these capabilities (None: it can)."""
        return None

    @abstractmethod
    def parameters(self) -> Sequence[Parameter]:
        """Every configuration key this runtime reads (``quantization`` with its modes too)."""

    def excluded(self, caps: Mapping[str, Any]) -> Sequence[Exclusion]:
        """Declared values this machine cannot run, with the reason each is removed."""
        return ()

    @abstractmethod
    def build(self, model: Any, config: Mapping[str, Any], ctx: BuildContext) -> Built:
        """Transform ``model`` as ``config`` says and make it runnable; raise TrialFailed for a
        configuration that cannot run."""

    def exportable(self, config: Mapping[str, Any], built: Built | None = None) -> str | None:
        """Why a configuration cannot be shipped as a bundle (None: it can)."""
        return None

    @abstractmethod
    def write_bundle(self, built: Built, config: Mapping[str, Any]) -> BundleFiles:
        """The deployable artifact and the settings it runs with, generated from ``config``."""

    @abstractmethod
    def load_bundle(self, files: Callable[[str], bytes], settings: Mapping[str, Any],
                    io: tuple[Sequence[IOSpec], Sequence[IOSpec]]) -> Runner:
        """A runner from bundle files (``files(name)`` returns a checked file's bytes) and the
        deploy.yaml ``settings``.  Must not unpickle anything."""


__all__ = [
    "BuildContext",
    "Built",
    "BundleFiles",
    "Exclusion",
    "IOSpec",
    "Parameter",
    "Runner",
    "Runtime",
]
