"""Serving a request: read the body within the limits, decode and validate it, admit it, check
the admin token; the predict kind's inputs (JSON, ``.npy``, Open Inference Protocol v2).

Every refusal is an :class:`~.protocol.ApiError` (answered as JSON with its status code); the
refusals before the model are counted in the server's metrics by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from autotune.deploy.serve.protocol import JSON, V2_DATATYPES, ApiError

#: the server the app is built for (autotune.deploy.serve.server.ModelServer, which imports this
#: module, so it is not imported here): the app reads its limits, metrics, token and served model.
ModelServer = Any


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


def media_type(request: Request, default: str = JSON) -> str:
    return (request.headers.get("content-type") or default).split(";")[0].strip().lower()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number; send finite numbers only")


def parse_json(body: bytes, server: ModelServer) -> Any:
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object.")
    # no deeper than its count of opening brackets (a C-speed count: a completion request has 1-3)
    shallow = body.count(b"[") + body.count(b"{") <= server.limits.max_depth
    depth = 0 if shallow else _max_depth(body)
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


async def off_loop(body: bytes, parse: Callable[[], Any]) -> Any:
    """Parse a large body in a worker thread: the event loop keeps answering meanwhile."""
    return parse() if len(body) <= _INLINE_BYTES else await run_in_threadpool(parse)


# ------------------------------------------------------------------------------- admission
class Admission:
    """At most ``limit`` inference requests in flight (read, queued, running, streaming); beyond:
    503 + Retry-After.  ``with admit():`` around a request, or ``acquire()`` / ``release()`` when
    the answer outlives the handler (a stream)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.n = 0

    def acquire(self) -> None:
        limits = self.server.limits
        if self.n >= limits.max_inflight:
            self.server.metrics.reject("overloaded")
            raise ApiError(503, f"the server is answering {self.n} requests, its limit; retry in "
                                f"{limits.retry_after_s} s.",
                           headers={"Retry-After": str(limits.retry_after_s)})
        self.n += 1
        self.server.metrics.set_inflight(self.n)

    def release(self) -> None:
        self.n -= 1
        self.server.metrics.set_inflight(self.n)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


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


def output_name(predictor: Any) -> str:
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
