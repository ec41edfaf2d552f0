"""A generation engine for a causal language model: requests in, streamed greedy tokens out.

One engine serves the tuning measurement (:mod:`autotune.measure.workloads.generation`), the benchmark
and the server (:mod:`autotune.deploy.genserve`), so what is served is what was measured.

Two ways of batching concurrent requests (``batching``):

* ``static``: take up to ``max_batch`` waiting requests (``batch_wait_ms``: after waiting up to
  that long from the oldest one's arrival for ``max_batch`` of them), left-pad them and run
  transformers' ``generate`` (greedy) on the batch to the end; requests arriving meanwhile wait
  for the next batch.  Tokens are streamed from a stopping criterion that sees every step; a request whose own
  ``max_new_tokens`` is reached is marked done in the batch.  ``cache_implementation`` is passed to
  ``generate`` (``dynamic``, ``static``, ``offloaded``, ``quantized``).
* ``continuous``: an iteration-level scheduler over the model's forward with one batched
  ``DynamicCache``: every step decodes one token for every running request; waiting requests are
  admitted as soon as a slot is free (prefilled together, ``prefill_chunk`` tokens at a time,
  with a decode step of the running requests between chunks), their caches left-padded and
  joined to the running batch; finished requests leave the batch at once.

Import is light; torch and transformers are imported when an engine is built.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autotune.errors import TrialFailed

#: int4: torchao 0.18's Int4WeightOnlyConfig has no CPU kernel here (its packing formats need mslk,
#: CUDA or bf16 tile packing), and IntxWeightOnlyConfig stores 4-bit values unpacked in int8; so
#: no int4 choice on CPU.
QUANTIZATIONS = ("fp32", "bf16", "int8_weight_only", "int8_dynamic")
CACHES = ("dynamic", "static", "offloaded", "quantized")
ATTENTIONS = ("sdpa", "eager")
BATCHING = ("static", "continuous")


@dataclass(frozen=True)
class GenSettings:
    """How a model generates and serves (the tuned knobs; see ``GENERATION_PARAMS``)."""

    quantization: str = "fp32"
    cache_implementation: str = "dynamic"
    attention: str = "sdpa"
    compile: bool = False
    batching: str = "static"
    max_batch: int = 1
    threads: int | None = None
    prefill_chunk: int = 0  # 0: the whole prompt in one forward
    speculative: int = 0  # continuous: draft tokens per step from n-gram lookup (0: off)
    batch_wait_ms: float = 0.0  # static: wait this long for max_batch requests (0: start at once)

    def __post_init__(self) -> None:
        for name, allowed in (("quantization", QUANTIZATIONS), ("cache_implementation", CACHES),
                              ("attention", ATTENTIONS), ("batching", BATCHING)):
            if getattr(self, name) not in allowed:
                raise TrialFailed(f"unknown {name} '{getattr(self, name)}' "
                                  f"({', '.join(allowed)})")
        if self.max_batch < 1:
            raise TrialFailed(f"max_batch must be >= 1, got {self.max_batch}")
        if self.cache_implementation == "offloaded":
            import torch

            if not torch.cuda.is_available():
                raise TrialFailed("cache_implementation 'offloaded' moves the cache from the GPU "
                                  "to CPU memory; without a GPU there is nothing to offload")
        if self.speculative and self.batching != "continuous":
            raise TrialFailed("speculative (n-gram draft) decoding is part of continuous "
                              "batching; use batching 'continuous'")
        if self.speculative < 0:
            raise TrialFailed(f"speculative must be >= 0, got {self.speculative}")
        if self.batch_wait_ms < 0:
            raise TrialFailed(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.batch_wait_ms and self.batching != "static":
            raise TrialFailed("batch_wait_ms gathers requests for a static batch; continuous "
                              "batching admits each request as it arrives")
        if self.batching == "continuous" and self.cache_implementation != "dynamic":
            raise TrialFailed("continuous batching keeps one growing cache per batch: it needs "
                              "cache_implementation 'dynamic'")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], default_batch: int) -> GenSettings:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in config.items() if k in names and v is not None}
        if "compile" in kw:
            kw["compile"] = str(kw["compile"]).lower() in ("true", "1", "on", "yes")
        kw["max_batch"] = int(kw.get("max_batch") or default_batch)
        if "threads" in kw:
            kw["threads"] = int(kw["threads"])
        for key in ("prefill_chunk", "speculative"):
            if key in kw:
                kw[key] = int(kw[key])
        if "batch_wait_ms" in kw:
            kw["batch_wait_ms"] = float(kw["batch_wait_ms"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------------------ loading
_DEFAULT_THREADS: int | None = None


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers in logs and measurements."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(folder: str | Path, settings: GenSettings) -> Any:
    """The model from a ``save_pretrained`` folder (offline), with the settings' attention,
    precision, quantization (torchao) and compilation applied."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    # process-wide: a trial without 'threads' gets torch's default back, not the last trial's
    torch.set_num_threads(int(settings.threads or _DEFAULT_THREADS))
    dtype = torch.bfloat16 if settings.quantization == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, attn_implementation=settings.attention, dtype=dtype)
    model.eval()
    q = settings.quantization
    if q in ("int8_weight_only", "int8_dynamic"):
        quantize_model(model, q)
    if settings.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    return model


def quantize_model(model: Any, mode: str) -> None:
    """torchao weight quantization of the model's ``Linear`` layers (not the embedding or the
    tied output projection), in place."""
    from torchao import quantization as q

    if mode == "int8_weight_only":
        config: Any = q.Int8WeightOnlyConfig()
    elif mode == "int8_dynamic":
        config = q.Int8DynamicActivationInt8WeightConfig()
    else:
        raise TrialFailed(f"unknown quantization '{mode}'")
    head = model.get_output_embeddings()

    def only_layers(mod: Any, fqn: str) -> bool:
        import torch

        return isinstance(mod, torch.nn.Linear) and mod is not head

    q.quantize_(model, config, filter_fn=only_layers)


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key + value cache one token takes in every layer (the model's float dtype)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    elem = next(p for p in model.parameters() if p.is_floating_point()).element_size()
    return 2 * c.num_hidden_layers * kv * head_dim * elem


# ------------------------------------------------------------------------------ requests
@dataclass
class Request:
    """One generation request and what happened to it (times from ``time.perf_counter``)."""

    prompt_ids: list[int]
    max_new_tokens: int
    arrival: float
    id: int = 0
    on_token: Callable[[Request, int], None] | None = None
    on_finish: Callable[[Request], None] | None = None
    tokens: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    done: bool = False
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def emit(self, token: int, now: float) -> None:
        self.emit_all((token,), now)

    def emit_all(self, tokens: Iterable[int], now: float) -> None:
        """One engine step's tokens for this request (several when speculation accepted
        drafts): appended in one ``extend`` each (a reader on another thread sees the whole
        step or none of it: ``min(len(tokens), len(token_times))``), with the step's time stamp,
        before ``on_token`` is called for any."""
        if self.done:
            return
        new = [int(t) for t in tokens][:max(0, self.max_new_tokens - len(self.tokens))]
        self.tokens.extend(new)
        self.token_times.extend([now] * len(new))
        if len(self.tokens) >= self.max_new_tokens:
            self.done = True
        if self.on_token is not None:
            for token in new:
                self.on_token(self, token)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def latency(self) -> float:
        return self.token_times[-1] - self.arrival

    @property
    def tpot(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None


class Source:
    """Where an engine's requests come from: ``poll(now)`` → arrived requests; ``on_done``
    is told when one finished; ``exhausted`` when no more will come.  A ``resilient`` source (a
    server) keeps the engine running after a failed batch."""

    resilient = False

    def poll(self, now: float) -> list[Request]:
        raise NotImplementedError

    def on_done(self, req: Request, now: float) -> None:
        pass

    def stepped(self) -> None:
        """Called after each engine step's tokens (and ends) were emitted: a source that relays
        them elsewhere (another process) sends the step's together."""

    @property
    def exhausted(self) -> bool:
        return False

    def wait(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.001))


# ------------------------------------------------------------------------------ engine
class Engine:
    """Serves requests with a loaded model as ``settings`` say (one thread drives it)."""

    def __init__(self, model: Any, tokenizer: Any, settings: GenSettings) -> None:
        self.model = model
        self.tok = tokenizer
        self.settings = settings
        self.pad_id = int(tokenizer.pad_token_id)
        self.kv_per_token = kv_bytes_per_token(model)
        self.peak_kv_bytes = 0
        #: forwards run, of which prefill+decode fused, and cache compactions
        self.counts = {"forwards": 0, "fused": 0, "compactions": 0}
        self._queue: deque[Request] = deque()
        self._current: list[Request] = []  # the requests of the batch or prefill in progress
        import inspect

        fwd = inspect.signature(type(model).forward).parameters
        # transformers >= 5.2x names the cache argument 'cache' ('past_key_values' deprecated)
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"
        # continuous batching state
        self._rows: list[Request] = []
        self._cache: Any = None
        self._mask: Any = None
        self._pos: Any = None
        self._last: Any = None

    # ------------------------------------------------------------------ driving
    def run(self, source: Source, *, stop: threading.Event | None = None) -> None:
        """Serve until the source is exhausted and nothing is left (or ``stop`` is set)."""
        import torch

        with torch.inference_mode():
            while not (stop is not None and stop.is_set()):
                now = time.perf_counter()
                self._queue.extend(source.poll(now))
                if not self._queue and not self._rows:
                    if source.exhausted:
                        return
                    source.wait(0.05)
                    continue
                try:
                    if self.settings.batching == "static":
                        if self._gathering(source, now):
                            continue
                        self._static_batch(source)
                    else:
                        self._continuous_step(source)
                except Exception as exc:  # fail the requests in flight
                    self._fail_all(source, f"{type(exc).__name__}: {exc}")
                    source.stepped()
                    if not source.resilient:  # a measurement: the configuration failed
                        raise
                    # a server: report to those clients and keep serving the others

    def _fail_all(self, source: Source, reason: str) -> None:
        now = time.perf_counter()
        for r in [*self._rows, *self._current]:
            if not r.finished.is_set():
                r.error = reason
                self._finish(r, source, now)
        self._rows, self._current, self._cache = [], [], None

    def _finish(self, req: Request, source: Source, now: float) -> None:
        req.done = True
        req.finished.set()
        source.on_done(req, now)
        if req.on_finish is not None:
            req.on_finish(req)

    def _take(self, n: int) -> list[Request]:
        out = []
        while self._queue and len(out) < n:
            out.append(self._queue.popleft())
        return out

    def _pad(self, reqs: list[Request]) -> tuple[Any, Any]:
        import torch

        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        return ids, mask

    # ------------------------------------------------------------------ static batches
    def _gathering(self, source: Source, now: float) -> bool:
        """``batch_wait_ms``: while fewer than ``max_batch`` requests wait and the oldest arrived
        less than that long ago, wait for more (Triton's ``max_queue_delay``); True if it
        waited."""
        left = self.settings.batch_wait_ms / 1000.0 - (now - self._queue[0].arrival)
        if left <= 0 or len(self._queue) >= self.settings.max_batch:
            return False
        source.wait(left)
        return True

    def _static_batch(self, source: Source) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        reqs = self._current = self._take(self.settings.max_batch)
        ids, mask = self._pad(reqs)
        width = ids.shape[1]
        limits = torch.tensor([r.max_new_tokens for r in reqs])
        engine = self

        class Stream(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                now = time.perf_counter()
                step = input_ids.shape[1] - width
                new = input_ids[:, -1].tolist()
                for r, t in zip(reqs, new, strict=True):
                    if not r.done:
                        r.emit(t, now)
                        if r.done:
                            engine._finish(r, source, now)
                source.stepped()
                return limits <= step

        longest = int(limits.max())
        self.peak_kv_bytes = max(self.peak_kv_bytes,
                                 len(reqs) * (width + longest) * self.kv_per_token)
        gen_kw: dict[str, Any] = {}
        if self.settings.cache_implementation != "dynamic":
            gen_kw["cache_implementation"] = self.settings.cache_implementation
        self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=longest, do_sample=False,
            pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList([Stream()]),
            **gen_kw)
        now = time.perf_counter()
        for r in reqs:  # (generate stopped on its own length: cannot happen, but never hang)
            if not r.finished.is_set():
                self._finish(r, source, now)
        self._current = []

    # ------------------------------------------------------------------ continuous batching
    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any, keep: int = 1) -> Any:
        """Logits of the last position ([B, V]), or of the last ``keep`` ([B, keep, V])."""
        kw = {self._cache_kw: cache}
        self.counts["forwards"] += 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=keep, **kw)
        return out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]

    def _continuous_step(self, source: Source) -> None:
        free = self.settings.max_batch - len(self._rows)
        new = self._take(free) if free > 0 and self._queue else []
        if new and self._rows and not self.settings.prefill_chunk:
            self._fused(new, source)  # prefill the new and decode the running in one forward
            return
        if new:
            self._admit(new, source)
        if self._rows:
            self._decode(source)

    def _fused(self, reqs: list[Request], source: Source) -> None:
        """One forward that prefills ``reqs`` and decodes one token for every running request.

        The running rows get the new prompts' width of input, padding except their last token in
        the last column; the new rows get the running cache's width of (masked) past.  Padding
        left in the middle of the cache is packed away by :meth:`_compact`.
        """
        import torch

        self._current = reqs
        ids_new, mask_new = self._pad(reqs)
        n, width = ids_new.shape
        r, past = self._mask.shape
        ids_run = torch.full((r, width), self.pad_id, dtype=torch.long)
        ids_run[:, -1] = self._last
        mask_run = torch.zeros((r, width), dtype=self._mask.dtype)
        mask_run[:, -1] = 1
        pos_run = torch.zeros((r, width), dtype=torch.long)
        pos_run[:, -1] = self._pos
        pos_new = (mask_new.cumsum(-1) - 1).clamp(min=0)
        for layer in self._cache.layers:  # the new rows have no past: masked zeros
            shape = list(layer.keys.shape)
            shape[0] = n
            layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(shape)])
            layer.values = torch.cat([layer.values, layer.values.new_zeros(shape)])
        self._mask = torch.cat([
            torch.cat([self._mask, mask_run], dim=1),
            torch.cat([torch.zeros((n, past), dtype=self._mask.dtype), mask_new], dim=1)])
        logits = self._forward(torch.cat([ids_run, ids_new]), self._mask,
                               torch.cat([pos_run, pos_new]), self._cache)
        self.counts["fused"] += 1
        self._rows = self._rows + reqs
        self._pos = torch.cat([self._pos + 1, mask_new.sum(-1)])
        self._current = []
        self._emit_and_retire(logits, source)
        self._compact()

    def _compact(self) -> None:
        """Pack each row's cached positions to the right (left padding only) when more than half
        of the cache is padding."""
        import torch

        if self._cache is None:
            return
        counts = self._mask.sum(-1)
        width = int(counts.max())
        if self._mask.shape[1] <= 2 * width:
            return
        rows = self._mask.shape[0]
        idx = torch.zeros((rows, width), dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=self._mask.dtype)
        for i in range(rows):
            cols = self._mask[i].nonzero().flatten()
            idx[i, width - len(cols):] = cols
            mask[i, width - len(cols):] = 1
        for layer in self._cache.layers:
            b, h, _, d = layer.keys.shape
            g = idx[:, None, :, None].expand(b, h, width, d)
            layer.keys = layer.keys.gather(2, g)
            layer.values = layer.values.gather(2, g)
        self._mask = mask
        self.counts["compactions"] += 1

    def _admit(self, reqs: list[Request], source: Source) -> None:
        import torch
        from transformers import DynamicCache

        self._current = reqs
        ids, mask = self._pad(reqs)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        width = ids.shape[1]
        chunk = self.settings.prefill_chunk or width
        logits = None
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            logits = self._forward(ids[:, start:end], mask[:, :end], pos[:, start:end], cache)
            if end < width and self._rows:  # keep the running requests moving between chunks
                self._decode(source)
        now = time.perf_counter()
        first = logits.argmax(-1)
        keep = []
        for i, r in enumerate(reqs):
            r.emit(int(first[i]), now)
            if r.done:
                self._finish(r, source, now)
            else:
                keep.append(i)
        self._current = []
        source.stepped()
        if not keep:
            return
        if len(keep) < len(reqs):
            idx = torch.tensor(keep)
            cache.batch_select_indices(idx)
            mask, first = mask[idx], first[idx]
        new_rows = [reqs[i] for i in keep]
        new_pos = mask.sum(-1)
        if not self._rows:
            self._rows, self._cache, self._mask = new_rows, cache, mask
            self._pos, self._last = new_pos, first
        else:
            self._join(new_rows, cache, mask, new_pos, first)
        self._track_kv()

    def _join(self, rows: list[Request], cache: Any, mask: Any, pos: Any, last: Any) -> None:
        """Append prefilled requests to the running batch (left-pad the shorter cache)."""
        import torch

        a, b = self._mask.shape[1], mask.shape[1]
        width = max(a, b)

        def pad(t: Any, n: int) -> Any:  # left-pad dim -2 (keys/values) by n positions
            if n == 0:
                return t
            shape = list(t.shape)
            shape[-2] = n
            return torch.cat([t.new_zeros(shape), t], dim=-2)

        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([pad(mine.keys, width - a), pad(theirs.keys, width - b)])
            mine.values = torch.cat([pad(mine.values, width - a), pad(theirs.values, width - b)])
        self._mask = torch.cat([
            torch.nn.functional.pad(self._mask, (width - a, 0)),
            torch.nn.functional.pad(mask, (width - b, 0))])
        self._pos = torch.cat([self._pos, pos])
        self._last = torch.cat([self._last, last])
        self._rows = self._rows + rows

    def _decode(self, source: Source) -> None:
        import torch

        if self.settings.speculative:
            self._decode_speculative(source)
            return
        ones = torch.ones((len(self._rows), 1), dtype=self._mask.dtype)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits = self._forward(self._last[:, None], self._mask, self._pos[:, None], self._cache)
        self._pos = self._pos + 1
        self._emit_and_retire(logits, source)

    def _draft(self, req: Request, k: int) -> list[int]:
        """``k`` draft tokens: what followed the latest earlier occurrence of the context's last
        3 (else 2, else 1) tokens (prompt-lookup / n-gram speculation); pad when none."""
        ctx = req.prompt_ids + req.tokens
        for n in (3, 2, 1):
            if len(ctx) <= n:
                continue
            tail = ctx[-n:]
            for start in range(len(ctx) - n - 1, -1, -1):
                if ctx[start:start + n] == tail:
                    follow = ctx[start + n:start + n + k]
                    return follow + [self.pad_id] * (k - len(follow))
        return [self.pad_id] * k

    def _decode_speculative(self, source: Source) -> None:
        """One forward verifies ``k`` n-gram drafts per running request: the greedy tokens are
        kept up to the first draft that differs (so the output equals plain greedy decoding);
        the cache positions of rejected drafts are masked and later packed away."""
        import torch

        k = self.settings.speculative
        rows = len(self._rows)
        drafts = torch.tensor([self._draft(r, k) for r in self._rows], dtype=torch.long)
        ids = torch.cat([self._last[:, None], drafts], dim=1)
        pos = self._pos[:, None] + torch.arange(k + 1)
        past = self._mask.shape[1]
        self._mask = torch.cat([self._mask, torch.ones((rows, k + 1), dtype=self._mask.dtype)],
                               dim=1)
        logits = self._forward(ids, self._mask, pos, self._cache, keep=k + 1)
        greedy = logits.argmax(-1)  # [rows, k + 1]
        accepted = (drafts == greedy[:, :k]).long().cumprod(dim=1).sum(dim=1)  # [rows]
        for i, a in enumerate(accepted.tolist()):
            self._mask[i, past + a + 1:] = 0  # the rejected drafts' positions
        self._pos = self._pos + accepted + 1
        self.counts["drafted"] = self.counts.get("drafted", 0) + rows * k
        self.counts["accepted"] = self.counts.get("accepted", 0) + int(accepted.sum())
        tokens = [greedy[i, :a + 1].tolist() for i, a in enumerate(accepted.tolist())]
        self._emit_and_retire(greedy[torch.arange(rows), accepted], source, tokens)
        self._compact()

    def _emit_and_retire(self, logits: Any, source: Source,
                         tokens: list[list[int]] | None = None) -> None:
        """The next token (or ``tokens``) of every running row; finished rows leave the
        batch.  ``logits`` may already be token ids (1-D)."""
        import torch

        now = time.perf_counter()
        nxt = logits if logits.dim() == 1 else logits.argmax(-1)
        self._last = nxt
        keep = []
        per_row = tokens if tokens is not None else [[t] for t in nxt.tolist()]
        for i, (r, ts) in enumerate(zip(self._rows, per_row, strict=True)):
            r.emit_all(ts, now)
            if r.done:
                self._finish(r, source, now)
            else:
                keep.append(i)
        source.stepped()
        self._track_kv()
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            return
        idx = torch.tensor(keep)
        self._cache.batch_select_indices(idx)
        self._mask, self._pos, self._last = self._mask[idx], self._pos[idx], self._last[idx]
        self._rows = [self._rows[i] for i in keep]
        # drop leading columns that are padding in every remaining row
        used = self._mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]

    def _track_kv(self) -> None:
        if self._cache is None:
            return
        total = sum(layer.keys.nbytes + layer.values.nbytes for layer in self._cache.layers)
        self.peak_kv_bytes = max(self.peak_kv_bytes, total)


# ------------------------------------------------------------------------------ sources
class Scheduled(Source):
    """Requests with known arrival times: ``poll`` hands out those due, ``wait`` sleeps until
    the next one is."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: list[Request] = []
        self._pending: list[Request] = []  # by arrival
        self._lock = threading.Lock()

    def _schedule(self, req: Request) -> None:
        with self._lock:
            bisect.insort(self._pending, req, key=lambda r: r.arrival)

    def poll(self, now: float) -> list[Request]:
        with self._lock:
            k = bisect.bisect_right(self._pending, now, key=lambda r: r.arrival)
            out, self._pending = self._pending[:k], self._pending[k:]
        return out

    def on_done(self, req: Request, now: float) -> None:
        with self._lock:
            self.done.append(req)

    @property
    def exhausted(self) -> bool:
        return len(self.done) >= self.total

    def wait(self, timeout: float) -> None:
        with self._lock:
            nxt = self._pending[0].arrival if self._pending else None
        if nxt is None:
            super().wait(timeout)
        else:
            time.sleep(max(0.0, min(timeout, nxt - time.perf_counter())))


class ClosedLoop(Scheduled):
    """``concurrency`` clients; each sends its next request ``turnaround`` seconds after its
    previous one finished (a served client's HTTP, JSON and tokenization between the engine's
    end of one request and its receiving the next), and the clients' first requests arrive
    spread evenly over one turnaround, not at one instant.  Requests are ``(prompt_ids,
    max_new_tokens)`` taken in order; a request's arrival is when it reaches the engine."""

    def __init__(self, items: Iterable[tuple[list[int], int]], concurrency: int,
                 turnaround: float = 0.0) -> None:
        self._items = deque(items)
        super().__init__(len(self._items))
        self.turnaround = turnaround
        now = time.perf_counter()
        clients = min(concurrency, len(self._items))
        for i in range(clients):
            self._next(now + turnaround * i / clients)

    def _next(self, at: float) -> None:
        if self._items:
            ids, n = self._items.popleft()
            self._schedule(Request(list(ids), int(n), at, id=self.total - len(self._items) - 1))

    def on_done(self, req: Request, now: float) -> None:
        super().on_done(req, now)
        self._next(now + self.turnaround)


class Poisson(Scheduled):
    """Requests arriving at ``rate`` per second (seeded exponential gaps); the arrival time of a
    request is its scheduled time, so waiting in the queue counts towards its TTFT."""

    def __init__(self, items: Iterable[tuple[list[int], int]], rate: float, seed: int = 0) -> None:
        import numpy as np

        items = list(items)
        super().__init__(len(items))
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(items))
        start = time.perf_counter()
        times = start + np.cumsum(gaps) - gaps[0]
        self._pending = [Request(list(ids), int(n), float(t), id=i)
                         for i, ((ids, n), t) in enumerate(zip(items, times, strict=True))]


class Live(Source):
    """Requests submitted from other threads (the server); never exhausted."""

    resilient = True

    def __init__(self) -> None:
        self._q: deque[Request] = deque()
        self._cv = threading.Condition()

    def submit(self, req: Request) -> Request:
        with self._cv:
            self._q.append(req)
            self._cv.notify()
        return req

    def poll(self, now: float) -> list[Request]:
        with self._cv:
            out = list(self._q)
            self._q.clear()
        return out

    def wait(self, timeout: float) -> None:
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)


def with_settings(settings: GenSettings, **changes: Any) -> GenSettings:
    return replace(settings, **changes)
