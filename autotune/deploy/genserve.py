"""Generation bundles: written by export, verified at load, served by ``autotune serve``.

A generation bundle is a folder::

    config.json, generation_config.json, model.safetensors   the model (save_pretrained; fp32)
    tokenizer.json, tokenizer_config.json, ...              the tokenizer
    generation.yaml    the tuned settings (quantization, cache, attention, batching, max_batch,
                       threads, prefill chunk): applied at load by the same code that measured them
    manifest.json      format, source trial, metrics, constraints, and a SHA-256 for every file

Nothing is unpickled: weights are safetensors, settings YAML/JSON; every file read is listed in
the manifest, checked against its hash and stays inside the bundle.

:class:`GenerationService` is a loaded bundle as ``autotune serve`` serves it (model kind
``generation``): the engine the bundle was measured with, in its own thread.  The server
(:mod:`autotune.deploy.serve`) mounts the OpenAI-compatible routes for it beside its common routes,
with the same limits, admission, admin token, metrics and hot swap as a predict bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autotune.core.files import write_atomic
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
from autotune.deploy.serve.swap import open_source
from autotune.errors import AutotuneError
from autotune.measure.workloads.engine import Live, Request, load_tokenizer
from autotune.measure.workloads.generation import (
    bundle_engine,
    engine_settings,
    model_folder,
    runtime_files,
    settings_from_dict,
)
from autotune.tuning.tuner import open_record

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
    wl = job.workload
    settings = engine_settings(config, wl.concurrency)
    folder = model_folder(job)
    files: dict[str, bytes] = {}
    for name in _MODEL_FILES:
        if (folder / name).is_file():
            files[name] = (folder / name).read_bytes()
    if "model.safetensors" not in files:
        raise AutotuneError(f"the model folder {folder} has no model.safetensors (sharded or "
                            "pickled weights are not bundled); save it with save_pretrained.")
    files.update(runtime_files(job, settings, folder))  # e.g. the measured GGUF file
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
        "runtime": {"measured": settings.to_dict().get("runtime", "torch"),
                     "same_model": True, "latency_applies": True},
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
    return root, manifest, settings_from_dict(data["settings"])


# ------------------------------------------------------------------------------ the served model
#: how a bundle's engine is built, by the runtime that measured it (``manifest.runtime.measured``):
#: ``build(bundle folder, settings, manifest) -> (engine, tokenizer)``.  The engine is anything with
#: ``run(source, *, stop)`` serving :class:`~autotune.measure.workloads.engine.Request` objects from a
#: :class:`~autotune.measure.workloads.engine.Source` (tokens through ``Request.emit``, the end through the
#: engine calling ``source.on_done`` and ``Request.on_finish``), as
#: :class:`~autotune.measure.workloads.engine.Engine` does; the tokenizer is a transformers tokenizer
#: (``__call__`` → ``input_ids``, ``decode``, optional chat template).  Any such engine is served
#: behind the same OpenAI-compatible routes (:mod:`autotune.deploy.serve.completions`).
EngineBuilder = Callable[[Path, Any, Mapping[str, Any]], tuple[Any, Any]]
_ENGINES: dict[str, EngineBuilder] = {}


def register_generation_engine(runtime: str, build: EngineBuilder) -> None:
    """Serve generation bundles measured with ``runtime`` through the engine ``build`` returns."""
    _ENGINES[runtime] = build


def _measured_engine(root: Path, settings: Any, manifest: Mapping[str, Any]) -> tuple[Any, Any]:
    """The engine the bundle was measured with (its settings say which: torch or llama.cpp)."""
    tokenizer = load_tokenizer(root)
    return bundle_engine(root, settings, tokenizer), tokenizer


register_generation_engine("torch", _measured_engine)
register_generation_engine("llama_cpp", _measured_engine)


def _max_positions(root: Path, manifest: Mapping[str, Any]) -> int | None:
    """The model's context length from its config.json (None when it does not say)."""
    if "config.json" not in manifest.get("files", {}):
        return None
    try:
        cfg = json.loads(read_bundle_file(root, "config.json", manifest["files"]))
    except (BundleError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return int(cfg[key])
    return None


class GenerationService:
    """A loaded generation bundle, served (model kind ``generation``): its engine runs in its own
    thread on a :class:`~autotune.measure.workloads.engine.Live` source; requests are submitted from the
    event loop and stream their tokens back through callbacks."""

    kind = "generation"

    def __init__(self, bundle: str | Path) -> None:
        self.root, self.manifest, self.settings = verified_bundle(bundle)
        runtime = str((self.manifest.get("runtime") or {}).get("measured") or "torch")
        if runtime not in _ENGINES:
            raise BundleError(f"{self.root} was measured with the generation runtime {runtime!r}, "
                              f"which this installation cannot serve (known: {sorted(_ENGINES)}).")
        self.runtime = runtime
        self.engine, self.tokenizer = _ENGINES[runtime](self.root, self.settings, self.manifest)
        self.max_positions = _max_positions(self.root, self.manifest)
        self.name = str((self.manifest.get("source") or {}).get("job") or "autotune")
        self.in_flight = 0
        self.tokens_out = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.source = Live()
        self._thread = threading.Thread(target=self.engine.run, args=(self.source,),
                                        kwargs={"stop": self._stop}, daemon=True,
                                        name=f"autotune-gen-{self.root.name}")
        self._thread.start()

    @property
    def batch_size(self) -> int:
        return int(self.settings.max_batch)

    def submit(self, prompt_ids: list[int], max_tokens: int,
               on_token: Callable[[Any, int], None] | None,
               on_finish: Callable[[Any], None]) -> Request:
        """Queue one request for the engine; callbacks run on the engine's thread."""
        with self._lock:
            self.in_flight += 1

        def finished(req: Request) -> None:
            with self._lock:
                self.in_flight -= 1
                self.tokens_out += len(req.tokens)
            on_finish(req)

        return self.source.submit(Request(list(prompt_ids), max_tokens, time.perf_counter(),
                                          on_token=on_token, on_finish=finished))

    @staticmethod
    def cancel(req: Request) -> None:
        """Stop generating for ``req`` (its client left): the engine retires it at its next step."""
        req.done = True

    def warmup(self) -> None:
        """One short request through the engine, so the first client does not pay for it."""
        ids = self.tokenizer("warm up")["input_ids"] or [int(self.tokenizer.pad_token_id or 0)]
        req = self.submit(ids, 2, None, lambda r: None)
        if not req.finished.wait(300):
            raise BundleError(f"{self.root}: the engine did not answer a warm-up request in 300 s.")
        if req.error:
            raise BundleError(f"{self.root}: the engine failed a warm-up request: {req.error}")

    def close(self, drain_s: float = 120.0) -> None:
        """Stop after the requests in flight are served (at most ``drain_s``)."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(5)


def copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle folder (manifest last, so a watcher never sees a partial one)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            shutil.copy2(p, dst / p.name)
    write_atomic(dst / MANIFEST, (src / MANIFEST).read_bytes())
