"""The wire: request and answer schemas of every route, and how errors are answered.

The schemas document the API (``/docs``, ``/openapi.json``); the routes read their bodies
themselves (limits first, :mod:`.serving`), so these models are not used to parse.  Errors are
answered as JSON ``{"error": "..."}``; the OpenAI-compatible routes (``/v1/...``) answer
``{"error": {"message": ..., "type": ..., "code": ...}}`` as OpenAI clients expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.responses import Response

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



# ------------------------------------------------------------------------------- OpenAI subset
class CompletionRequest(BaseModel):
    """``POST /v1/completions`` (OpenAI subset): greedy decoding only, so ``temperature`` must be
    absent or 0 and ``n`` 1; ``max_tokens`` within the model's positions after the prompt."""

    model: str | None = None
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)
    stream: bool = False
    temperature: float | None = Field(None, description="absent or 0 (greedy)")
    n: int = 1


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` (OpenAI subset); the tokenizer's chat template applies."""

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    temperature: float | None = Field(None, description="absent or 0 (greedy)")
    n: int = 1


class CompletionChoice(BaseModel):
    index: int
    text: str | None = None
    message: ChatMessage | None = None
    finish_reason: Literal["length", "stop"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    """A completion (``stream: false``); with ``stream: true`` the answer is server-sent events,
    one chunk per step that produced text, then ``data: [DONE]``."""

    id: str
    object: Literal["text_completion", "chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    x_version: str = Field(description="The served bundle's version.")


OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                      403: "permission_error", 404: "not_found_error", 408: "timeout",
                      413: "invalid_request_error", 415: "invalid_request_error",
                      503: "server_overloaded", 504: "timeout"}


def openai_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error as OpenAI clients read it: ``{"error": {"message", "type", "code"}}``."""
    return json_response(status, {"error": {
        "message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
        "code": status}}, headers)
