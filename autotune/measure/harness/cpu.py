"""The CPU and memory of this machine: model, ISA flags (one vocabulary), cores, memory.

Cores and memory come from psutil and ``os.sched_getaffinity``; the model name and flags from
the kernel's ``/proc/cpuinfo`` on Linux and from py-cpuinfo elsewhere (macOS, Windows).  On Linux
py-cpuinfo reports the same model name and flags (``tests/harness/test_hardware.py`` checks it)
but starts a Python subprocess to run CPUID, about a second (2.7 s measured on a busy 2-core
machine) that every measuring process would pay, so the kernel's file is read directly there.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Any

__all__ = ["RELEVANT_CPU_FLAGS", "cpu_flags", "cpu_model", "headline_flags", "memory_total_mb",
           "physical_cores", "relevant_flags", "usable_cores"]

UNKNOWN = "unknown"

#: ISA flags worth knowing for ML inference, in the order they are reported (Linux spellings).
RELEVANT_CPU_FLAGS: tuple[str, ...] = (
    # x86
    "sse4_1",
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "avx_vnni_int8",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    # Arm
    "neon",
    "asimd",
    "fphp",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "sme",
)

# other spellings (py-cpuinfo on macOS/Windows, numpy's CPU feature names, older tools) -> Linux's
_FLAG_ALIASES = {
    "sse41": "sse4_1",
    "sse42": "sse4_2",
    "avx1_0": "avx",
    "fma3": "fma",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avxvnni": "avx_vnni",
    "amxtile": "amx_tile",
    "amxint8": "amx_int8",
    "amxbf16": "amx_bf16",
    "feat_bf16": "bf16",
    "feat_i8mm": "i8mm",
    "feat_dotprod": "asimddp",
    "feat_fp16": "asimdhp",
    "feat_sme": "sme",
}

# headline flags for Fingerprint.short(): (flags that imply it, label)
_HEADLINE = (
    (("avx2",), "AVX2"),
    (("fma",), "FMA"),
    (("avx512f",), "AVX512"),
    (("avx512_vnni",), "AVX512-VNNI"),
    (("avx512_bf16",), "AVX512-BF16"),
    (("avx512_fp16",), "AVX512-FP16"),
    (("avx_vnni",), "AVX-VNNI"),
    (("amx_int8", "amx_bf16", "amx_tile"), "AMX"),
    (("asimd", "neon"), "NEON"),
    (("asimddp",), "DOTPROD"),
    (("i8mm",), "I8MM"),
    (("bf16",), "BF16"),
    (("sve",), "SVE"),
    (("sve2",), "SVE2"),
    (("sme",), "SME"),
)


def normalize_flag(flag: str) -> str:
    f = flag.strip().lower().replace("-", "_").replace(".", "_")
    return _FLAG_ALIASES.get(f, f)


def relevant_flags(flags: set[str]) -> tuple[str, ...]:
    """The flags of :data:`RELEVANT_CPU_FLAGS` among ``flags`` (any spelling), in its order."""
    normalized = {normalize_flag(f) for f in flags}
    return tuple(f for f in RELEVANT_CPU_FLAGS if f in normalized)


def headline_flags(flags: tuple[str, ...]) -> list[str]:
    """Labels for people: ``AVX2 FMA AVX512-VNNI``, ``NEON DOTPROD``..."""
    have = set(flags)
    return [label for keys, label in _HEADLINE if have.intersection(keys)]


def _proc_cpuinfo() -> dict[str, str]:
    """``/proc/cpuinfo`` as one mapping (keys lower-cased, the first processor's values first);
    empty where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    block: dict[str, str] = {}
    for line in text.splitlines():  # each key's first value (Arm puts "Hardware" at the end)
        key, sep, value = line.partition(":")
        if sep:
            block.setdefault(key.strip().lower(), value.strip())
    return block


@cache
def _py_cpuinfo() -> dict[str, Any]:
    try:
        import cpuinfo

        return dict(cpuinfo.get_cpu_info())
    except Exception:
        return {}


def cpu_model() -> str:
    block = _proc_cpuinfo()
    for key in ("model name", "cpu model", "hardware", "cpu"):  # x86, MIPS, Arm, POWER
        if block.get(key):
            return block[key]
    return str(_py_cpuinfo().get("brand_raw") or platform.processor() or UNKNOWN)


def cpu_flags() -> tuple[str, ...]:
    block = _proc_cpuinfo()
    flags = set((block.get("flags") or block.get("features") or "").split())  # x86 / Arm
    if not flags:
        flags = {str(f) for f in _py_cpuinfo().get("flags", ())}
        if platform.machine().lower() in ("arm64", "aarch64"):
            flags.update(("asimd", "neon"))  # baseline of every 64-bit Arm core
    return relevant_flags(flags)


def physical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or psutil.cpu_count() or 0)


def logical_cores() -> int:
    return os.cpu_count() or 0


def usable_cores() -> int:
    """The cores this process may run on (CPU affinity: taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity API
        return logical_cores()


def memory_total_mb() -> float:
    import psutil

    return round(psutil.virtual_memory().total / 2**20, 1)
