"""Generation bundles: written by export, verified at load, served by ``autotune serve``.

A generation bundle is a folder::

    config.json, generation_config.json, model.safetensors   the model (save_pretrained; fp32)
    tokenizer.json, tokenizer_config.json, ...              the tokenizer
    generation.yaml    the tuned settings (quantization, cache, attention, batching, max_batch,
                       threads, prefill chunk): applied at load by the same code that measured them
    manifest.json      format, source trial, metrics, constraints, and a SHA-256 for every file

Nothing is unpickled: weights are safetensors, settings YAML/JSON; every file read is listed in
the manifest, checked against its hash and stays inside the bundle.

:class:`GenerationService` is a loaded bundle as ``autotune serve`` serves it (model kind
``generation``): the engine the bundle was measured with, in its own thread.  The server
(:mod:`autotune.deploy.serve`) mounts the OpenAI-compatible routes for it beside its common routes,
with the same limits, admission, admin token, metrics and hot swap as a predict bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autotune.core.files import write_atomic
from autotune.deploy.bundle import (
    GENERATION_FORMAT,
    MANIFEST,
    BundleError,
    constraint_report,
    library_versions,
    read_bundle_file,
    read_manifest,
    redact_url,
    write_manifest,
)
from autotune.deploy.serve.swap import open_source
from autotune.errors import AutotuneError
from autotune.measure.workloads.engine import Live, Request, Source, load_tokenizer
from autotune.measure.workloads.generation import (
    bundle_engine,
    engine_settings,
    model_folder,
    runtime_files,
    settings_from_dict,
)
from autotune.tuning.tuner import open_record

GEN_FORMAT = GENERATION_FORMAT
GENERATION_YAML = "generation.yaml"
#: files of a model folder a bundle may carry (no pickles: no *.bin, *.pt, *.pkl)
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


# ------------------------------------------------------------------------------ bundles
def is_generation_bundle(path: str | Path, tracking_uri: str | None = None) -> bool:
    """Whether a bundle folder (or the bundle ``models:/NAME@ALIAS`` points to) is a
    generation bundle."""
    if str(path).startswith("models:/"):
        try:
            src = open_source(str(path), tracking_uri)
            local = src.fetch(src.current_id())
        except AutotuneError:
            return False  # the ONNX server reports the problem
        try:
            return is_generation_bundle(local)
        finally:
            src.release(local)
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("format") == GEN_FORMAT
    except (OSError, ValueError):
        return False


def write_generation_bundle(job: Any, view: Any, out: Path, *, pick: str = "",
                            record: Any = None) -> dict[str, Any]:
    """Write the bundle of a text-generation trial (files atomically, the manifest last)."""
    import datetime as dt

    import yaml

    record = record or open_record(job, create=False)
    config = dict(view.config)
    wl = job.workload
    settings = engine_settings(config, wl.concurrency)
    folder = model_folder(job)
    files: dict[str, bytes] = {}
    for name in _MODEL_FILES:
        if (folder / name).is_file():
            files[name] = (folder / name).read_bytes()
    if "model.safetensors" not in files:
        raise AutotuneError(f"the model folder {folder} has no model.safetensors (sharded or "
                            "pickled weights are not bundled); save it with save_pretrained.")
    files.update(runtime_files(job, settings, folder))  # e.g. the measured GGUF file
    files[GENERATION_YAML] = yaml.safe_dump({
        "format": GEN_FORMAT, "settings": settings.to_dict(),
        "workload": {"concurrency": wl.concurrency, "max_new_tokens": wl.max_output_tokens},
        "config": config}, sort_keys=False).encode()
    manifest = {
        "format": GEN_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": "text-generation",
        "source": {"job": job.name, "job_file": job.source, "study": redact_url(job.storage_url),
                   "study_name": record.study.study_name, "trial": view.number, "pick": pick,
                   "agent": view.agent, "model_folder": str(folder)},
        "config": config, "settings": settings.to_dict(), "feasible": view.feasible,
        "objectives": [list(o) for o in job.objective_pairs], "metrics": dict(view.metrics),
        "baseline": record.baseline, "constraints": constraint_report(job, view, record.baseline),
        "runtime": {"measured": settings.to_dict().get("runtime", "torch"),
                     "same_model": True, "latency_applies": True},
        "libraries": {"exported": library_versions()},
        "model_hash": record.attr("model_hash"), "environment": record.attr("environment"),
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                  for n, d in files.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    old: set[str] = set()
    if (out / MANIFEST).is_file():
        with contextlib.suppress(ValueError):
            old = set(json.loads((out / MANIFEST).read_text()).get("files", {}))
    for name, data in files.items():
        write_atomic(out / name, data)
    manifest = write_manifest(out, manifest)  # sealed: its digest covers it
    for stale in old - set(files):
        (out / stale).unlink(missing_ok=True)
    return manifest


def verified_bundle(path: str | Path) -> tuple[Path, dict[str, Any], Any]:
    """(folder, manifest, settings) of a generation bundle whose files match their hashes."""
    import yaml

    root = Path(path).resolve()
    manifest = read_manifest(root)  # a plain file, its digest, safe file names (and signature)
    if manifest.get("format") != GEN_FORMAT:
        raise BundleError(f"{root} is not a generation bundle (format {manifest.get('format')!r}).")
    files = manifest["files"]
    if GENERATION_YAML not in files:
        raise BundleError(f"{root} has no {GENERATION_YAML}.")
    data = {}
    for name in files:  # confined to the folder, sizes before hashes, checksums
        raw = read_bundle_file(root, name, files)
        if name == GENERATION_YAML:
            data = yaml.safe_load(raw.decode("utf-8"))
    return root, manifest, settings_from_dict(data["settings"])


# ------------------------------------------------------------------------------ the served model
#: how a bundle's engine is built, by the runtime that measured it (``manifest.runtime.measured``):
#: ``build(bundle folder, settings, manifest) -> (engine, tokenizer)``.  The engine is anything with
#: ``run(source, *, stop)`` serving :class:`~autotune.measure.workloads.engine.Request` objects from a
#: :class:`~autotune.measure.workloads.engine.Source` (tokens through ``Request.emit``, the end through the
#: engine calling ``source.on_done`` and ``Request.on_finish``), as
#: :class:`~autotune.measure.workloads.engine.Engine` does; the tokenizer is a transformers tokenizer
#: (``__call__`` → ``input_ids``, ``decode``, optional chat template).  Any such engine is served
#: behind the same OpenAI-compatible routes (:mod:`autotune.deploy.serve.completions`).
EngineBuilder = Callable[[Path, Any, Mapping[str, Any]], tuple[Any, Any]]
_ENGINES: dict[str, EngineBuilder] = {}


def register_generation_engine(runtime: str, build: EngineBuilder) -> None:
    """Serve generation bundles measured with ``runtime`` through the engine ``build`` returns."""
    _ENGINES[runtime] = build


def _measured_engine(root: Path, settings: Any, manifest: Mapping[str, Any]) -> tuple[Any, Any]:
    """The engine the bundle was measured with (its settings say which: torch or llama.cpp)."""
    tokenizer = load_tokenizer(root)
    return bundle_engine(root, settings, tokenizer), tokenizer


register_generation_engine("torch", _measured_engine)
register_generation_engine("llama_cpp", _measured_engine)


def _max_positions(root: Path, manifest: Mapping[str, Any]) -> int | None:
    """The model's context length from its config.json (None when it does not say)."""
    if "config.json" not in manifest.get("files", {}):
        return None
    try:
        cfg = json.loads(read_bundle_file(root, "config.json", manifest["files"]))
    except (BundleError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return int(cfg[key])
    return None


#: ``AUTOTUNE_ENGINE_PROCESS=1`` runs the engine in a process of its own (default: a thread)
ENGINE_PROCESS_ENV = "AUTOTUNE_ENGINE_PROCESS"


class GenerationService:
    """A loaded generation bundle, served (model kind ``generation``).

    The engine runs in a thread of this process on a
    :class:`~autotune.measure.workloads.engine.Live` source, or (``process=True``, or
    ``AUTOTUNE_ENGINE_PROCESS=1``; our own engines only) in a process of its own
    (:class:`EngineProcess`), where the server's event loop, HTTP parsing and JSON never hold the
    GIL the engine's Python needs between kernels.  On the shared 2-core machine (load ~10) the
    thread served more tokens/s (0.56x vs 0.43x of the engine in-process,
    experiments/bench_genserve.py --process): the process adds a hop (engine -> pipe -> reader
    thread -> event loop) and every hop waits for a core there; with cores to spare the process
    keeps the GIL to the engine.  Either way requests are submitted from the event loop and
    stream their tokens back through callbacks (on a thread that is not the event loop's)."""

    kind = "generation"

    def __init__(self, bundle: str | Path, *, process: bool | None = None) -> None:
        import os

        self.root, self.manifest, self.settings = verified_bundle(bundle)
        runtime = str((self.manifest.get("runtime") or {}).get("measured") or "torch")
        if runtime not in _ENGINES:
            raise BundleError(f"{self.root} was measured with the generation runtime {runtime!r}, "
                              f"which this installation cannot serve (known: {sorted(_ENGINES)}).")
        self.runtime = runtime
        if process is None:
            process = os.environ.get(ENGINE_PROCESS_ENV, "0").strip().lower() in (
                "1", "true", "yes", "on")
        # only our own builder is rebuilt in the child (a plugin's may hold state of this process)
        self.isolated = bool(process) and _ENGINES[runtime] is _measured_engine
        self.max_positions = _max_positions(self.root, self.manifest)
        self.name = str((self.manifest.get("source") or {}).get("job") or "autotune")
        self.in_flight = 0
        self.tokens_out = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.engine: Any = None
        if self.isolated:
            self.tokenizer = load_tokenizer(self.root)
            self.source: Any = EngineProcess(self.root)
            self._thread: threading.Thread | None = None
        else:
            self.engine, self.tokenizer = _ENGINES[runtime](self.root, self.settings, self.manifest)
            self.source = Live()
            self._thread = threading.Thread(target=self.engine.run, args=(self.source,),
                                            kwargs={"stop": self._stop}, daemon=True,
                                            name=f"autotune-gen-{self.root.name}")
            self._thread.start()

    @property
    def batch_size(self) -> int:
        return int(self.settings.max_batch)

    def submit(self, prompt_ids: list[int], max_tokens: int,
               on_token: Callable[[Any, int], None] | None,
               on_finish: Callable[[Any], None]) -> Request:
        """Queue one request for the engine; callbacks run on the engine's (or the engine
        process's reader) thread."""
        with self._lock:
            self.in_flight += 1

        def finished(req: Request) -> None:
            with self._lock:
                self.in_flight -= 1
                self.tokens_out += len(req.tokens)
            on_finish(req)

        return self.source.submit(Request(list(prompt_ids), max_tokens, time.perf_counter(),
                                          on_token=on_token, on_finish=finished))

    def cancel(self, req: Request) -> None:
        """Stop generating for ``req`` (its client left): the engine retires it at its next step."""
        req.done = True
        if self.isolated:
            self.source.cancel(req)

    def warmup(self) -> None:
        """One short request through the engine, so the first client does not pay for it."""
        ids = self.tokenizer("warm up")["input_ids"] or [int(self.tokenizer.pad_token_id or 0)]
        req = self.submit(ids, 2, None, lambda r: None)
        if not req.finished.wait(300):
            raise BundleError(f"{self.root}: the engine did not answer a warm-up request in 300 s.")
        if req.error:
            raise BundleError(f"{self.root}: the engine failed a warm-up request: {req.error}")

    def close(self, drain_s: float = 120.0) -> None:
        """Stop after the requests in flight are served (at most ``drain_s``)."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self.isolated:
            self.source.close()
        elif self._thread is not None:
            self._thread.join(5)


# ------------------------------------------------------------------------------ the engine process
class _PipeSource(Source):
    """In the engine process: requests come from the server through a pipe; each engine step's
    tokens and ends go back in one message (``stepped``)."""

    resilient = True

    def __init__(self, conn: Any, stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.reqs: dict[int, Request] = {}
        self._tokens: dict[int, list[int]] = {}
        self._ends: list[tuple[int, str | None]] = []

    def _read(self, now: float) -> list[Request]:
        new = []
        while self.conn.poll():
            try:
                msg = json.loads(self.conn.recv_bytes())
            except EOFError:  # the server went away
                self.stop.set()
                return new
            for op in msg:
                if op[0] == "s":  # submit: id, prompt ids, max tokens
                    rid = int(op[1])
                    req = Request(list(op[2]), int(op[3]), now, id=rid, on_token=self._token)
                    self.reqs[rid] = req
                    new.append(req)
                elif op[0] == "c" and int(op[1]) in self.reqs:  # cancel
                    self.reqs[int(op[1])].done = True
                elif op[0] == "q":  # quit
                    self.stop.set()
        return new

    def poll(self, now: float) -> list[Request]:
        return self._read(now)

    def _token(self, req: Request, token: int) -> None:
        self._tokens.setdefault(req.id, []).append(token)

    def on_done(self, req: Request, now: float) -> None:
        self.reqs.pop(req.id, None)
        self._ends.append((req.id, req.error))

    def stepped(self) -> None:
        if not self._tokens and not self._ends:
            return
        msg = {"t": self._tokens, "e": self._ends}
        self._tokens, self._ends = {}, []
        self.conn.send_bytes(json.dumps(msg, separators=(",", ":")).encode())

    def wait(self, timeout: float) -> None:
        self.conn.poll(timeout)


def _engine_main(conn: Any, root: str) -> None:
    """The engine process: build the bundle's engine as the server would, say ready (or why
    not), serve the pipe until told to quit or the server is gone."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the server, which stops us
    try:
        folder, manifest, settings = verified_bundle(root)
        engine, _ = _measured_engine(folder, settings, manifest)
    except BaseException as exc:  # reported to the server, which raises it where it loads
        conn.send_bytes(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    conn.send_bytes(b'{"ready":true}')
    stop = threading.Event()
    source = _PipeSource(conn, stop)
    engine.run(source, stop=stop)
    for req in list(source.reqs.values()):  # stopped with requests left: say so
        req.error = "the server stopped the engine"
        source.on_done(req, time.perf_counter())
    with contextlib.suppress(OSError):
        source.stepped()


class EngineProcess:
    """The server's side of the engine process: ``submit``/``cancel`` send to it, a reader
    thread receives each step's tokens and ends and calls the requests' callbacks.  If the
    process dies, the requests in flight (and later ones) fail with its exit code."""

    def __init__(self, root: Path) -> None:
        import multiprocessing as mp

        # never fork the server (it runs threads); the fork server is a fresh single-threaded
        # process that imports the engine's modules once, so a second engine starts fast
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["autotune.deploy.genserve", "torch", "transformers"])
        self._conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_engine_main, args=(child, str(root)), daemon=True,
                                name=f"autotune-engine-{root.name}")
        self.proc.start()
        child.close()
        try:
            first = json.loads(self._conn.recv_bytes()) if self._conn.poll(600) else \
                {"error": "it did not load the bundle within 600 s"}
        except EOFError:
            first = {"error": f"it exited with code {self.proc.join(5) or self.proc.exitcode}"}
        if "error" in first:
            self.proc.kill()
            raise BundleError(f"{root}: the engine process failed to start: {first['error']}")
        self._reqs: dict[int, Request] = {}
        self._next = 0
        self._lock = threading.Lock()  # ids, the table, the pipe's write end
        self.error: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"autotune-engine-reader-{root.name}")
        self._reader.start()

    def submit(self, req: Request) -> Request:
        with self._lock:
            if self.error is None:
                req.id = self._next
                self._next += 1
                self._reqs[req.id] = req
                try:
                    self._conn.send_bytes(json.dumps(
                        [["s", req.id, req.prompt_ids, req.max_new_tokens]]).encode())
                    return req
                except OSError as exc:
                    self._reqs.pop(req.id, None)
                    self.error = f"the engine process is gone ({exc})"
        req.error = self.error
        req.done = True
        req.finished.set()
        if req.on_finish is not None:
            req.on_finish(req)
        return req

    def cancel(self, req: Request) -> None:
        with self._lock, contextlib.suppress(OSError):
            if req.id in self._reqs:
                self._conn.send_bytes(json.dumps([["c", req.id]]).encode())

    def _read(self) -> None:
        while True:
            try:
                msg = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            now = time.perf_counter()
            for rid, tokens in msg["t"].items():
                req = self._reqs.get(int(rid))
                if req is not None:
                    req.emit_all(tokens, now)
            for rid, error in msg["e"]:
                with self._lock:
                    req = self._reqs.pop(int(rid), None)
                if req is not None:
                    self._end(req, error)
        self.proc.join(5)
        with self._lock:
            self.error = self.error or (f"the engine process exited (code {self.proc.exitcode})")
            left, self._reqs = list(self._reqs.values()), {}
        for req in left:
            self._end(req, self.error)

    @staticmethod
    def _end(req: Request, error: str | None) -> None:
        req.error = error
        req.done = True
        req.finished.set()
        if req.on_finish is not None:
            req.on_finish(req)

    def close(self) -> None:
        with self._lock:
            if self.error is None:
                self.error = "the engine is stopped"
            with contextlib.suppress(OSError):
                self._conn.send_bytes(b'[["q"]]')
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._reader.join(5)
        self._conn.close()


def copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle folder (manifest last, so a watcher never sees a partial one)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            shutil.copy2(p, dst / p.name)
    write_atomic(dst / MANIFEST, (src / MANIFEST).read_bytes())
