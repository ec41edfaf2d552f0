"""One latency measurement at a time on this host, whichever process (worker, job) measures.

``measurement_lock()`` takes an exclusive ``fcntl.flock`` on ``/tmp/autotune-measure.lock`` (or
``$AUTOTUNE_MEASURE_LOCK``).  The kernel drops the lock when the holder dies, so a killed worker
never blocks the host.  Re-entrant within one process (a nested ``with`` is a no-op), so wrapping
both the harness child's request loop and the measurement itself is harmless.

The holder writes its pid into the file; a process that has to wait tells the wait hook
(:func:`set_wait_hook`) once, with the holder, so a progress display can say what it waits for.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

DEFAULT_LOCK = "/tmp/autotune-measure.lock"
_local = threading.local()
_process_lock = threading.Lock()
_wait_hook: Callable[[str], None] | None = None


def set_wait_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Call ``hook(message)`` when :func:`measurement_lock` has to wait for another process
    (the harness child forwards it to the progress display); returns the previous hook."""
    global _wait_hook
    previous, _wait_hook = _wait_hook, hook
    return previous


def _holder(fd: int) -> str:
    """Who holds the lock, from the pid its holder wrote (and the holder's command line)."""
    try:
        pid = int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    try:
        import psutil

        proc = psutil.Process(pid)
        # a measuring process is a multiprocessing child: name the command that started it
        while proc is not None and "multiprocessing" in " ".join(proc.cmdline()):
            proc = proc.parent()
        cmd = " ".join(proc.cmdline()[1:5]) if proc is not None else ""
        return f"pid {pid}" + (f": {cmd[:80]}" if cmd else "")
    except Exception:
        return f"pid {pid}"


def lock_path() -> Path:
    return Path(os.environ.get("AUTOTUNE_MEASURE_LOCK", DEFAULT_LOCK))


@contextmanager
def measurement_lock(path: str | os.PathLike[str] | None = None) -> Iterator[float]:
    """Hold the host-wide measurement lock for the block; yields the seconds spent waiting.

    The file is shared by every autotune process on the host (created world-writable).  Nested use
    in one process is a no-op (yields 0.0), so wrapping a measurement that itself takes the lock is
    harmless.
    """
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield 0.0
        finally:
            _local.depth -= 1
        return
    t0 = time.perf_counter()
    with _process_lock:
        p = Path(path) if path is not None else lock_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
        with suppress(OSError):
            os.fchmod(fd, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                hook = _wait_hook
                if hook is not None:
                    with suppress(Exception):
                        hook(f"waiting for the host measurement lock {p} (held by {_holder(fd)}; "
                             "one measurement at a time per host)")
                fcntl.flock(fd, fcntl.LOCK_EX)
            with suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _local.depth = 1
            try:
                yield time.perf_counter() - t0
            finally:
                _local.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on ``path`` (created if needed); yields whether it was obtained.

    With ``blocking=False`` the block runs at once with ``False`` if another process holds it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
