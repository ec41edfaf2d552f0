"""Prometheus text-format metrics (exposition format 0.0.4), without a client library.

Counters, gauges and one latency histogram, all thread-safe: the event loop counts requests,
the watcher thread counts swaps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Family:
    def __init__(self, name: str, kind: str, help_: str) -> None:
        self.name, self.kind, self.help = name, kind, help_
        self.values: dict[Labels, float] = {}

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_num(v)}"


class _Histogram(_Family):
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, "histogram", help_)
        self.buckets = buckets
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts, [sum]

    def observe(self, labels: Labels, value: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        for i, b in enumerate(self.buckets):
            if value <= b:
                counts[i] += 1
        counts[-1] += 1
        total[0] += value

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            for b, c in zip((*self.buckets, math.inf), counts, strict=True):
                yield f"{self.name}_bucket{_labels(labels, (('le', _num(b)),))} {c}"
            yield f"{self.name}_sum{_labels(labels)} {_num(total[0])}"
            yield f"{self.name}_count{_labels(labels)} {counts[-1]}"


class Metrics:
    """The server's metrics; :meth:`render` writes them in the Prometheus text format."""

    def __init__(self, prefix: str = "autotune_serve") -> None:
        self._lock = threading.Lock()
        p = prefix
        self.requests = _Family(f"{p}_requests_total", "counter",
                                "HTTP requests answered, by route template, method and status code.")
        self.latency = _Histogram(f"{p}_request_duration_seconds",
                                  "Time from the request's arrival to the end of its answer, by route.",
                                  LATENCY_BUCKETS)
        self.rejected = _Family(f"{p}_rejected_total", "counter",
                                "Requests refused before reaching the model, by reason.")
        self.swaps = _Family(f"{p}_model_swaps_total", "counter",
                             "Models swapped in while serving (hot swaps).")
        self.reload_failures = _Family(f"{p}_model_reload_failures_total", "counter",
                                       "New models that could not be loaded (the old one kept serving).")
        self.model = _Family(f"{p}_model_info", "gauge",
                             "The model being served (value 1), with its version and source.")
        self.loaded_at = _Family(f"{p}_model_loaded_timestamp_seconds", "gauge",
                                 "When the served model was loaded (Unix time).")
        self.inflight = _Family(f"{p}_inflight_requests", "gauge",
                                "Inference requests admitted and not yet answered.")
        self._gauges: list[tuple[_Family, Callable[[], float]]] = []
        self._families: list[_Family] = [self.requests, self.latency, self.rejected, self.swaps,
                                         self.reload_failures, self.model, self.loaded_at,
                                         self.inflight]
        self.swaps.values[()] = 0
        self.reload_failures.values[()] = 0

    def gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A gauge (or counter, ``name`` ending in ``_total``) read at each scrape."""
        fam = _Family(name, "counter" if name.endswith("_total") else "gauge", help_)
        self._gauges.append((fam, read))
        self._families.append(fam)

    def histogram(self, name: str, help_: str,
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Callable[[float], None]:
        """A histogram without labels; returns the function that observes a value."""
        fam = _Histogram(name, help_, buckets)
        self._families.append(fam)

        def observe(value: float) -> None:
            with self._lock:
                fam.observe((), value)

        return observe

    def request(self, route: str, method: str, code: int, seconds: float) -> None:
        with self._lock:
            key = (("route", route), ("method", method), ("code", str(code)))
            self.requests.values[key] = self.requests.values.get(key, 0) + 1
            self.latency.observe((("route", route),), seconds)

    def reject(self, reason: str) -> None:
        with self._lock:
            key = (("reason", reason),)
            self.rejected.values[key] = self.rejected.values.get(key, 0) + 1

    def set_inflight(self, n: int) -> None:
        self.inflight.values[()] = n

    def set_model(self, version: str, source: str, kind: str, loaded_at: float, *,
                  swapped: bool) -> None:
        with self._lock:
            self.model.values = {(("version", version), ("source", source), ("kind", kind)): 1}
            self.loaded_at.values[()] = loaded_at
            if swapped:
                self.swaps.values[()] += 1

    def reload_failed(self) -> None:
        with self._lock:
            self.reload_failures.values[()] += 1

    def render(self) -> str:
        with self._lock:
            for fam, read in self._gauges:
                fam.values[()] = float(read())
            lines = [line for fam in self._families for line in fam.lines()]
        return "\n".join(lines) + "\n"
