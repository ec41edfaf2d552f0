"""``autotune serve``: HTTP serving of a bundle with micro-batching and hot swap.

* ``POST /predict`` — JSON ``{"inputs": [[...], ...]}`` (or ``{"inputs": {"name": [...]}}`` for
  several inputs) → ``{"outputs": [...], "model_version": ...}``; a ``.npy`` body
  (``Content-Type: application/x-npy``) is accepted too, and ``Accept: application/x-npy`` returns
  one.
* ``GET /health``, ``GET /metadata`` (manifest summary, model version), ``POST /admin/reload``.

Requests are queued; one worker collects them for up to ``max_wait_ms`` or until the tuned batch
size is reached, runs one ``predict`` and scatters the rows back.  A watcher polls the source
(bundle folder: the manifest's hash; ``models:/name@alias``: the alias's version) every
``poll_interval`` seconds.  A new model is loaded and warmed beside the old one, then the
reference is switched in one assignment; the batch in flight keeps the old model, which is freed
when that batch is done.  A model that fails to load is reported and the old one keeps serving.

Stdlib only (``http.server.ThreadingHTTPServer``): nothing to install, nothing to misconfigure.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from autotune.deploy.bundle import MANIFEST, BundleError, Predictor, hardware_matches, load
from autotune.errors import AutotuneError

log = logging.getLogger("autotune.serve")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w.-]+)$")


# ---------------------------------------------------------------------------------- sources
class FolderSource:
    """A bundle folder; its identity is the SHA-256 of its manifest (written last on export)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.uri = str(self.path)

    def current_id(self) -> str:
        try:
            return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise BundleError(f"cannot read {self.path / MANIFEST}: {exc}") from None

    def fetch(self, ident: str) -> Path:
        return self.path

    def release(self, path: Path) -> None:
        pass

    def version_label(self, ident: str) -> str:
        return f"manifest:{ident}"


class RegistrySource:
    """``models:/name@alias`` in an MLflow registry; its identity is the alias's version."""

    def __init__(self, uri: str, tracking_uri: str | None) -> None:
        m = _MODELS_URI.match(uri)
        if not m:
            raise AutotuneError(f"cannot read the model URI {uri!r}; expected models:/NAME@ALIAS.")
        from autotune.deploy.export import _mlflow_quiet

        _mlflow_quiet()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.name, self.alias = m["name"], m["alias"]
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def current_id(self) -> str:
        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:
            raise BundleError(f"cannot resolve {self.uri} in {self.tracking_uri}: {exc}") from None

    def fetch(self, ident: str) -> Path:
        import mlflow

        tmp = Path(tempfile.mkdtemp(prefix=f"autotune-serve-{self.name}-v{ident}-"))
        with _registry(self.tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{ident}", dst_path=str(tmp),
                tracking_uri=self.tracking_uri))
        found = sorted(local.rglob(MANIFEST))
        if not found:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"models:/{self.name}/{ident} holds no autotune bundle.")
        return found[0].parent

    def release(self, path: Path) -> None:
        for parent in path.parents:
            if parent.name.startswith("autotune-serve-"):
                shutil.rmtree(parent, ignore_errors=True)
                return

    def version_label(self, ident: str) -> str:
        return f"{self.name}/{ident}"


@contextlib.contextmanager
def _registry(uri: str) -> Any:
    import mlflow

    prev = mlflow.get_registry_uri()
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_registry_uri(prev)


def open_source(source: str, tracking_uri: str | None = None) -> FolderSource | RegistrySource:
    if source.startswith("models:/"):
        return RegistrySource(source, tracking_uri)
    return FolderSource(source)


# ---------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Served:
    predictor: Predictor
    ident: str
    version: str
    loaded_at: float
    path: Path

    @property
    def batch_size(self) -> int:
        return self.predictor.batch_size


@dataclass
class _Request:
    inputs: list[np.ndarray]
    n: int
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    version: str = ""
    error: BaseException | None = None


class MicroBatcher:
    """One worker thread; gathers requests into batches of up to the model's batch size."""

    def __init__(self, current: Callable[[], Served], max_wait_ms: float = 2.0) -> None:
        self._current = current
        self.max_wait_s = max_wait_ms / 1000.0
        self._q: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="autotune-batcher", daemon=True)
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def submit(self, inputs: list[np.ndarray], timeout: float = 30.0) -> tuple[np.ndarray, str]:
        req = _Request(inputs, int(inputs[0].shape[0]))
        self._q.put(req)
        if not req.done.wait(timeout):
            raise TimeoutError("the model did not answer in time")
        if req.error is not None:
            raise req.error
        assert req.output is not None
        return req.output, req.version

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            served = self._current()  # one reference per batch: a swap never splits a batch
            group = [first]
            total = first.n
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while total < served.batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                total += nxt.n
            self._execute(served, group)
            del served  # the old model (after a swap) is released here
            if stop:
                return

    def _execute(self, served: Served, group: list[_Request]) -> None:
        try:
            arrays = [np.concatenate(parts, axis=0) for parts in zip(*(r.inputs for r in group),
                                                                      strict=True)]
            bs = max(served.batch_size, 1)
            outs = [served.predictor.predict([a[i:i + bs] for a in arrays])
                    for i in range(0, arrays[0].shape[0], bs)]
            out = np.concatenate(outs, axis=0)
            self.batches += len(outs)
            self.items += arrays[0].shape[0]
        except BaseException as exc:
            for r in group:
                r.error = exc
                r.done.set()
            return
        start = 0
        for r in group:
            r.output = out[start:start + r.n]
            r.version = served.version
            start += r.n
            r.done.set()


class ModelServer:
    """Serves one source; ``start()`` runs the HTTP server, the batcher and the watcher threads."""

    def __init__(self, source: str | Path | FolderSource | RegistrySource, *, host: str = "127.0.0.1",
                 port: int = 8000, poll_interval: float = 1.0, max_wait_ms: float = 2.0,
                 tracking_uri: str | None = None) -> None:
        self.source = (open_source(str(source), tracking_uri) if isinstance(source, str | Path)
                       else source)
        self.poll_interval = poll_interval
        self.swaps = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._served: Served = self._load(self.source.current_id())
        self.batcher = MicroBatcher(lambda: self._served, max_wait_ms)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- model lifecycle
    @property
    def served(self) -> Served:
        return self._served

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _load(self, ident: str) -> Served:
        path = self.source.fetch(ident)
        try:
            predictor = load(path)
            # warm up beside the old model, so the first request after the swap is not slow
            predictor.predict([np.zeros((predictor.batch_size, *[d or 1 for d in s.shape[1:]]),
                                        dtype=s.dtype) for s in predictor.inputs])
        except BaseException:
            self.source.release(path)
            raise
        return Served(predictor, ident, self.source.version_label(ident), time.time(), path)

    def reload(self, *, force: bool = False) -> bool:
        """Swap to the source's current model if it changed (or ``force``); True if swapped.

        Raises (and keeps the old model serving) when the new one cannot be loaded.
        """
        with self._lock:
            ident = self.source.current_id()
            if ident == self._served.ident and not force:
                return False
            new = self._load(ident)
            old, self._served = self._served, new  # the switch: one reference assignment
            self.swaps += 1
            self.last_error = None
            if old.path != new.path:
                self.source.release(old.path)
            log.info("serving %s (was %s)", new.version, old.version)
            return True

    def _watch(self) -> None:
        failed: str | None = None
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
                failed = None
            except AutotuneError as exc:
                self.last_error = str(exc)
                if str(exc) != failed:  # say it once per distinct problem
                    log.warning("keeping %s: the new model cannot be loaded: %s",
                                self._served.version, exc)
                    failed = str(exc)
            except Exception as exc:  # never let the watcher die
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reload failed: %s", self.last_error)

    # ----------------------------------------------------------------- running
    def start(self) -> ModelServer:
        self.batcher.start()
        for target, name in ((self.httpd.serve_forever, "autotune-http"),
                             (self._watch, "autotune-watch")):
            if name == "autotune-watch" and self.poll_interval <= 0:
                continue
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()
        for t in self._threads:
            t.join(timeout=5)
        self.source.release(self._served.path)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- views
    def metadata(self) -> dict[str, Any]:
        s = self._served
        m = s.predictor.manifest
        metrics = m.get("metrics", {})
        return {
            "source": self.source.uri,
            "model_version": s.version,
            "loaded_at": s.loaded_at,
            "swaps": self.swaps,
            "last_reload_error": self.last_error,
            "job": m.get("source", {}).get("job"),
            "trial": m.get("source", {}).get("trial"),
            "config": m.get("config"),
            "deploy": {k: v for k, v in s.predictor.deploy.items() if k != "config"},
            "inputs": m.get("inputs"),
            "outputs": m.get("outputs"),
            "measured": {k: metrics.get(k) for k in (
                "latency_p50_ms", "latency_p95_ms", "throughput_ips", "quality",
                "model_size_mb") if k in metrics},
            "latency": m.get("latency"),
            "constraints": m.get("constraints"),
            "hardware": {"digest": (m.get("hardware") or {}).get("digest"),
                         "summary": (m.get("hardware") or {}).get("summary"),
                         "matches_this_machine": hardware_matches(m)},
            "created_at": m.get("created_at"),
        }


# ---------------------------------------------------------------------------------- HTTP
def _handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
        server_version = "autotune-serve"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            log.debug(format, *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data, default=str).encode())

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok", "model_version": server.served.version})
            elif self.path == "/metadata":
                self._json(200, server.metadata())
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path == "/predict":
                self._predict()
            elif self.path == "/admin/reload":
                self._body()
                try:
                    swapped = server.reload(force=False)
                except AutotuneError as exc:
                    self._json(500, {"error": str(exc), "model_version": server.served.version})
                    return
                self._json(200, {"reloaded": swapped, "model_version": server.served.version})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def _predict(self) -> None:
            body = self._body()
            ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
            predictor = server.served.predictor
            try:
                if ctype in ("application/x-npy", "application/octet-stream"):
                    raw: Any = np.load(io.BytesIO(body), allow_pickle=False)
                else:
                    data = json.loads(body or b"{}")
                    if not isinstance(data, dict) or "inputs" not in data:
                        raise BundleError('the JSON body must be {"inputs": [[...], ...]}')
                    raw = data["inputs"]
                    if isinstance(raw, list) and len(predictor.inputs) > 1:
                        raw = [np.asarray(x) for x in raw]
                inputs = predictor.as_inputs(raw)
            except (ValueError, BundleError) as exc:
                self._json(400, {"error": str(exc)})
                return
            try:
                out, version = server.batcher.submit(inputs)
            except Exception as exc:
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
                return
            if "application/x-npy" in (self.headers.get("Accept") or ""):
                buf = io.BytesIO()
                np.save(buf, out, allow_pickle=False)
                self._send(200, buf.getvalue(), "application/x-npy")
            else:
                self._json(200, {"outputs": out.tolist(), "model_version": version})

    return Handler


def serve(source: str, *, host: str = "127.0.0.1", port: int = 8000, poll_interval: float = 1.0,
          max_wait_ms: float = 2.0, tracking_uri: str | None = None,
          on_ready: Callable[[ModelServer], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = ModelServer(source, host=host, port=port, poll_interval=poll_interval,
                         max_wait_ms=max_wait_ms, tracking_uri=tracking_uri).start()
    if on_ready:
        on_ready(server)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- load test
@dataclass(frozen=True)
class LoadReport:
    requests: int
    failures: int
    seconds: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    versions: dict[str, int]  # model version → requests it answered
    errors: tuple[str, ...] = ()  # the first few failures

    def line(self) -> str:
        return (f"requests={self.requests} failures={self.failures} "
                f"rps={self.requests / max(self.seconds, 1e-9):.0f} p50={self.p50_ms:.2f}ms "
                f"p95={self.p95_ms:.2f}ms max={self.max_ms:.1f}ms versions={self.versions}")


def load_test(url: str, body: bytes, *, seconds: float = 3.0, threads: int = 8,
              content_type: str = "application/json",
              events: tuple[tuple[float, Callable[[], Any]], ...] = ()) -> LoadReport:
    """Send ``body`` to ``url``/predict from ``threads`` keep-alive connections for ``seconds``;
    ``events`` (offset in s, action) run meanwhile, e.g. a model swap.  Any non-200 answer or
    connection error counts as a failure."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    stop = threading.Event()
    lock = threading.Lock()
    lat: list[float] = []
    versions: dict[str, int] = {}
    errors: list[str] = []
    counts = {"ok": 0, "fail": 0}

    def worker() -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200
                version = json.loads(data).get("model_version", "?") if ok else ""
                err = "" if ok else f"HTTP {resp.status}: {data[:200]!r}"
            except Exception as exc:
                ok, version, err = False, "", f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            dt_ms = (time.perf_counter() - t0) * 1000.0
            with lock:
                if ok:
                    counts["ok"] += 1
                    lat.append(dt_ms)
                    versions[version] = versions.get(version, 0) + 1
                else:
                    counts["fail"] += 1
                    if len(errors) < 5:
                        errors.append(err)
        conn.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    t_start = time.perf_counter()
    for t in pool:
        t.start()
    for offset, action in sorted(events, key=lambda e: e[0]):
        time.sleep(max(0.0, t_start + offset - time.perf_counter()))
        action()
    time.sleep(max(0.0, t_start + seconds - time.perf_counter()))
    stop.set()
    for t in pool:
        t.join(timeout=30)
    elapsed = time.perf_counter() - t_start
    a = np.asarray(lat) if lat else np.asarray([float("nan")])
    return LoadReport(
        requests=counts["ok"] + counts["fail"], failures=counts["fail"], seconds=elapsed,
        p50_ms=float(np.percentile(a, 50)), p95_ms=float(np.percentile(a, 95)),
        max_ms=float(a.max()), versions=versions, errors=tuple(errors),
    )
