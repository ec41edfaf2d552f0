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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
            return any(same_value(value, c) for c in self.choices)
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


def same_value(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        and not isinstance(b, bool) and a == b
    )


def config_key(config: Mapping[str, Any]) -> str:
    """A hashable identity of a configuration (independent of key order)."""
    return repr(sorted(config.items()))


def _matches(config: Mapping[str, Any], when: Mapping[str, tuple[Scalar, ...]]) -> bool:
    return all(k in config and any(same_value(config[k], v) for v in vs) for k, vs in when.items())


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
                if any(same_value(config[p.name], v) for v in inv.values) and _matches(config, inv.when):
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
        keep = tuple(c for c in p.choices if any(same_value(c, a) for a in allowed))
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
PARAM_KEYS = {"type", "choices", "low", "high", "step", "log", "when", "invalid", "description"}
_INVALID_KEYS = {"values", "when", "reason"}
#: keys an override keeps from the preset's parameter unless it gives them itself
RULE_KEYS = ("when", "invalid", "description")


def describe(value: Any) -> str:
    """A short, typed rendering of a YAML value for error messages."""
    if isinstance(value, str):
        return f"'{value[:60]}{'...' if len(value) > 60 else ''}' (text)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_space(
    data: Mapping[str, Any], *, name: str = "inline", where: str = "search_space"
) -> SearchSpace:
    """Build a space from its YAML form ``{parameters: {name: {...}}}``.

    Errors are raised as :class:`SpecError` with the field path; the spec loader adds file/line.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"expected a mapping with 'parameters', found {describe(data)}.",
                        path=where)
    params_data = data.get("parameters")
    if not isinstance(params_data, Mapping) or not params_data:
        raise SpecError(
            "expected a mapping 'parameters' with at least one parameter"
            + (f", found {describe(params_data)}." if params_data is not None else "."),
            path=f"{where}.parameters",
        )
    params: list[Param] = []
    for pname, spec in params_data.items():
        if not isinstance(pname, str) or not pname:
            raise SpecError(
                f"a parameter name must be text, found {describe(pname)}.",
                path=f"{where}.parameters",
                hint="Quote names that YAML reads as numbers or booleans ('on', 'yes', '1').",
            )
        params.append(_parse_param(pname, spec, params, where))
    return SearchSpace(tuple(params), name=name)


def _as_tuple(v: Any) -> tuple[Scalar, ...]:
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def _scalars(raw: Any, path: str, what: str) -> tuple[Scalar, ...]:
    """One value or a list of values, each a scalar."""
    values = _as_tuple(raw)
    for i, v in enumerate(values):
        if not _is_scalar(v) or (isinstance(v, float) and not math.isfinite(v)):
            raise SpecError(
                f"expected {what} (text, a number, true/false or null), found {describe(v)}.",
                path=f"{path}[{i}]" if isinstance(raw, list | tuple) else path,
            )
    if not values:
        raise SpecError(f"expected {what}, found an empty list.", path=path)
    return values


def _parse_when(
    raw: Any, earlier: Sequence[Param], path: str
) -> dict[str, tuple[Scalar, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(
            f"expected a mapping of parameter: value(s), found {describe(raw)}.", path=path,
            hint="For example: when: {runtime: onnxruntime}.",
        )
    names = [p.name for p in earlier]
    out: dict[str, tuple[Scalar, ...]] = {}
    for k, v in raw.items():
        if k not in names:
            import difflib

            close = difflib.get_close_matches(str(k), names, n=1)
            raise SpecError(
                f"refers to '{k}', which is not a parameter declared before this one.",
                path=f"{path}.{k}",
                hint=(f"Did you mean '{close[0]}'? " if close else "")
                + "Conditions may only name parameters declared earlier in the space.",
            )
        out[str(k)] = _scalars(v, f"{path}.{k}", f"a value of '{k}' or a list of them")
    return out


def _parse_invalid(raw: Any, earlier: Sequence[Param], path: str) -> tuple[Invalid, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(
            f"expected a list of rules {{values: [...], when: {{...}}, reason: ...}}, found "
            f"{describe(raw)}.", path=path,
            hint="For example: invalid: [{values: [int8_static], when: {runtime: torch}}].",
        )
    out: list[Invalid] = []
    for i, inv in enumerate(raw):
        ipath = f"{path}[{i}]"
        if not isinstance(inv, Mapping) or "values" not in inv or "when" not in inv:
            raise SpecError(
                "expected {values: [...], when: {...}, reason: ...}"
                + (f", found {describe(inv)}." if not isinstance(inv, Mapping) else
                   f"; '{'values' if 'values' not in inv else 'when'}' is missing."),
                path=ipath,
            )
        unknown = sorted(map(str, set(inv) - _INVALID_KEYS))
        if unknown:
            raise SpecError(f"unknown key '{unknown[0]}'.", path=f"{ipath}.{unknown[0]}",
                            hint=f"A rule takes: {', '.join(sorted(_INVALID_KEYS))}.")
        when = _parse_when(inv["when"], earlier, f"{ipath}.when")
        if not when:
            raise SpecError("a rule needs a non-empty 'when' (the earlier choices it excludes "
                            "these values for).", path=f"{ipath}.when")
        reason = inv.get("reason", "")
        if not _is_scalar(reason):
            raise SpecError(f"expected text, found {describe(reason)}.", path=f"{ipath}.reason")
        out.append(Invalid(values=_scalars(inv["values"], f"{ipath}.values", "a value"),
                           when=when, reason="" if reason is None else str(reason)))
    return tuple(out)


def _resolve_bound(v: Any) -> Any:
    if v in ("cores", "auto"):
        return os.cpu_count() or 1
    return v


def _parse_param(name: str, spec: Any, earlier: Sequence[Param], where: str) -> Param:
    path = f"{where}.parameters.{name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise SpecError(
            f"expected a mapping (choices: [...] or low:/high:) or a list of choices, found "
            f"{describe(spec)}.",
            path=path,
        )
    unknown = sorted(map(str, set(spec) - PARAM_KEYS))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(PARAM_KEYS), n=1)
        raise SpecError(
            f"unknown key(s) {', '.join(unknown)}.",
            path=f"{path}.{unknown[0]}",
            hint=(f"Did you mean '{close[0]}'? " if close else "")
            + f"A parameter takes: {', '.join(sorted(PARAM_KEYS))}.",
        )
    when = _parse_when(spec.get("when"), earlier, f"{path}.when")
    invalid = _parse_invalid(spec.get("invalid"), earlier, f"{path}.invalid")
    kind = spec.get("type")
    if kind is not None and kind not in ("categorical", "int", "float"):
        raise SpecError(f"expected type categorical, int or float, found {describe(kind)}.",
                        path=f"{path}.type")
    raw_desc = spec.get("description", "")
    if not _is_scalar(raw_desc):
        raise SpecError(f"expected text, found {describe(raw_desc)}.", path=f"{path}.description")
    description = "" if raw_desc is None else str(raw_desc)
    if "choices" in spec or kind == "categorical":
        if any(k in spec for k in ("low", "high", "step", "log")):
            k = next(k for k in ("low", "high", "step", "log") if k in spec)
            raise SpecError(f"'{k}' cannot go with 'choices': a parameter is either a list of "
                            "choices or a range.", path=f"{path}.{k}")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(
                "expected a non-empty list of choices"
                + (f", found {describe(choices)}." if choices != [] else ", found an empty list."),
                path=f"{path}.choices", hint="For example: choices: [fp32, int8_dynamic].")
        _scalars(choices, f"{path}.choices", "a choice")
        if len({(type(c), c) for c in choices}) != len(choices):
            raise SpecError("choices must be distinct.", path=f"{path}.choices")
        return Param(name, "categorical", choices=tuple(choices), when=when,
                     invalid=invalid, description=description)
    if "low" not in spec or "high" not in spec:
        raise SpecError(
            "expected either 'choices' or both 'low' and 'high'.",
            path=path,
            hint="For example: {low: 1, high: 8} or {choices: [fp32, int8_dynamic]}.",
        )
    low, high = _resolve_bound(spec["low"]), _resolve_bound(spec["high"])
    step, log = spec.get("step"), spec.get("log", False)
    for key, v in (("low", low), ("high", high), ("step", step)):
        if v is None and key == "step":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SpecError(
                f"expected a number{' or cores' if key == 'high' else ''}, found {describe(v)}.",
                path=f"{path}.{key}")
        if not math.isfinite(v):
            raise SpecError(f"expected a finite number, found {v}.", path=f"{path}.{key}",
                            hint="Give a bounded range (NaN and infinity cannot be searched).")
    if not isinstance(log, bool):
        raise SpecError(f"expected true or false, found {describe(log)}.", path=f"{path}.log")
    if step is not None and step <= 0:
        raise SpecError(f"the step must be greater than 0, found {step}.", path=f"{path}.step",
                        hint="Leave 'step' out for a continuous range.")
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    if kind == "int":
        for key, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and v != int(v):
                raise SpecError(f"an int parameter needs whole numbers, found {v}.",
                                path=f"{path}.{key}")
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    if low > high:
        raise SpecError(f"low ({low}) is greater than high ({high}).", path=path,
                        hint="Swap them, or give the range as low <= high.")
    if log and (low <= 0 or step not in (None, 1)):
        raise SpecError("a log-scaled parameter needs low > 0 and no step.", path=path)
    if kind == "float" and step is not None:
        n = (high - low) / step
        if n > 1_000_000:
            raise SpecError(f"the step ({step}) makes more than a million values.",
                            path=f"{path}.step")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when,
                 invalid=invalid, description=description)


def preset_path(name: str, search_dirs: Sequence[Path] = ()) -> Path:
    """Find preset ``name`` (with or without ``.yaml``) next to the job, then in search_spaces/."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise SpecError(f"expected the name of a preset, found {describe(name)}.",
                        path="search_space.preset")
    fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    for d in (*search_dirs, PRESET_DIR):
        cand = Path(d) / fname
        try:
            if cand.is_file():
                return cand
        except OSError:  # a name too long for the file system, ...
            break
    available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise SpecError(
        f"no search-space preset named '{name}'.",
        path="search_space.preset",
        hint=f"Available presets: {', '.join(available) or 'none'}.",
    )


def merge_overrides(
    base: Mapping[str, Any], overrides: Any
) -> dict[str, Any]:
    """Apply ``overrides`` to a preset's parameters: a mapping or a list of choices replaces a
    parameter's values (or adds a parameter), ``null`` removes it.

    A replaced parameter keeps the preset's ``when:``, ``invalid:`` and ``description`` unless the
    override gives them itself (``when: null`` / ``invalid: []`` drop them).  Errors name the
    field under ``search_space.overrides``.
    """
    where = "search_space.overrides"
    params = dict(base.get("parameters") or {})
    if overrides is None:
        return {**base, "parameters": params}
    if not isinstance(overrides, Mapping):
        raise SpecError(
            f"expected a mapping of parameter: {{choices: [...]}} | {{low:, high:}} | null, "
            f"found {describe(overrides)}.", path=where,
            hint="For example: overrides: {batch_size: {choices: [1, 8]}, graph_optimization: "
                 "null}.")
    for k, v in overrides.items():
        if not isinstance(k, str) or not k:
            raise SpecError(f"a parameter name must be text, found {describe(k)}.", path=where)
        if v is None:
            if k not in params:
                import difflib

                close = difflib.get_close_matches(k, list(params), n=1)
                raise SpecError(
                    f"removes '{k}', which the preset does not have.", path=f"{where}.{k}",
                    hint=(f"Did you mean '{close[0]}'? " if close else "")
                    + f"The preset's parameters: {', '.join(map(str, params))}.")
            params.pop(k)
            continue
        if isinstance(v, list):
            v = {"choices": v}
        if not isinstance(v, Mapping):
            raise SpecError(
                f"expected a mapping (choices: [...] or low:/high:), a list of choices or null, "
                f"found {describe(v)}.", path=f"{where}.{k}")
        old = params.get(k)
        new = dict(v)
        if isinstance(old, list):
            old = {"choices": old}
        if isinstance(old, Mapping):
            for rule in RULE_KEYS:
                if rule not in new and rule in old:
                    new[rule] = old[rule]
        params[k] = new
    return {**base, "parameters": params}


# -------------------------------------------------------------------- declared parameters
@dataclass(frozen=True)
class DeclaredParam:
    """What the measuring harness accepts for one configuration key.

    ``values``: the complete set of accepted values (empty when ``accepts`` decides); ``accepts``:
    a predicate for one value; ``expected``: the same in words; ``numeric``: may be searched as a
    range (``low``/``high``), each end checked with ``accepts``; ``integer``: only whole numbers.
    """

    name: str
    description: str = ""
    values: tuple[Scalar, ...] = ()
    accepts: Callable[[Any], bool] | None = None
    expected: str = ""
    numeric: bool = False
    integer: bool = False

    def allows(self, value: Any) -> bool:
        if self.values:
            return any(same_value(value, v) for v in self.values)
        if self.accepts is None:
            return True
        try:
            return bool(self.accepts(value))
        except Exception:  # a predicate that does not expect this type
            return False

    @property
    def expectation(self) -> str:
        if self.values and set(map(repr, self.values)) == {"False", "True"}:
            return "true or false"
        if self.values:
            return "one of " + ", ".join(_show(v) for v in self.values)
        return self.expected or "a value the harness accepts"


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def check_declared(space: SearchSpace, declared: Mapping[str, DeclaredParam], *,
                   where: str = "search_space") -> None:
    """Every parameter of ``space`` is one the harness declares, with values it accepts; the values
    named in ``when:`` and ``invalid:`` rules too.  Raises a :class:`SpecError` with the path."""
    import difflib

    for p in space:
        path = f"{where}.parameters.{p.name}"
        d = declared.get(p.name)
        if d is None:
            close = difflib.get_close_matches(p.name, list(declared), n=1)
            raise SpecError(
                f"the harness does not know the parameter '{p.name}'.", path=path,
                hint=(f"Did you mean '{close[0]}'? " if close else "")
                + f"Known parameters: {', '.join(declared)}.")
        hint = f"'{p.name}' takes {d.expectation}."
        if p.kind == "categorical":
            for i, c in enumerate(p.choices):
                if not d.allows(c):
                    close = difflib.get_close_matches(str(c), [str(v) for v in d.values], n=1)
                    raise SpecError(
                        f"{describe(c)} is not a value of '{p.name}'.",
                        path=f"{path}.choices[{i}]",
                        hint=(f"Did you mean '{close[0]}'? " if close else "") + hint)
        else:
            if not d.numeric:
                raise SpecError(f"'{p.name}' cannot be a range (low/high).", path=path,
                                hint=f"{hint} Give them as choices: [...].")
            if d.integer and p.kind != "int":
                raise SpecError(f"'{p.name}' takes whole numbers, found the range "
                                f"{p.low}..{p.high} of type float.", path=path, hint=hint)
            for key, v in (("low", p.low), ("high", p.high)):
                if not d.allows(v):
                    raise SpecError(f"{describe(v)} is outside what '{p.name}' accepts.",
                                    path=f"{path}.{key}", hint=hint)
        for k, vs in p.when.items():
            _check_rule_values(declared.get(k), vs, f"{path}.when.{k}")
        for i, inv in enumerate(p.invalid):
            _check_rule_values(d, inv.values, f"{path}.invalid[{i}].values")
            for k, vs in inv.when.items():
                _check_rule_values(declared.get(k), vs, f"{path}.invalid[{i}].when.{k}")


def _check_rule_values(d: DeclaredParam | None, values: Sequence[Scalar], path: str) -> None:
    if d is None:
        return
    for v in values:
        if not d.allows(v):
            raise SpecError(f"{describe(v)} is not a value of '{d.name}', so this rule never "
                            "applies.", path=path, hint=f"'{d.name}' takes {d.expectation}.")
