"""The Python API for notebooks and scripts: tune a job, read its results as a DataFrame.

```python
import autotune

res = autotune.tune("experiments/digits-cpu.yaml")   # or a dict, or a Job
res.front                                             # the Pareto front (TrialView objects)
df = res.to_frame()                                   # one row per trial (pandas)
df[df.pareto]                                         # the front
autotune.trials_frame("experiments/digits-cpu.yaml")  # the same table, without tuning
```

``tune`` is ``autotune run``: it continues the job's study where it stopped, and the study
(``runs/<name>/study.db`` by default) holds every trial.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from autotune.core.space import PARAM_KEYS, PRESET_DIR
from autotune.core.yamlsrc import Located
from autotune.errors import AutotuneError, SpecError
from autotune.job.spec import Job, job_from_located, load_job
from autotune.record.study import TrialCounts
from autotune.tuning.tuner import Progress, run, status

if TYPE_CHECKING:
    import pandas as pd

    from autotune.job.spec import Job
    from autotune.record.study import TrialView
    from autotune.tuning.tuner import Progress, RunSummary

__all__ = ["Results", "as_job", "job_schema", "load_results", "trials_frame", "tune"]

def as_job(job: Any, *, base_dir: str | os.PathLike[str] | None = None) -> Job:
    """A :class:`~autotune.job.spec.Job` from a path to a job file, a dict with the file's content, or
    a Job (returned as is).

    For a dict, modules named by ``module:function`` and relative paths (``runs/<name>``, an ONNX
    file) are looked up in ``base_dir`` (default: the current directory); a mistake raises the
    same :class:`~autotune.errors.SpecError` as a file would, with the field's path.
    """
    if isinstance(job, Job):
        return job
    if isinstance(job, str | os.PathLike):
        return load_job(job)
    if isinstance(job, Mapping):
        parsed = job_from_located(Located(data=dict(job), file="<memory>"))
        where = Path(base_dir) if base_dir is not None else Path.cwd()
        return parsed.model_copy(update={"base_dir": str(where.resolve())})
    raise SpecError(f"a job is a path to a job file, a dict or an autotune Job; got "
                    f"{type(job).__name__}.")


@dataclass(frozen=True)
class Results(TrialCounts):
    """A job's trials as read from its study (after :func:`tune`, or by :func:`load_results`).

    ``trials`` are every trial (``state``: complete, failed, invalid, running), ``front`` the
    feasible Pareto front, ``baseline`` the unmodified model's metrics; ``finished`` says whether
    the budget is used up; ``new_trials`` how many the :func:`tune` call measured (0 when loaded).
    """

    job: Job
    trials: tuple[TrialView, ...]
    front: tuple[TrialView, ...]
    baseline: Mapping[str, float]
    finished: bool
    new_trials: int = 0
    notices: tuple[str, ...] = ()

    @classmethod
    def from_summary(cls, job: Job, summary: RunSummary) -> Results:
        return cls(job=job, trials=summary.trials, front=summary.front,
                   baseline=dict(summary.baseline), finished=summary.finished,
                   new_trials=summary.new_trials, notices=summary.notices)

    def to_frame(self, *, include_invalid: bool = False) -> pd.DataFrame:
        """One row per trial, indexed by trial number: ``state``, ``feasible``, ``pareto`` (on
        the front), the configuration's parameters, every metric, ``reason`` (why it failed)
        and ``duration_s``.  Invalid combinations (never measured) only with
        ``include_invalid=True``.  Columns: those, then parameters in search-space order, then
        metrics with the objectives first."""
        import pandas as pd

        on_front = {t.number for t in self.front}
        rows = []
        for t in self.trials:
            if t.state == "invalid" and not include_invalid:
                continue
            row: dict[str, Any] = {"trial": t.number, "state": t.state, "feasible": t.feasible,
                                   "pareto": t.number in on_front}
            row.update(t.config)
            row.update(t.metrics)
            row["reason"] = t.reason or None
            row["duration_s"] = t.duration_s
            rows.append(row)
        head = ["trial", "state", "feasible", "pareto"]
        params = [p for p in self.job.space.names if any(p in r for r in rows)]
        params += sorted({k for t in self.trials for k in t.config} - set(params))
        objectives = [m for m, _ in self.job.objective_pairs]
        metrics = sorted({k for t in self.trials for k in t.metrics} - set(objectives))
        cols = head + params + [m for m in objectives if any(m in r for r in rows)] + metrics
        cols += ["reason", "duration_s"]
        return pd.DataFrame(rows, columns=cols).set_index("trial")


def _printing_progress(out: TextIO) -> Progress:
    """One line per message and per trial, for notebooks (no terminal redrawing)."""
    def on_trial(view: TrialView, done: int, total: int, front: Sequence[TrialView]) -> None:
        state = view.state if view.state != "complete" else (
            "ok" if view.feasible else "infeasible")
        why = f": {view.reason.splitlines()[0][:160]}" if view.state == "failed" else ""
        print(f"trial {done}/{total} #{view.number} {state}{why} · front {len(front)}", file=out,
              flush=True)

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    return Progress(on_trial=on_trial, on_message=say, on_status=say)


def tune(job: Any, *, max_trials: int | None = None, quiet: bool = False,
         progress: Progress | None = None, base_dir: str | os.PathLike[str] | None = None
         ) -> Results:
    """Run (or continue) a job until its budget is used up, and return its :class:`Results`.

    ``job``: a path to a job file, a dict with a job file's content (see :func:`as_job` for
    ``base_dir``), or a :class:`~autotune.job.spec.Job`.  ``max_trials`` overrides the budget.
    Progress is printed one line per trial to stderr unless ``quiet``; pass your own
    :class:`autotune.tuning.tuner.Progress` to draw it differently.  Bad input raises
    :class:`~autotune.errors.SpecError`; failed trials are recorded in the results, not raised.
    """
    import multiprocessing

    if multiprocessing.current_process().name == "autotune-harness":
        # the measuring process is spawned: it imports the caller's script, which must not tune
        raise AutotuneError(
            "autotune.tune() ran again inside the measuring process, which imports your script "
            "as Python's multiprocessing does; put the call under "
            "`if __name__ == \"__main__\":` (notebooks need nothing).")
    spec = as_job(job, base_dir=base_dir)
    if progress is None:
        progress = Progress() if quiet else _printing_progress(sys.stderr)
    summary = run(spec, max_trials=max_trials, progress=progress)
    return Results.from_summary(spec, summary)


def load_results(job: Any, *, base_dir: str | os.PathLike[str] | None = None) -> Results:
    """The results of a job that has run (its study), without measuring anything; a
    :class:`~autotune.errors.StudyError` if it never ran."""
    spec = as_job(job, base_dir=base_dir)
    return Results.from_summary(spec, status(spec))


def trials_frame(job: Any, *, base_dir: str | os.PathLike[str] | None = None,
                 include_invalid: bool = False) -> pd.DataFrame:
    """``load_results(job).to_frame()``: the job's trials as a pandas DataFrame."""
    return load_results(job, base_dir=base_dir).to_frame(include_invalid=include_invalid)


def job_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of job files, for editor completion and checks
    (``autotune schema``).  Generated from the :class:`~autotune.job.spec.Job` model; the loader's
    own fields (``source``, ``base_dir``) are left out, and ``search_space`` parameters are
    described as in ``search_spaces/*.yaml``."""
    schema = Job.model_json_schema(mode="validation")
    props, defs = schema["properties"], schema["$defs"]
    for internal in ("source", "base_dir"):
        props.pop(internal, None)
    # what the loader accepts beyond the models' own types (their "before" validators)
    metric = {"type": "string", "description": "a metric name, e.g. latency_p95_ms, accuracy"}
    props["objectives"]["items"] = {"anyOf": [metric, {"$ref": "#/$defs/ObjectiveSpec"}]}
    props["tracking"] = {"anyOf": [{"type": "string", "description": "MLflow tracking URI"},
                                   {"$ref": "#/$defs/TrackingSpec"}]}
    defs["BudgetSpec"]["properties"]["timeout"] = {
        "anyOf": [{"type": "number", "minimum": 0},
                  {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhd]?\s*$"},
                  {"type": "null"}],
        "default": None, "description": "seconds, or a duration like '90s', '10m', '2h'"}
    props["constraints"]["items"]["description"] = (
        "METRIC OP VALUE, e.g. 'accuracy_drop <= 1%', 'latency_p95_ms <= 80% of baseline'")
    props["search_space"] = _search_space_schema(defs)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "autotune job"
    schema["description"] = ("An autotune job file: the model, how to judge it, what to search, "
                             "which objectives and constraints, the agent and the budget.")
    schema["additionalProperties"] = False
    return schema


def _search_space_schema(defs: dict[str, Any]) -> dict[str, Any]:
    """``search_space:``: a preset (+ overrides) or inline parameters, each parameter with
    ``choices`` or ``low``/``high`` (the keys :mod:`autotune.core.space` accepts)."""
    scalar = {"type": ["string", "number", "integer", "boolean", "null"]}
    param_props: dict[str, Any] = {
        "choices": {"type": "array", "items": scalar, "minItems": 1},
        "low": {"type": ["number", "string"], "description": "a number, or 'cores'"},
        "high": {"type": ["number", "string"], "description": "a number, or 'cores'"},
        "step": {"type": "number", "exclusiveMinimum": 0},
        "log": {"type": "boolean"},
        "type": {"type": "string"},
        "when": {"type": "object", "description": "condition: {parameter: value or [values]}"},
        "invalid": {"type": "array", "items": {"type": "object", "properties": {
            "values": {"type": "array"}, "when": {"type": "object"},
            "reason": {"type": "string"}}}},
        "description": {"type": "string"},
    }
    assert set(param_props) == set(PARAM_KEYS)  # the schema follows the parser
    defs["Parameter"] = {
        "anyOf": [{"type": "array", "items": scalar, "description": "the choices"},
                  {"type": "object", "properties": param_props, "additionalProperties": False}],
    }
    params = {"type": "object", "additionalProperties": {"$ref": "#/$defs/Parameter"}}
    overrides = {"type": "object", "additionalProperties": {
        "anyOf": [{"$ref": "#/$defs/Parameter"}, {"type": "null"}]},
        "description": "replace a preset's parameter; null removes it"}
    strings = {"type": "array", "items": {"type": "string"}}
    portfolio = {  # autotune.job.portfolio: measured first where the hardware matches
        "type": "array", "items": {
            "type": "object", "required": ["name", "config"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"}, "note": {"type": "string"},
                "reference": {"type": "boolean", "description": "a hand recipe to compare with"},
                "config": {"type": "object", "description": "a partial configuration"},
                "when": {"type": "object", "additionalProperties": False, "properties": {
                    "cpu_flags": {**strings, "description": "any of these CPU flags"},
                    "capabilities": {**strings, "description": "all of these capabilities"}}},
            }}}
    return {
        "title": "Search Space",
        "anyOf": [
            {"type": "object", "required": ["preset"], "additionalProperties": False,
             "properties": {"preset": {"type": "string", "examples": _presets()},
                            "overrides": overrides}},
            {"type": "object", "required": ["parameters"], "additionalProperties": False,
             "properties": {"parameters": params, "portfolio": portfolio}},
        ],
    }


def _presets() -> list[str]:
    return sorted(p.stem for p in Path(PRESET_DIR).glob("*.yaml"))
