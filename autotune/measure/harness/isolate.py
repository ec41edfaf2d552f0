"""Run the evaluator in a child process, with a timeout and a memory limit.

The child imports torch/onnxruntime and loads the model once, then serves evaluation requests over
a pipe.  A crash, a hang or too much memory kills only the child: the call raises
:class:`~autotune.errors.TrialFailed` with the reason and the tail of the child's output, and the
next call starts a fresh child.  Only one request runs at a time through this object, and the
timed part of every measurement holds :func:`autotune.measure.harness.hostlock.measurement_lock`, a
host-wide file lock, so two latency measurements never overlap on this host, whichever job, worker
or process makes them.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autotune import errors
from autotune.errors import AutotuneError, TrialFailed
from autotune.measure.harness import hostlock
from autotune.measure.harness.hostlock import measurement_lock

if TYPE_CHECKING:
    from autotune.job.spec import Job

__all__ = ["IsolatedHarness", "default_memory_limit_mb", "measurement_lock", "memory_limit"]

#: the share of this machine's memory one trial may use when the job sets no limit
MEMORY_SHARE = 0.5


def machine_memory_mb() -> int | None:
    """This machine's memory in MiB: physical RAM, or the cgroup (container) limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit() and 0 < int(text) < total:
                total = int(text)
    return total // 2**20


def default_memory_limit_mb() -> int | None:
    """The memory limit of one trial when ``measurement.memory_limit_mb`` is not set: half of
    this machine's memory (:func:`machine_memory_mb`), at least 512 MiB; None if unknown."""
    total = machine_memory_mb()
    return None if total is None else max(512, int(total * MEMORY_SHARE))


def memory_limit(job: Job) -> tuple[int | None, str]:
    """The memory limit a trial of ``job`` runs under, in MiB, and where it comes from."""
    if job.measurement.memory_limit_mb:
        return job.measurement.memory_limit_mb, "measurement.memory_limit_mb"
    limit = default_memory_limit_mb()
    if limit is None:
        return None, "none: this machine's memory is unknown; set measurement.memory_limit_mb"
    return limit, (f"default: {MEMORY_SHARE:.0%} of this machine's {machine_memory_mb()} MiB; "
                   "set measurement.memory_limit_mb to change it")


def _child(job: Job, evaluator: Callable[[Job], Any], conn: Any, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    warnings.simplefilter("ignore")
    # a crash (SIGSEGV, SIGBUS, ...) leaves the Python stack in the log; SIGUSR1 (sent by the
    # parent before it kills a hung child) dumps where every thread is stuck
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    ev = evaluator(job)
    # load the model now (a workload that has one), so the trial timeout does not pay for the
    # start-up; on an error the first call that needs the model reports it
    with contextlib.suppress(BaseException):
        _ = getattr(ev, "workload", None)
    conn.send(("ready",))
    # a wait for the host measurement lock is shown by the parent's progress display
    hostlock.set_wait_hook(lambda message: conn.send(("progress", message)))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        if method == "close":
            return
        try:
            conn.send(("ok", getattr(ev, method)(*args)))
        except TrialFailed as exc:
            conn.send(("failed", str(exc), "", exc.cause))
        except AutotuneError as exc:
            conn.send(("user_error", type(exc).__name__, str(exc)))
        except BaseException as exc:  # a candidate broke: report, keep serving
            tb = traceback.format_exc(limit=8)
            print(tb, flush=True)
            conn.send(("failed", f"{type(exc).__name__}: {exc}", tb))


class IsolatedHarness:
    """Evaluator proxy living in a child process.

    ``evaluator`` makes the evaluator the child runs from the job (a module-level callable, so
    that it reaches the child: :func:`autotune.measure.workloads.registry.evaluator_for` chooses the
    job's workload); the harness only isolates and bounds it.

    ``timeout_s`` bounds one call; ``memory_limit_mb`` bounds the child's resident memory.  A
    fresh child first imports the libraries and loads the job's model (a factory may train it);
    that start-up is bounded separately by ``startup_timeout_s`` (default: the larger of 600 s and
    ``timeout_s``) so a busy machine does not fail the trial that happens to start a child.
    """

    def __init__(self, job: Job, *, evaluator: Callable[[Job], Any],
                 timeout_s: float | None = None,
                 memory_limit_mb: int | None = None,
                 startup_timeout_s: float | None = None,
                 on_message: Callable[[str], None] | None = None) -> None:
        self.job = job
        self.evaluator = evaluator
        #: told what a call is waiting for (the start-up, the host measurement lock)
        self.on_message = on_message or (lambda message: None)
        self.timeout_s = timeout_s or job.measurement.trial_timeout_s
        self.startup_timeout_s = startup_timeout_s or max(600.0, self.timeout_s)
        self.memory_limit_mb = memory_limit_mb or memory_limit(job)[0]
        self.log_path = job.out_dir / "logs" / "harness.log"
        self._proc: Any = None
        self._conn: Any = None

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(self.job, self.evaluator, child, str(self.log_path)),
                                 daemon=True, name="autotune-harness")
        self._proc.start()
        child.close()
        self._conn = parent

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(("close", ()))
            self._proc.join(5)
        except (OSError, BrokenPipeError):
            pass
        if self._proc.is_alive():
            self._kill()
        self._proc = self._conn = None

    def _dump_stacks(self) -> None:
        """Ask a hung child to write its Python stacks to the log before it is killed."""
        try:
            os.kill(self._proc.pid, signal.SIGUSR1)
        except OSError:
            return
        time.sleep(0.3)

    def _kill(self) -> None:
        try:
            import psutil

            for c in psutil.Process(self._proc.pid).children(recursive=True):
                c.kill()
        except Exception:
            pass
        self._proc.kill()
        self._proc.join(5)

    def __enter__(self) -> IsolatedHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if self._proc is None or not self._proc.is_alive():
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.on_message("starting the measuring process (importing the libraries, "
                            "loading the model)")
            self._start()
            self._wait(self.startup_timeout_s, offset, "starting the measuring process (loading "
                       "the model)", "the start-up limit")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._conn.send((method, args))
        msg = self._wait(timeout_s or self.timeout_s, offset, "",
                         "measurement.trial_timeout_s")
        status = msg[0]
        if status == "ok":
            return msg[1]
        if status == "failed":
            raise TrialFailed(msg[1], cause=msg[3] if len(msg) > 3 else None)
        raise getattr(errors, msg[1], AutotuneError)(msg[2])

    def _wait(self, limit: float, offset: int, what: str, setting: str) -> Any:
        """The child's next message; watches for death, the time limit and the memory limit."""
        deadline = time.monotonic() + limit
        import psutil

        proc = psutil.Process(self._proc.pid)
        while True:
            if self._conn.poll(0.1):
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):  # the child died mid-reply (reset, broken pipe)
                    msg = None
                    self._proc.join(2)
                if msg is not None and msg[0] == "progress":
                    self.on_message(msg[1])
                    continue
                if msg is not None:
                    return msg
            if not self._proc.is_alive():
                self._proc.join(1)
                raise self._died(offset)
            if time.monotonic() > deadline:
                self._dump_stacks()
                self._kill()
                self._proc = None
                during = f" while {what}" if what else ""
                raise TrialFailed(
                    f"timed out after {limit:.0f} s ({setting}){during}; the measuring "
                    f"process was killed.{self._output(offset)}"
                )
            if self.memory_limit_mb:
                try:
                    rss = proc.memory_info().rss + sum(
                        c.memory_info().rss for c in proc.children(recursive=True))
                except psutil.Error:
                    rss = 0
                if rss > self.memory_limit_mb * 2**20:
                    self._kill()
                    self._proc = None
                    raise TrialFailed(
                        f"out of memory: the measuring process used {rss / 2**20:.0f} MiB, over "
                        f"the limit of {self.memory_limit_mb} MiB (measurement.memory_limit_mb"
                        f"{'' if self.job.measurement.memory_limit_mb else ', default: half of RAM'})."
                        f"{self._output(offset)}"
                    )

    def _output(self, offset: int, limit: int = 2500) -> str:
        """The end of what the child wrote during this call (faulthandler's module list dropped)."""
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(offset, size - 4 * limit)
                f.seek(start)
                data = f.read()
        except OSError:
            return ""
        lines = [ln for ln in data.decode("utf-8", "replace").splitlines()
                 if not ln.startswith("Extension modules:")]
        tail = "\n".join(lines).strip()[-limit:]
        return f" Last output:\n{tail}" if tail else ""

    def _died(self, offset: int) -> TrialFailed:
        code = self._proc.exitcode
        self._proc = None
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return TrialFailed(f"the measuring process {how} (crash).{self._output(offset)}")

    # ------------------------------------------------------------------ API
    def evaluate(self, config: dict[str, Any]) -> Any:
        return self.call("evaluate", dict(config))

    def compare(self, configs: dict[str, dict[str, Any]], rounds: int) -> dict[str, Any]:
        return self.call("compare", {k: dict(v) for k, v in configs.items()}, int(rounds))

    def fingerprint(self) -> dict[str, Any]:
        return self.call("fingerprint")

    def capabilities(self) -> dict[str, Any]:
        return self.call("capabilities")
