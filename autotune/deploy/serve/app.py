"""The ASGI application (FastAPI on Starlette): the routes of the served model's kind beside the
common ones (:mod:`.routes`), errors answered as JSON, the OpenAPI document, and the outermost
layer that counts and times every answer (:class:`Observed`).

The server is split as vLLM splits its routes: :mod:`.protocol` (the wire: schemas and error
bodies), :mod:`.serving` and :mod:`.completions` (decode, validate, admit and run a request),
:mod:`.routes` (the routes of each model kind), this module (the app) and :mod:`.server` (the
HTTP protocol with its limits, the model's lifecycle, hot swap and drain).  Every error is
answered as JSON ``{"error": "..."}`` with a 4xx/5xx code; under ``/v1/`` (the OpenAI-compatible
routes) as ``{"error": {"message", "type", "code"}}``, which OpenAI clients read.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autotune.deploy.serve.protocol import (
    JSON,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    PredictRequest,
    V2InferRequest,
    error_response,
    openai_error,
)
from autotune.deploy.serve.routes import add_routes

ModelServer = Any


# ------------------------------------------------------------------------------- the app
def create_app(server: ModelServer) -> FastAPI:
    """The FastAPI app for ``server``: common routes plus those of the served model's kind."""
    app = FastAPI(
        title="autotune serve",
        description="Serves an autotune bundle (predict: micro-batching; generation: the "
                    "OpenAI-compatible /v1 routes) with hot swap. Errors are answered as "
                    '{"error": "..."} ({"error": {"message": ...}} under /v1/); 503 answers '
                    "carry Retry-After.",
        version="1", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.server = server

    def answer(request: Request, status: int, message: str, headers: Any = None) -> Response:
        if request.url.path.startswith("/v1/"):
            return openai_error(status, message, headers)
        return error_response(status, message, headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(request, exc.status, exc.message, exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        msg = (f"no route {request.method} {request.url.path}; see GET / and /docs"
               if exc.status_code in (404, 405) else str(exc.detail))
        return answer(request, exc.status_code, msg, getattr(exc, "headers", None))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return answer(request, 500, f"{type(exc).__name__}: {exc}")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
    add_routes(app, server)
    _document_request_bodies(app)
    return app


_REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "PredictRequest": PredictRequest, "V2InferRequest": V2InferRequest,
    "CompletionRequest": CompletionRequest, "ChatCompletionRequest": ChatCompletionRequest}


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
