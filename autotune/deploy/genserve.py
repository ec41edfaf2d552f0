"""Generation bundles and their server: an OpenAI-compatible subset over Starlette, streaming,
with hot swap to a new bundle (or registry alias) and zero failed requests.

A generation bundle is a folder::

    config.json, generation_config.json, model.safetensors   the model (save_pretrained; fp32)
    tokenizer.json, tokenizer_config.json, ...              the tokenizer
    generation.yaml    the tuned settings (quantization, cache, attention, batching, max_batch,
                       threads, prefill chunk): applied at load by the same code that measured them
    manifest.json      format, source trial, metrics, constraints, and a SHA-256 for every file

Nothing is unpickled: weights are safetensors, settings YAML/JSON; every file read is listed in
the manifest, checked against its hash and stays inside the bundle.

Routes (:func:`add_generation_routes` adds them to any Starlette app; :func:`create_app` makes
one): ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream: true`` → server-sent
events, ``data: [DONE]`` last; greedy decoding, so ``temperature`` must be absent or 0),
``GET /v1/models``, ``GET /health``, ``POST /admin/reload`` (``{"bundle": path}`` swaps to another
bundle folder; without a body, re-reads the source).  A swap loads the new bundle beside the old
one, switches new requests to it, and lets the old engine finish what it was serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
from autotune.errors import AutotuneError
from autotune.files import write_atomic
from autotune.tuner import open_record
from autotune.workloads.engine import Engine, GenSettings, Live, Request, load_model, load_tokenizer
from autotune.workloads.generation import check_config, model_folder

log = logging.getLogger("autotune.genserve")

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
        from autotune.deploy.serve import open_source

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
    check_config(config)
    wl = job.workload
    settings = GenSettings.from_config(config, default_batch=wl.concurrency)
    folder = model_folder(job)
    files: dict[str, bytes] = {}
    for name in _MODEL_FILES:
        if (folder / name).is_file():
            files[name] = (folder / name).read_bytes()
    if "model.safetensors" not in files:
        raise AutotuneError(f"the model folder {folder} has no model.safetensors (sharded or "
                            "pickled weights are not bundled); save it with save_pretrained.")
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
        "runtime": {"measured": "torch", "same_model": True, "latency_applies": True},
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
    return root, manifest, GenSettings(**data["settings"])


# ------------------------------------------------------------------------------ the service
class GenerationService:
    """One loaded bundle: the model, its engine thread, and a counter of requests in flight."""

    def __init__(self, bundle: str | Path, version: str = "") -> None:
        self.root, self.manifest, self.settings = verified_bundle(bundle)
        self.version = version or hashlib.sha256(
            (self.root / MANIFEST).read_bytes()).hexdigest()[:12]
        self.tokenizer = load_tokenizer(self.root)
        self.engine = Engine(load_model(self.root, self.settings), self.tokenizer, self.settings)
        self.source = Live()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.engine.run, args=(self.source,),
                                        kwargs={"stop": self._stop}, daemon=True,
                                        name=f"autotune-gen-{self.version}")
        self._thread.start()

    def submit(self, prompt_ids: list[int], max_tokens: int,
               on_token: Callable[[Any, int], None], on_finish: Callable[[Any], None]) -> Any:
        with self._lock:
            self.in_flight += 1

        def finished(req: Any) -> None:
            with self._lock:
                self.in_flight -= 1
            on_finish(req)

        return self.source.submit(Request(list(prompt_ids), max_tokens, time.perf_counter(),
                                          on_token=on_token, on_finish=finished))

    def close(self, drain_s: float = 120.0) -> None:
        """Stop after the requests in flight are served (at most ``drain_s``)."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(5)


class GenerationServer:
    """The current :class:`GenerationService` for a source (a bundle folder or
    ``models:/NAME@ALIAS``), swapped when the source changes (polled) or on request."""

    def __init__(self, source: str | Path, *, poll_interval: float = 1.0,
                 tracking_uri: str | None = None, admin_token: str | None = None) -> None:
        from autotune.deploy.serve import open_source

        #: bearer token for ``POST /admin/reload`` (which can swap to any bundle path); without
        #: one the route is disabled, as on the predict server
        self.admin_token = admin_token

        self.source = open_source(str(source), tracking_uri)
        self.poll_interval = poll_interval
        self._ident = self.source.current_id()
        self._path = self.source.fetch(self._ident)
        self.current = GenerationService(self._path, self.source.version_label(self._ident))
        self.swaps = 0
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start_watching(self) -> None:
        if self.poll_interval > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload()
            except Exception as exc:  # keep serving the current model
                log.warning("not swapping: %s", exc)

    def reload(self, bundle: str | Path | None = None, *, force: bool = False) -> bool:
        """Swap to ``bundle`` (a folder), or to the source's current version if it changed."""
        with self._swap_lock:
            if bundle is not None:
                new = GenerationService(bundle)
                path = None
            else:
                ident = self.source.current_id()
                if ident == self._ident and not force:
                    return False
                path = self.source.fetch(ident)
                new = GenerationService(path, self.source.version_label(ident))
                self._ident = ident
            old, self.current = self.current, new  # new requests go to the new model from here
            self.swaps += 1
            old_path, self._path = self._path, path or self._path
        threading.Thread(target=self._retire, args=(old, old_path), daemon=True).start()
        return True

    def _retire(self, old: GenerationService, path: Path) -> None:
        old.close()
        if path != self._path:
            self.source.release(path)

    def close(self) -> None:
        self._stop.set()
        self.current.close(drain_s=5)


# ------------------------------------------------------------------------------ HTTP
class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _prompt_of(body: Mapping[str, Any], chat: bool, tokenizer: Any) -> str:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in msgs):
            raise _HTTPError(400, "'messages' must be a non-empty list of {role, content}")
        if getattr(tokenizer, "chat_template", None):
            return str(tokenizer.apply_chat_template(
                [dict(m) for m in msgs], tokenize=False, add_generation_prompt=True))
        return " ".join(m["content"] for m in msgs)  # no chat template: the contents in order
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _HTTPError(400, "'prompt' must be a non-empty string")
    return prompt


def add_generation_routes(routes: list[Any], server: GenerationServer) -> list[Any]:
    """Append the generation routes for ``server`` to a Starlette route list; returns it."""
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}},
                            status_code=status)

    async def generate(request: HTTPRequest, chat: bool) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body must be JSON")
        if not isinstance(body, Mapping):
            return error(400, "the body must be a JSON object")
        service = server.current  # one model for the whole request, even across a swap
        tok = service.tokenizer
        try:
            prompt = _prompt_of(body, chat, tok)
            if body.get("temperature") not in (None, 0, 0.0) or body.get("n", 1) != 1:
                raise _HTTPError(400, "only greedy decoding is served (temperature 0, n 1)")
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise _HTTPError(400, "'max_tokens' must be a positive integer")
        except _HTTPError as exc:
            return error(exc.status, str(exc))
        ids = tok(prompt)["input_ids"]
        if not ids:
            return error(400, "the prompt has no tokens")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        service.submit(ids, max_tokens,
                       on_token=lambda r, t: loop.call_soon_threadsafe(queue.put_nowait, t),
                       on_finish=lambda r: loop.call_soon_threadsafe(queue.put_nowait, r))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:20]}"
        created = int(time.time())
        model = str(service.manifest.get("source", {}).get("job", "autotune"))
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                key = "delta" if body.get("stream") else "message"
                return {"index": 0, key: {"role": "assistant", "content": text},
                        "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        async def tokens() -> Any:
            got: list[int] = []
            text = ""
            while True:
                item = await queue.get()
                if not isinstance(item, int):  # the finished request
                    if item.error:
                        raise RuntimeError(item.error)
                    return
                got.append(item)
                full = tok.decode(got, skip_special_tokens=True)
                delta, text = (full[len(text):], full) if full.startswith(text) else (full, full)
                yield delta

        if body.get("stream"):
            async def events() -> Any:
                chunk = {"id": rid, "object": f"{kind}.chunk" if chat else kind,
                         "created": created, "model": model, "x_version": service.version}
                try:
                    async for delta in tokens():
                        yield f"data: {json.dumps({**chunk, 'choices': [choice(delta, None)]})}\n\n"
                    yield f"data: {json.dumps({**chunk, 'choices': [choice('', 'length')]})}\n\n"
                except RuntimeError as exc:
                    yield f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text_parts = []
        try:
            async for delta in tokens():
                text_parts.append(delta)
        except RuntimeError as exc:
            return error(500, f"generation failed: {exc}")
        n_out = len(tok("".join(text_parts))["input_ids"]) if text_parts else 0
        return JSONResponse({
            "id": rid, "object": kind, "created": created, "model": model,
            "choices": [choice("".join(text_parts), "length")],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": n_out,
                      "total_tokens": len(ids) + n_out},
            "x_version": service.version})

    async def completions(request: HTTPRequest) -> Any:
        return await generate(request, chat=False)

    async def chat_completions(request: HTTPRequest) -> Any:
        return await generate(request, chat=True)

    async def models(request: HTTPRequest) -> Any:
        s = server.current
        return JSONResponse({"object": "list", "data": [{
            "id": str(s.manifest.get("source", {}).get("job", "autotune")), "object": "model",
            "owned_by": "autotune", "version": s.version, "settings": s.settings.to_dict()}]})

    async def health(request: HTTPRequest) -> Any:
        return JSONResponse({"status": "ok", "version": server.current.version,
                             "swaps": server.swaps})

    async def reload(request: HTTPRequest) -> Any:
        token = server.admin_token
        if not token:
            return error(403, "admin routes are disabled: start the server with --admin-token "
                              "TOKEN (or the AUTOTUNE_ADMIN_TOKEN environment variable).")
        scheme, _, cred = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(cred.strip().encode(),
                                                                 token.encode()):
            return error(401, "this admin route needs the header 'Authorization: Bearer "
                              "<token>' with the server's admin token.")
        body = {}
        with contextlib.suppress(ValueError):
            body = await request.json() or {}
        bundle = body.get("bundle") if isinstance(body, Mapping) else None
        try:
            swapped = await asyncio.to_thread(server.reload, bundle, force=bool(bundle))
        except (AutotuneError, OSError) as exc:
            return error(400, f"not swapped, still serving {server.current.version}: {exc}")
        return JSONResponse({"swapped": swapped, "version": server.current.version})

    routes += [Route("/v1/completions", completions, methods=["POST"]),
               Route("/v1/chat/completions", chat_completions, methods=["POST"]),
               Route("/v1/models", models, methods=["GET"]),
               Route("/health", health, methods=["GET"]),
               Route("/admin/reload", reload, methods=["POST"])]
    return routes


def create_app(server: GenerationServer) -> Any:
    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await asyncio.to_thread(server.close)

    return Starlette(routes=add_generation_routes([], server), lifespan=lifespan)


def serve_generation(source: str, *, host: str = "127.0.0.1", port: int = 8000,
                     poll_interval: float = 1.0, tracking_uri: str | None = None,
                     admin_token: str | None = None,
                     on_ready: Callable[[GenerationServer], None] | None = None) -> None:
    """Serve a generation bundle with uvicorn until interrupted."""
    import uvicorn

    server = GenerationServer(source, poll_interval=poll_interval, tracking_uri=tracking_uri,
                              admin_token=admin_token)
    server.start_watching()
    if on_ready:
        on_ready(server)
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning")


def copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle folder (manifest last, so a watcher never sees a partial one)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            shutil.copy2(p, dst / p.name)
    write_atomic(dst / MANIFEST, (src / MANIFEST).read_bytes())
