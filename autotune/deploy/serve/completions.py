"""Serving the OpenAI-compatible routes: decode and validate a completion request, run it on the
served generation engine, answer it whole or stream its text as server-sent events.

The engine runs in its own thread and calls back for every token.  The event loop is woken at most
once per engine step for all requests together (:class:`Wakeups`), a request that is not streamed
is woken only for its first token (its deadline) and its end, a stream sends one event per
engine step (its last event carries the finish reason and usage too), and text is detokenized
incrementally (the new tokens only, not the whole output again), so serving adds little to what
the engine measured in-process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.deploy.serve.protocol import ApiError

ModelServer = Any

_CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "temperature",
                "n", "user", "stream_options", "top_p", "seed"}
_COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "stream", "temperature", "n", "user",
                      "stream_options", "top_p", "seed", "echo", "logprobs"}

#: options accepted only at the value that changes nothing (OpenAI clients may send them)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stop": (None, []), "presence_penalty": (0, None), "frequency_penalty": (0, None),
    "logit_bias": (None, {}), "best_of": (1, None), "suffix": (None, ""),
}


# ------------------------------------------------------------------------------- decode, validate
@dataclass(frozen=True)
class Completion:
    """A validated completion request."""

    chat: bool
    prompt_ids: tuple[int, ...]
    max_tokens: int
    stream: bool
    include_usage: bool


def decode_request(data: Any, chat: bool, service: Any) -> Completion:
    """The request's JSON (already parsed within the limits) → a :class:`Completion`, or a 400
    naming the field and how to fix it."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object.")
    allowed = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    for key, neutral in _NEUTRAL.items():  # sampling options at their no-op values: accepted
        if key in data and data[key] not in neutral:
            raise ApiError(400, f"'{key}' is not served (greedy decoding to max_tokens); leave it "
                                f"out or send {json.dumps(neutral[0])}.")
    unknown = sorted(set(data) - allowed - set(_NEUTRAL))
    if unknown:
        raise ApiError(400, f"unsupported fields {unknown}; this server accepts {sorted(allowed)}.")
    temp = data.get("temperature")
    if temp not in (None, 0, 0.0) or isinstance(temp, bool) or data.get("n", 1) != 1:
        raise ApiError(400, "only greedy decoding is served: temperature must be absent or 0, "
                            "and n 1.")
    if data.get("top_p") not in (None, 1, 1.0) or data.get("echo") or data.get("logprobs"):
        raise ApiError(400, "top_p, echo and logprobs are not served (greedy decoding only).")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.")
    opts = data.get("stream_options")
    if opts is not None and not (isinstance(opts, dict) and set(opts) <= {"include_usage"}):
        raise ApiError(400, "'stream_options' may only hold include_usage.")
    tok = service.tokenizer
    ids = _chat_ids(data.get("messages"), tok) if chat else _prompt_ids(data.get("prompt"), tok)
    if not ids:
        raise ApiError(400, "the prompt has no tokens.")
    key = "max_tokens" if data.get("max_tokens") is not None or not chat else \
        "max_completion_tokens"
    n = data.get(key, 16)
    if n is None:
        n = 16
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ApiError(400, f"'{key}' must be a positive integer; got {json.dumps(n)}.")
    limit = getattr(service, "max_positions", None)
    if limit is not None and len(ids) + n > limit:
        raise ApiError(400, f"the prompt ({len(ids)} tokens) plus '{key}' ({n}) exceeds the model's "
                            f"{limit} positions; ask for at most {max(limit - len(ids), 0)} tokens.")
    return Completion(chat, tuple(ids), n, stream,
                      bool((opts or {}).get("include_usage", False)))


def _prompt_ids(prompt: Any, tok: Any) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        vocab = len(tok)
        if any(t < 0 or t >= vocab for t in prompt):
            raise ApiError(400, f"'prompt' token ids must be within the vocabulary [0, {vocab}).")
        return list(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' must be a non-empty string (or one string, or token ids).")
    return list(tok(prompt)["input_ids"])


def _chat_ids(msgs: Any, tok: Any) -> list[int]:
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str)
            and isinstance(m.get("role"), str) for m in msgs):
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\": ..., "
                            "\"content\": \"...\"} objects.")
    if getattr(tok, "chat_template", None):
        text = str(tok.apply_chat_template([{"role": m["role"], "content": m["content"]}
                                            for m in msgs], tokenize=False,
                                           add_generation_prompt=True))
    else:
        text = " ".join(m["content"] for m in msgs)  # no chat template: the contents in order
    return list(tok(text)["input_ids"])


# ------------------------------------------------------------------------------- engine → loop
class Wakeups:
    """Wakes waiting requests on the event loop from the engine's thread, with one loop wakeup
    for all the requests that got tokens in the same engine step (the engine emits a step's tokens
    in one go while holding the GIL, so they gather before the loop runs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._due: list[asyncio.Event] = []
        self._scheduled = False
        self.count = 0  # loop wakeups scheduled (for the metrics)

    def wake(self, event: asyncio.Event) -> None:
        with self._lock:
            self._due.append(event)
            if self._scheduled:
                return
            self._scheduled = True
            self.count += 1
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            due, self._due, self._scheduled = self._due, [], False
        for event in due:
            event.set()


class Running:
    """One request in the engine, as the event loop sees it."""

    def __init__(self, service: Any, c: Completion, wakeups: Wakeups) -> None:
        self.event = asyncio.Event()
        self._flagged = False
        self._wakeups = wakeups
        self.stream = c.stream
        self.service = service
        self.req = service.submit(list(c.prompt_ids), c.max_tokens, self._on_token,
                                  self._on_finish)

    def _on_token(self, req: Any, token: int) -> None:  # engine thread
        if self._flagged or (not self.stream and len(req.tokens) > 1):
            return  # already woken (or, not streamed: only the first token matters)
        self._flagged = True
        self._wakeups.wake(self.event)

    def _on_finish(self, req: Any) -> None:  # engine thread
        self._wakeups.wake(self.event)

    async def wait(self) -> tuple[bool, list[int]]:
        """(finished, the tokens so far) once something new happened."""
        await self.event.wait()
        self.event.clear()
        self._flagged = False
        finished = self.req.finished.is_set()  # before the tokens: then they are all there
        return finished, self.req.tokens

    def cancel(self) -> None:
        if not self.req.finished.is_set():
            self.service.cancel(self.req)


class Detokenizer:
    """Incremental detokenization of one request's tokens, called once per loop wakeup with all
    the tokens so far.  With a fast tokenizer that needs no clean-up of spaces, the tokenizers
    library's ``DecodeStream`` turns the new ids into text in one call (it holds back bytes of an
    incomplete character); otherwise a short window is decoded twice (the few tokens before the
    new ones, for context, with and without them).  ``finish`` makes the streamed text equal the
    whole output decoded at once."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.prefix = 0  # window start (window decoding)
        self.read = 0  # tokens already turned into text
        self.sent = ""
        self._fast, self._stream = _decode_stream(tok)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def step(self, tokens: list[int]) -> str:
        if len(tokens) <= self.read:
            return ""
        if self._stream is not None:
            new, self.read = tokens[self.read:], len(tokens)
            delta = self._stream.step(self._fast, new) or ""
            self.sent += delta
            return delta
        before = self._decode(tokens[self.prefix:self.read])
        now = self._decode(tokens[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd") or not now.startswith(before):
            return ""
        delta = now[len(before):]
        self.prefix, self.read = self.read, len(tokens)
        self.sent += delta
        return delta

    def finish(self, tokens: list[int]) -> str:
        full = self._decode(tokens)
        delta = full[len(self.sent):] if full.startswith(self.sent) else ""
        self.sent += delta
        return delta


def _decode_stream(tok: Any) -> tuple[Any, Any]:
    """(the tokenizers backend, a fresh ``DecodeStream``) where streaming decoding gives the
    same text as ``tok.decode``; (None, None) where it may not (a slow tokenizer, or one that
    cleans up spaces after decoding, which a stream cannot do)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or getattr(tok, "clean_up_tokenization_spaces", False):
        return None, None
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None, None
    if not isinstance(backend, Tokenizer):
        return None, None
    return backend, DecodeStream(skip_special_tokens=True)


# ------------------------------------------------------------------------------- answers
class Answer:
    """Runs one validated completion and writes its answer (whole, or as server-sent events)."""

    def __init__(self, server: ModelServer, served: Any, c: Completion, wakeups: Wakeups,
                 on_ttft: Callable[[float], None]) -> None:
        self.server, self.served, self.c = server, served, c
        self.service = served.predictor
        self.wakeups, self.on_ttft = wakeups, on_ttft
        self.rid = f"{'chatcmpl' if c.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.kind = "chat.completion" if c.chat else "text_completion"
        self.t0 = time.perf_counter()
        self.running = Running(self.service, c, wakeups)
        self._pending: tuple[bool, list[int]] = (False, [])

    async def start(self) -> None:
        """Waits for the first token within the request deadline (else 504, and the request is
        stopped); a failed request is a 500."""
        timeout = self.server.limits.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while True:
                    finished, tokens = await self.running.wait()
                    if tokens or finished:
                        break
        except TimeoutError:
            self.running.cancel()
            raise ApiError(504, f"the model did not start answering within {timeout:g} s.") \
                from None
        self.on_ttft(time.perf_counter() - self.t0)
        if self.running.req.error:
            raise ApiError(500, f"generation failed: {self.running.req.error}")
        self._pending = (finished, tokens)

    def _usage(self) -> dict[str, int]:
        n_in, n_out = len(self.c.prompt_ids), len(self.running.req.tokens)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    def _choice(self, text: str, finish: str | None, key: str) -> dict[str, Any]:
        if self.c.chat:
            return {"index": 0, key: {"role": "assistant", "content": text},
                    "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    async def whole(self) -> dict[str, Any]:
        """The answer of a request that is not streamed."""
        try:
            await self.start()
            finished = self._pending[0]
            while not finished:
                finished, _ = await self.running.wait()
        except BaseException:
            self.running.cancel()
            raise
        req = self.running.req
        if req.error:
            raise ApiError(500, f"generation failed: {req.error}")
        text = str(self.service.tokenizer.decode(req.tokens, skip_special_tokens=True))
        return {"id": self.rid, "object": self.kind, "created": self.created,
                "model": self.service.name, "choices": [self._choice(text, "length", "message")],
                "usage": self._usage(), "x_version": self.served.version}

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed request (the first token is awaited before the
        answer starts, so a timeout or failure is still answered with its status code)."""
        head = json.dumps({"id": self.rid, "object": f"{self.kind}.chunk" if self.c.chat
                           else self.kind, "created": self.created, "model": self.service.name,
                           "x_version": self.served.version}, separators=(",", ":"))[:-1]
        detok = Detokenizer(self.service.tokenizer)

        def event(text: str, finish: str | None, usage: bool = False) -> bytes:
            choice = json.dumps([self._choice(text, finish, "delta")], separators=(",", ":"))
            extra = (',"usage":' + json.dumps(self._usage(), separators=(",", ":"))) if usage \
                else ""
            return f'data: {head},"choices":{choice}{extra}}}\n\n'.encode()

        try:
            finished, tokens = self._pending
            times = self.running.req.token_times
            while True:
                # one event per engine step (one token, or the tokens a speculative step
                # accepted together, as vLLM streams), written together when several steps
                # arrived in one wakeup; the loop is not woken per token.  The tokens of a step
                # share their time stamp; a token whose time is not there yet comes next wakeup.
                upto = min(len(tokens), len(times))
                ends = [k for k in range(detok.read + 1, upto + 1)
                        if k == upto or times[k] != times[k - 1]]
                deltas = [d for k in ends if (d := detok.step(tokens[:k]))]
                if finished and not self.running.req.error:
                    # the last step's text, the finish reason and the usage in one event
                    last = (deltas.pop() if deltas else "") + detok.finish(self.running.req.tokens)
                out = [event(d, None) for d in deltas]
                if finished:
                    req = self.running.req
                    if req.error:
                        out.append(f"data: {json.dumps({'error': {'message': req.error}})}\n\n"
                                   .encode())
                    else:
                        out.append(event(last, "length", usage=self.c.include_usage))
                    out.append(b"data: [DONE]\n\n")
                    yield b"".join(out)
                    return
                if out:
                    yield b"".join(out)
                finished, tokens = await self.running.wait()
        finally:
            self.running.cancel()  # the client left before the end: stop generating for it
