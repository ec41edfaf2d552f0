"""What a measured configuration produced (:class:`TrialResult`), and the peak-memory sampler
both evaluators (one forward pass, generation) measure with.  Below both, so neither imports the
other."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialResult:
    """What one measured configuration produced."""

    metrics: Mapping[str, float]
    details: Mapping[str, Any] = field(default_factory=dict)


class PeakRSS:
    """Samples the process's resident memory in the background; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = self._proc.memory_info().rss
        self.start_mb = self.peak / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


__all__ = ["PeakRSS", "TrialResult"]
