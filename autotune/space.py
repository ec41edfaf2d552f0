"""The search space, in one vocabulary.

A space is an ordered set of parameters.  Each parameter is categorical (``choices``), integer or
float (``low``/``high``, optional ``step`` or ``log``).  Next to the parameter it is declared:

* ``when: {other: value-or-list}`` — the parameter exists only when earlier parameters have those
  values (``calibration`` only when ``quantization: int8_static``);
* ``invalid: [{values: [...], when: {...}}]`` — some of its values cannot be combined with earlier
  choices (``quantization: fp16`` with ``device: cpu``).

Optuna distributions are the canonical form (:meth:`SearchSpace.distributions`); the other
libraries' spaces (scikit-optimize dimensions, Gymnasium spaces) are derived from this class in
exactly one place each (their adapters).  Presets are YAML files in ``search_spaces/``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune.errors import SpecError

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

Kind = Literal["categorical", "int", "float"]
Scalar = str | int | float | bool | None
Config = dict[str, Any]

#: the presets shipped inside the package (the repository's top-level ``search_spaces/``, which
#: ``autotune/search_spaces`` links to, so a checkout, an editable install and a wheel agree)
PRESET_DIR = Path(str(resources.files("autotune") / "search_spaces"))


@dataclass(frozen=True)
class Invalid:
    """Values of a parameter that are invalid when earlier parameters match ``when``."""

    values: tuple[Scalar, ...]
    when: Mapping[str, tuple[Scalar, ...]]
    reason: str = ""


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    choices: tuple[Scalar, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)
    invalid: tuple[Invalid, ...] = ()
    description: str = ""

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        if not (self.low <= value <= self.high):  # type: ignore[operator]
            return False
        if self.step:
            k = (value - self.low) / self.step  # type: ignore[operator]
            return math.isclose(k, round(k), abs_tol=1e-9)
        return True

    def values(self) -> list[Scalar]:
        """Every value of a discrete parameter (categorical, int, or float with a step)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = round((self.high - self.low) / self.step)  # type: ignore[operator]
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]  # type: ignore[operator]
        raise ValueError(f"parameter '{self.name}' is continuous; it has no finite value list")

    @property
    def discrete(self) -> bool:
        return self.kind != "float" or self.step is not None


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b
    )


def config_key(config: Mapping[str, Any]) -> str:
    """A hashable identity of a configuration (independent of key order)."""
    return repr(sorted(config.items()))


def _matches(config: Mapping[str, Any], when: Mapping[str, tuple[Scalar, ...]]) -> bool:
    return all(k in config and any(_same(config[k], v) for v in vs) for k, vs in when.items())


@dataclass(frozen=True)
class Notice:
    """A visible change to the space, e.g. a device that this machine does not have."""

    param: str
    removed: tuple[Scalar, ...]
    reason: str

    def __str__(self) -> str:
        vals = ", ".join(map(str, self.removed))
        return f"search space: removed {self.param} = {vals} ({self.reason})"


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    name: str = "inline"

    # ---------------------------------------------------------------- lookups
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution() for p in self.params}

    # ---------------------------------------------------------------- configurations
    def is_active(self, param: Param, partial: Mapping[str, Any]) -> bool:
        return _matches(partial, param.when)

    def invalid_reason(self, config: Mapping[str, Any]) -> str | None:
        """Why ``config`` is an invalid combination, or None when it is fine."""
        for p in self.params:
            if p.name not in config:
                continue
            for inv in p.invalid:
                if any(_same(config[p.name], v) for v in inv.values) and _matches(config, inv.when):
                    cond = ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in inv.when.items())
                    why = f": {inv.reason}" if inv.reason else ""
                    return f"{p.name}={config[p.name]} cannot be combined with {cond}{why}"
        return None

    def validate(self, config: Mapping[str, Any]) -> list[str]:
        """Problems with ``config``: missing/extra/out-of-range values, invalid combinations."""
        problems: list[str] = []
        seen: dict[str, Any] = {}
        for p in self.params:
            active = self.is_active(p, seen)
            if not active:
                if p.name in config:
                    problems.append(f"'{p.name}' is set but inactive (needs {dict(p.when)})")
                continue
            if p.name not in config:
                problems.append(f"'{p.name}' is missing")
                continue
            if not p.contains(config[p.name]):
                problems.append(f"'{p.name}' = {config[p.name]!r} is outside the space")
            seen[p.name] = config[p.name]
        extra = set(config) - set(self.names)
        problems += [f"'{k}' is not a parameter of the space" for k in sorted(extra)]
        reason = self.invalid_reason(config)
        if reason:
            problems.append(reason)
        return problems

    def sample(self, trial: optuna.Trial) -> Config:
        """Draw a configuration through an Optuna trial (respecting ``when``)."""
        config: Config = {}
        for p in self.params:
            if not self.is_active(p, config):
                continue
            if p.kind == "categorical":
                config[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                config[p.name] = trial.suggest_int(
                    p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
                )
            else:
                v = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
                config[p.name] = round(v, 10) if p.step else v
        return config

    def complete(self, values: Mapping[str, Any]) -> Config:
        """Keep only the active parameters of a full assignment (used by flat-vector agents)."""
        config: Config = {}
        for p in self.params:
            if self.is_active(p, config):
                config[p.name] = values[p.name]
        return config

    def grid(self) -> list[Config]:
        """Every valid configuration of a fully discrete space (for grid search and benchmarks)."""
        out: list[Config] = [{}]
        for p in self.params:
            nxt: list[Config] = []
            for c in out:
                if self.is_active(p, c):
                    nxt.extend({**c, p.name: v} for v in p.values())
                else:
                    nxt.append(c)
            out = nxt
        return [c for c in out if self.invalid_reason(c) is None]

    # ---------------------------------------------------------------- edits
    def restrict(
        self, name: str, allowed: Iterable[Scalar], reason: str
    ) -> tuple[SearchSpace, Notice | None]:
        """Remove the choices of ``name`` not in ``allowed``; returns the notice to show."""
        if name not in self:
            return self, None
        p = self[name]
        allowed = list(allowed)
        keep = tuple(c for c in p.choices if any(_same(c, a) for a in allowed))
        removed = tuple(c for c in p.choices if c not in keep)
        if not removed:
            return self, None
        if not keep:
            raise SpecError(
                f"none of the choices of '{name}' ({', '.join(map(str, p.choices))}) can run on "
                f"this machine ({reason}).",
                path=f"search_space.{name}",
                hint="Add a choice this machine supports.",
            )
        new = replace(p, choices=keep)
        params = tuple(new if q.name == name else q for q in self.params)
        return replace(self, params=params), Notice(name, removed, reason)


# -------------------------------------------------------------------- parsing
_PARAM_KEYS = {"type", "choices", "low", "high", "step", "log", "when", "invalid", "description"}


def parse_space(
    data: Mapping[str, Any], *, name: str = "inline", where: str = "search_space"
) -> SearchSpace:
    """Build a space from its YAML form ``{parameters: {name: {...}}}``.

    Errors are raised as :class:`SpecError` with the field path; the spec loader adds file/line.
    """
    params_data = data.get("parameters")
    if not isinstance(params_data, Mapping) or not params_data:
        raise SpecError(
            "expected a mapping 'parameters' with at least one parameter.",
            path=f"{where}.parameters",
        )
    params: list[Param] = []
    for pname, spec in params_data.items():
        params.append(_parse_param(str(pname), spec, [p.name for p in params], where))
    return SearchSpace(tuple(params), name=name)


def _as_tuple(v: Any) -> tuple[Scalar, ...]:
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def _parse_when(
    raw: Any, earlier: Sequence[str], path: str
) -> dict[str, tuple[Scalar, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"expected a mapping of parameter: value(s), found {raw!r}.", path=path)
    for k in raw:
        if k not in earlier:
            raise SpecError(
                f"refers to '{k}', which is not a parameter declared before this one.",
                path=f"{path}.{k}",
                hint="Conditions may only name parameters declared earlier in the space.",
            )
    return {str(k): _as_tuple(v) for k, v in raw.items()}


def _resolve_bound(v: Any) -> Any:
    if v in ("cores", "auto"):
        return os.cpu_count() or 1
    return v


def _parse_param(name: str, spec: Any, earlier: Sequence[str], where: str) -> Param:
    path = f"{where}.parameters.{name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise SpecError(
            f"expected a mapping (choices: [...] or low:/high:) or a list of choices, found "
            f"{spec!r}.",
            path=path,
        )
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise SpecError(
            f"unknown key(s) {', '.join(sorted(map(str, unknown)))}.",
            path=f"{path}.{sorted(map(str, unknown))[0]}",
            hint=f"A parameter takes: {', '.join(sorted(_PARAM_KEYS))}.",
        )
    when = _parse_when(spec.get("when"), earlier, f"{path}.when")
    invalid: list[Invalid] = []
    for i, inv in enumerate(spec.get("invalid") or []):
        ipath = f"{path}.invalid[{i}]"
        if not isinstance(inv, Mapping) or "values" not in inv or "when" not in inv:
            raise SpecError("expected {values: [...], when: {...}, reason: ...}.", path=ipath)
        invalid.append(
            Invalid(
                values=_as_tuple(inv["values"]),
                when=_parse_when(inv["when"], earlier, f"{ipath}.when"),
                reason=str(inv.get("reason", "")),
            )
        )
    kind = spec.get("type")
    description = str(spec.get("description", ""))
    if "choices" in spec or kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError("expected a non-empty list of choices.", path=f"{path}.choices")
        if len({repr(c) for c in choices}) != len(choices):
            raise SpecError("choices must be distinct.", path=f"{path}.choices")
        return Param(name, "categorical", choices=tuple(choices), when=when,
                     invalid=tuple(invalid), description=description)
    if "low" not in spec or "high" not in spec:
        raise SpecError(
            "expected either 'choices' or both 'low' and 'high'.",
            path=path,
            hint="For example: {low: 1, high: 8} or {choices: [fp32, int8_dynamic]}.",
        )
    low, high = _resolve_bound(spec["low"]), _resolve_bound(spec["high"])
    step, log = spec.get("step"), bool(spec.get("log", False))
    for key, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise SpecError(f"expected a number, found {v!r}.", path=f"{path}.{key}")
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    if kind not in ("int", "float"):
        raise SpecError(
            f"expected type categorical, int or float, found {kind!r}.", path=f"{path}.type"
        )
    if low > high:
        raise SpecError(f"low ({low}) is greater than high ({high}).", path=path)
    if log and (low <= 0 or step not in (None, 1)):
        raise SpecError("a log-scaled parameter needs low > 0 and no step.", path=path)
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when,
                 invalid=tuple(invalid), description=description)


def preset_path(name: str, search_dirs: Sequence[Path] = ()) -> Path:
    """Find preset ``name`` (with or without ``.yaml``) next to the job, then in search_spaces/."""
    fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    for d in (*search_dirs, PRESET_DIR):
        cand = Path(d) / fname
        if cand.is_file():
            return cand
    available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise SpecError(
        f"no search-space preset named '{name}'.",
        path="search_space.preset",
        hint=f"Available presets: {', '.join(available) or 'none'}.",
    )


def merge_overrides(
    base: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Apply ``overrides`` to a preset's parameters: a mapping replaces or adds a parameter,
    ``null`` removes it."""
    params = dict(base.get("parameters") or {})
    for k, v in (overrides or {}).items():
        if v is None:
            params.pop(k, None)
        else:
            params[k] = v
    return {**base, "parameters": params}
