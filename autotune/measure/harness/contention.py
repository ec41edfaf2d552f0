"""Notice other work on the cores a latency measurement uses.

Around a measurement, :func:`watch` samples, for the cores this process may run on (its CPU
affinity):

* ``other_cpu_pct``: the busy time of those cores minus this process's own CPU time (all its
  threads), as a percentage of their capacity over the window: what other processes took;
* ``steal_pct``: CPU steal on those cores (a hypervisor giving the cores to other guests);
* ``load``: the 1-minute load average over the number of those cores (context only: it lags and
  counts this process's own threads, so it never decides on its own).

The window is *contended* when ``other_cpu_pct`` exceeds ``threshold_pct`` or ``steal_pct``
exceeds ``steal_threshold_pct``.  Before measuring, :func:`watch` samples a short window; if that
is contended it waits (polling) up to ``wait_s`` for quiet.  The measurement itself is then the
window whose figures are recorded; ``waited_s`` says how long it waited.  Linux only for steal
(psutil reports it there); elsewhere steal is 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil

#: other processes' share of the measured cores above which a window counts as contended (%)
THRESHOLD_PCT = 25.0
#: CPU steal above which a window counts as contended (%)
STEAL_THRESHOLD_PCT = 10.0
#: the pre-measurement probe's length (s)
PROBE_S = 0.1


@dataclass(frozen=True)
class Contention:
    other_cpu_pct: float
    steal_pct: float
    load: float
    cores: int
    window_s: float
    contended: bool
    waited_s: float = 0.0
    quiet_before: bool = True  # the probe before measuring found the cores quiet (or became so)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"other processes used {self.other_cpu_pct:.0f}% of the {self.cores} core(s), "
                f"steal {self.steal_pct:.0f}%, load {self.load:.2f} per core")


def _cores() -> list[int]:
    try:
        return sorted(psutil.Process().cpu_affinity() or [])
    except (AttributeError, psutil.Error):
        return list(range(psutil.cpu_count() or 1))


class _Snapshot:
    __slots__ = ("busy", "own", "steal", "total", "wall")

    def __init__(self, cores: list[int], proc: psutil.Process) -> None:
        per = psutil.cpu_times(percpu=True)
        busy = total = steal = 0.0
        for i in cores:
            if i >= len(per):
                continue
            t = per[i]
            tot = sum(t)
            idle = t.idle + getattr(t, "iowait", 0.0)
            st = getattr(t, "steal", 0.0)
            # guest time is already counted in user time (Linux), so sum() counts it twice
            tot -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
            total += tot
            steal += st
            busy += tot - idle - st
        own = proc.cpu_times()
        self.busy, self.total, self.steal = busy, total, steal
        self.own = own.user + own.system
        self.wall = time.monotonic()


def _between(a: _Snapshot, b: _Snapshot, cores: int, threshold_pct: float,
             steal_threshold_pct: float) -> Contention:
    wall = max(b.wall - a.wall, 1e-9)
    capacity = max(b.total - a.total, 1e-9)
    other = max(0.0, (b.busy - a.busy) - (b.own - a.own))
    other_pct = min(100.0, 100.0 * other / capacity)
    steal_pct = 100.0 * max(0.0, b.steal - a.steal) / capacity
    try:
        load = os.getloadavg()[0] / max(cores, 1)
    except OSError:
        load = 0.0
    return Contention(other_cpu_pct=other_pct, steal_pct=steal_pct, load=load, cores=cores,
                      window_s=wall, contended=other_pct > threshold_pct
                      or steal_pct > steal_threshold_pct)


class Watch:
    """What :func:`watch` yields: ``result`` is set when the block ends."""

    result: Contention | None = None


def probe(seconds: float = PROBE_S, *, threshold_pct: float = THRESHOLD_PCT,
          steal_threshold_pct: float = STEAL_THRESHOLD_PCT) -> Contention:
    """Sample the cores for ``seconds`` (this process idle meanwhile)."""
    cores = _cores()
    proc = psutil.Process()
    a = _Snapshot(cores, proc)
    time.sleep(seconds)
    return _between(a, _Snapshot(cores, proc), len(cores), threshold_pct, steal_threshold_pct)


@contextmanager
def watch(*, wait_s: float = 0.0, threshold_pct: float = THRESHOLD_PCT,
          steal_threshold_pct: float = STEAL_THRESHOLD_PCT,
          on_wait: Callable[[Contention], None] = lambda c: None) -> Iterator[Watch]:
    """Wait up to ``wait_s`` for quiet cores, then sample contention around the block."""
    w = Watch()
    t0 = time.monotonic()
    first = probe(threshold_pct=threshold_pct, steal_threshold_pct=steal_threshold_pct)
    quiet = not first.contended
    if not quiet and wait_s > 0:
        on_wait(first)
        while time.monotonic() - t0 < wait_s:
            if not probe(0.25, threshold_pct=threshold_pct,
                         steal_threshold_pct=steal_threshold_pct).contended:
                quiet = True
                break
    waited = time.monotonic() - t0
    cores = _cores()
    proc = psutil.Process()
    a = _Snapshot(cores, proc)
    try:
        yield w
    finally:
        c = _between(a, _Snapshot(cores, proc), len(cores), threshold_pct, steal_threshold_pct)
        w.result = Contention(**{**c.to_dict(), "waited_s": waited, "quiet_before": quiet})


def wait_quiet(wait_s: float, *, threshold_pct: float = THRESHOLD_PCT,
               steal_threshold_pct: float = STEAL_THRESHOLD_PCT, poll_s: float = 0.5
               ) -> tuple[bool, float]:
    """Poll the cores (this process idle meanwhile) until a window of ``poll_s`` is quiet or
    ``wait_s`` has passed: ``(quiet, seconds waited)``."""
    t0 = time.monotonic()
    while True:
        c = probe(poll_s, threshold_pct=threshold_pct, steal_threshold_pct=steal_threshold_pct)
        if not c.contended:
            return True, time.monotonic() - t0
        if time.monotonic() - t0 >= wait_s:
            return False, time.monotonic() - t0


#: ``details["remeasured"]["how"]`` of a contended trial re-measured side by side with the
#: baseline on quiet cores / of one ranked by its interleaved ratio to the baseline because the
#: cores never became quiet within ``measurement.quiet_wait_s``
QUIET, RATIO = "quiet", "ratio"


def flag(user_attrs: Any) -> str:
    """How a trial's latency figures were obtained, for tables: ``confirmed`` (by the
    confirmation step; ``, contended`` when it ran contended), ``re-measured`` (its own
    measurement ran contended; it was measured again beside the baseline on quiet cores),
    ``ratio to baseline`` (the same, but the cores never became quiet: its figure is its
    interleaved ratio to the baseline times the baseline's p50), ``contended`` (its only figure
    ran while other processes used the cores), or ``""``."""
    conf = user_attrs.get("confirmed") if hasattr(user_attrs, "get") else None
    if conf:
        return "confirmed" + (", contended" if conf.get("contended_rounds") and
                              conf.get("contended_rounds", 0) >= conf.get("rounds", 1) else "")
    details = user_attrs.get("details") or {} if hasattr(user_attrs, "get") else {}
    again = details.get("remeasured") if hasattr(details, "get") else None
    if isinstance(again, dict) and again.get("how") in (QUIET, RATIO):
        return "re-measured" if again["how"] == QUIET else "ratio to baseline"
    return "contended" if only_contended(details) else ""


def only_contended(details: Any) -> bool:
    """Whether a trial's only latency figure was measured contended (not re-measured since)."""
    if not hasattr(details, "get"):
        return False
    busy = details.get("contention")
    again = details.get("remeasured")
    return isinstance(busy, dict) and bool(busy.get("contended")) and not (
        isinstance(again, dict) and again.get("how") in (QUIET, RATIO))


def ran_quiet(details: Any) -> bool:
    """Whether a trial's latency figures come from a measurement known to have run on quiet cores
    (its own, or its re-measurement beside the baseline): the counterpart of
    :func:`only_contended`, which a ratio-scaled re-measurement also clears."""
    if not hasattr(details, "get"):
        return False
    busy = details.get("contention")
    again = details.get("remeasured")
    return (isinstance(busy, Mapping) and not busy.get("contended")) or (
        isinstance(again, Mapping) and again.get("how") == QUIET)


def note(details: Any) -> str | None:
    """A line for the run's output when a trial's measurement ran contended, else None."""
    busy = details.get("contention") if hasattr(details, "get") else None
    if not isinstance(busy, dict) or not busy.get("contended"):
        return None
    c = Contention(**{k: busy[k] for k in Contention.__dataclass_fields__ if k in busy})
    return (f"measured contended ({c.describe()}"
            + (f", after waiting {c.waited_s:.1f} s for quiet" if c.waited_s >= 0.05 else "")
            + "); it is measured again before it ranks")
