"""Which processes are working on a study right now: one liveness record per process.

Every tuning process (``autotune run``, ``autotune worker``) holds an exclusive ``flock`` on
``<out_dir>/live/<index>.lock`` for as long as it works on the study; the file says who holds it
(JSON: worker id ``host:pid``, pid, host, start time, index).  The kernel drops the lock when the
process ends, however it ends (``kill -9`` included), so the file a killed run leaves behind reads
as dead, and a recycled pid never reads as alive: liveness is the lock, the content only names
the holder.

The smallest free index is the process's own: its agent proposes from the seed stream
``seed + index`` (index 0 keeps the job's seed as given, so a lone run reproduces), so two
processes on one study never propose the same sequence.

The records live beside the study on this host.  A trial whose worker ran on another host
(a PostgreSQL study shared by machines) is neither live nor dead here: Optuna's heartbeat check
decides about it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

MAX_INDEX = 1024


@dataclass(frozen=True)
class Holder:
    """A live process working on the study."""

    index: int
    worker: str  # host:pid, as trials record it in their ``worker`` attribute
    pid: int
    host: str
    started: str
    mode: str  # run | worker

    def describe(self) -> str:
        return f"autotune {self.mode} (pid {self.pid} on {self.host}, since {self.started})"


class Liveness:
    """This process's liveness record in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, worker: str, mode: str = "run") -> None:
        self.folder = Path(folder)
        self.worker = worker
        self.mode = mode
        self.index: int | None = None
        self._fd: int | None = None

    def acquire(self) -> int:
        """Take the smallest free index; returns it."""
        if self.index is not None:
            return self.index
        self.folder.mkdir(parents=True, exist_ok=True)
        for i in range(MAX_INDEX):
            fd = os.open(self.folder / f"{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            host = self.worker.rsplit(":", 1)[0]
            record = {"index": i, "worker": self.worker, "pid": os.getpid(), "host": host,
                      "mode": self.mode,
                      "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self._fd, self.index = fd, i
            return i
        raise RuntimeError(f"more than {MAX_INDEX} live processes in {self.folder}")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = self.index = None

    def __enter__(self) -> Liveness:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holders(self) -> tuple[list[Holder], int]:
        """The live records (this process's included) and how many live ones could not be read
        (a process between taking its lock and writing its record)."""
        live: list[Holder] = []
        unreadable = 0
        if not self.folder.is_dir():
            return live, 0
        for path in sorted(self.folder.glob("*.lock")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:  # a lock we can take is nobody's: its holder is gone
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    continue
                except BlockingIOError:
                    pass
                try:
                    d = json.loads(os.pread(fd, 4096, 0))
                    live.append(Holder(int(d["index"]), str(d["worker"]), int(d["pid"]),
                                       str(d["host"]), str(d["started"]), str(d.get("mode", "?"))))
                except (ValueError, KeyError, TypeError):
                    unreadable += 1
            finally:
                os.close(fd)
        return live, unreadable

    def others(self) -> list[Holder]:
        """The live processes on this study other than this one."""
        return [h for h in self.holders()[0] if h.worker != self.worker]

    def owner_is_live(self, worker: str | None) -> bool | None:
        """Whether the process ``worker`` (a trial's ``worker`` attribute) is alive: True,
        False (it ran on this host and holds no record: it is gone), or None (unknown: another
        host, or a record being written; leave it to the heartbeat check)."""
        live, unreadable = self.holders()
        if worker is not None and any(h.worker == worker for h in live):
            return True
        if worker is None:  # a trial from before liveness records: dead if nobody else works
            return None if [h for h in live if h.worker != self.worker] or unreadable else False
        if worker.rsplit(":", 1)[0] != socket.gethostname() or unreadable:
            return None
        return False
