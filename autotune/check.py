"""What ``autotune validate`` checks and shows, as data the CLI prints (or serializes).

:func:`check_job` loads the job (every spec check), lists the effective ``when:``/``invalid:``
rules of each parameter with where they come from (a preset, kept by an override, or the job), and
imports the job's ``module:function`` references (model factory, dataset, metric, loss, objective)
in a child process with a time limit, so that a missing module, an exception or a hang on import,
or a missing attribute is reported as a located error before ``run`` -- and a hang cannot hang
``validate``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import SpecError
from autotune.refs import resolve
from autotune.space import RULE_KEYS, Invalid, Param, SearchSpace, preset_path
from autotune.spec import REF_PATTERN, Job, job_from_located
from autotune.yamlsrc import Located, load_located

#: default seconds for importing all of a job's references in the child process
IMPORT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ParamRules:
    """The effective rules of one parameter and where they were declared."""

    name: str
    when: Mapping[str, tuple[Any, ...]]
    invalid: tuple[Invalid, ...]
    #: 'job' (inline space or a parameter the overrides add), 'preset', 'override' (the override
    #: gives its own rules), or 'preset (kept by the override)'
    origin: str

    def lines(self) -> list[str]:
        """The rules as short text lines (empty when the parameter has none)."""
        out = []
        if self.when:
            out.append("when " + _cond(self.when))
        for inv in self.invalid:
            why = f" ({inv.reason})" if inv.reason else ""
            out.append(f"invalid {'|'.join(map(_show, inv.values))} when {_cond(inv.when)}{why}")
        return [f"{line}   [{self.origin}]" for line in out]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "when": {k: list(v) for k, v in self.when.items()},
                "invalid": [{"values": list(i.values), "when": {k: list(v) for k, v in
                                                                 i.when.items()},
                             "reason": i.reason} for i in self.invalid],
                "origin": self.origin}


@dataclass(frozen=True)
class ImportCheck:
    """One ``module:function`` reference imported in the child process."""

    field: str
    ref: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "ref": self.ref, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class JobCheck:
    """The result of checking a job file: the job, its space, the effective rules per parameter
    and the references imported (empty when the import check was skipped)."""

    job: Job
    space: SearchSpace
    rules: tuple[ParamRules, ...]
    imports: tuple[ImportCheck, ...]

    def rules_of(self, name: str) -> ParamRules:
        return next(r for r in self.rules if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job.name, "file": self.job.source,
                "parameters": [_param_dict(p) for p in self.space],
                "rules": [r.to_dict() for r in self.rules],
                "imports": [i.to_dict() for i in self.imports]}


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _cond(when: Mapping[str, tuple[Any, ...]]) -> str:
    return ", ".join(f"{k}={'|'.join(map(_show, vs))}" for k, vs in when.items())


def _param_dict(p: Param) -> dict[str, Any]:
    if p.kind == "categorical":
        return {"name": p.name, "kind": p.kind, "choices": list(p.choices)}
    return {"name": p.name, "kind": p.kind, "low": p.low, "high": p.high, "step": p.step,
            "log": p.log}


def check_job(path: str | Path, *, import_timeout: float | None = IMPORT_TIMEOUT_S) -> JobCheck:
    """Load and check a job file; with ``import_timeout`` (seconds; None or 0 skips it) import its
    references in a child process.  Raises a located :class:`SpecError` on any problem."""
    doc = load_located(path)
    run: ImportRun | None = None
    if import_timeout and import_timeout > 0:  # first: importing a model module takes seconds
        base_dir = str(Path(doc.file).resolve().parent)
        run = ImportRun(raw_references(doc), base_dir)
    try:
        job = job_from_located(doc)
        check_files(job, doc)
        space = job.space
        rules = effective_rules(job, space)
        imports: tuple[ImportCheck, ...] = ()
        if run is not None:
            if run.refs != job_references(job):  # the validated job names other references
                run.cancel()
                run = ImportRun(job_references(job), job.base_dir)
            imports = run.result(job.source, doc, float(import_timeout or 0))
    finally:
        if run is not None:
            run.cancel()
    return JobCheck(job=job, space=space, rules=rules, imports=imports)


def check_files(job: Job, doc: Located) -> None:
    """The files the job names exist: ``model.onnx`` and a warm-start study given as a path
    (both relative to the job file)."""
    base = Path(job.base_dir)
    named: list[tuple[str, str]] = []
    if job.model is not None and job.model.onnx:
        named.append(("model.onnx", str(job.model.onnx)))
    ws = job.agent.warm_start_from
    if ws is not None and "://" not in ws.storage:
        named.append(("agent.warm_start_from.storage", ws.storage))
    for field, name in named:
        path = Path(name) if Path(name).is_absolute() else base / name
        try:
            ok = path.is_file()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise SpecError(f"no file at {path}.", file=job.source,
                            line=doc.line_of(tuple(field.split("."))), path=field,
                            hint="Paths are relative to the job file's folder.")


def effective_rules(job: Job, space: SearchSpace) -> tuple[ParamRules, ...]:
    """Each parameter's effective ``when:``/``invalid:`` rules and where they were declared."""
    raw = job.search_space
    overrides: Mapping[str, Any] = {}
    preset: Mapping[str, Any] = {}
    if "preset" in raw:
        overrides = raw.get("overrides") or {}
        base = Path(job.base_dir)
        data = load_located(preset_path(raw["preset"], [base, base / "search_spaces"])).data
        preset = data.get("parameters") or {}
    out = []
    for p in space:
        if "preset" not in raw:
            origin = "job"
        elif p.name not in overrides:
            origin = "preset"
        else:
            given = overrides[p.name]
            own = isinstance(given, Mapping) and any(k in given for k in RULE_KEYS[:2])
            origin = "override" if own or p.name not in preset else \
                "preset (kept by the override)"
        out.append(ParamRules(p.name, p.when, p.invalid, origin))
    return tuple(out)


# ------------------------------------------------------------------------ references
def job_references(job: Job) -> list[tuple[str, str]]:
    """(field path, ``module:function``) of every reference the job makes, in file order."""
    refs: list[tuple[str, str]] = []
    model, ev = job.model, job.evaluation
    if model is not None and getattr(model, "factory", None):
        refs.append(("model.factory", str(model.factory)))
    if ev is not None:
        if ev.dataset:
            refs.append(("evaluation.dataset", ev.dataset))
        if ":" in ev.metric:
            refs.append(("evaluation.metric", ev.metric))
        if ev.loss:
            refs.append(("evaluation.loss", ev.loss))
    if job.objective:
        refs.append(("objective", job.objective))
    return refs


def check_imports(job: Job, doc: Located | None = None, *,
                  timeout: float = IMPORT_TIMEOUT_S) -> tuple[ImportCheck, ...]:
    """Import the job's references in a child process (the job file's folder searched first, then
    this process's import path, as ``run`` does); raise a located :class:`SpecError` for a missing
    module or attribute, an exception on import, a crash, or no answer within ``timeout`` seconds.
    """
    return ImportRun(job_references(job), job.base_dir).result(job.source, doc, timeout)


class ImportRun:
    """The import check running in its child process (started at once, so that the caller can
    validate the rest of the job meanwhile); :meth:`result` waits for it."""

    def __init__(self, refs: Sequence[tuple[str, str]], base_dir: str) -> None:
        self.refs = [(str(f), str(r)) for f, r in refs]
        self.t0 = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="autotune-check-")
        self.out = Path(self._tmp.name) / "events.jsonl"
        if not self.refs:
            return
        sys_path = [p or os.getcwd() for p in sys.path]  # '' is this process's folder
        request = {"refs": self.refs, "base_dir": base_dir, "sys_path": sys_path,
                   "out": str(self.out)}
        cmd = [sys.executable, "-c", "from autotune.check import _child; _child()"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=base_dir if Path(base_dir).is_dir() else None)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode())
            self.proc.stdin.close()
        except OSError:  # the child died at once; result() reports how
            pass

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)
        self._tmp.cleanup()

    def result(self, source: str, doc: Located | None,
               timeout: float) -> tuple[ImportCheck, ...]:
        try:
            return self._result(source, doc, timeout)
        finally:
            self.cancel()

    def _result(self, source: str, doc: Located | None,
                timeout: float) -> tuple[ImportCheck, ...]:
        if self.proc is None:
            return ()

        def error(field: str, message: str, hint: str | None = None) -> SpecError:
            line = doc.line_of(tuple(field.split("."))) if doc is not None else None
            return SpecError(message, file=source, line=line, path=field, hint=hint)

        proc = self.proc
        timed_out = False
        try:
            proc.wait(timeout=max(0.0, timeout - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        elapsed = time.monotonic() - self.t0
        done: list[ImportCheck] = []
        started: dict[str, float] = {}
        for ev in _read_events(self.out):
            field, ref = ev["field"], ev["ref"]
            if ev["event"] == "start":
                started[field] = ev["t"]
            elif ev["event"] == "ok":
                done.append(ImportCheck(field, ref, ev["t"] - started.get(field, ev["t"])))
            elif ev["event"] == "spec":
                raise error(field, ev["message"], ev.get("hint"))
            elif ev["event"] == "raised":
                where = f" at {ev['where']}" if ev.get("where") else ""
                msg = str(ev["message"]).rstrip()
                msg += "" if msg.endswith((".", "!", "?")) else "."
                raise error(
                    field, f"importing '{ref}' raised {ev['type']}{where}: {msg}",
                    "Fix the module so that importing it (and looking the function up) works; "
                    f"run 'python -c \"import {ref.partition(':')[0]}\"' next to the job file "
                    "to see the traceback.")
        pending = [(f, r) for f, r in self.refs if f not in {d.field for d in done}]
        if not pending:
            return tuple(done)
        field, ref = pending[0]
        if timed_out:
            raise error(
                field, f"importing '{ref}' did not finish within {timeout:g} s (it hangs, or "
                "does slow work such as training or downloading at import time).",
                "Move slow work from import time into the function, or allow more time: "
                "autotune validate --import-timeout SECONDS.")
        code = proc.returncode
        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               and -code in signal.valid_signals() else f"exited with code {code}")
        raise error(field, f"importing '{ref}' ended the process ({how}, after {elapsed:.1f} s).",
                    "Importing the module must not exit or crash the interpreter.")


def raw_references(doc: Located) -> list[tuple[str, str]]:
    """The references of a parsed (not yet validated) job file that are well formed, so that
    their import can start while the rest of the job is validated."""
    data = doc.data if isinstance(doc.data, Mapping) else {}
    out = []
    for field in ("model.factory", "evaluation.dataset", "evaluation.metric", "evaluation.loss",
                  "objective"):
        v: Any = data
        for part in field.split("."):
            v = v.get(part) if isinstance(v, Mapping) else None
        if isinstance(v, str) and REF_PATTERN.match(v):
            out.append((field, v))
    return out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child we started and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if isinstance(ev, dict) and {"event", "field", "ref", "t"} <= set(ev):
            events.append(ev)
    return events


def _child() -> None:
    """Entry point of the import-check child: import each reference, write one JSON line per
    event, then exit at once (threads the user's modules started cannot keep it alive)."""
    request = json.loads(sys.stdin.read())
    sys.path[:] = [p for p in request["sys_path"] if isinstance(p, str)]
    code = 0
    with open(request["out"], "a", encoding="utf-8") as out:

        def emit(**ev: Any) -> None:
            out.write(json.dumps({**ev, "t": time.monotonic()}, default=str) + "\n")
            out.flush()

        for field, ref in request["refs"]:
            emit(event="start", field=field, ref=ref)
            try:
                resolve(ref, search_paths=[request["base_dir"]], field=field)
            except SpecError as exc:
                emit(event="spec", field=field, ref=ref, message=exc.reason, hint=exc.hint)
                code = 1
                break
            except BaseException as exc:  # anything the user's module raises
                emit(event="raised", field=field, ref=ref, type=type(exc).__name__,
                     message=_first_line(exc), where=_user_frame(exc))
                code = 1
                break
            emit(event="ok", field=field, ref=ref)
    os._exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else "(no message)"
    return first[:300] + ("..." if len(first) > 300 else "")


def _user_frame(exc: BaseException) -> str | None:
    """file:line of the innermost frame outside Python's import machinery and autotune."""
    import traceback

    frames: Sequence[traceback.FrameSummary] = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    here = str(Path(__file__).resolve().parent)
    for f in reversed(frames):
        if "importlib" in f.filename or f.filename.startswith("<frozen") \
                or str(Path(f.filename).resolve()).startswith(here):
            continue
        return f"{f.filename}:{f.lineno}"
    return None
