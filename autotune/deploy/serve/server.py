"""The model server: uvicorn (h11) running the app, the micro-batcher, the watcher that hot-swaps.

:class:`ModelServer` binds its socket when built (``port=0``: a free port, see ``url``);
``start()`` serves from background threads (tests, benchmarks, embedding), :meth:`serve_forever`
from the calling (main) thread, where SIGTERM/SIGINT drain: stop accepting, finish the requests in
flight (up to ``drain_timeout_s``), then return.

The HTTP protocol is uvicorn's h11 protocol with three additions: the request line and headers
must arrive within ``header_timeout_s`` of the connection (or of the previous answer), a
connection/task count above ``max_connections`` is answered 503 + Retry-After as JSON, and a
malformed request is answered 400 as JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotune.deploy.bundle import BundleError, hardware_matches, load
from autotune.deploy.serve.app import Observed, create_app
from autotune.deploy.serve.batcher import MicroBatcher
from autotune.deploy.serve.limits import Limits
from autotune.deploy.serve.metrics import Metrics
from autotune.deploy.serve.swap import FolderSource, RegistrySource, Served, model_kind, open_source
from autotune.errors import AutotuneError

log = logging.getLogger("autotune.serve")


def _raw_json(status: int, reason: str, data: dict[str, Any], extra: str = "") -> bytes:
    body = json.dumps(data).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n").encode() + body


#: a lingering close ends after this long without data from the client, or after the body deadline
LINGER_IDLE_S = 1.0


class _LingeringTransport:
    """The connection's transport, whose ``close()`` lingers while the client is still sending a
    request body: a refusal (413 on Content-Length, a 401 or 503 before the body was read) is
    written, our side is shut (FIN), and what keeps arriving is read and dropped until the client
    closes, goes quiet for :data:`LINGER_IDLE_S`, or the body deadline passes; only then is the
    socket closed.  Closing at once with unread data makes the kernel answer with a reset, and a
    client that sends its whole body before reading (Python's ``http.client``, anything on a plain
    socket) then gets ``ConnectionResetError`` instead of the answer."""

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._t = transport
        self._protocol = protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def is_closing(self) -> bool:
        return self.lingering or self._t.is_closing()

    def close(self) -> None:
        import h11

        if self.lingering or self._t.is_closing():
            return
        conn = self._protocol.conn
        if conn.their_state is h11.SEND_BODY and self._t.can_write_eof():
            self.lingering = True
            self._t.write_eof()  # the answer is flushed first, then FIN
            self._t.resume_reading()  # uvicorn pauses reading above its high-water mark
            self._protocol.start_linger()
        else:
            self._t.close()

    def really_close(self) -> None:
        self._t.close()


def _protocol_class(limits: Limits, metrics: Metrics) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def canned(status: int, reason: str, message: str,
               headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
        """An ASGI app answering ``status`` with a JSON error and closing the connection."""
        body = json.dumps({"error": message}).encode()

        async def answer(scope: Any, receive: Any, send: Any) -> None:
            metrics.reject(reason)
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                *headers, (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return answer

    overloaded = canned(503, "connections", f"the server has too many open connections; retry in "
                        f"{limits.retry_after_s} s.",
                        ((b"retry-after", str(limits.retry_after_s).encode()),))
    too_large_head = canned(431, "headers_too_large", f"the request line and headers are larger "
                            f"than this server's limit of {limits.max_header_bytes} bytes.")

    class Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # checked below, answered as JSON with Retry-After
            app, conns, tasks = self.app, self.connections, self.tasks
            cap = limits.max_connections

            async def guarded(scope: Any, receive: Any, send: Any) -> None:
                # h11 bounds only headers that arrive in pieces; one read can bring more
                size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") \
                    + sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or ())
                if size > limits.max_header_bytes:
                    await too_large_head(scope, receive, send)
                elif len(conns) > cap or len(tasks) > cap:
                    await overloaded(scope, receive, send)
                else:
                    await app(scope, receive, send)

            self.app = guarded
            self._header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (its body has its own deadline)
            if self.conn.trailing_data[0]:  # part of a request arrived, not all its headers
                metrics.reject("header_timeout")
                self.transport.write(_raw_json(408, "Request Timeout", {
                    "error": f"the request headers did not arrive within "
                             f"{limits.header_timeout_s:g} s."}))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._linger: _LingeringTransport = _LingeringTransport(transport, self)
            self._linger_timers: list[asyncio.TimerHandle] = []
            self._linger_seen = 0.0
            super().connection_made(self._linger)  # type: ignore[arg-type]
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            for t in self._linger_timers:
                t.cancel()
            super().connection_lost(exc)

        # ------------------------------------------------- lingering close (see _LingeringTransport)
        def start_linger(self) -> None:
            self._linger_seen = self.loop.time()
            self._linger_timers = [
                self.loop.call_later(limits.body_timeout_s, self._linger.really_close),
                self.loop.call_later(LINGER_IDLE_S, self._linger_idle)]

        def _linger_idle(self) -> None:
            quiet = self.loop.time() - self._linger_seen
            if quiet >= LINGER_IDLE_S:
                self._linger.really_close()
            else:
                self._linger_timers.append(
                    self.loop.call_later(LINGER_IDLE_S - quiet, self._linger_idle))

        def data_received(self, data: bytes) -> None:
            if self._linger.lingering:  # the rest of a refused body: read and dropped
                self._linger_seen = self.loop.time()
                return
            super().data_received(data)

        def eof_received(self) -> bool | None:
            if self._linger.lingering:
                self._linger.really_close()
            return super().eof_received()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers arrived
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            self._arm_header_timer()  # before: a pipelined request is parsed inside
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            metrics.reject("bad_http")
            if not self.transport.is_closing():
                self.transport.write(_raw_json(400, "Bad Request", {
                    "error": f"malformed HTTP request (request line or headers; at most "
                             f"{limits.max_header_bytes} bytes of headers): {msg}"}))
            self.transport.close()

    return Protocol


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AutotuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Choose "
                            "another --port (or stop what uses it).") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class ModelServer:
    """Serves one source over HTTP; ``start()`` (threads) or ``serve_forever()`` (main thread)."""

    def __init__(self, source: str | Path | FolderSource | RegistrySource, *, host: str = "127.0.0.1",
                 port: int = 8000, poll_interval: float = 1.0, max_wait_ms: float = 2.0,
                 tracking_uri: str | None = None, admin_token: str | None = None,
                 limits: Limits | None = None, model_name: str | None = None) -> None:
        import uvicorn

        self.source = (open_source(str(source), tracking_uri) if isinstance(source, str | Path)
                       else source)
        self.limits = limits or Limits()
        self.admin_token = admin_token or None
        self.poll_interval = poll_interval
        self.swaps = 0
        self.last_error: str | None = None
        self.metrics = Metrics()
        self._lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._given: Path | None = None  # a folder swapped to by POST /admin/reload {"bundle"}
        self._served: Served = self._load(self.source.current_id())
        self.kind = self._served.kind
        self.model_name = model_name or _default_name(self.source, self._served)
        self.metrics.set_model(self._served.version, self.source.uri, self.kind,
                               self._served.loaded_at, swapped=False)
        self.batcher = MicroBatcher(lambda: self._served, max_wait_ms)
        m = self.metrics
        m.gauge("autotune_serve_batches_total", "predict calls run by the micro-batcher.",
                lambda: self.batcher.batches)
        m.gauge("autotune_serve_batch_items_total", "rows predicted by the micro-batcher.",
                lambda: self.batcher.items)
        m.gauge("autotune_serve_queue_depth", "requests waiting for the micro-batcher.",
                lambda: self.batcher.queued)
        self.app = create_app(self)
        self._sock = _listen(host, port, self.limits.backlog)
        lim = self.limits
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            Observed(self.app, self), http=_protocol_class(lim, m), ws="none", lifespan="off",
            log_config=None, access_log=False, timeout_keep_alive=lim.keep_alive_s, backlog=lim.backlog,
            h11_max_incomplete_event_size=lim.max_header_bytes, server_header=False,
            timeout_graceful_shutdown=lim.drain_timeout_s,  # type: ignore[arg-type]
        ))
        self._threads: list[threading.Thread] = []
        self._http_error: BaseException | None = None

    # ----------------------------------------------------------------- model lifecycle
    @property
    def served(self) -> Served:
        return self._served

    @property
    def ready(self) -> bool:
        return self._served is not None and not self._stop.is_set()

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _load(self, ident: str, given: Path | None = None) -> Served:
        # here, not at the top: generation bundles bring the tuner's record (optuna) with them
        from autotune.deploy.genserve import GenerationService, is_generation_bundle

        path = given or self.source.fetch(ident)
        try:
            # a language model: its engine in its own thread, served on the OpenAI-compatible routes
            model = GenerationService(path) if is_generation_bundle(path) else load(path)
            # warm up beside the old model, so the first request after the swap is not slow
            if hasattr(model, "warmup"):  # another kind of model warms itself up
                model.warmup()
            elif model_kind(model) == "predict":
                model.predict([np.zeros((model.batch_size, *[d or 1 for d in s.shape[1:]]),
                                        dtype=s.dtype) for s in model.inputs])
        except BaseException:
            self.source.release(path)
            raise
        # a folder given to POST /admin/reload: labelled by its manifest, as a folder source does
        version = self.source.version_label(ident) if given is None else \
            FolderSource(given).version_label(FolderSource(given).current_id())
        return Served(model, ident, version, time.time(), path)

    def reload(self, *, force: bool = False, bundle: str | Path | None = None) -> bool:
        """Swap to the source's current model if it changed (or ``force``), or to the bundle folder
        ``bundle`` (``POST /admin/reload {"bundle": ...}``; the source is polled on from its
        current version); True if swapped.

        Raises (and keeps the old model serving) when the new one cannot be loaded.
        """
        with self._lock:
            ident = self.source.current_id() if bundle is None else self._served.ident
            if ident == self._served.ident and not force:
                return False
            path = Path(bundle).resolve() if bundle is not None else None
            if path is not None and not path.is_dir():
                raise BundleError(f"no bundle folder at {bundle}.")
            new = self._load(ident, path)
            if model_kind(new.predictor) != self.kind:
                self._retire(new, release=bundle is None)
                raise BundleError(f"the new model at {new.path} is of kind "
                                  f"{model_kind(new.predictor)!r}; this server serves {self.kind!r} "
                                  "models (start another server for it).")
            old, self._served = self._served, new  # the switch: one reference assignment
            self.swaps += 1
            self.last_error = None
            self.metrics.set_model(new.version, self.source.uri, self.kind, new.loaded_at,
                                   swapped=True)
            log.info("serving %s (was %s)", new.version, old.version)
        # the old model finishes what it is serving (a generation engine: its requests in flight)
        threading.Thread(target=self._retire, args=(old,), kwargs={
            "release": old.path != new.path and old.path != self._given}, daemon=True).start()
        if bundle is not None:
            self._given = new.path
        return True

    def _retire(self, served: Served, *, release: bool = True) -> None:
        close = getattr(served.predictor, "close", None)
        if close is not None:
            close(self.limits.drain_timeout_s)
        if release:
            self.source.release(served.path)

    def _watch(self) -> None:
        failed: str | None = None
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
                failed = None
            except AutotuneError as exc:
                self.last_error = str(exc)
                if str(exc) != failed:  # say it once per distinct problem
                    self.metrics.reload_failed()
                    log.warning("keeping %s: the new model cannot be loaded: %s",
                                self._served.version, exc)
                    failed = str(exc)
            except Exception as exc:  # never let the watcher die
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.last_error != failed:
                    self.metrics.reload_failed()
                    failed = self.last_error
                log.warning("reload failed: %s", self.last_error)

    # ----------------------------------------------------------------- running
    def _start_workers(self) -> None:
        self.batcher.start()
        if self.poll_interval > 0:
            t = threading.Thread(target=self._watch, name="autotune-watch", daemon=True)
            t.start()
            self._threads.append(t)

    def _stop_workers(self) -> None:
        self._stop.set()
        self.batcher.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._retire(self._served, release=self._served.path != self._given)

    def start(self) -> ModelServer:
        """Serve from background threads; returns once the server accepts requests."""
        self._start_workers()

        def run() -> None:
            try:
                asyncio.run(self._uvicorn.serve(sockets=[self._sock]))
            except BaseException as exc:  # surfaced by start()/stop()
                self._http_error = exc

        t = threading.Thread(target=run, name="autotune-http", daemon=True)
        t.start()
        self._http_thread = t
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._uvicorn.started:
            self._stop_workers()
            raise AutotuneError(f"the HTTP server did not start: {self._http_error!r}")
        return self

    def stop(self) -> None:
        """Drain: stop accepting, let the requests in flight finish, then stop the workers."""
        self._uvicorn.should_exit = True
        t = getattr(self, "_http_thread", None)
        if t is not None:
            t.join(timeout=self.limits.drain_timeout_s + 10)
        else:
            self._sock.close()  # never started
        self._stop_workers()

    def serve_forever(self) -> None:
        """Serve from this (main) thread until SIGTERM/SIGINT, then drain and return."""
        self._start_workers()
        main = threading.current_thread() is threading.main_thread()
        # uvicorn drains on SIGTERM/SIGINT, restores these handlers and raises the signal again:
        # a no-op handler then lets this method return (exit status 0) instead of dying mid-cleanup
        prev = {sig: signal.signal(sig, _after_drain) for sig in (signal.SIGTERM, signal.SIGINT)} \
            if main else {}
        try:
            self._uvicorn.run(sockets=[self._sock])
        finally:
            for sig, handler in prev.items():
                signal.signal(sig, handler)
            self._stop_workers()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- views
    def metadata(self) -> dict[str, Any]:
        s = self._served
        m = getattr(s.predictor, "manifest", None) or {}
        deploy = getattr(s.predictor, "deploy", None) or {}
        metrics = m.get("metrics", {})
        return {
            "source": self.source.uri,
            "model_name": self.model_name,
            "kind": s.kind,
            "model_version": s.version,
            "path": str(s.path),
            "loaded_at": s.loaded_at,
            "swaps": self.swaps,
            "last_reload_error": self.last_error,
            "job": m.get("source", {}).get("job"),
            "trial": m.get("source", {}).get("trial"),
            "config": m.get("config"),
            "deploy": {k: v for k, v in deploy.items() if k != "config"},
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
            "limits": {k: getattr(self.limits, k) for k in (
                "max_body_bytes", "body_timeout_s", "header_timeout_s", "max_inflight",
                "max_connections", "request_timeout_s")},
        }


def _after_drain(signum: int, frame: Any) -> None:
    log.info("drained after signal %d", signum)


def _default_name(source: FolderSource | RegistrySource, served: Served) -> str:
    if isinstance(source, RegistrySource):
        return source.name
    m = getattr(served.predictor, "manifest", None) or {}
    job = (m.get("source") or {}).get("job")
    return str(job) if job else source.link.name


def serve(source: str, *, host: str = "127.0.0.1", port: int = 8000, poll_interval: float = 1.0,
          max_wait_ms: float = 2.0, tracking_uri: str | None = None, admin_token: str | None = None,
          limits: Limits | None = None, model_name: str | None = None,
          on_ready: Any = None) -> None:
    """Serve until SIGTERM or Ctrl-C; then drain (finish the requests in flight) and return."""
    server = ModelServer(source, host=host, port=port, poll_interval=poll_interval,
                         max_wait_ms=max_wait_ms, tracking_uri=tracking_uri, admin_token=admin_token,
                         limits=limits, model_name=model_name)
    if on_ready:
        on_ready(server)
    server.serve_forever()
