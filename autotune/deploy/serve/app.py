"""The ASGI application (FastAPI on Starlette): routes, strict input validation, JSON errors.

Routes common to every model: ``GET /`` (index), ``/docs`` and ``/openapi.json`` (the documented
API), ``GET /health``, ``GET /metadata``, ``GET /metrics`` (Prometheus), the Open Inference
Protocol v2 health and server routes, and ``POST /admin/reload`` (bearer token).  A model kind
adds its own routes: :func:`register_kind` maps a kind (``model_kind(loaded model)``) to a
function that adds routes to the app; kind ``predict`` (a :class:`~autotune.deploy.Predictor`)
adds ``POST /predict`` and the v2 model routes.  Every error is answered as JSON
``{"error": "..."}`` with a 4xx/5xx code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autotune.deploy.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from autotune.errors import AutotuneError

#: the server the app is built for (autotune.deploy.serve.server.ModelServer, which imports this
#: module, so it is not imported here): the app reads its limits, metrics, token and served model.
ModelServer = Any

JSON = "application/json"
NPY_TYPES = ("application/x-npy", "application/octet-stream")

#: numpy dtype name → Open Inference Protocol v2 datatype
V2_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64",
}


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``; ``close`` ends the connection after."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})
        if close:
            self.headers["Connection"] = "close"


def json_response(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, default=str, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON, headers=dict(headers or {}))


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


# ------------------------------------------------------------------------------- documentation
class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, where, and how to fix it.")


class PredictRequest(BaseModel):
    """One model input: ``{"inputs": [[...], ...]}`` (rows, batch first; one row may omit the
    batch axis).  Several inputs: ``{"inputs": {"name": [...], ...}}`` (the model's input names,
    see ``GET /metadata``) or a list with one nested list per input, in order.  Numbers only: no
    null, NaN, strings or objects.  A ``.npy`` body (``Content-Type: application/x-npy``) is
    accepted for a single-input model."""

    inputs: list[Any] | dict[str, list[Any]]
    id: str | None = None


class PredictResponse(BaseModel):
    outputs: list[Any] = Field(description="The model's first output, one row per input row.")
    model_version: str


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64")
    data: list[Any] = Field(description="Row-major values, flat or nested.")


class V2RequestedOutput(BaseModel):
    name: str


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the first axis is the batch)")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why} for code, why in (
        (400, "The body is not valid for this model (shape, dtype, names, JSON)."),
        (408, "The body did not arrive in time."),
        (413, "The body is larger than the server's limit."),
        (415, "Unsupported Content-Type."),
        (503, "At capacity: retry after the Retry-After header's seconds."),
    )
}


# ------------------------------------------------------------------------------- kinds
RouteFactory = Callable[[FastAPI, "ModelServer"], None]
_KINDS: dict[str, RouteFactory] = {}


def register_kind(kind: str, add_routes: RouteFactory) -> None:
    """Serve models of ``kind`` (``getattr(model, "kind", "predict")``) with the routes that
    ``add_routes(app, server)`` adds; the common routes are always there."""
    _KINDS[kind] = add_routes


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


# ------------------------------------------------------------------------------- reading requests
async def read_body(request: Request, server: ModelServer) -> bytes:
    """The body, within the size limit (checked on Content-Length first, then while streaming)
    and the body deadline (the whole body, not per chunk: a trickling client cannot hold on)."""
    limits = server.limits
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"the Content-Length header {declared!r} is not a number.", close=True)
        if int(declared) > limits.max_body_bytes:
            server.metrics.reject("too_large")
            raise ApiError(413, f"the body ({int(declared)} bytes) is larger than this server's limit "
                                f"of {limits.max_body_bytes} bytes; send smaller batches.", close=True)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    server.metrics.reject("too_large")
                    raise ApiError(413, f"the body is larger than this server's limit of "
                                        f"{limits.max_body_bytes} bytes; send smaller batches.",
                                   close=True)
                chunks.append(chunk)
    except TimeoutError:
        server.metrics.reject("body_timeout")
        got = f"{size} of {declared} bytes" if declared is not None else f"{size} bytes"
        raise ApiError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s "
                            f"({got} received).", close=True) from None
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the body was complete.",
                       close=True) from None
    return b"".join(chunks)


def _media_type(request: Request, default: str = JSON) -> str:
    return (request.headers.get("content-type") or default).split(";")[0].strip().lower()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number; send finite numbers only")


def parse_json(body: bytes, server: ModelServer) -> Any:
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object.")
    depth = _max_depth(body)
    if depth > server.limits.max_depth:
        raise ApiError(400, f"the JSON body is nested {depth} levels deep; at most "
                            f"{server.limits.max_depth} are accepted.")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply.") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 text: {exc}") from None
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def _max_depth(body: bytes) -> int:
    """Bracket nesting outside JSON strings (vectorized; an upper bound for invalid JSON)."""
    b = np.frombuffer(body, dtype=np.uint8)
    if not (b == ord("[")).any() and not (b == ord("{")).any():
        return 0
    quote = b == ord('"')
    if quote.any():
        # a quote after an odd run of backslashes is escaped: it does not toggle the string state
        n = len(b)
        idx = np.arange(n)
        last_plain = np.maximum.accumulate(np.where(b != ord("\\"), idx, -1))
        q = np.flatnonzero(quote)
        before = np.where(q > 0, last_plain[np.maximum(q - 1, 0)], -1)
        run = np.where(q > 0, (q - 1) - before, 0)
        toggles = np.zeros(n, dtype=np.int64)
        toggles[q[run % 2 == 0]] = 1
        in_string = (np.cumsum(toggles) % 2 == 1) & ~quote
    else:
        in_string = np.zeros(len(b), dtype=bool)
    step = np.isin(b, _OPEN).astype(np.int64) - np.isin(b, _CLOSE).astype(np.int64)
    step[in_string] = 0
    return int(np.cumsum(step).max(initial=0))


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", str: "a string", dict: "an object", list: "a list"}.get(
        type(v), type(v).__name__)


def to_array(value: Any, dtype: str, where: str) -> np.ndarray:
    """Nested JSON lists → an array of ``dtype``; refuses null, strings, objects, booleans for
    numbers, non-finite values, ragged rows, values out of the dtype's range."""
    if not isinstance(value, list):
        raise ApiError(400, f"{where} must be a (nested) list of numbers; got {_json_type(value)}.")
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        raise ApiError(400, f"{where} is not a rectangular array: its rows have different lengths "
                            "or mix numbers and lists.") from None
    return check_array(arr, dtype, where)


def check_array(arr: np.ndarray, dtype: str, where: str) -> np.ndarray:
    want = np.dtype(dtype)
    kind = arr.dtype.kind
    if kind == "O":
        bad = next((v for v in arr.ravel() if type(v) not in (int, float, bool)), 0)
        if type(bad) is int:  # numbers only, but beyond 64 bits
            raise ApiError(400, f"{where} holds integers too large for {dtype}.")
        raise ApiError(400, f"{where} must hold numbers only; it holds {_json_type(bad)}.")
    if kind in "USV":
        raise ApiError(400, f"{where} must hold numbers only; it holds strings.")
    if kind == "b" and want.kind != "b":
        raise ApiError(400, f"{where} holds booleans; the model takes {dtype} numbers.")
    if want.kind == "b" and kind != "b":
        raise ApiError(400, f"{where} must hold booleans (true/false) for the model's bool input.")
    if kind in "fc" and not np.isfinite(arr).all():
        raise ApiError(400, f"{where} holds NaN or infinite values; send finite numbers only.")
    if want.kind in "iu":
        if kind == "f" and not (arr == np.round(arr)).all():
            raise ApiError(400, f"{where} holds fractional numbers; the model takes {dtype}.")
        if arr.size and kind in "iuf":
            info = np.iinfo(want)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise ApiError(400, f"{where} holds values outside the range of {dtype} "
                                    f"[{info.min}, {info.max}].")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr.astype(want, copy=False))
    if want.kind == "f" and not np.isfinite(out).all():
        raise ApiError(400, f"{where} holds values too large for {dtype}.")
    return out


def _fit_shape(arr: np.ndarray, spec: Any, where: str) -> np.ndarray:
    shape = tuple(spec.shape)
    if arr.ndim == len(shape) - 1:
        arr = arr[None]  # one item without its batch axis
    if arr.ndim != len(shape):
        raise ApiError(400, f"input '{spec.name}' must have {len(shape)} axes (batch first, shape "
                            f"{list(shape)}); {where} has shape {list(arr.shape)}.")
    for i, (want, got) in enumerate(zip(shape[1:], arr.shape[1:], strict=True)):
        if want is not None and want != got:
            raise ApiError(400, f"input '{spec.name}' axis {i + 1} must be {want}; got {got}.")
    if arr.shape[0] == 0:
        raise ApiError(400, f"{where} holds no rows.")
    return arr


def _same_batch(arrays: list[np.ndarray], specs: Any) -> None:
    sizes = {int(a.shape[0]) for a in arrays}
    if len(sizes) > 1:
        raise ApiError(400, "the inputs have different batch sizes: " + ", ".join(
            f"{s.name}={a.shape[0]}" for s, a in zip(specs, arrays, strict=True)) + ".")


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"{where} has unknown fields {unknown}; allowed: {sorted(allowed)}.")


def predict_inputs(data: Any, predictor: Any) -> list[np.ndarray]:
    """``POST /predict`` JSON → one array per model input (validated)."""
    specs = predictor.inputs
    names = [s.name for s in specs]
    if not isinstance(data, dict) or "inputs" not in data:
        raise ApiError(400, 'the JSON body must be {"inputs": [[...], ...]} (or {"inputs": '
                            '{"name": [...]}} for several inputs).')
    _check_keys(data, {"inputs", "id"}, "the JSON body")
    raw = data["inputs"]
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(names))
        missing = [n for n in names if n not in raw]
        if unknown or missing:
            raise ApiError(400, f"inputs {unknown or missing} "
                                f"{'are not inputs of this model' if unknown else 'are missing'}; "
                                f"the model takes {names}.")
        arrays = [_fit_shape(to_array(raw[s.name], s.dtype, f"inputs.{s.name}"), s,
                             f"inputs.{s.name}") for s in specs]
    elif isinstance(raw, list):
        if len(specs) == 1:
            arrays = [_fit_shape(to_array(raw, specs[0].dtype, "inputs"), specs[0], "inputs")]
        else:
            if len(raw) != len(specs):
                raise ApiError(400, f"the model takes {len(specs)} inputs {names}; inputs holds "
                                    f"{len(raw)} entries. Send {{\"inputs\": {{name: [...]}}}}.")
            arrays = [_fit_shape(to_array(v, s.dtype, f"inputs[{i}]"), s, f"inputs[{i}]")
                      for i, (v, s) in enumerate(zip(raw, specs, strict=True))]
    else:
        raise ApiError(400, f"inputs must be a list or an object; got {_json_type(raw)}.")
    _same_batch(arrays, specs)
    return arrays


def npy_inputs(body: bytes, predictor: Any) -> list[np.ndarray]:
    specs = predictor.inputs
    if len(specs) != 1:
        raise ApiError(400, f"a .npy body carries one array; this model takes {len(specs)} inputs "
                            f"{[s.name for s in specs]}: send JSON.")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ApiError(400, f"the body is not a readable .npy array without pickles: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise ApiError(400, "the body must be one .npy array (not an .npz archive).")
    return [_fit_shape(check_array(arr, specs[0].dtype, "the .npy array"), specs[0], "the .npy array")]


def v2_inputs(data: Any, predictor: Any) -> tuple[list[np.ndarray], list[str] | None, str | None]:
    """Open Inference Protocol v2 ``infer`` JSON → arrays, requested output names, request id."""
    specs = {s.name: s for s in predictor.inputs}
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise ApiError(400, 'the body must be {"inputs": [{"name", "shape", "datatype", "data"}]}.')
    _check_keys(data, {"id", "parameters", "inputs", "outputs"}, "the request")
    rid = data.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ApiError(400, "id must be a string.")
    got: dict[str, np.ndarray] = {}
    for i, t in enumerate(data["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise ApiError(400, f"{where} must be an object; got {_json_type(t)}.")
        _check_keys(t, {"name", "shape", "datatype", "data", "parameters"}, where)
        name = t.get("name")
        if name not in specs:
            raise ApiError(400, f"{where}.name {name!r} is not an input of this model; it takes "
                                f"{list(specs)}.")
        if name in got:
            raise ApiError(400, f"input {name!r} is given twice.")
        spec = specs[name]
        want_dt = V2_DATATYPES.get(spec.dtype, spec.dtype.upper())
        if t.get("datatype") != want_dt:
            raise ApiError(400, f"input {name!r} has datatype {t.get('datatype')!r}; the model takes "
                                f"{want_dt}.")
        shape = t.get("shape")
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)):
            raise ApiError(400, f"{where}.shape must be a list of non-negative integers.")
        data_ = t.get("data")
        arr = check_array(_v2_data(data_, f"{where}.data"), spec.dtype, f"{where}.data")
        if arr.size != math.prod(shape):
            raise ApiError(400, f"{where}.data holds {arr.size} values; shape {shape} needs "
                                f"{math.prod(shape)}.")
        got[name] = _fit_shape(arr.reshape(shape), spec, where)
    missing = [n for n in specs if n not in got]
    if missing:
        raise ApiError(400, f"inputs {missing} are missing; the model takes {list(specs)}.")
    wanted = data.get("outputs")
    names: list[str] | None = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise ApiError(400, 'outputs must be a list of {"name": ...} objects.')
        names = [o["name"] for o in wanted]
    arrays = [got[s.name] for s in predictor.inputs]
    _same_batch(arrays, predictor.inputs)
    return arrays, names, rid


def _v2_data(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list):
        raise ApiError(400, f"{where} must be a list of values; got {_json_type(value)}.")
    try:
        return np.array(value)
    except (ValueError, TypeError):
        raise ApiError(400, f"{where} is not a rectangular array.") from None


_INLINE_BYTES = 64 * 1024  # smaller bodies are parsed on the event loop (faster than a hop)


async def _off_loop(body: bytes, parse: Callable[[], Any]) -> Any:
    """Parse a large body in a worker thread: the event loop keeps answering meanwhile."""
    return parse() if len(body) <= _INLINE_BYTES else await run_in_threadpool(parse)


# ------------------------------------------------------------------------------- admission
class Admission:
    """At most ``limit`` inference requests in flight (read, queued, running); beyond: 503."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.n = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        limits = self.server.limits
        if self.n >= limits.max_inflight:
            self.server.metrics.reject("overloaded")
            raise ApiError(503, f"the server is answering {self.n} requests, its limit; retry in "
                                f"{limits.retry_after_s} s.",
                           headers={"Retry-After": str(limits.retry_after_s)})
        self.n += 1
        self.server.metrics.set_inflight(self.n)
        try:
            yield
        finally:
            self.n -= 1
            self.server.metrics.set_inflight(self.n)


def require_admin(request: Request, server: ModelServer) -> None:
    token = server.admin_token
    if not token:
        server.metrics.reject("admin_disabled")
        raise ApiError(403, "admin routes are disabled: start the server with --admin-token TOKEN "
                            "(or the AUTOTUNE_ADMIN_TOKEN environment variable) to enable them.")
    scheme, _, cred = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(cred.strip().encode(), token.encode()):
        server.metrics.reject("unauthorized")
        raise ApiError(401, "this admin route needs the header 'Authorization: Bearer <token>' with "
                            "the server's admin token.", headers={"WWW-Authenticate": "Bearer"})


# ------------------------------------------------------------------------------- the app
def create_app(server: ModelServer) -> FastAPI:
    """The FastAPI app for ``server``: common routes plus those of the served model's kind."""
    kind = server.served.kind
    if kind not in _KINDS:
        raise AutotuneError(f"no routes are registered for models of kind {kind!r} (known: "
                            f"{sorted(_KINDS)}); register them with "
                            "autotune.deploy.serve.register_kind.")
    app = FastAPI(
        title="autotune serve",
        description="Serves an autotune bundle with micro-batching and hot swap. Errors are "
                    'answered as {"error": "..."}; 503 answers carry Retry-After.',
        version="1", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.server = server

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        msg = (f"no route {request.method} {request.url.path}; see GET / and /docs"
               if exc.status_code in (404, 405) else str(exc.detail))
        return error_response(exc.status_code, msg, getattr(exc, "headers", None))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(500, f"{type(exc).__name__}: {exc}")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
    _common_routes(app, server)
    _KINDS[kind](app, server)
    _document_request_bodies(app)
    return app


def _common_routes(app: FastAPI, server: ModelServer) -> None:
    async def index() -> Response:
        return json_response(200, {
            "service": "autotune serve", "model": server.model_name,
            "model_version": server.served.version, "kind": server.served.kind,
            "docs": "/docs", "openapi": "/openapi.json",
            "routes": sorted({f"{m} {r.path}" for r in app.routes  # type: ignore[attr-defined]
                              for m in (getattr(r, "methods", None) or ()) if m != "HEAD"}),
        })

    async def health() -> Response:
        return json_response(200, {"status": "ok", "model_version": server.served.version})

    async def metadata() -> Response:
        return json_response(200, server.metadata())

    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def v2_server() -> Response:
        return json_response(200, {"name": "autotune-serve", "version": "1", "extensions": []})

    async def live() -> Response:
        return json_response(200, {"live": True})

    async def ready() -> Response:
        ok = server.ready
        return json_response(200 if ok else 503, {"ready": ok})

    async def reload(request: Request) -> Response:
        require_admin(request, server)
        await read_body(request, server)
        try:
            swapped = await run_in_threadpool(server.reload, force=False)
        except AutotuneError as exc:
            return json_response(500, {"error": str(exc), "model_version": server.served.version})
        return json_response(200, {"reloaded": swapped, "model_version": server.served.version})

    app.add_api_route("/", index, methods=["GET"], summary="What this server serves, and its routes")
    app.add_api_route("/health", health, methods=["GET"], summary="Liveness, with the model version")
    app.add_api_route("/metadata", metadata, methods=["GET"],
                      summary="The served bundle: manifest summary, inputs, version, swaps")
    app.add_api_route("/metrics", metrics, methods=["GET"],
                      summary="Prometheus metrics (text format 0.0.4)")
    app.add_api_route("/v2", v2_server, methods=["GET"], summary="Open Inference Protocol v2: server")
    app.add_api_route("/v2/health/live", live, methods=["GET"], summary="v2: the server is live")
    app.add_api_route("/v2/health/ready", ready, methods=["GET"],
                      summary="v2: a model is loaded and serving (503 otherwise)")
    app.add_api_route("/admin/reload", reload, methods=["POST"], responses={
        401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
        403: {"model": ErrorBody, "description": "Admin routes are disabled (no token set)."},
        500: {"model": ErrorBody, "description": "The new model cannot be loaded; the old one serves."},
    }, summary="Swap to the source's current model now (Authorization: Bearer <admin token>)")


def _predict_routes(app: FastAPI, server: ModelServer) -> None:
    admit = Admission(server)
    batcher = server.batcher
    limits = server.limits

    async def run(arrays: list[np.ndarray]) -> tuple[np.ndarray, str]:
        try:
            return await batcher.submit_async(arrays, limits.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the model did not answer within {limits.request_timeout_s:g} s.") \
                from None
        except AutotuneError as exc:
            raise ApiError(400, str(exc)) from None
        except Exception as exc:
            raise ApiError(500, f"the model failed: {type(exc).__name__}: {exc}") from None

    async def predict(request: Request) -> Response:
        with admit():
            media = _media_type(request)
            if media not in (JSON, *NPY_TYPES):
                raise ApiError(415, f"Content-Type {media!r} is not accepted; send application/json "
                                    "or application/x-npy.")
            body = await read_body(request, server)
            predictor = server.served.predictor
            if media == JSON:
                arrays = await _off_loop(body, lambda: predict_inputs(parse_json(body, server),
                                                                      predictor))
            else:
                arrays = await _off_loop(body, lambda: npy_inputs(body, predictor))
            out, version = await run(arrays)
        if "application/x-npy" in (request.headers.get("accept") or ""):
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            return Response(buf.getvalue(), media_type="application/x-npy",
                            headers={"X-Model-Version": version})
        return json_response(200, {"outputs": out.tolist(), "model_version": version})

    def check_name(name: str) -> None:
        if name != server.model_name:
            raise ApiError(404, f"no model named {name!r}; this server serves {server.model_name!r}.")

    async def v2_model(name: str) -> Response:
        check_name(name)
        return json_response(200, v2_metadata(server))

    async def v2_model_ready(name: str) -> Response:
        check_name(name)
        return json_response(200 if server.ready else 503, {"name": name, "ready": server.ready})

    async def v2_infer(name: str, request: Request) -> Response:
        check_name(name)
        with admit():
            media = _media_type(request)
            if media != JSON:
                raise ApiError(415, f"Content-Type {media!r} is not accepted; send application/json.")
            body = await read_body(request, server)
            predictor = server.served.predictor
            arrays, wanted, rid = await _off_loop(body, lambda: v2_inputs(parse_json(body, server),
                                                                          predictor))
            out_name = _output_name(predictor)
            if wanted is not None and any(n != out_name for n in wanted):
                raise ApiError(400, f"outputs {[n for n in wanted if n != out_name]} are not served; "
                                    f"this model answers {[out_name]}.")
            out, version = await run(arrays)
        return json_response(200, {
            "model_name": server.model_name, "model_version": version, "id": rid,
            "outputs": [{"name": out_name, "datatype": V2_DATATYPES.get(out.dtype.name, "BYTES"),
                         "shape": list(out.shape), "data": out.ravel().tolist()}],
        })

    app.add_api_route("/predict", predict, methods=["POST"], responses={
        200: {"model": PredictResponse, "description": "The outputs (or a .npy array with "
                                                       "Accept: application/x-npy)."}, **ERRORS},
        summary="Predict a batch (micro-batched with concurrent requests)",
        openapi_extra={"x-request-model": "PredictRequest"})
    app.add_api_route("/v2/models/{name}", v2_model, methods=["GET"], responses={
        200: {"model": V2ModelMetadata}}, summary="v2: model metadata")
    app.add_api_route("/v2/models/{name}/ready", v2_model_ready, methods=["GET"],
                      summary="v2: the model is ready")
    app.add_api_route("/v2/models/{name}/infer", v2_infer, methods=["POST"], responses={
        200: {"model": V2InferResponse}, **ERRORS}, summary="v2: inference",
        openapi_extra={"x-request-model": "V2InferRequest"})


register_kind("predict", _predict_routes)


def _output_name(predictor: Any) -> str:
    outs = (getattr(predictor, "manifest", None) or {}).get("outputs") or []
    return str(outs[0]["name"]) if outs and isinstance(outs[0], dict) and outs[0].get("name") \
        else "output_0"


def v2_metadata(server: ModelServer) -> dict[str, Any]:
    p = server.served.predictor
    outs = (getattr(p, "manifest", None) or {}).get("outputs") or []
    return {
        "name": server.model_name, "versions": [server.served.version], "platform": "onnxruntime_onnx",
        "inputs": [{"name": s.name, "datatype": V2_DATATYPES.get(s.dtype, s.dtype.upper()),
                    "shape": [-1 if d is None else d for d in s.shape]} for s in p.inputs],
        "outputs": [{"name": o.get("name"), "datatype": V2_DATATYPES.get(o.get("dtype"), "FP32"),
                     "shape": [-1 if d is None else d for d in o.get("shape") or []]}
                    for o in outs if isinstance(o, dict)],
    }


_REQUEST_MODELS: dict[str, type[BaseModel]] = {"PredictRequest": PredictRequest,
                                               "V2InferRequest": V2InferRequest}


def _document_request_bodies(app: FastAPI) -> None:
    """The endpoints read their bodies themselves (limits first); document those bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path_item in schema.get("paths", {}).values():
            for op in path_item.values():
                model_name = op.pop("x-request-model", None) if isinstance(op, dict) else None
                if model_name is None:
                    continue
                model = _REQUEST_MODELS[model_name]
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model_name] = js
                content = {JSON: {"schema": {"$ref": f"#/components/schemas/{model_name}"}}}
                if model_name == "PredictRequest":
                    content["application/x-npy"] = {"schema": {"type": "string", "format": "binary"}}
                op["requestBody"] = {"required": True, "content": content}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# ------------------------------------------------------------------------------- metrics middleware
class Observed:
    """Outermost ASGI layer: counts every answer by route template, method and code, and times it."""

    def __init__(self, app: ASGIApp, server: ModelServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.server.metrics.request(path, scope.get("method", "?"), status,
                                        time.perf_counter() - t0)
