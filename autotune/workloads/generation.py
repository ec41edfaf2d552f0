"""The text-generation workload: serve a job's prompts at its concurrency and measure it.

A trial's configuration says how the model generates and serves (:data:`GENERATION_PARAMS`, the
knobs with their defaults, declared here next to their implementation in
:mod:`autotune.workloads.engine`).  :class:`GenerationEvaluator` has the interface of
:class:`autotune.harness.evaluate.Evaluator` (``evaluate``, ``compare``, ``fingerprint``,
``capabilities``) and is chosen for ``model.task: text-generation`` jobs by
:func:`autotune.workloads.registry.evaluator_for`.

One measurement (``evaluate``):

1. build: load the model folder with the configuration's attention, precision, torchao
   quantization and compilation;
2. quality: perplexity of the held-out text (``perplexity_ratio`` against the unmodified model);
3. under the host's measurement lock: a warm-up pass over the first requests, then passes of the
   whole workload (``workload.requests`` requests, by ``concurrency`` closed-loop clients or
   arriving at ``request_rate``), served by the engine as configured, until
   ``measurement.min_repeats`` passes or ``measurement.max_time_s`` (at least one);
4. metrics: TTFT (arrival → first token), TPOT (time per output token after the first), request
   latency (percentiles over every request of every pass), output tokens/s (median over passes),
   peak KV-cache bytes, memory; ``token_agreement``: the share of output positions where the
   served greedy tokens equal the unmodified model's (computed once, one request at a time, fp32).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import SpecError, TrialFailed
from autotune.files import write_atomic
from autotune.harness.hardware import detect_capabilities, fingerprint
from autotune.harness.hostlock import measurement_lock
from autotune.harness.result import PeakRSS, TrialResult
from autotune.refs import resolve
from autotune.workloads.engine import (
    ClosedLoop,
    Engine,
    GenSettings,
    Poisson,
    load_model,
    load_tokenizer,
    quiet_transformers,
)
from autotune.workloads.knobs import GENERATION_PARAMS, PARAM_NAMES

if TYPE_CHECKING:
    from autotune.spec import Job


def harness_params() -> dict[str, tuple[str, Any]]:
    """Name → (description, default), as :data:`autotune.harness.evaluate.HARNESS_PARAMS`."""
    return {k.name: (k.description, k.default) for k in GENERATION_PARAMS}


def check_config(config: Mapping[str, Any]) -> None:
    """Keys a generation trial does not understand fail it (``pruning_ratio: 0`` from the
    baseline configuration is accepted)."""
    for k, v in config.items():
        if k in PARAM_NAMES:
            continue
        if k == "pruning_ratio" and not v:
            continue
        raise TrialFailed(f"'{k}' is not a generation parameter ({', '.join(PARAM_NAMES)})")
    if config.get("runtime", "torch") != "torch":
        raise TrialFailed(f"runtime '{config['runtime']}' cannot generate; generation runs on "
                          "torch + transformers")


# ------------------------------------------------------------------------------ the workload
@dataclass(frozen=True)
class GenerationWorkload:
    """A job's model folder, its requests (token ids, output length) and held-out text."""

    model_dir: Path
    items: tuple[tuple[tuple[int, ...], int], ...]  # (prompt ids, max_new_tokens) per request
    prompts: tuple[str, ...]
    held_out_ids: tuple[int, ...]
    concurrency: int
    request_rate: float | None
    seed: int


def _resolve_text(ref: str, base: Path, field: str) -> Any:
    """A ``module:function`` result, or the contents of a file relative to the job."""
    if ":" in ref and not (base / ref).exists() and not Path(ref).is_absolute():
        return resolve(ref, search_paths=[str(base)], field=field)()
    path = (base / ref).resolve()
    if not path.is_file():
        raise SpecError(f"no file '{ref}' (looked in {base}).", path=field,
                        hint="Give a text file relative to the job file or 'module:function'.")
    return path.read_text(encoding="utf-8")


def model_folder(job: Job) -> Path:
    """The model's ``save_pretrained`` folder: ``model.huggingface`` (a folder relative to the job,
    or an id in the local Hugging Face cache; never downloaded) or what ``model.factory``
    returns."""
    base = Path(job.base_dir)
    spec = job.model
    if spec.factory:
        made = resolve(spec.factory, search_paths=[str(base)], field="model.factory")(
            **spec.options)
        if not isinstance(made, str | Path) or not Path(made).is_dir():
            raise SpecError(f"the model factory '{spec.factory}' must return the folder of a "
                            f"saved model (save_pretrained); it returned {made!r}.",
                            path="model.factory")
        return Path(made).resolve()
    ref = str(spec.huggingface)
    local = (base / ref).expanduser()
    if local.is_dir():
        return local.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:
        raise SpecError(f"'{ref}' is neither a folder (relative to {base}) nor a model in the "
                        "local Hugging Face cache; autotune does not download models.",
                        path="model.huggingface",
                        hint="Save the model with save_pretrained into a folder and name it, or "
                        "fill the cache first (huggingface-cli download).") from None


def load_generation_workload(job: Job, tokenizer: Any | None = None) -> GenerationWorkload:
    wl = job.workload
    assert wl is not None
    base = Path(job.base_dir)
    folder = model_folder(job)
    tok = tokenizer or load_tokenizer(folder)
    if isinstance(wl.prompts, list):
        prompts = list(wl.prompts)
    elif isinstance(wl.prompts, str):
        got = _resolve_text(wl.prompts, base, "workload.prompts")
        prompts = got.splitlines() if isinstance(got, str) else list(got)
        prompts = [p for p in (str(x).strip() for x in prompts) if p]
    else:
        text = _resolve_text(wl.prompts.text, base, "workload.prompts.text")
        words = str(text).split()
        rng = random.Random(wl.prompts.seed)
        prompts = []
        for _ in range(wl.prompts.count):
            k = min(len(words), rng.randint(wl.prompts.min_tokens, wl.prompts.max_tokens))
            start = rng.randrange(0, max(1, len(words) - k + 1))
            prompts.append(" ".join(words[start:start + k]))
    if not prompts:
        raise SpecError("the workload has no prompts.", path="workload.prompts")
    n = wl.requests or len(prompts)
    rng = random.Random(wl.seed)
    items = []
    for i in range(n):
        ids = tok(prompts[i % len(prompts)])["input_ids"]
        if not ids:
            raise SpecError(f"prompt {i % len(prompts)} has no tokens.", path="workload.prompts")
        m = wl.max_new_tokens
        out = m if isinstance(m, int) else rng.randint(m.min, m.max)
        items.append((tuple(ids), out))
    held = _resolve_text(wl.held_out, base, "workload.held_out") if wl.held_out else \
        " ".join(prompts)
    held_ids = tuple(tok(str(held))["input_ids"])
    return GenerationWorkload(folder, tuple(items), tuple(prompts), held_ids, wl.concurrency,
                              wl.request_rate, wl.seed)


def folder_digest(folder: Path) -> str:
    """sha256 over a model folder's config, weights and tokenizer files (keys re-tuning)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".model", ".txt"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ measuring
def percentile(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def weights_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored (quantized tensors: their parts)."""

    def size(t: Any) -> int:
        if hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        return int(t.numel() * t.element_size())

    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += size(t)
    return total


def perplexity(model: Any, ids: tuple[int, ...], window: int = 128) -> float:
    """exp(mean next-token loss) over ``ids`` in non-overlapping windows."""
    import math

    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, max(1, len(ids) - 1), window):
            chunk = torch.tensor([ids[start:start + window + 1]], dtype=torch.long)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            total += float(loss)
            count += chunk.shape[1] - 1
    return math.exp(total / max(1, count))


@dataclass(frozen=True)
class PassResult:
    """One pass of the workload: every request's timings and tokens."""

    ttft_s: tuple[float, ...]
    tpot_s: tuple[float, ...]
    latency_s: tuple[float, ...]
    tokens: tuple[tuple[int, ...], ...]  # per request, in workload order
    output_tokens: int
    makespan_s: float
    failed: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0


def serve_pass(engine: Any, wl: GenerationWorkload, n: int | None = None) -> PassResult:
    """Serve the first ``n`` (default all) requests of the workload once; wall-clock timing."""
    items = [(list(ids), m) for ids, m in wl.items[:n or len(wl.items)]]
    t0 = time.perf_counter()
    source = (Poisson(items, wl.request_rate, wl.seed) if wl.request_rate
              else ClosedLoop(items, wl.concurrency))
    engine.run(source)
    end = time.perf_counter()
    done = sorted(source.done, key=lambda r: r.id)
    ok = [r for r in done if r.error is None and r.tokens]
    if len(ok) < len(done):
        bad = next(r for r in done if r.error is not None)
        raise TrialFailed(f"{len(done) - len(ok)} of {len(done)} requests failed: {bad.error}")
    return PassResult(
        ttft_s=tuple(r.ttft for r in ok), tpot_s=tuple(r.tpot for r in ok if r.tpot is not None),
        latency_s=tuple(r.latency for r in ok), tokens=tuple(tuple(r.tokens) for r in ok),
        output_tokens=sum(len(r.tokens) for r in ok),
        makespan_s=max(r.token_times[-1] for r in ok) - min(t0, min(r.arrival for r in ok))
        if ok else end - t0, failed=len(done) - len(ok))


def agreement(tokens: tuple[tuple[int, ...], ...],
              reference: tuple[tuple[int, ...], ...]) -> float:
    """Share of output positions (over all requests) where the tokens equal the reference's."""
    same = total = 0
    for out, ref in zip(tokens, reference, strict=True):
        total += len(ref)
        same += sum(a == b for a, b in zip(out, ref, strict=False))
    return same / total if total else 1.0


def summarize(passes: list[PassResult]) -> dict[str, float]:
    import numpy as np

    ttft = [x for p in passes for x in p.ttft_s]
    tpot = [x for p in passes for x in p.tpot_s]
    lat = [x for p in passes for x in p.latency_s]
    ms = 1000.0
    tps = float(np.median([p.tokens_per_s for p in passes]))
    rps = float(np.median([len(p.latency_s) / p.makespan_s for p in passes]))
    return {
        "ttft_p50_ms": percentile(ttft, 50) * ms, "ttft_p95_ms": percentile(ttft, 95) * ms,
        "tpot_p50_ms": percentile(tpot, 50) * ms, "tpot_p95_ms": percentile(tpot, 95) * ms,
        "request_latency_p50_ms": percentile(lat, 50) * ms,
        "request_latency_p95_ms": percentile(lat, 95) * ms,
        "output_tokens_per_s": tps, "requests_per_s": rps,
    }


class GenerationEvaluator:
    """Builds and measures generation configurations of one job (lives in the measuring
    process, like :class:`autotune.harness.evaluate.Evaluator`)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._wl: GenerationWorkload | None = None
        self._tok: Any = None
        self._reference: tuple[tuple[int, ...], ...] | None = None
        self._ref_ppl: float | None = None
        self._ref_tps: float | None = None

    # ------------------------------------------------------------------ inputs
    @property
    def workload(self) -> GenerationWorkload:
        if self._wl is None:
            quiet_transformers()
            folder = model_folder(self.job)
            self._tok = load_tokenizer(folder)
            self._wl = load_generation_workload(self.job, self._tok)
        return self._wl

    def settings(self, config: Mapping[str, Any]) -> Any:
        check_config(config)
        return GenSettings.from_config(config, default_batch=self.workload.concurrency)

    def build(self, config: Mapping[str, Any]) -> Any:
        """(engine, settings) for a configuration."""
        s = self.settings(config)
        if s.cache_implementation == "quantized":
            import importlib.util

            if not any(importlib.util.find_spec(m) for m in ("optimum", "hqq")):
                raise TrialFailed("cache_implementation 'quantized' needs optimum-quanto or hqq "
                                  "(transformers' QuantizedCache backends); neither is installed")
        try:
            model = load_model(self.workload.model_dir, s)
        except TrialFailed:
            raise
        except Exception as exc:
            raise TrialFailed(f"building the model failed: {type(exc).__name__}: {exc}") from exc
        return Engine(model, self._tok, s), s

    def reference(self) -> tuple[tuple[int, ...], ...]:
        """Greedy outputs of the unmodified model (fp32, sdpa, one request at a time, no
        padding) and its held-out perplexity; computed once and kept in the job's cache folder
        (JSON, keyed by the model folder's contents and the workload)."""
        if self._reference is None:
            import hashlib
            import json

            wl = self.workload
            key = hashlib.sha256(json.dumps(
                [folder_digest(wl.model_dir), wl.items, wl.held_out_ids]).encode()).hexdigest()
            path = self.job.out_dir / "cache" / f"generation-reference-{key[:16]}.json"
            if path.is_file():
                data = json.loads(path.read_text())
                self._reference = tuple(tuple(t) for t in data["tokens"])
                self._ref_ppl = float(data["perplexity"])
                return self._reference
            # untimed, so one thread: no contention with other processes on a busy machine
            s = GenSettings(batching="continuous", max_batch=1, threads=1)
            engine = Engine(load_model(wl.model_dir, s), self._tok, s)
            source = ClosedLoop([(list(ids), n) for ids, n in wl.items], 1)
            engine.run(source)
            done = sorted(source.done, key=lambda r: r.id)
            if any(r.error for r in done):
                raise TrialFailed(f"the unmodified model failed to generate: {done[0].error}")
            self._reference = tuple(tuple(r.tokens) for r in done)
            self._ref_ppl = perplexity(engine.model, wl.held_out_ids)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"tokens": self._reference,
                                           "perplexity": self._ref_ppl}).encode())
        return self._reference

    # ------------------------------------------------------------------ measuring
    def _passes(self, engine: Any) -> tuple[list[PassResult], dict[str, float]]:
        m = self.job.measurement
        wl = self.workload
        timings: dict[str, float] = {}
        with measurement_lock() as waited:
            t0 = time.perf_counter()
            for _ in range(min(m.warmup, 2)):  # warm-up: one batch's worth of requests
                serve_pass(engine, wl, n=max(1, wl.concurrency))
            timings["warmup_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            passes = [serve_pass(engine, wl)]
            while len(passes) < m.min_repeats and time.perf_counter() - t1 < m.max_time_s:
                passes.append(serve_pass(engine, wl))
            timings["measure_s"] = time.perf_counter() - t1
        timings["lock_wait_s"] = waited
        return passes, timings

    def evaluate(self, config: Mapping[str, Any]) -> Any:
        t0 = time.perf_counter()
        reference = self.reference()
        timings: dict[str, float] = {"reference_s": time.perf_counter() - t0}
        with PeakRSS() as rss:
            before = rss.start_mb
            t1 = time.perf_counter()
            engine, s = self.build(config)
            timings["build_s"] = time.perf_counter() - t1
            try:
                t2 = time.perf_counter()
                ppl = perplexity(engine.model, self.workload.held_out_ids)
                timings["quality_s"] = time.perf_counter() - t2
                passes, t = self._passes(engine)
                timings.update(t)
            except TrialFailed:
                raise
            except Exception as exc:  # the library refused this configuration
                raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        metrics = summarize(passes)
        agree = agreement(passes[0].tokens, reference)
        metrics.update({
            "quality": agree, "perplexity": ppl,
            "perplexity_ratio": ppl / self._ref_ppl if self._ref_ppl else float("nan"),
            "kv_cache_mb": engine.peak_kv_bytes / 2**20,
            "peak_memory_mb": rss.peak_mb, "model_memory_mb": max(0.0, rss.peak_mb - before),
            "model_size_mb": weights_bytes(engine.model) / 2**20,
        })
        tps = [p.tokens_per_s for p in passes]
        wl = self.workload
        sample = self._tok.decode(list(passes[0].tokens[0]))
        details = {
            "workload": "text-generation", "settings": s.to_dict(), "passes": len(passes),
            "tokens_per_s_per_pass": tps, "requests": len(wl.items),
            "concurrency": wl.concurrency, "request_rate": wl.request_rate,
            "output_tokens_per_pass": passes[0].output_tokens,
            "sample": {"prompt": wl.prompts[0], "output": sample},
            "reference_perplexity": self._ref_ppl, "model_dir": str(wl.model_dir),
            "model_path": str(wl.model_dir), "memory_before_build_mb": before,
            "fingerprint_digest": self._fingerprint().digest(),
            "timings_s": timings, "elapsed_s": time.perf_counter() - t0,
        }
        return TrialResult(metrics=metrics, details=details)

    def compare(self, configs: Mapping[str, Mapping[str, Any]], rounds: int) -> dict[str, Any]:
        """Several configurations side by side: per round one pass of each (interleaved); per
        name the list of per-round summaries (the generation metrics, plus ``p50_ms`` /
        ``p95_ms`` = request latency percentiles, as the forward workload's rounds have)."""
        engines = {}
        for name, config in configs.items():
            try:
                engines[name] = self.build(config)[0]
            except TrialFailed as exc:
                raise TrialFailed(f"{name}: {exc}") from None
        wl = self.workload
        out: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
        with measurement_lock():
            for e in engines.values():
                serve_pass(e, wl, n=max(1, wl.concurrency))
            for _ in range(rounds):
                for name, e in engines.items():
                    s = summarize([serve_pass(e, wl)])
                    s["p50_ms"], s["p95_ms"] = s["request_latency_p50_ms"], \
                        s["request_latency_p95_ms"]
                    s["mean_ms"] = s["p90_ms"] = s["p99_ms"] = s["p95_ms"]
                    out[name].append(s)
        return out

    # ------------------------------------------------------------------ machine
    @staticmethod
    def _fingerprint() -> Any:
        return fingerprint()

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint().to_dict()

    def capabilities(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(detect_capabilities())
