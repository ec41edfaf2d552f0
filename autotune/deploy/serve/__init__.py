"""``autotune serve``: one hardened HTTP server for every bundle, with hot swap.

FastAPI (Starlette) under uvicorn.  Routes (documented at ``/docs`` and ``/openapi.json``) for a
predict bundle (an ONNX model):

* ``POST /predict`` — JSON ``{"inputs": [[...], ...]}`` (or ``{"inputs": {"name": [...]}}`` for
  several inputs) → ``{"outputs": [...], "model_version": ...}``; a ``.npy`` body
  (``Content-Type: application/x-npy``) is accepted too, and ``Accept: application/x-npy`` returns
  one.
* Open Inference Protocol v2: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
  ``POST /v2/models/{name}/infer``.
* ``GET /``, ``/health``, ``/metadata``, ``/metrics`` (Prometheus); ``POST /admin/reload``
  (``Authorization: Bearer <admin token>``; disabled without a token).

For a generation bundle (a language model, whatever engine it was measured with), the common
routes and the OpenAI-compatible ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream:
true``: server-sent events) and ``GET /v1/models`` (:mod:`.completions`), with the same limits,
admission, admin token, metrics, hot swap and drain.

Requests are queued; one worker collects them for up to ``max_wait_ms`` or until the tuned batch
size is reached, runs one ``predict`` and scatters the rows back (:mod:`.batcher`).  A watcher
polls the source (:mod:`.swap`: a bundle folder or a symlink to one, or ``models:/name@alias``)
every ``poll_interval`` seconds.  A new model is loaded and warmed beside the old one, then the
reference is switched in one assignment; the batch in flight keeps the old model.  A model that
fails to load is reported and the old one keeps serving.  Limits (:class:`Limits`): body size and
deadline, header deadline, in-flight and connection bounds answered 503 + Retry-After, strict
input validation answered 4xx with a JSON error; SIGTERM drains.

Another kind of model (``kind`` attribute of the loaded model) brings its own routes with
:func:`register_kind`.  Layout: :mod:`.protocol` (schemas, error bodies), :mod:`.serving` and
:mod:`.completions` (decode, validate, admit, run), :mod:`.routes`, :mod:`.app`, :mod:`.server`.
"""

from autotune.deploy.serve.app import create_app
from autotune.deploy.serve.batcher import MicroBatcher
from autotune.deploy.serve.limits import Limits
from autotune.deploy.serve.loadtest import (
    ConcurrentReport,
    LoadReport,
    concurrent_load,
    load_test,
    malformed_corpus,
    probe,
)
from autotune.deploy.serve.metrics import Metrics
from autotune.deploy.serve.protocol import ApiError
from autotune.deploy.serve.routes import register_kind
from autotune.deploy.serve.server import ModelServer, serve
from autotune.deploy.serve.swap import FolderSource, RegistrySource, Served, model_kind, open_source

__all__ = [
    "ApiError",
    "ConcurrentReport",
    "FolderSource",
    "Limits",
    "LoadReport",
    "Metrics",
    "MicroBatcher",
    "ModelServer",
    "RegistrySource",
    "Served",
    "concurrent_load",
    "create_app",
    "load_test",
    "malformed_corpus",
    "model_kind",
    "open_source",
    "probe",
    "register_kind",
    "serve",
]
