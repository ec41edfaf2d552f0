"""Hardware portfolio: configurations known to be strong on a class of hardware, measured first.

A preset (or an inline ``search_space``) may carry a ``portfolio:`` list next to its
``parameters:``::

    portfolio:
      - name: int8 dynamic per-channel (VNNI)
        when: {cpu_flags: [avx512_vnni, avx_vnni, amx_int8]}   # any of these flags
        config: {runtime: onnxruntime, quantization: int8_dynamic, per_channel: true}
      - name: bf16 on torch (native bf16)
        when: {capabilities: [cpu_bf16]}                         # all of these capabilities
        config: {runtime: torch, quantization: bf16}

``when.cpu_flags`` matches when the CPU has ANY of the flags (the fingerprint's flags);
``when.capabilities`` when ALL the named :class:`autotune.measure.harness.hardware.Capabilities` fields are
true; an entry without ``when`` always matches.  An entry's ``config`` is partial: the parameters
it leaves out are filled in (the harness's default when the space allows it, threads: all usable
cores the space allows, else the parameter's first value).  An entry applies when it matches this
machine and the completed configuration lies in the job's (machine-restricted) space; every key it
sets must be a parameter of that space.  At the start of a run the applicable entries are measured
right after ``agent.warm_start`` and before the agent's own proposals; the agent observes them as
it observes every trial.  ``autotune validate`` lists them (:func:`explain`).

An entry with ``reference: true`` is a hand recipe to beat (a plain export, the one-line
``quantize_dynamic``): measured first like the others, recorded with source ``reference: <name>``,
and every complete trial then carries its speed-up over it (metric ``vs <name>``,
:func:`autotune.record.study.with_reference_speedups`), shown by ``status``, the report and MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from autotune.core.metrics import REFERENCE_SOURCE
from autotune.core.space import DeclaredParam, SearchSpace, config_key, describe, preset_path
from autotune.core.yamlsrc import load_located
from autotune.errors import SpecError
from autotune.measure.harness.capabilities import Capabilities
from autotune.measure.harness.cpu import RELEVANT_CPU_FLAGS
from autotune.measure.runtimes import parameter_table

_WHEN_KEYS = ("cpu_flags", "capabilities")
#: what ``when:`` may name: the CPU flags the fingerprint reports, the boolean capabilities
_KNOWN_WHEN = {
    "cpu_flags": RELEVANT_CPU_FLAGS,
    "capabilities": tuple(f.name for f in fields(Capabilities) if f.type in ("bool", bool)),
}


@dataclass(frozen=True)
class Entry:
    name: str
    config: Mapping[str, Any]
    cpu_flags: tuple[str, ...] = ()  # any of
    capabilities: tuple[str, ...] = ()  # all of
    note: str = ""
    reference: bool = False  # a hand recipe the candidates are compared with

    @property
    def source(self) -> str:
        """The ``source`` recorded on the entry's trial."""
        return f"{REFERENCE_SOURCE if self.reference else 'portfolio: '}{self.name}"

    def matches(self, cpu_flags: Sequence[str], capabilities: Mapping[str, Any]) -> bool:
        flags = {f.lower() for f in cpu_flags}
        if self.cpu_flags and not flags & {f.lower() for f in self.cpu_flags}:
            return False
        return all(bool(capabilities.get(c)) for c in self.capabilities)

    def hardware(self) -> str:
        parts = []
        if self.cpu_flags:
            parts.append("CPU flag " + " or ".join(self.cpu_flags))
        if self.capabilities:
            parts.append(" and ".join(self.capabilities))
        return ", ".join(parts) or "any machine"


@dataclass(frozen=True)
class Applicable:
    """Which entries apply on this machine (``configs``) and why the others do not."""

    configs: tuple[tuple[Entry, dict[str, Any]], ...] = ()
    skipped: tuple[tuple[Entry, str], ...] = field(default_factory=tuple)


def parse_portfolio(raw: Any, where: str = "portfolio") -> list[Entry]:
    """The ``portfolio:`` list; :class:`SpecError` naming the field for a malformed entry."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"expected a list of entries, found {describe(raw)}.", path=where)
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("config"), Mapping) \
                or not item["config"]:
            raise SpecError(f"expected a mapping with a non-empty 'config:', found "
                            f"{describe(item)}.", path=at,
                            hint="e.g. {when: {cpu_flags: [avx512_vnni]}, config: "
                                 "{runtime: onnxruntime, quantization: int8_dynamic}}")
        extra = sorted(map(str, set(item) - {"name", "when", "config", "note", "reference"}))
        if extra:
            raise SpecError(f"unknown key '{extra[0]}'.", path=f"{at}.{extra[0]}",
                            hint="An entry has name, when, config, note and reference.")
        if not isinstance(item.get("reference", False), bool):
            raise SpecError(f"'reference' must be true or false, found "
                            f"{describe(item['reference'])}.", path=f"{at}.reference")
        when = item.get("when") or {}
        if not isinstance(when, Mapping) or set(when) - set(_WHEN_KEYS):
            raise SpecError(f"'when' takes {' and '.join(_WHEN_KEYS)}, found {describe(when)}.",
                            path=f"{at}.when")
        lists = {}
        for k in _WHEN_KEYS:
            v = when.get(k, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise SpecError(f"'{k}' must be a list of names, found {describe(v)}.",
                                path=f"{at}.when.{k}",
                                hint=f"e.g. {k}: [{_KNOWN_WHEN[k][0]}]")
            unknown = [x for x in v if x not in _KNOWN_WHEN[k]]
            if unknown:  # it never matches on any machine
                raise SpecError(
                    f"'{unknown[0]}' is not a {k.replace('_', ' ')[:-1]} autotune detects, so "
                    "this condition never holds.", path=f"{at}.when.{k}",
                    hint=f"Known: {', '.join(_KNOWN_WHEN[k])}.")
            lists[k] = tuple(v)
        config = dict(item["config"])
        name = str(item.get("name") or ", ".join(f"{k}={v}" for k, v in config.items()))
        out.append(Entry(name=name, config=config, cpu_flags=lists["cpu_flags"],
                         capabilities=lists["capabilities"], note=str(item.get("note") or ""),
                         reference=bool(item.get("reference", False))))
    return out


def check_entries(entries: Sequence[Entry], space: SearchSpace,
                  declared: Mapping[str, DeclaredParam] | None, where: str = "portfolio", *,
                  own: bool = True) -> None:
    """Each entry's ``config`` names declared parameters with values they accept (like the
    search space's values); with ``own`` (the job's inline portfolio, not a preset's that the
    job's overrides may have narrowed) each entry must also fit the job's space: one that
    cannot is an error, as it would apply on no machine.  :class:`SpecError` at the entry."""
    import difflib

    for i, e in enumerate(entries):
        at = f"{where}[{i}]"
        for k, v in e.config.items():
            d = declared.get(k) if declared is not None else None
            if declared is not None and d is None:
                close = difflib.get_close_matches(str(k), list(declared), n=1)
                raise SpecError(f"the harness does not know the parameter '{k}'.",
                                path=f"{at}.config.{k}",
                                hint=(f"Did you mean '{close[0]}'? " if close else "")
                                + f"Known parameters: {', '.join(declared)}.")
            if d is not None and not d.allows(v):
                close = difflib.get_close_matches(str(v), [str(x) for x in d.values], n=1)
                raise SpecError(f"{describe(v)} is not a value of '{k}'.",
                                path=f"{at}.config.{k}",
                                hint=(f"Did you mean '{close[0]}'? " if close else "")
                                + f"'{k}' takes {d.expectation}.")
        if own:
            config, why = complete(e, space, usable_cores=1)
            if config is None:
                missing = next((k for k in e.config if k not in space), None)
                raise SpecError(
                    f"the entry '{e.name}' can never apply: {why}.",
                    path=f"{at}.config.{missing}" if missing else f"{at}.config",
                    hint="An entry applies when its completed configuration lies in the job's "
                         "search space; change the entry or the space.")


def job_portfolio(search_space: Mapping[str, Any], base_dir: Path) -> list[Entry]:
    """The portfolio of a job's ``search_space``: its own ``portfolio:`` (inline spaces) or its
    preset's."""
    if "preset" in search_space:
        path = preset_path(search_space["preset"], [base_dir, base_dir / "search_spaces"])
        located = load_located(path)
        data = located.data if isinstance(located.data, Mapping) else {}
        try:
            return parse_portfolio(data.get("portfolio"))
        except SpecError as exc:
            raise SpecError(exc.reason, file=str(path), path=exc.path, hint=exc.hint,
                            line=located.line_of(_keys(exc.path))) from None
    return parse_portfolio(search_space.get("portfolio"), where="search_space.portfolio")


def _keys(path: str | None) -> list[str | int]:
    out: list[str | int] = []
    for part in (path or "").replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


def complete(entry: Entry, space: SearchSpace, usable_cores: int) -> tuple[dict[str, Any] | None,
                                                                            str]:
    """The entry's full configuration in ``space``, or ``(None, why not)``."""
    missing = [k for k in entry.config if k not in space]
    if missing:
        return None, f"'{missing[0]}' is not a parameter of this job's space"
    config: dict[str, Any] = {}
    table = parameter_table()  # once: it reads the installed packages' entry points
    for p in space:
        if not space.is_active(p, config):
            continue
        if p.name in entry.config:
            config[p.name] = entry.config[p.name]
            continue
        values = p.values() if p.discrete else [p.low]
        default = table.get(p.name, ("", None))[1]
        if p.name == "threads":
            fits = [v for v in values if isinstance(v, int | float) and v <= max(usable_cores, 1)]
            config[p.name] = max(fits) if fits else values[0]
        elif default is not None and p.contains(default):
            config[p.name] = default
        else:
            config[p.name] = values[0]
    unset = [k for k in entry.config if k not in config]
    if unset:
        return None, f"'{unset[0]}' is inactive in this space with the entry's other settings"
    problems = space.validate(config)
    if problems:
        return None, problems[0]
    return config, ""


def applicable(entries: Sequence[Entry], space: SearchSpace, cpu_flags: Sequence[str],
               capabilities: Mapping[str, Any], usable_cores: int) -> Applicable:
    """The entries that match this machine and fit ``space`` (duplicates dropped)."""
    configs, skipped, seen = [], [], set()
    for e in entries:
        if not e.matches(cpu_flags, capabilities):
            skipped.append((e, f"this machine lacks {e.hardware()}"))
            continue
        config, why = complete(e, space, usable_cores)
        if config is None:
            skipped.append((e, why))
            continue
        if config_key(config) in seen:
            continue
        seen.add(config_key(config))
        configs.append((e, config))
    return Applicable(tuple(configs), tuple(skipped))


def for_machine(job: Any, space: SearchSpace, harness: Any) -> Applicable:
    """The job's portfolio on the machine ``harness`` measures on."""
    entries = job_portfolio(job.search_space, Path(job.base_dir))
    if not entries or job.is_custom:
        return Applicable()
    fp = harness.fingerprint()
    return applicable(entries, space, fp.get("cpu_flags", ()), harness.capabilities(),
                      int(fp.get("usable_cores") or fp.get("logical_cores") or 1))


def portfolio_seeds(job: Any, space: SearchSpace, harness: Any, progress: Any
                    ) -> list[tuple[dict[str, Any], str]]:
    """The configurations of the portfolio entries that apply here, to measure first, each with
    its source label (``portfolio: <entry name>``, recorded on its trial); says so through
    ``progress.on_message``."""
    found = for_machine(job, space, harness)
    if found.configs:
        progress.on_message("hardware portfolio: measuring first "
                            + "; ".join(e.name + (" (reference)" if e.reference else "")
                                        for e, _ in found.configs))
    return [(c, e.source) for e, c in found.configs]
