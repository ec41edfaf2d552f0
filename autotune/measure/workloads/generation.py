"""The text-generation workload: serve a job's prompts at its concurrency and measure it.

A trial's configuration says how the model generates and serves (:data:`GENERATION_PARAMS`, the
knobs with their defaults, declared here next to their implementation in
:mod:`autotune.measure.workloads.engine`).  :class:`GenerationEvaluator` has the interface of
:class:`autotune.measure.workloads.forward.Evaluator` (``evaluate``, ``compare``, ``fingerprint``,
``capabilities``) and is chosen for ``model.task: text-generation`` jobs by
:func:`autotune.measure.workloads.registry.evaluator_for`.

One measurement (``evaluate``):

1. build: load the model folder with the configuration's attention, precision, torchao
   quantization and compilation;
2. quality: perplexity of the held-out text (``perplexity_ratio`` against the unmodified model);
3. under the host's measurement lock: a warm-up pass over the first requests, then passes of the
   whole workload (``workload.requests`` requests, by ``concurrency`` closed-loop clients, each
   next request arriving ``turnaround_ms`` after the client's previous one ended, or arriving at
   ``request_rate``), served by the engine as configured, until
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

from autotune.core.files import write_atomic
from autotune.core.refs import resolve
from autotune.errors import AutotuneError, SpecError, TrialFailed
from autotune.measure.harness.hardware import detect_capabilities, fingerprint
from autotune.measure.harness.hostlock import measurement_lock
from autotune.measure.harness.result import PeakRSS, TrialResult
from autotune.measure.harness.stats import SETTLE_S
from autotune.measure.workloads.engine import (
    ClosedLoop,
    Engine,
    GenSettings,
    Poisson,
    load_model,
    load_tokenizer,
    quiet_transformers,
)
from autotune.measure.workloads.knobs import GENERATION_PARAMS, PARAM_NAMES, engine_unavailable
from autotune.measure.workloads.llamacpp import LlamaCppEngine, LlamaCppSettings, missing, to_gguf

if TYPE_CHECKING:
    from autotune.job.spec import Job


def harness_params() -> dict[str, tuple[str, Any]]:
    """Name → (description, default), as :data:`autotune.measure.workloads.forward.HARNESS_PARAMS`."""
    return {k.name: (k.description, k.default) for k in GENERATION_PARAMS}


def check_config(config: Mapping[str, Any]) -> None:
    """Keys a generation trial does not understand fail it (``pruning_ratio: 0`` from the
    baseline configuration is accepted), and so does an engine that cannot run here."""
    for k, v in config.items():
        if k in PARAM_NAMES:
            continue
        if k == "pruning_ratio" and not v:
            continue
        raise TrialFailed(f"'{k}' is not a generation parameter ({', '.join(PARAM_NAMES)})")
    runtime = config.get("runtime") or "torch"
    if runtime in ("llama_cpp", "openvino_genai"):
        why = engine_unavailable(runtime)  # always a reason for openvino_genai (see there)
        if why:
            raise TrialFailed(why)
    elif runtime != "torch":
        raise TrialFailed(f"runtime '{runtime}' cannot generate; the generation runtimes are "
                          "torch (+ transformers) and llama_cpp")


def engine_settings(config: Mapping[str, Any], default_batch: int) -> Any:
    """The settings of the configuration's engine (:class:`GenSettings` for torch,
    :class:`~autotune.measure.workloads.llamacpp.LlamaCppSettings` for llama_cpp)."""
    check_config(config)
    if (config.get("runtime") or "torch") == "llama_cpp":
        return LlamaCppSettings.from_config(config, default_batch)
    return GenSettings.from_config(config, default_batch=default_batch)


def settings_from_dict(data: Mapping[str, Any]) -> Any:
    """Settings written by ``to_dict`` (a bundle's generation.yaml) back into their class."""
    data = dict(data)
    if data.pop("runtime", "torch") == "llama_cpp":
        return LlamaCppSettings(**data)
    return GenSettings(**data)


def context_cells(items: Any, max_batch: int) -> int:
    """KV-cache cells llama.cpp needs for ``max_batch`` of these requests at once (rounded up
    to 256)."""
    longest = max(len(ids) + n for ids, n in items)
    return -(-longest * max_batch // 256) * 256


def build_engine(folder: Path, tokenizer: Any, settings: Any, *, cache_dir: Path,
                 n_ctx: int, model_file: Path | None = None) -> Any:
    """An engine for ``settings`` over the model in ``folder`` (``model_file``: a GGUF file to
    load as it is, from a bundle)."""
    if isinstance(settings, LlamaCppSettings):
        path = model_file or to_gguf(folder, settings.gguf_type, cache_dir, tokenizer,
                                     folder_digest(folder))
        return LlamaCppEngine(path, settings, n_ctx, kv_per_token_of(folder))
    return Engine(load_model(folder, settings), tokenizer, settings)


#: a llama_cpp bundle's GGUF file (the file measured, byte for byte)
GGUF_FILE = "model.gguf"


def runtime_files(job: Job, settings: Any, folder: Path) -> dict[str, bytes]:
    """Files a bundle needs besides the model folder's: for llama_cpp the GGUF file its trials
    measured (converted and quantized again if the job's cache lost it)."""
    if not isinstance(settings, LlamaCppSettings):
        return {}
    path = to_gguf(folder, settings.gguf_type, job.out_dir / "cache", load_tokenizer(folder),
                   folder_digest(folder))
    return {GGUF_FILE: path.read_bytes()}


def bundle_engine(root: Path, settings: Any, tokenizer: Any) -> Any:
    """The engine a bundle folder runs (checked files; the settings from its generation.yaml)."""
    if isinstance(settings, LlamaCppSettings):
        why = missing_engine(settings)
        if why:
            raise AutotuneError(f"{root}: {why}")
        import json

        # the server's requests are not the workload's: room for the model's full context in
        # every sequence (unless the tuned n_ctx says otherwise)
        longest = int(json.loads((root / "config.json").read_text()).get(
            "max_position_embeddings", 2048))
        n_ctx = settings.n_ctx or min(longest, 4096) * settings.max_batch
        return build_engine(root, tokenizer, settings, cache_dir=root, n_ctx=n_ctx,
                            model_file=root / GGUF_FILE)
    return Engine(load_model(root, settings), tokenizer, settings)


def missing_engine(settings: Any) -> str | None:
    return missing() if isinstance(settings, LlamaCppSettings) else None


def kv_per_token_of(folder: Path) -> int:
    """Bytes of f16 key + value cache per token (all layers) from the model's config.json."""
    import json

    c = json.loads((folder / "config.json").read_text())
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * (c.get("num_key_value_heads") or heads) * head_dim * 2


def engine_perplexity(engine: Any, ids: tuple[int, ...]) -> float:
    own = getattr(engine, "perplexity", None)
    return own(ids) if own is not None else perplexity(engine.model, ids)


def engine_weights_bytes(engine: Any) -> int:
    own = getattr(engine, "weights_bytes", None)
    return own() if own is not None else weights_bytes(engine.model)


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
    slo_ttft_s: float = 0.2  # a request meets the SLO: TTFT and TPOT within these
    slo_tpot_s: float = 0.05
    turnaround_s: float = 0.0  # closed loop: a client's end of one request -> its next arrives


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


def prompt_texts(job: Job) -> list[str]:
    """The workload's prompts: the list, a file's non-empty lines, what ``module:function``
    returns, or the windows cut from a text."""
    wl = job.workload
    assert wl is not None
    base = Path(job.base_dir)
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
    if not prompts or not any(prompts):
        raise SpecError("the workload has no prompts.", path="workload.prompts")
    return prompts


#: config.json keys that bound a model's positions (prompt + generated tokens), by family
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                 "n_ctx")


def model_positions(config: Mapping[str, Any]) -> int | None:
    """The most tokens the model's positions take (from its config), or None if it says none."""
    for k in POSITION_KEYS:
        v = config.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_positions(job: Job, longest_prompt: int, positions: int | None) -> None:
    """Every request (its prompt and the most tokens it may generate) fits the model's positions;
    a located :class:`SpecError` at ``workload.max_new_tokens`` otherwise."""
    wl = job.workload
    assert wl is not None
    if positions is None or longest_prompt + wl.max_output_tokens <= positions:
        return
    field = "workload.max_new_tokens" + ("" if isinstance(wl.max_new_tokens, int) else ".max")
    raise SpecError(
        f"max_new_tokens {wl.max_output_tokens} does not fit the model's {positions} positions "
        f"after the longest prompt ({longest_prompt} tokens): at most "
        f"{max(positions - longest_prompt, 0)}.", path=field,
        hint="Lower max_new_tokens or shorten the prompts.")


def load_generation_workload(job: Job, tokenizer: Any | None = None) -> GenerationWorkload:
    import json

    wl = job.workload
    assert wl is not None
    base = Path(job.base_dir)
    folder = model_folder(job)
    tok = tokenizer or load_tokenizer(folder)
    prompts = prompt_texts(job)
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
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    check_positions(job, max(len(ids) for ids, _ in items),
                    model_positions(config) if isinstance(config, dict) else None)
    held = _resolve_text(wl.held_out, base, "workload.held_out") if wl.held_out else \
        " ".join(prompts)
    held_ids = tuple(tok(str(held))["input_ids"])
    return GenerationWorkload(folder, tuple(items), tuple(prompts), held_ids, wl.concurrency,
                              wl.request_rate, wl.seed, wl.slo.ttft_ms / 1000.0,
                              wl.slo.tpot_ms / 1000.0, wl.turnaround_ms / 1000.0)


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
    good: int = 0  # requests that met the workload's SLO (TTFT and TPOT limits)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0


def serve_pass(engine: Any, wl: GenerationWorkload, n: int | None = None) -> PassResult:
    """Serve the first ``n`` (default all) requests of the workload once; wall-clock timing."""
    items = [(list(ids), m) for ids, m in wl.items[:n or len(wl.items)]]
    t0 = time.perf_counter()
    source = (Poisson(items, wl.request_rate, wl.seed) if wl.request_rate
              else ClosedLoop(items, wl.concurrency, wl.turnaround_s))
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
        good=sum(r.ttft <= wl.slo_ttft_s and (r.tpot or 0.0) <= wl.slo_tpot_s for r in ok),
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
    good = float(np.median([p.good / p.makespan_s for p in passes]))
    return {
        "ttft_p50_ms": percentile(ttft, 50) * ms, "ttft_p95_ms": percentile(ttft, 95) * ms,
        "tpot_p50_ms": percentile(tpot, 50) * ms, "tpot_p95_ms": percentile(tpot, 95) * ms,
        "request_latency_p50_ms": percentile(lat, 50) * ms,
        "request_latency_p95_ms": percentile(lat, 95) * ms,
        "output_tokens_per_s": tps, "requests_per_s": rps, "goodput_rps": good,
    }


class GenerationEvaluator:
    """Builds and measures generation configurations of one job (lives in the measuring
    process, like :class:`autotune.measure.workloads.forward.Evaluator`)."""

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
        return engine_settings(config, self.workload.concurrency)

    def build(self, config: Mapping[str, Any]) -> Any:
        """(engine, settings) for a configuration."""
        s = self.settings(config)
        if not isinstance(s, GenSettings):
            wl = self.workload
            try:
                return build_engine(wl.model_dir, self._tok, s,
                                    cache_dir=self.job.out_dir / "cache",
                                    n_ctx=context_cells(wl.items, s.max_batch)), s
            except TrialFailed:
                raise
            except Exception as exc:
                raise TrialFailed(f"building the {s.to_dict()['runtime']} engine failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
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
                ppl = engine_perplexity(engine, self.workload.held_out_ids)
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
            "model_size_mb": engine_weights_bytes(engine) / 2**20,
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
            names = list(engines)
            for r in range(rounds):  # rotated, a settle pause first (as stats.alternate)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    e = engines[name]
                    time.sleep(SETTLE_S)
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
