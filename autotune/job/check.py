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

from autotune.core.refs import resolve
from autotune.core.space import RULE_KEYS, Invalid, Param, SearchSpace, preset_path
from autotune.core.yamlsrc import Located, load_located
from autotune.errors import SpecError
from autotune.job.machine import CAUSES_ATTR, forbid_causes, learned_causes, restrict_to_job
from autotune.job.spec import REF_PATTERN, Job, job_from_located
from autotune.measure.workloads.engine import quiet_transformers
from autotune.measure.workloads.generation import check_positions, model_positions, prompt_texts

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
    #: what validate says besides errors: a path leading outside the job's folder, ...
    notices: tuple[str, ...] = ()

    def rules_of(self, name: str) -> ParamRules:
        return next(r for r in self.rules if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job.name, "file": self.job.source,
                "parameters": [_param_dict(p) for p in self.space],
                "rules": [r.to_dict() for r in self.rules],
                "imports": [i.to_dict() for i in self.imports],
                "notices": list(self.notices)}


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
        run = ImportRun(raw_references(doc), base_dir, _raw_options(doc))
    try:
        job = job_from_located(doc)
        notices = check_files(job, doc)
        space, dropped = _runnable_space(job, doc)
        notices = (*notices, *dropped)
        rules = effective_rules(job, space)
        imports: tuple[ImportCheck, ...] = ()
        if run is not None:
            options = dict(job.model.options) if job.model is not None else None
            if run.refs != job_references(job) or run.options != options:  # others validated
                run.cancel()
                run = ImportRun(job_references(job), job.base_dir, options)
            imports = run.result(job.source, doc, float(import_timeout or 0))
    finally:
        if run is not None:
            run.cancel()
    return JobCheck(job=job, space=space, rules=rules, imports=imports, notices=notices)


def check_files(job: Job, doc: Located) -> tuple[str, ...]:
    """Every file and folder the job names resolves, relative to the job file's folder:
    ``model.onnx``, a warm-start study given as a path, ``evaluation.texts``, the workload's
    prompts and held-out text, and a Hugging Face model (its folder, or its id in the local cache:
    ``config.json`` and the tokenizer load, the task is one its architecture has, and what depends
    on its positions fits them: ``evaluation.sequence_length``, prompt + ``max_new_tokens``).
    Raises a located :class:`SpecError`; returns notices (a path that leads outside the job's
    folder)."""
    base = Path(job.base_dir)
    notices: list[str] = []

    def error(field: str, message: str, hint: str | None = None) -> SpecError:
        return SpecError(message, file=job.source, line=doc.line_of(tuple(_keys(field))),
                         path=field, hint=hint)

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
            raise error(field, f"no file at {path}.", "Paths are relative to the job file's folder.")
    ev = job.evaluation
    if ev is not None and isinstance(ev.texts, str):
        _text_file(job, "evaluation.texts", ev.texts, error, notices, lines=True)
    wl = job.workload
    if wl is not None:
        if isinstance(wl.prompts, str):
            _text_or_ref(job, "workload.prompts", wl.prompts, error, notices, lines=True)
        elif not isinstance(wl.prompts, list):
            _text_or_ref(job, "workload.prompts.text", wl.prompts.text, error, notices)
        if wl.held_out:
            _text_or_ref(job, "workload.held_out", wl.held_out, error, notices)
    if job.model is not None and job.model.huggingface:
        _check_huggingface(job, error, notices)
    return tuple(notices)


def _keys(field: str) -> list[str | int]:
    out: list[str | int] = []
    for part in field.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


def _outside(job: Job, field: str, name: str, path: Path, notices: list[str]) -> None:
    """A notice when ``name`` leads outside the job's folder (as written: a link inside the
    folder to elsewhere is the user's own arrangement)."""
    base = Path(job.base_dir).resolve()
    written = Path(os.path.normpath(base / Path(name).expanduser()))
    if not written.is_relative_to(base):
        notices.append(f"{field}: '{name}' leads outside the job's folder ({base}), to {path}")


def _is_ref(job: Job, name: str) -> bool:
    """Whether ``run`` takes this value as ``module:function`` (autotune.measure.workloads.generation's
    rule: it has a colon, is not absolute, and names no file next to the job)."""
    base = Path(job.base_dir)
    try:
        exists = (base / name).exists()
    except (OSError, ValueError):
        exists = False
    return ":" in name and not exists and not Path(name).is_absolute()


def _text_or_ref(job: Job, field: str, name: str, error: Any, notices: list[str], *,
                 lines: bool = False) -> None:
    if _is_ref(job, name):
        if not REF_PATTERN.match(name):
            raise error(field, f"expected a text file (relative to the job file) or "
                        f"'module:function', found {name!r}.")
        return  # imported by the import check (job_references)
    _text_file(job, field, name, error, notices, lines=lines)


def _text_file(job: Job, field: str, name: str, error: Any, notices: list[str], *,
               lines: bool = False) -> str:
    """The UTF-8 text of a file the job names; with ``lines``, it must have a non-empty line."""
    hint = "Give a UTF-8 text file; paths are relative to the job file's folder."
    try:
        path = (Path(job.base_dir) / Path(name).expanduser()).resolve()
        kind = "folder" if path.is_dir() else "file" if path.is_file() else \
            "other" if path.exists() else None
    except (OSError, ValueError, RuntimeError):
        raise error(field, f"cannot resolve the path {name!r}.", hint) from None
    if kind is None:
        raise error(field, f"no file at {path}.", hint)
    if kind != "file":
        raise error(field, f"{path} is a {'folder' if kind == 'folder' else 'special file'}, "
                    "not a text file.", hint)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise error(field, f"cannot read {path}: {exc.strerror or exc}.", hint) from None
    except UnicodeDecodeError:
        raise error(field, f"{path} is not UTF-8 text.", hint) from None
    if lines and not any(line.strip() for line in text.splitlines()):
        raise error(field, f"{path} has no non-empty lines (one text per line).", hint)
    _outside(job, field, name, path, notices)
    return text


#: the transformers model mapping that must hold a config's class for each task
_TASK_MAPPING = {"text-generation": "MODEL_FOR_CAUSAL_LM_MAPPING",
                 "text-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING",
                 "feature-extraction": "MODEL_MAPPING"}


def _check_huggingface(job: Job, error: Any, notices: list[str]) -> None:
    """The Hugging Face model: folder or cached id, config and tokenizer load offline, the task
    fits the architecture, and the lengths fit its positions."""
    import transformers

    assert job.model is not None and job.model.huggingface is not None
    quiet_transformers()  # offline; no progress bars
    ref, field = str(job.model.huggingface), "model.huggingface"
    hint = ("Give a folder written by save_pretrained (relative to the job file) or the id of a "
            "model already in the local Hugging Face cache; nothing is downloaded.")
    try:
        local = (Path(job.base_dir) / Path(ref).expanduser())
        folder = local.resolve() if local.is_dir() else None
    except (OSError, ValueError, RuntimeError):
        folder = None
    if folder is None:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ref, local_files_only=True))
        except Exception:
            raise error(field, f"{ref!r} is neither a folder (relative to {job.base_dir}) nor a "
                        "model in the local Hugging Face cache.", hint) from None
    else:
        _outside(job, field, ref, folder, notices)
    if not (folder / "config.json").is_file():
        raise error(field, f"{folder} has no config.json: not a saved model.", hint)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise error(field, f"the model's config.json does not load: {_first_line(exc)}",
                    hint) from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise error(field, f"the model's tokenizer does not load: {_first_line(exc)}",
                    "The folder needs the tokenizer files too (tokenizer.save_pretrained)."
                    ) from None
    task = str(job.model.task)
    mapping = getattr(transformers, _TASK_MAPPING[task], None)
    if mapping is not None and type(config) not in mapping:
        raise error("model.task", f"the model's architecture '{config.model_type}' has no "
                    f"'{task}' model in transformers.",
                    f"Tasks: {', '.join(_TASK_MAPPING)}; choose the one the model was made for.")
    positions = model_positions(config.to_dict())
    ev = job.evaluation
    if job.model.is_encoder and ev is not None and positions is not None \
            and ev.sequence_length > positions:
        raise error("evaluation.sequence_length",
                    f"sequence_length {ev.sequence_length} exceeds the model's {positions} "
                    "positions (max_position_embeddings).",
                    f"Give at most {positions}.")
    wl = job.workload
    if wl is None:
        return
    prompts = wl.prompts
    ref_prompts = (isinstance(prompts, str) and _is_ref(job, prompts)) or \
        (not isinstance(prompts, str | list) and _is_ref(job, prompts.text))
    if ref_prompts:  # user code makes them: only run knows how long they are
        longest = 1
    else:
        try:
            longest = max(len(tok(p)["input_ids"]) for p in prompt_texts(job))
        except SpecError as exc:
            raise error(exc.path or "workload.prompts", exc.reason, exc.hint) from None
    try:
        check_positions(job, longest, positions)
    except SpecError as exc:
        raise error(exc.path or "workload.max_new_tokens", exc.reason, exc.hint) from None


def _runnable_space(job: Job, doc: Located) -> tuple[SearchSpace, tuple[str, ...]]:
    """The job's space less what the job cannot run (:func:`autotune.job.machine.restrict_to_job`) and
    the failure causes its study (if it has run before) has learned, with a notice for each."""
    try:
        space, notices = restrict_to_job(job.space, job)
    except SpecError as exc:
        raise SpecError(exc.reason, file=job.source, path=exc.path, hint=exc.hint,
                        line=doc.line_of(tuple(_keys(exc.path or "search_space")))) from None
    learned: list[str] = []
    url = job.storage_url
    if url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).is_file():
        from autotune.record.study import open_record  # optuna: only when there is a study to read

        try:
            causes = learned_causes(open_record(job, create=False).attr(CAUSES_ATTR))
        except Exception:  # a study of other objectives, a locked or foreign file: nothing learned
            causes = []
        space, learned = forbid_causes(space, causes)
        learned = [f"{n} (the study learned it; not proposed again)" for n in learned]
    return space, (*notices, *learned)


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
    wl = job.workload
    if wl is not None:  # a text-generation workload's module:function prompts / held-out text
        text = wl.prompts if isinstance(wl.prompts, str) else \
            None if isinstance(wl.prompts, list) else wl.prompts.text
        field = "workload.prompts" if isinstance(wl.prompts, str) else "workload.prompts.text"
        for f, v in ((field, text), ("workload.held_out", wl.held_out)):
            if v and _is_ref(job, v) and REF_PATTERN.match(v):
                refs.append((f, v))
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

    def __init__(self, refs: Sequence[tuple[str, str]], base_dir: str,
                 options: Mapping[str, Any] | None = None) -> None:
        self.refs = [(str(f), str(r)) for f, r in refs]
        #: ``model.options``: the factory must take them (checked against its signature)
        self.options = dict(options) if options is not None else None
        self.t0 = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="autotune-check-")
        self.out = Path(self._tmp.name) / "events.jsonl"
        if not self.refs:
            return
        sys_path = [p or os.getcwd() for p in sys.path]  # '' is this process's folder
        request = {"refs": self.refs, "base_dir": base_dir, "sys_path": sys_path,
                   "out": str(self.out), "options": self.options}
        cmd = [sys.executable, "-c", "from autotune.job.check import _child; _child()"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=base_dir if Path(base_dir).is_dir() else None)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request, default=str).encode())
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
                  "objective", "workload.prompts", "workload.prompts.text", "workload.held_out"):
        v: Any = data
        for part in field.split("."):
            v = v.get(part) if isinstance(v, Mapping) else None
        if isinstance(v, str) and REF_PATTERN.match(v):
            out.append((field, v))
    return out


def _raw_options(doc: Located) -> dict[str, Any] | None:
    data = doc.data if isinstance(doc.data, Mapping) else {}
    model = data.get("model")
    options = model.get("options", {}) if isinstance(model, Mapping) else None
    return dict(options) if isinstance(options, Mapping) else None


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
                fn = resolve(ref, search_paths=[request["base_dir"]], field=field)
                if field == "model.factory" and request.get("options") is not None:
                    _takes(fn, ref, request["options"])
            except SpecError as exc:
                emit(event="spec", field=exc.path or field, ref=ref, message=exc.reason, hint=exc.hint)
                code = 1
                break
            except BaseException as exc:  # anything the user's module raises
                emit(event="raised", field=field, ref=ref, type=type(exc).__name__,
                     message=_first_line(exc), where=_user_frame(exc))
                code = 1
                break
            emit(event="ok", field=field, ref=ref)
    os._exit(code)


def _takes(fn: Any, ref: str, options: Mapping[str, Any]) -> None:
    """The model factory accepts ``model.options`` as keyword arguments (``run`` calls it so)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin): run finds out
        return
    try:
        sig.bind(**options)
    except TypeError as exc:
        raise SpecError(f"the model factory '{ref}' does not take these options: {exc}.",
                        path="model.options",
                        hint=f"'{ref}' takes: {', '.join(sig.parameters) or 'no arguments'}."
                        ) from None


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
