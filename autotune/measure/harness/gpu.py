"""The GPUs of this machine, from NVIDIA's management library (NVML, package nvidia-ml-py).

NVML answers without a CUDA context and without importing torch.  The list follows
``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs) as CUDA programs see it.  AMD GPUs (ROCm)
are listed through torch when it is already imported and built for HIP.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

__all__ = ["gpus"]

UNKNOWN = "unknown"


def _visible(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return entries
    chosen = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            break
        if item.isdigit():
            if int(item) >= len(entries):
                break  # CUDA stops at the first invalid entry
            chosen.append(entries[int(item)])
            continue
        match = [e for e in entries if str(e.get("_uuid", "")).startswith(item)]
        if len(match) != 1:
            break
        chosen.append(match[0])
    return chosen


def _nvml_gpus() -> list[dict[str, Any]] | None:
    """Every NVIDIA GPU: name, memory_mb, driver, compute_capability; None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no NVIDIA driver
        return None
    try:
        driver = str(pynvml.nvmlSystemGetDriverVersion())
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                cc = f"{major}.{minor}"
            except Exception:
                cc = UNKNOWN
            out.append({
                "name": str(pynvml.nvmlDeviceGetName(h)),
                "memory_mb": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20, 1),
                "driver": driver or UNKNOWN,
                "compute_capability": cc,
                "_uuid": str(pynvml.nvmlDeviceGetUUID(h)),
            })
        return out
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _hip_gpus() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch.version, "hip", None) or not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": str(p.name), "memory_mb": round(p.total_memory / 2**20, 1),
                    "driver": f"hip {torch.version.hip}",
                    "compute_capability": f"{p.major}.{p.minor}"})
    return out


def gpus() -> tuple[dict[str, Any], ...]:
    """The GPUs this process can use (``CUDA_VISIBLE_DEVICES`` applied), each a dict with
    ``name``, ``memory_mb``, ``driver`` and ``compute_capability``."""
    found = _nvml_gpus()
    if found is None:
        return tuple(_hip_gpus())
    return tuple({k: v for k, v in g.items() if not k.startswith("_")} for g in _visible(found))
