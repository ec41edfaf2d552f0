"""The micro-batcher: one worker thread gathers queued requests into batches of up to the served
model's batch size (or for up to ``max_wait_ms``), runs one ``predict`` and scatters the rows back.

The model reference is read once per batch, so a hot swap never splits a batch: the batch in
flight finishes on the old model, which is freed when that batch is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from autotune.deploy.serve.swap import Served


@dataclass
class _Request:
    inputs: list[np.ndarray]
    n: int
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    version: str = ""
    error: BaseException | None = None
    notify: Callable[[], None] | None = None  # called from the worker when done (async callers)
    cancelled: bool = False  # the caller gave up: skip it


class MicroBatcher:
    """One worker thread; gathers requests into batches of up to the model's batch size."""

    def __init__(self, current: Callable[[], Served], max_wait_ms: float = 2.0) -> None:
        self._current = current
        self.max_wait_s = max_wait_ms / 1000.0
        self._q: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="autotune-batcher", daemon=True)
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout=5)

    @property
    def queued(self) -> int:
        return self._q.qsize()

    def submit(self, inputs: list[np.ndarray], timeout: float = 30.0) -> tuple[np.ndarray, str]:
        """Blocking: queue ``inputs`` (one array per model input, batch first) and wait."""
        req = _Request(inputs, int(inputs[0].shape[0]))
        self._q.put(req)
        if not req.done.wait(timeout):
            req.cancelled = True
            raise TimeoutError("the model did not answer in time")
        return _result(req)

    async def submit_async(self, inputs: list[np.ndarray], timeout: float = 30.0
                           ) -> tuple[np.ndarray, str]:
        """Awaitable :meth:`submit` for the event loop: the worker wakes the caller's loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(wake)

        req = _Request(inputs, int(inputs[0].shape[0]), notify=notify)
        self._q.put(req)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            req.cancelled = True
            raise TimeoutError("the model did not answer in time") from None
        except asyncio.CancelledError:
            req.cancelled = True
            raise
        return _result(req)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            served = self._current()  # one reference per batch: a swap never splits a batch
            group = [first]
            total = first.n
            deadline = time.perf_counter() + self.max_wait_s
            stop = False
            while total < served.batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                total += nxt.n
            group = [r for r in group if not r.cancelled]
            if group:
                self._execute(served, group)
            del served  # the old model (after a swap) is released here
            if stop:
                return

    def _execute(self, served: Served, group: list[_Request]) -> None:
        try:
            arrays = [np.concatenate(parts, axis=0) for parts in zip(*(r.inputs for r in group),
                                                                      strict=True)]
            bs = max(served.batch_size, 1)
            outs = [served.predictor.predict([a[i:i + bs] for a in arrays])
                    for i in range(0, arrays[0].shape[0], bs)]
            out = np.concatenate(outs, axis=0)
            self.batches += len(outs)
            self.items += arrays[0].shape[0]
        except BaseException as exc:
            for r in group:
                r.error = exc
                _done(r)
            return
        start = 0
        for r in group:
            r.output = out[start:start + r.n]
            r.version = served.version
            start += r.n
            _done(r)


def _done(req: _Request) -> None:
    req.done.set()
    if req.notify is not None:
        req.notify()


def _result(req: _Request) -> tuple[np.ndarray, str]:
    if req.error is not None:
        raise req.error
    assert req.output is not None
    return req.output, req.version
