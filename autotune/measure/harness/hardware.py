"""What machine is this: fingerprint, capabilities, measured peak FLOP/s and default prices.

The names below live in modules by concern and are re-exported here, where the rest of autotune
and its users import them from:

* :mod:`autotune.measure.harness.fingerprint`: :class:`Fingerprint`, :func:`fingerprint` (from
  :mod:`autotune.measure.harness.cpu`: model, ISA flags, cores, memory; :mod:`autotune.measure.harness.gpu`:
  GPUs through NVML);
* :mod:`autotune.measure.harness.capabilities`: :class:`Capabilities`, :func:`detect_capabilities`;
* :mod:`autotune.measure.harness.peak`: :func:`measure_peak_gflops`, :func:`peak_gflops_cached`;
* :mod:`autotune.measure.harness.prices`: :data:`DEFAULT_PRICES_USD_PER_HOUR`,
  :func:`default_price_per_hour`, :func:`cost_usd_per_million`.

Nothing here imports torch or onnxruntime at module import.
"""

from __future__ import annotations

from autotune.measure.harness.capabilities import Capabilities, detect_capabilities
from autotune.measure.harness.cpu import RELEVANT_CPU_FLAGS
from autotune.measure.harness.fingerprint import Fingerprint, fingerprint
from autotune.measure.harness.peak import measure_peak_gflops, peak_gflops_cached
from autotune.measure.harness.prices import (
    DEFAULT_PRICES_USD_PER_HOUR,
    cost_usd_per_million,
    default_price_per_hour,
)

__all__ = [
    "DEFAULT_PRICES_USD_PER_HOUR",
    "RELEVANT_CPU_FLAGS",
    "Capabilities",
    "Fingerprint",
    "cost_usd_per_million",
    "default_price_per_hour",
    "detect_capabilities",
    "fingerprint",
    "measure_peak_gflops",
    "peak_gflops_cached",
]
