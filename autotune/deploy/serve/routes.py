"""The routes: those every served model has, and those of each model kind.

Common: ``GET /`` (index), ``GET /health``, ``GET /metadata``, ``GET /metrics`` (Prometheus), the
Open Inference Protocol v2 health and server routes, and ``POST /admin/reload`` (bearer token).
A model kind adds its own routes: :func:`register_kind` maps a kind (``model_kind(loaded model)``)
to a function that adds routes to the app.  Kind ``predict`` (a :class:`~autotune.deploy.Predictor`)
adds ``POST /predict`` and the v2 model routes; kind ``generation`` (a generation bundle, whatever
engine runs it) adds the OpenAI-compatible ``POST /v1/completions``, ``POST /v1/chat/completions``
and ``GET /v1/models``.  Every inference route reads its body within the server's limits and is
admitted (or answered 503 + Retry-After) by the same :class:`~.serving.Admission`.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from autotune.deploy.serve.completions import Answer, Wakeups, decode_request
from autotune.deploy.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from autotune.deploy.serve.protocol import (
    ERRORS,
    JSON,
    NPY_TYPES,
    V2_DATATYPES,
    ApiError,
    CompletionResponse,
    ErrorBody,
    PredictResponse,
    V2InferResponse,
    V2ModelMetadata,
    json_response,
)
from autotune.deploy.serve.serving import (
    Admission,
    media_type,
    npy_inputs,
    off_loop,
    output_name,
    parse_json,
    predict_inputs,
    read_body,
    require_admin,
    v2_inputs,
    v2_metadata,
)
from autotune.errors import AutotuneError

ModelServer = Any

# ------------------------------------------------------------------------------- kinds
RouteFactory = Callable[[FastAPI, "ModelServer"], None]
_KINDS: dict[str, RouteFactory] = {}


def register_kind(kind: str, add_routes: RouteFactory) -> None:
    """Serve models of ``kind`` (``getattr(model, "kind", "predict")``) with the routes that
    ``add_routes(app, server)`` adds; the common routes are always there."""
    _KINDS[kind] = add_routes


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def add_routes(app: FastAPI, server: ModelServer) -> None:
    """The common routes and those of the served model's kind."""
    kind = server.served.kind
    if kind not in _KINDS:
        raise AutotuneError(f"no routes are registered for models of kind {kind!r} (known: "
                            f"{sorted(_KINDS)}); register them with "
                            "autotune.deploy.serve.register_kind.")
    _common_routes(app, server)
    _KINDS[kind](app, server)


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
        return json_response(200, {"status": "ok", "model_version": server.served.version,
                                   "swaps": server.swaps})

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
        body = await read_body(request, server)
        bundle = None
        if body.strip():
            data = parse_json(body, server)
            if not isinstance(data, dict) or set(data) - {"bundle"} or not isinstance(
                    data.get("bundle", ""), str):
                raise ApiError(400, 'the body must be empty (re-read the source) or '
                                    '{"bundle": "<bundle folder>"} (swap to that folder).')
            bundle = data.get("bundle") or None
        try:
            swapped = await run_in_threadpool(server.reload, force=bool(bundle), bundle=bundle)
        except (AutotuneError, OSError) as exc:
            return json_response(500, {"error": f"not swapped, still serving "
                                                f"{server.served.version}: {exc}",
                                       "model_version": server.served.version})
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
    }, summary="Swap to the source's current model now, or to {\"bundle\": folder} "
       "(Authorization: Bearer <admin token>)")


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
            media = media_type(request)
            if media not in (JSON, *NPY_TYPES):
                raise ApiError(415, f"Content-Type {media!r} is not accepted; send application/json "
                                    "or application/x-npy.")
            body = await read_body(request, server)
            predictor = server.served.predictor
            if media == JSON:
                arrays = await off_loop(body, lambda: predict_inputs(parse_json(body, server),
                                                                      predictor))
            else:
                arrays = await off_loop(body, lambda: npy_inputs(body, predictor))
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
            media = media_type(request)
            if media != JSON:
                raise ApiError(415, f"Content-Type {media!r} is not accepted; send application/json.")
            body = await read_body(request, server)
            predictor = server.served.predictor
            arrays, wanted, rid = await off_loop(body, lambda: v2_inputs(parse_json(body, server),
                                                                          predictor))
            out_name = output_name(predictor)
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



# ------------------------------------------------------------------------------- generation
class _Stream(StreamingResponse):
    """Server-sent events; ``done`` runs when the answer ends however it ends (the client may
    leave before the body's iterator starts)."""

    def __init__(self, content: Any, done: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._done()


def _generation_routes(app: FastAPI, server: ModelServer) -> None:
    admit = Admission(server)
    m = server.metrics
    ttft = m.histogram("autotune_serve_time_to_first_token_seconds",
                       "From a completion request's arrival to its first generated token.")
    m.gauge("autotune_serve_generated_tokens_total", "Tokens generated for completion requests "
            "(by the current model).", lambda: server.served.predictor.tokens_out)
    m.gauge("autotune_serve_engine_requests", "Requests in the generation engine (queued or "
            "generating).", lambda: server.served.predictor.in_flight)
    wakeups: dict[int, Wakeups] = {}

    def wakeups_here() -> Wakeups:
        loop = asyncio.get_running_loop()
        w = wakeups.get(id(loop))
        if w is None or w.loop is not loop:
            w = wakeups[id(loop)] = Wakeups(loop)
        return w

    async def generate(request: Request, chat: bool) -> Response:
        admit.acquire()
        try:
            media = media_type(request)
            if media != JSON:
                raise ApiError(415, f"Content-Type {media!r} is not accepted; send "
                                    "application/json.")
            body = await read_body(request, server)
            served = server.served  # one model for the whole request, even across a swap
            c = await off_loop(body, lambda: decode_request(parse_json(body, server), chat,
                                                            served.predictor))
            answer = Answer(server, served, c, wakeups_here(), ttft)
            if not c.stream:
                return json_response(200, await answer.whole())
            await answer.start()  # a timeout or failure before any text: its own status code
        except BaseException:
            admit.release()
            raise

        def done() -> None:
            answer.running.cancel()  # the client left before the end: stop generating for it
            admit.release()

        return _Stream(answer.events(), done)

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    async def models() -> Response:
        s = server.served
        return json_response(200, {"object": "list", "data": [{
            "id": s.predictor.name, "object": "model", "owned_by": "autotune",
            "created": int(s.loaded_at), "version": s.version, "runtime": s.predictor.runtime,
            "settings": s.predictor.settings.to_dict()}]})

    doc = {200: {"model": CompletionResponse, "description": "The completion, or server-sent "
                 "events with stream: true."}, **ERRORS,
           504: {"model": ErrorBody, "description": "No token within the request deadline."}}
    app.add_api_route("/v1/completions", completions, methods=["POST"], responses=doc,
                      summary="OpenAI completions (greedy; stream: true for server-sent events)",
                      openapi_extra={"x-request-model": "CompletionRequest"})
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"], responses=doc,
                      summary="OpenAI chat completions (the tokenizer's chat template; greedy)",
                      openapi_extra={"x-request-model": "ChatCompletionRequest"})
    app.add_api_route("/v1/models", models, methods=["GET"],
                      summary="OpenAI models: the served bundle, its runtime and settings")


register_kind("generation", _generation_routes)
