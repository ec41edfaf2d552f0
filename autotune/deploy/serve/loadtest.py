"""Load tests and a malformed-request corpus for a running server (loopback benchmarks, tests).

* :func:`load_test` — N keep-alive client threads (``http.client``) for a few seconds, with
  timed events (e.g. a model swap); any non-200 answer or connection error is a failure.
* :func:`concurrent_load` — many asyncio clients (200 by default) on raw keep-alive connections;
  counts connection resets, connections closed without an answer, 503s, latency percentiles.
* :func:`malformed_corpus` / :func:`probe` — hostile or broken requests, each sent on its own
  connection; the server must answer each with a 4xx JSON error quickly.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np


# ---------------------------------------------------------------------------------- threads
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
              content_type: str = "application/json", path: str = "/predict",
              events: tuple[tuple[float, Callable[[], Any]], ...] = ()) -> LoadReport:
    """Send ``body`` to ``url`` + ``path`` from ``threads`` keep-alive connections for
    ``seconds``; ``events`` (offset in s, action) run meanwhile, e.g. a model swap.  Any non-200
    answer or connection error counts as a failure."""
    import http.client

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
                conn.request("POST", path, body=body, headers={"Content-Type": content_type})
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


# ---------------------------------------------------------------------------------- raw HTTP
class NoAnswer(ConnectionError):
    """The server closed the connection without an answer."""


def _request(method: str, path: str, host: str, headers: Mapping[str, str], body: bytes = b"",
             length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    hdrs = dict(headers)
    chunked = any(k.lower() == "transfer-encoding" for k in hdrs)
    if (body or method in ("POST", "PUT")) and not chunked:
        hdrs.setdefault("Content-Length", str(len(body) if length is None else length))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    line = await reader.readline()
    if not line:
        raise NoAnswer("the server closed the connection without an answer")
    parts = line.split(b" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            out += await reader.readexactly(size)
            await reader.readline()
        body = bytes(out)
    else:
        body = await reader.read()
    return status, headers, body


# ---------------------------------------------------------------------------------- many clients
@dataclass(frozen=True)
class ConcurrentReport:
    clients: int
    seconds: float
    answered: int  # requests that got an HTTP answer (any code)
    codes: dict[int, int]  # status code → count
    resets: int  # connection reset / broken pipe
    no_answer: int  # connection closed without an answer
    timeouts: int  # no answer within the client timeout
    connect_errors: int
    retry_after_missing: int  # 503 answers without a Retry-After header
    p50_ms: float  # of 200 answers
    p99_ms: float
    max_ms: float
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> int:
        return self.codes.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (f"clients={self.clients} seconds={self.seconds:.1f} answered={self.answered} "
                f"ok={self.ok} throughput={self.throughput:.0f}/s p50={self.p50_ms:.1f}ms "
                f"p99={self.p99_ms:.1f}ms max={self.max_ms:.0f}ms 503={self.codes.get(503, 0)} "
                f"codes={dict(sorted(self.codes.items()))} resets={self.resets} "
                f"no_answer={self.no_answer} timeouts={self.timeouts} "
                f"connect_errors={self.connect_errors}")


async def _concurrent(url: str, body: bytes, clients: int, seconds: float, path: str,
                      content_type: str, backoff_s: float, timeout_s: float) -> ConcurrentReport:
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", int(u.port or 80)
    req = _request("POST", path, f"{host}:{port}", {"Content-Type": content_type}, body)
    codes: dict[int, int] = {}
    lat: list[float] = []
    errs: list[str] = []
    tally = {"resets": 0, "no_answer": 0, "timeouts": 0, "connect": 0, "answered": 0, "no_retry": 0}
    start = time.perf_counter()
    deadline = start + seconds

    def note(kind: str, exc: BaseException) -> None:
        tally[kind] += 1
        if len(errs) < 8:
            errs.append(f"{kind}: {type(exc).__name__}: {exc}")

    async def client(i: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        await asyncio.sleep(random.random() * 0.05)  # not all 200 in the same millisecond
        while time.perf_counter() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                            timeout_s)
                except (OSError, TimeoutError) as exc:
                    note("connect", exc)
                    await asyncio.sleep(backoff_s)
                    continue
            assert reader is not None
            t0 = time.perf_counter()
            try:
                writer.write(req)
                await writer.drain()
                status, headers, _ = await asyncio.wait_for(read_response(reader), timeout_s)
            except (ConnectionResetError, BrokenPipeError) as exc:
                note("resets", exc)
                writer.close()
                writer = None
                continue
            except (NoAnswer, asyncio.IncompleteReadError) as exc:
                note("no_answer", exc)
                writer.close()
                writer = None
                continue
            except TimeoutError as exc:
                note("timeouts", exc)
                writer.close()
                writer = None
                continue
            tally["answered"] += 1
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                lat.append((time.perf_counter() - t0) * 1000.0)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
            if status == 503:  # told to retry later: back off (at most backoff_s here)
                tally["no_retry"] += "retry-after" not in headers
                retry = float(headers.get("retry-after", "1") or 1)
                await asyncio.sleep(min(retry, backoff_s) * (0.5 + random.random()))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    a = np.asarray(lat) if lat else np.asarray([float("nan")])
    return ConcurrentReport(
        clients=clients, seconds=elapsed, answered=tally["answered"], codes=codes,
        resets=tally["resets"], no_answer=tally["no_answer"], timeouts=tally["timeouts"],
        connect_errors=tally["connect"], retry_after_missing=tally["no_retry"],
        p50_ms=float(np.percentile(a, 50)),
        p99_ms=float(np.percentile(a, 99)), max_ms=float(a.max()), errors=tuple(errs))


def concurrent_load(url: str, body: bytes, *, clients: int = 200, seconds: float = 10.0,
                    path: str = "/predict", content_type: str = "application/json",
                    backoff_s: float = 1.0, timeout_s: float = 30.0) -> ConcurrentReport:
    """``clients`` asyncio clients, each on its own keep-alive connection, send ``body`` in a loop
    for ``seconds`` (then stop by themselves).  A 503 makes that client wait (Retry-After, at most
    ``backoff_s``) and try again; a closed connection is reopened."""
    return asyncio.run(_concurrent(url, body, clients, seconds, path, content_type, backoff_s,
                                   timeout_s))


# ---------------------------------------------------------------------------------- malformed
@dataclass(frozen=True)
class Case:
    """One hostile request: ``head`` (+ ``body``) is sent at once, then ``trickle`` bytes one at
    a time every ``trickle_every_s`` (a slow client); then the answer is awaited."""

    name: str
    head: bytes
    body: bytes = b""
    trickle: bytes = b""
    trickle_every_s: float = 0.3
    expect: tuple[int, ...] = ()  # the expected codes (any 4xx when empty)


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: int | None
    seconds: float
    json_error: bool  # a JSON object with an "error" field
    detail: str

    @property
    def passed(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.json_error

    def line(self) -> str:
        mark = "ok " if self.passed else "BAD"
        return f"{mark} {self.name:<34} {self.status!s:>4} {self.seconds * 1000:7.0f} ms  {self.detail}"


def malformed_corpus(host: str, model: Mapping[str, Any], *, max_body_bytes: int,
                     predict_path: str = "/predict") -> list[Case]:
    """Broken and hostile requests for a server whose v2 model metadata is ``model``."""
    spec = model["inputs"][0]
    name, width = spec["name"], int(np.prod([d if d > 0 else 1 for d in spec["shape"][1:]]))
    infer = f"/v2/models/{model['name']}/infer"
    row = [0.5] * width

    def post(path: str, body: bytes, ctype: str = "application/json", length: int | None = None,
             extra: Mapping[str, str] | None = None) -> bytes:
        return _request("POST", path, host, {"Content-Type": ctype, **(extra or {})}, body,
                        length=length)

    def js(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    v2 = {"name": name, "shape": [1, width], "datatype": "FP32", "data": row}
    deep = b'{"inputs": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}"
    # one chunk over the limit, without the final chunk: everything sent is read by the server
    chunk = b"x" * (max_body_bytes + 1024)
    chunked = (_request("POST", predict_path, host, {"Content-Type": "application/json",
                                                     "Transfer-Encoding": "chunked"})
               + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    big_head = _request("GET", "/health", host, {"X-Pad": "a" * 20000})
    return [
        Case("oversized body (Content-Length)",
             post(predict_path, b"[" * 1024, length=max_body_bytes * 4), expect=(413,)),
        Case("oversized body (chunked stream)", chunked, expect=(413,)),
        Case("slow body", post(predict_path, b'{"in', length=64), trickle=b'puts": [[0.5, 0.5]]}',
             expect=(408,)),
        Case("truncated body (longer Content-Length)", post(predict_path, js({"inputs": [row]}),
                                                            length=10_000), expect=(408,)),
        Case("deep nesting", post(predict_path, deep), expect=(400,)),
        Case('inputs [[{"a":1}]]', post(predict_path, js({"inputs": [[{"a": 1}]]})), expect=(400,)),
        Case('body [[{"a":1}]]', post(predict_path, js([[{"a": 1}]])), expect=(400,)),
        Case("null inputs", post(predict_path, js({"inputs": None})), expect=(400,)),
        Case("null values", post(predict_path, js({"inputs": [[None] * width]})), expect=(400,)),
        Case("NaN values", post(predict_path, b'{"inputs": [[NaN' + b", 0.5" * (width - 1) + b"]]}"),
             expect=(400,)),
        Case("Infinity values", post(predict_path, js({"inputs": [[1e400] * width]})), expect=(400,)),
        Case("wrong shape", post(predict_path, js({"inputs": [[1.0, 2.0]]})), expect=(400,)),
        Case("ragged rows", post(predict_path, js({"inputs": [row, row[:-1]]})), expect=(400,)),
        Case("wrong dtype (strings)", post(predict_path, js({"inputs": [["a"] * width]})),
             expect=(400,)),
        Case("wrong dtype (booleans)", post(predict_path, js({"inputs": [[True] * width]})),
             expect=(400,)),
        Case("wrong dtype (v2 INT64)", post(infer, js({"inputs": [{**v2, "datatype": "INT64"}]})),
             expect=(400,)),
        Case("wrong names", post(predict_path, js({"inputs": {"nope": [row]}})), expect=(400,)),
        Case("wrong names (v2)", post(infer, js({"inputs": [{**v2, "name": "nope"}]})), expect=(400,)),
        Case("v2 shape/data mismatch", post(infer, js({"inputs": [{**v2, "shape": [2, width]}]})),
             expect=(400,)),
        Case("unknown v2 model", post(f"/v2/models/{model['name']}-nope/infer", js({"inputs": [v2]})),
             expect=(404,)),
        Case("bad JSON", post(predict_path, b'{"inputs": [[1, 2'), expect=(400,)),
        Case("not UTF-8", post(predict_path, b'{"inputs": "\xff\xfe"}'), expect=(400,)),
        Case("empty body", post(predict_path, b""), expect=(400,)),
        Case("wrong content-type", post(predict_path, js({"inputs": [row]}), "text/plain"),
             expect=(415,)),
        Case("form content-type", post(predict_path, b"inputs=1", "application/x-www-form-urlencoded"),
             expect=(415,)),
        Case("unknown route", _request("GET", "/nope", host, {}), expect=(404,)),
        Case("wrong method", _request("GET", predict_path, host, {}), expect=(405,)),
        Case("missing token", post("/admin/reload", b""), expect=(401, 403)),
        Case("wrong token", post("/admin/reload", b"", extra={"Authorization": "Bearer wrong"}),
             expect=(401, 403)),
        Case("oversized headers", big_head, expect=(400, 431)),
        Case("garbage request line", b"\x16\x03\x01 hello\r\n\r\n", expect=(400,)),
        Case("bad Content-Length", post(predict_path, b"{}", extra={}).replace(
            b"Content-Length: 2", b"Content-Length: two") + b"", expect=(400,)),
    ]


async def _probe(host: str, port: int, case: Case, timeout_s: float) -> ProbeResult:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    status: int | None = None
    detail = ""
    ok_json = False

    async def send() -> None:
        writer.write(case.head)
        await writer.drain()
        for b in case.trickle:
            await asyncio.sleep(case.trickle_every_s)
            writer.write(bytes([b]))
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        status, headers, body = await asyncio.wait_for(read_response(reader), timeout_s)
        try:
            data = json.loads(body)
            ok_json = (headers.get("content-type", "").startswith("application/json")
                       and isinstance(data, dict) and isinstance(data.get("error"), str))
            detail = str(data.get("error") if isinstance(data, dict) else data)[:110]
        except ValueError:
            detail = f"not JSON: {body[:80]!r}"
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
    finally:
        sender.cancel()
        writer.close()
    dt = time.perf_counter() - t0
    if status is not None and case.expect and status not in case.expect:
        detail = f"expected {case.expect}; {detail}"
        ok_json = False
    return ProbeResult(case.name, status, dt, ok_json, detail)


def probe(url: str, cases: list[Case], *, timeout_s: float = 5.0) -> list[ProbeResult]:
    """Send each case on its own connection (all at once) and collect the answers."""
    u = urlparse(url)

    async def run() -> list[ProbeResult]:
        return list(await asyncio.gather(*(_probe(u.hostname or "127.0.0.1", int(u.port or 80), c,
                                                   timeout_s) for c in cases)))

    return asyncio.run(run())
