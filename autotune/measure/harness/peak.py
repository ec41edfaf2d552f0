"""Measured peak FLOP/s of this machine: the denominator of a roofline share.

:func:`measure_peak_gflops` times a large matmul with torch; :func:`peak_gflops_cached` keeps the
result in ``<cache_dir>/peak_gflops.json`` keyed by the machine's fingerprint digest and torch's
version, so a job measures it once per machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from autotune.core.files import write_json_atomic
from autotune.errors import DependencyError
from autotune.measure.harness.fingerprint import dist_version, fingerprint
from autotune.measure.harness.prices import positive

__all__ = ["measure_peak_gflops", "peak_gflops_cached"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")
_PEAK: dict[tuple[str, str, int | None, int], float] = {}
_PEAK_FILE = "peak_gflops.json"


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise DependencyError(
            "Measuring peak FLOP/s needs torch, which is not installed. "
            "Install it with `pip install torch`."
        ) from exc
    return torch


def _check_peak_args(device, dtype, seconds, size, threads) -> None:
    func = "measure_peak_gflops"
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(
            f"The 'device' parameter of {func} must be 'cpu', 'cuda' or 'cuda:N'. "
            f"Got {device!r} instead."
        )
    if dtype not in _DTYPES:
        options = ", ".join(repr(d) for d in _DTYPES)
        raise ValueError(
            f"The 'dtype' parameter of {func} must be one of {options}. Got {dtype!r} instead."
        )
    positive(seconds, "seconds", func)
    for name, value, low in (("size", size, 16), ("threads", threads, 1)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"The '{name}' parameter of {func} must be an int in [{low}, inf) or None. "
                f"Got {value!r} instead."
            )


def _resolve(torch, device: str, size: int | None, threads: int | None):
    if device == "cpu":
        resolved_threads: int | None = threads or int(torch.get_num_threads())
        resolved_size = size or (1024 if resolved_threads <= 8 else 2048)
    else:
        resolved_threads = None
        resolved_size = size or 8192
    return resolved_threads, resolved_size


def measure_peak_gflops(
    device: str = "cpu",
    dtype: str = "float32",
    seconds: float = 1.0,
    size: int | None = None,
    threads: int | None = None,
) -> float:
    """Achieved GFLOP/s of a large square matmul (2·n³ flops each) with torch; best of several runs.

    ``size`` defaults to 1024 on CPUs running up to 8 threads, 2048 above, and 8192 on GPUs;
    ``threads`` (CPU only) defaults to torch's current setting and is restored afterwards.  The
    measurement takes about ``seconds`` (at least three timed runs) and is cached per
    (device, dtype, threads, size) for the process; :func:`peak_gflops_cached` also keeps it on
    disk.  Raises :class:`~autotune.errors.DependencyError` without torch or the CUDA device.
    """
    _check_peak_args(device, dtype, seconds, size, threads)
    torch = _import_torch()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DependencyError(
            f"Cannot measure peak FLOP/s on {device!r}: torch.cuda.is_available() is False."
        )
    resolved_threads, n = _resolve(torch, device, size, threads)
    key = (device, dtype, resolved_threads, n)
    if key in _PEAK:
        return _PEAK[key]

    tdtype = getattr(torch, dtype)
    is_cuda = device.startswith("cuda")

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    previous_threads = torch.get_num_threads()
    if device == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
            b = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
            c = torch.empty_like(a)
            flops = 2.0 * n**3

            def run(k: int) -> float:
                sync()
                t0 = time.perf_counter()
                for _ in range(k):
                    torch.matmul(a, b, out=c)
                sync()
                return max(time.perf_counter() - t0, 1e-9)

            run(1)  # warm-up: lazy initialisation, kernel selection, clocks
            t = run(1)
            best = flops / t
            k = max(1, int(0.1 * seconds / t))  # about ten timed runs in the budget
            start = time.perf_counter()
            runs = 0
            while True:
                best = max(best, k * flops / run(k))
                runs += 1
                elapsed = time.perf_counter() - start
                if (runs >= 3 and elapsed >= seconds) or elapsed >= 3 * seconds:
                    break
    finally:
        if device == "cpu" and threads is not None:
            torch.set_num_threads(previous_threads)
    gflops = best / 1e9
    _PEAK[key] = gflops
    return gflops


def peak_gflops_cached(
    cache_dir: str | os.PathLike[str],
    device: str = "cpu",
    dtype: str = "float32",
    seconds: float = 1.0,
    size: int | None = None,
    threads: int | None = None,
) -> float:
    """:func:`measure_peak_gflops`, remembered in ``cache_dir/peak_gflops.json``.

    Entries are keyed by the fingerprint digest, the torch version, device, dtype, threads and
    size, so a job (or several jobs sharing a cache directory) measures it once per machine and
    torch build.  An unreadable cache file is ignored and rewritten; writes are atomic.
    """
    _check_peak_args(device, dtype, seconds, size, threads)
    torch = _import_torch()
    resolved_threads, n = _resolve(torch, device, size, threads)
    fp = fingerprint()
    key = "|".join(
        [
            fp.digest(),
            f"torch={dist_version(('torch',)) or torch.__version__}",
            device,
            dtype,
            f"threads={resolved_threads}",
            f"size={n}",
        ]
    )
    path = Path(cache_dir) / _PEAK_FILE
    entry = _load_peak_cache(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("gflops"), int | float):
        value = float(entry["gflops"])
        if value > 0 and math.isfinite(value):
            _PEAK.setdefault((device, dtype, resolved_threads, n), value)
            return value
    value = measure_peak_gflops(device, dtype, seconds, n, threads)
    entries = _load_peak_cache(path)  # re-read: another process may have written meanwhile
    entries[key] = {
        "gflops": value,
        "machine": fp.short(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": seconds,
    }
    write_json_atomic(path, {"version": 1, "entries": entries})
    return value


def _load_peak_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data.get("entries", {}) if isinstance(data, dict) else {}
        return dict(entries) if isinstance(entries, dict) else {}
    except Exception:
        return {}
