"""llama.cpp as a generation runtime (``runtime: llama_cpp``), through llama-cpp-python.

* :func:`to_gguf` converts a ``save_pretrained`` folder to GGUF with the ``gguf`` package: the
  architectures whose llama.cpp graph matches transformers' (``Glm4ForCausalLM`` → ``glm4``,
  ``Qwen2ForCausalLM`` → ``qwen2``, ``LlamaForCausalLM`` / ``MistralForCausalLM`` → ``llama``,
  with llama.cpp's convert script's q/k row permutation), tensor names through
  ``gguf.TensorNameMap`` (what llama.cpp's ``convert_hf_to_gguf.py`` uses), f32 weights; then
  llama.cpp's own ``llama_model_quantize`` writes the trial's ``gguf_type`` (``q8_0``, ``q4_0``,
  ``q4_k_m``, ``f16``).  The vocabulary is written as the model's token strings only: requests go
  in and come out as token ids (the job's Hugging Face tokenizer encodes and decodes, as for the
  torch engine), so any tokenizer works here.  A byte-level BPE tokenizer's merges are written
  too, so that llama.cpp's own tokenizer (used by llama.cpp's server, which takes text) matches;
  llama.cpp has no word-level tokenizer (the GLM example's), so its server cannot tokenize that
  model's text as it was trained.
* :class:`LlamaCppEngine` serves requests as llama.cpp's server does: one context with
  ``max_batch`` sequences in one unified KV cache; every step one ``llama_decode`` of a batch
  holding the next token of every running sequence and the prompts of newly admitted ones (split
  into ``n_batch`` tokens per call), greedy argmax of each sequence's logits; a finished
  sequence's cache is removed and its slot freed at once (continuous batching).

It has the :class:`autotune.measure.workloads.engine.Engine` interface the measurement, the benchmark and
the server use: ``run(source, stop=)``, ``peak_kv_bytes``, ``counts``, ``perplexity(ids)``,
``weights_bytes()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from autotune.errors import TrialFailed
from autotune.measure.workloads.knobs import engine_unavailable

#: gguf_type → llama.cpp's LLAMA_FTYPE (llama.h); f32 is the converted file itself
GGUF_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}

#: transformers architecture → (gguf MODEL_ARCH name, permute q/k rows as convert_hf_to_gguf does)
ARCHITECTURES = {
    "Glm4ForCausalLM": ("GLM4", False),
    "Qwen2ForCausalLM": ("QWEN2", False),
    "LlamaForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
}

_lock = threading.Lock()
_backend_ready = False


def missing() -> str | None:
    """Why llama.cpp cannot run here (None: it can)."""
    return engine_unavailable("llama_cpp")


@dataclass(frozen=True)
class LlamaCppSettings:
    """How llama.cpp serves (the knobs of ``runtime: llama_cpp``)."""

    gguf_type: str = "q8_0"
    max_batch: int = 1  # parallel sequences (llama.cpp server's --parallel)
    threads: int | None = None  # None: llama.cpp's default (GGML_DEFAULT_N_THREADS)
    n_batch: int = 512  # most tokens per llama_decode call (prompt chunking)
    n_ctx: int = 0  # KV cache cells, all sequences together (0: what the workload needs)

    def __post_init__(self) -> None:
        if self.gguf_type not in GGUF_TYPES:
            raise TrialFailed(f"unknown gguf_type '{self.gguf_type}' ({', '.join(GGUF_TYPES)})")
        for name in ("max_batch", "n_batch"):
            if getattr(self, name) < 1:
                raise TrialFailed(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], default_batch: int) -> LlamaCppSettings:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in config.items() if k in names and v is not None}
        for key in ("max_batch", "threads", "n_batch", "n_ctx"):
            if key in kw:
                kw[key] = int(kw[key])
        kw["max_batch"] = int(kw.get("max_batch") or default_batch)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": "llama_cpp", **{f.name: getattr(self, f.name) for f in fields(self)}}


# ------------------------------------------------------------------------------ conversion
def _config(folder: Path) -> dict[str, Any]:
    import json

    return json.loads((folder / "config.json").read_text())


def _rope(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0),
                                          "partial_rotary_factor":
                                          cfg.get("partial_rotary_factor", 1.0)}


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute``: HF's rotate-half q/k rows to
    llama.cpp's interleaved rope layout."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def convertible(folder: Path) -> str | None:
    """Why the model in ``folder`` cannot be converted to GGUF here (None: it can)."""
    archs = _config(folder).get("architectures") or ["?"]
    if archs[0] not in ARCHITECTURES:
        return (f"llama.cpp conversion here covers {', '.join(ARCHITECTURES)}; the model is "
                f"{archs[0]}")
    return None


def write_f32_gguf(folder: Path, out: Path, tokenizer: Any) -> None:
    """The model of ``folder`` as an f32 GGUF file (see the module doc)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    cfg = _config(folder)
    why = convertible(folder)
    if why:
        raise TrialFailed(why)
    arch_name, permute = ARCHITECTURES[cfg["architectures"][0]]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or \
        cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = _rope(cfg)
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(folder.name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(int(head_dim * float(rope.get("partial_rotary_factor") or 1.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_file_type(0)
    # the vocabulary: the model's token strings by id (ids in, ids out; see the module doc)
    n_vocab = int(cfg["vocab_size"])
    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens = [inv.get(i, f"[unused{i}]") for i in range(n_vocab)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
             if i in inv else gguf.TokenType.UNUSED for i in range(n_vocab)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")  # GPT-2's pre-tokenizer regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = bpe_merges(folder)
    if not merges:  # llama.cpp refuses a BPE vocabulary without merges; ids never go through it
        normal = [t for i, t in enumerate(tokens) if types[i] == gguf.TokenType.NORMAL
                  and " " not in t][:2]
        merges = [" ".join(normal)] if len(normal) == 2 else ["a b"]
    w.add_token_merges(merges)
    if tokenizer.eos_token_id is not None:
        w.add_eos_token_id(int(tokenizer.eos_token_id))
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(int(tokenizer.pad_token_id))
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(arch, int(cfg["num_hidden_layers"]))
    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            data = f.get_tensor(key).astype(np.float32)
            if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head)
            elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_kv)
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise TrialFailed(f"GGUF conversion: no llama.cpp tensor for '{key}' of "
                                  f"{cfg['architectures'][0]}")
            w.add_tensor(name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bpe_merges(folder: Path) -> list[str]:
    """The merges of a byte-level BPE ``tokenizer.json`` ("a b" strings), so that llama.cpp's own
    tokenizer (llama_cpp.server's, which takes text) splits text as the Hugging Face one does;
    none for other tokenizer models (llama.cpp has no word-level tokenizer: text sent to
    llama.cpp's server for such a model is not tokenized as the model was trained)."""
    import json

    path = folder / "tokenizer.json"
    if not path.is_file():
        return []
    model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
    if model.get("type") != "BPE":
        return []
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def _backend() -> Any:
    global _backend_ready
    import llama_cpp

    with _lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            # llama.cpp's own logging stays quiet (errors still reach stderr)
            noop = llama_cpp.llama_log_callback(lambda level, text, data: None)
            llama_cpp.llama_log_set(noop, ctypes.c_void_p(0))
            _backend.__dict__["_log_cb"] = noop  # keep the callback alive
            _backend_ready = True
    return llama_cpp


def to_gguf(folder: Path, gguf_type: str, cache_dir: Path, tokenizer: Any, digest: str) -> Path:
    """The model as a GGUF file of ``gguf_type``, converted once per model contents (``digest``)
    and type (kept in ``cache_dir``)."""
    import os

    why = missing()
    if why:
        raise TrialFailed(why)
    digest = digest[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    f32 = cache_dir / f"model-{digest}-f32.gguf"
    if not f32.is_file():
        tmp = f32.with_suffix(f".{os.getpid()}.tmp")
        write_f32_gguf(folder, tmp, tokenizer)
        tmp.replace(f32)
    if gguf_type == "f32":
        return f32
    out = cache_dir / f"model-{digest}-{gguf_type}.gguf"
    if not out.is_file():
        lib = _backend()
        params = lib.llama_model_quantize_default_params()
        params.ftype = GGUF_TYPES[gguf_type]
        params.nthread = 1
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        rc = lib.llama_model_quantize(str(f32).encode(), str(tmp).encode(),
                                      ctypes.byref(params))
        if rc != 0:
            raise TrialFailed(f"llama.cpp could not quantize the model to {gguf_type} "
                              f"(llama_model_quantize returned {rc})")
        tmp.replace(out)
    return out


# ------------------------------------------------------------------------------ the engine
class LlamaCppEngine:
    """Serves requests with llama.cpp (see the module doc); one thread drives it."""

    def __init__(self, gguf_path: Path, settings: LlamaCppSettings, n_ctx: int,
                 kv_per_token: int) -> None:
        lib = self.lib = _backend()
        self.settings = settings
        self.path = Path(gguf_path)
        mp = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self._model:
            raise TrialFailed(f"llama.cpp could not load {self.path.name} (its log says why: "
                              "run with LLAMA_LOG to see it)")
        cp = lib.llama_context_default_params()
        self.n_ctx = int(settings.n_ctx or n_ctx)
        cp.n_ctx = self.n_ctx
        cp.n_batch = cp.n_ubatch = int(settings.n_batch)
        cp.n_seq_max = int(settings.max_batch)
        cp.kv_unified = True
        cp.no_perf = True
        if settings.threads:
            cp.n_threads = cp.n_threads_batch = int(settings.threads)
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise TrialFailed(f"llama.cpp could not make a context (n_ctx {self.n_ctx}, "
                              f"n_batch {settings.n_batch}, sequences {settings.max_batch})")
        self._mem = lib.llama_get_memory(self._ctx)
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model))
        self._cap = int(settings.n_batch)
        self._batch = lib.llama_batch_init(self._cap, 0, 1)
        self.kv_per_token = kv_per_token  # f16 keys and values (llama.cpp's default cache type)
        self.peak_kv_bytes = 0
        self.counts = {"forwards": 0}
        self._queue: deque[Any] = deque()
        self._free = list(range(settings.max_batch))[::-1]
        self._running: dict[int, Any] = {}  # seq id → request
        self._pos: dict[int, int] = {}
        self._last: dict[int, int] = {}

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self.lib.llama_batch_free(self._batch)
            self.lib.llama_free(self._ctx)
            self.lib.llama_model_free(self._model)
            self._ctx = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def weights_bytes(self) -> int:
        return int(self.lib.llama_model_size(self._model))

    # ------------------------------------------------------------------ decoding
    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, Any]:
        """Run ``(token, pos, seq, want_logits)`` entries through llama_decode in chunks of
        ``n_batch``; the logits ([n_vocab] arrays) of the entries that want them, by index."""
        import numpy as np

        out: dict[int, Any] = {}
        b = self._batch
        for start in range(0, len(entries), self._cap):
            chunk = entries[start:start + self._cap]
            for i, (tok, pos, seq, want) in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = want
            b.n_tokens = len(chunk)
            rc = self.lib.llama_decode(self._ctx, b)
            self.counts["forwards"] += 1
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}"
                                   + (" (the KV cache is full: raise n_ctx)" if rc == 1 else ""))
            for i, (_, _, _, want) in enumerate(chunk):
                if want:
                    ptr = self.lib.llama_get_logits_ith(self._ctx, i)
                    out[start + i] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        return out

    def perplexity(self, ids: tuple[int, ...], window: int = 128) -> float:
        """exp(mean next-token loss) over ``ids`` in non-overlapping windows (as the torch
        engine's :func:`autotune.measure.workloads.generation.perplexity`)."""
        import numpy as np

        total, count = 0.0, 0
        seq = 0
        for start in range(0, max(1, len(ids) - 1), window):
            chunk = ids[start:start + window + 1]
            if len(chunk) < 2:
                break
            inp = chunk[:-1]
            logits = self._decode([(t, p, seq, True) for p, t in enumerate(inp)])
            self.lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            for i, target in enumerate(chunk[1:]):
                row = logits[i].astype(np.float64)
                m = row.max()
                total += float(m + math.log(np.exp(row - m).sum()) - row[target])
                count += 1
        return math.exp(total / max(1, count))

    # ------------------------------------------------------------------ driving
    def run(self, source: Any, *, stop: threading.Event | None = None) -> None:
        """Serve until the source is exhausted and nothing is left (or ``stop`` is set)."""
        while not (stop is not None and stop.is_set()):
            now = time.perf_counter()
            self._queue.extend(source.poll(now))
            if not self._queue and not self._running:
                if source.exhausted:
                    return
                source.wait(0.05)
                continue
            try:
                self._step(source)
            except Exception as exc:
                self._fail_all(source, f"{type(exc).__name__}: {exc}")
                source.stepped()
                if not source.resilient:
                    raise

    def _finish(self, req: Any, source: Any, now: float) -> None:
        req.done = True
        req.finished.set()
        source.on_done(req, now)
        if req.on_finish is not None:
            req.on_finish(req)

    def _release(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._running.pop(seq, None)
        self._pos.pop(seq, None)
        self._last.pop(seq, None)
        self._free.append(seq)

    def _fail_all(self, source: Any, reason: str) -> None:
        now = time.perf_counter()
        for seq, r in list(self._running.items()):
            if not r.finished.is_set():
                r.error = reason
                self._finish(r, source, now)
            self._release(seq)

    def _step(self, source: Any) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        owners: list[tuple[int, bool]] = []  # (sequence, decode step?) per wanted logits
        for seq in self._running:  # one decode token per running sequence
            entries.append((self._last[seq], self._pos[seq], seq, True))
            owners.append((seq, True))
        while self._queue and self._free:  # admit: the whole prompt, logits of its last token
            req = self._queue.popleft()
            if len(req.prompt_ids) + req.max_new_tokens > self.n_ctx:
                req.error = (f"prompt + max_tokens ({len(req.prompt_ids)} + "
                             f"{req.max_new_tokens}) exceed the context ({self.n_ctx})")
                self._finish(req, source, time.perf_counter())
                continue
            seq = self._free.pop()
            self.lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._running[seq] = req
            n = len(req.prompt_ids)
            entries.extend((t, p, seq, p == n - 1) for p, t in enumerate(req.prompt_ids))
            owners.append((seq, False))
            self._pos[seq] = n  # the position of the first generated token
        if not entries:
            source.stepped()  # requests refused above
            return
        logits = self._decode(entries)
        now = time.perf_counter()
        cached = 0
        for idx, (seq, decode) in zip(sorted(logits), owners, strict=True):
            req = self._running[seq]
            if decode:
                self._pos[seq] += 1
            tok = int(logits[idx].argmax())
            req.emit(tok, now)
            self._last[seq] = tok
            if req.done:
                self._finish(req, source, now)
                self._release(seq)
            else:
                cached += self._pos[seq]
        source.stepped()
        self.peak_kv_bytes = max(self.peak_kv_bytes, cached * self.kv_per_token)
