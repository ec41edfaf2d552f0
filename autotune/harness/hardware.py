"""What machine is this: fingerprint, capabilities, measured peak FLOP/s and default prices.

* :func:`fingerprint` describes the machine (CPU, ISA flags, memory, GPUs) and the software that
  matters for results; :meth:`Fingerprint.digest` is a short hash of the *hardware* part only, so
  results and caches can be keyed by it across library upgrades.
* :func:`detect_capabilities` says what precisions and runtimes a configuration may ask for.
* :func:`measure_peak_gflops` / :func:`peak_gflops_cached` measure the achieved FLOP/s of a large
  matmul, the denominator of a roofline share.
* :data:`DEFAULT_PRICES_USD_PER_HOUR`, :func:`default_price_per_hour` and
  :func:`cost_usd_per_million` turn latency into money.

Nothing here imports torch or onnxruntime at module import; they are imported inside the functions
that need them.  Probing never raises: what cannot be found out becomes ``"unknown"`` (strings),
``0`` (numbers) or empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import autotune
from autotune.errors import DependencyError
from autotune.files import write_json_atomic

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

# other spellings (numpy's CPU feature names, macOS sysctl, older tools) -> Linux spelling
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

#: Distributions whose versions are recorded (first installed name wins for onnxruntime).
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
        "onnxruntime-qnn",
    ),
    "onnx": ("onnx",),
    "optuna": ("optuna",),
    "numpy": ("numpy",),
    "mlflow": ("mlflow", "mlflow-skinny"),
}


def _normalize_flag(flag: str) -> str:
    f = flag.strip().lower().replace("-", "_").replace(".", "_")
    return _FLAG_ALIASES.get(f, f)


def _relevant(flags: set[str]) -> tuple[str, ...]:
    normalized = {_normalize_flag(f) for f in flags}
    return tuple(f for f in RELEVANT_CPU_FLAGS if f in normalized)


# ------------------------------------------------------------------------------------------------
# Fingerprint


@dataclass(frozen=True)
class Fingerprint:
    """A description of the machine and the software versions that matter for measurements.

    ``physical_cores`` / ``logical_cores`` are the machine's; ``usable_cores`` is what this process
    may run on (CPU affinity, e.g. ``taskset`` or a container's cpuset).  ``gpus`` holds one dict
    per visible GPU with ``name``, ``memory_mb``, ``driver`` and ``compute_capability``;
    ``libraries`` maps a library to its installed version (``None`` when not installed).
    """

    cpu_model: str
    cpu_arch: str
    physical_cores: int
    logical_cores: int
    cpu_flags: tuple[str, ...]
    memory_total_mb: float
    os: str
    python: str
    gpus: tuple[dict[str, Any], ...] = ()
    libraries: dict[str, str | None] = field(default_factory=dict)
    ort_providers: tuple[str, ...] = ()
    usable_cores: int = 0

    def __hash__(self) -> int:  # dict fields: hash the hardware part (equal objects agree)
        return hash(self.digest())

    def hardware(self) -> dict[str, Any]:
        """The fields :meth:`digest` covers: hardware only, rounded where readings wobble.

        Memory is rounded to whole GiB (the kernel's reservation moves MemTotal by a few MiB
        between boots); GPU drivers, the OS, Python and library versions are left out.
        """
        return {
            "cpu_model": self.cpu_model,
            "cpu_arch": self.cpu_arch,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "usable_cores": self.usable_cores,
            "cpu_flags": list(self.cpu_flags),
            "memory_gib": round(self.memory_total_mb / 1024.0),
            "gpus": [
                {
                    "name": g.get("name", UNKNOWN),
                    "memory_gib": round(float(g.get("memory_mb") or 0) / 1024.0),
                    "compute_capability": g.get("compute_capability", UNKNOWN),
                }
                for g in self.gpus
            ],
        }

    def digest(self) -> str:
        """Short (16 hex digits) stable sha256 of :meth:`hardware`; library versions excluded."""
        text = json.dumps(self.hardware(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def short(self) -> str:
        """One line for people, e.g. ``AMD EPYC · 2 cores · AVX2 FMA AVX512-VNNI · 23.4 GiB``."""
        if self.physical_cores and self.logical_cores and self.physical_cores != self.logical_cores:
            cores = f"{self.physical_cores} cores/{self.logical_cores} threads"
        else:
            n = self.physical_cores or self.logical_cores
            cores = f"{n} core{'s' if n != 1 else ''}" if n else "? cores"
        flags = set(self.cpu_flags)
        labels = [label for keys, label in _HEADLINE if flags.intersection(keys)]
        parts = [self.cpu_model, cores]
        if labels:
            parts.append(" ".join(labels))
        parts.append(f"{self.memory_total_mb / 1024.0:.1f} GiB")
        if self.gpus:
            names: dict[str, int] = {}
            for g in self.gpus:
                mem = float(g.get("memory_mb") or 0) / 1024.0
                key = f"{g.get('name', UNKNOWN)} ({mem:.0f} GiB)"
                names[key] = names.get(key, 0) + 1
            parts.append(", ".join(f"{k}× {name}" for name, k in names.items()))
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        d["gpus"] = [dict(g) for g in self.gpus]
        d["libraries"] = dict(self.libraries)
        d["ort_providers"] = list(self.ort_providers)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_dict`; fields missing from older records get neutral values."""
        logical = int(data.get("logical_cores") or 0)
        return cls(
            cpu_model=str(data.get("cpu_model", UNKNOWN)),
            cpu_arch=str(data.get("cpu_arch", UNKNOWN)),
            physical_cores=int(data.get("physical_cores") or 0),
            logical_cores=logical,
            cpu_flags=tuple(str(f) for f in data.get("cpu_flags", ())),
            memory_total_mb=float(data.get("memory_total_mb") or 0.0),
            os=str(data.get("os", UNKNOWN)),
            python=str(data.get("python", UNKNOWN)),
            gpus=tuple(dict(g) for g in data.get("gpus", ())),
            libraries=dict(data.get("libraries", {})),
            ort_providers=tuple(str(p) for p in data.get("ort_providers", ())),
            usable_cores=int(data.get("usable_cores") or logical),
        )


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    """stdout of a command, or None if it is missing, fails or hangs."""
    try:
        exe = shutil.which(cmd[0])
        if exe is None:
            return None
        out = subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False
        )
        return out.stdout if out.returncode == 0 else None
    except Exception:
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except Exception:
        return None


def _cpuinfo_blocks() -> list[dict[str, str]]:
    text = _read_text("/proc/cpuinfo")
    if not text:
        return []
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _cpu_model(blocks: list[dict[str, str]]) -> str:
    for key in ("model name", "cpu model", "hardware", "cpu"):
        for b in blocks:
            if b.get(key):
                return b[key]
    system = platform.system()
    if system == "Darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out and out.strip():
            return out.strip()
    if system == "Linux":
        out = _run(["lscpu"])
        for line in (out or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "model name" and value.strip() not in ("", "-"):
                return value.strip()
    proc = platform.processor()
    return proc or UNKNOWN


def _cpu_flags(blocks: list[dict[str, str]]) -> tuple[str, ...]:
    flags: set[str] = set()
    for b in blocks[:1]:
        for key in ("flags", "features"):  # x86 / Arm
            flags.update(b.get(key, "").split())
    if not flags and platform.system() == "Darwin":
        for name in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            flags.update((_run(["sysctl", "-n", name]) or "").split())
        if platform.machine().lower() in ("arm64", "aarch64"):
            flags.update(("asimd", "neon"))
            for feat in ("FEAT_BF16", "FEAT_I8MM", "FEAT_DotProd", "FEAT_FP16", "FEAT_SME"):
                if (_run(["sysctl", "-n", f"hw.optional.arm.{feat}"]) or "").strip() == "1":
                    flags.add(feat)
    if not flags:
        flags.update(_numpy_cpu_features())
    return _relevant(flags)


def _numpy_cpu_features() -> set[str]:
    """numpy's runtime CPU dispatch table: a portable fallback (Windows, unusual systems)."""
    for mod_name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            mod = __import__(mod_name, fromlist=["__cpu_features__"])
            feats = mod.__cpu_features__
            return {name for name, present in feats.items() if present}
        except Exception:
            continue
    return set()


def _physical_cores(blocks: list[dict[str, str]], logical: int) -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:
        pass
    pairs = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
    if pairs:
        return len(pairs)
    if platform.system() == "Darwin":
        out = _run(["sysctl", "-n", "hw.physicalcpu"])
        if out and out.strip().isdigit():
            return int(out.strip())
    return logical


def _usable_cores(logical: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except Exception:
        return logical


def _memory_total_mb() -> float:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**20, 1)
    except Exception:
        pass
    text = _read_text("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    if m:
        return round(int(m.group(1)) / 1024.0, 1)
    with contextlib.suppress(Exception):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    out = _run(["sysctl", "-n", "hw.memsize"])
    if out and out.strip().isdigit():
        return round(int(out.strip()) / 2**20, 1)
    return 0.0


def _nvidia_smi_gpus() -> list[dict[str, Any]]:
    base = ["nvidia-smi", "--format=csv,noheader,nounits"]
    out = _run([*base, "--query-gpu=name,memory.total,driver_version,compute_cap"])
    with_cc = out is not None
    if out is None:  # drivers before 510 do not know compute_cap
        out = _run([*base, "--query-gpu=name,memory.total,driver_version"])
    gpus = []
    for line in (out or "").splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 3 or not cols[0]:
            continue
        try:
            mem = float(cols[1])
        except ValueError:
            mem = 0.0
        gpus.append(
            {
                "name": cols[0],
                "memory_mb": mem,
                "driver": cols[2] or UNKNOWN,
                "compute_capability": cols[3] if with_cc and len(cols) > 3 else UNKNOWN,
            }
        )
    return gpus


def _might_have_gpu() -> bool:
    return bool(
        shutil.which("nvidia-smi")
        or os.path.exists("/dev/nvidia0")
        or os.path.exists("/proc/driver/nvidia")
        or os.path.exists("/dev/kfd")  # ROCm
    )


def _torch_gpus() -> list[dict[str, Any]] | None:
    """GPUs as torch sees them (honours CUDA_VISIBLE_DEVICES); None if torch cannot say."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        driver = UNKNOWN
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if out and out.strip():
            driver = out.strip().splitlines()[0].strip()
        elif getattr(torch.version, "hip", None):
            driver = f"hip {torch.version.hip}"
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "name": str(props.name),
                    "memory_mb": round(props.total_memory / 2**20, 1),
                    "driver": driver,
                    "compute_capability": f"{props.major}.{props.minor}",
                }
            )
        return gpus
    except Exception:
        return None


def _gpus() -> tuple[dict[str, Any], ...]:
    """Via torch.cuda when torch is installed and a GPU driver is present, else nvidia-smi.

    On a machine with no sign of a GPU driver torch is not imported at all (it is slow to import).
    """
    gpus = None
    if _might_have_gpu() and ("torch" in sys.modules or importlib.util.find_spec("torch")):
        gpus = _torch_gpus()
    if gpus is None:
        gpus = _nvidia_smi_gpus()
    return tuple(gpus)


def _dist_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except Exception:
            continue
    return None


def _libraries() -> dict[str, str | None]:
    libs = {lib: _dist_version(names) for lib, names in _LIBRARIES.items()}
    try:
        libs["autotune"] = autotune.__version__  # the code running, not some installed copy
    except Exception:
        libs["autotune"] = _dist_version(("autotune",))
    return libs


def _ort_providers() -> tuple[str, ...]:
    try:
        if importlib.util.find_spec("onnxruntime") is None:
            return ()
        import onnxruntime

        return tuple(str(p) for p in onnxruntime.get_available_providers())
    except Exception:
        return ()


def _safe(probe, default):
    try:
        return probe()
    except Exception:
        return default


_FINGERPRINT: Fingerprint | None = None


def fingerprint(*, refresh: bool = False) -> Fingerprint:
    """Describe this machine (cached for the process; ``refresh=True`` probes again).

    Linux reads ``/proc/cpuinfo`` and ``/proc/meminfo``; macOS asks ``sysctl``; elsewhere
    :mod:`platform` and numpy's CPU feature table are used.  Never raises.
    """
    global _FINGERPRINT
    if _FINGERPRINT is not None and not refresh:
        return _FINGERPRINT
    blocks = _safe(_cpuinfo_blocks, [])
    logical = _safe(lambda: os.cpu_count() or 0, 0)
    system = _safe(platform.system, "") or UNKNOWN
    release = _safe(platform.release, "")
    _FINGERPRINT = Fingerprint(
        cpu_model=_safe(lambda: _cpu_model(blocks), UNKNOWN) or UNKNOWN,
        cpu_arch=_safe(platform.machine, "") or UNKNOWN,
        physical_cores=_safe(lambda: _physical_cores(blocks, logical), logical),
        logical_cores=logical,
        cpu_flags=_safe(lambda: _cpu_flags(blocks), ()),
        memory_total_mb=_safe(_memory_total_mb, 0.0),
        os=f"{system} {release}".strip(),
        python=_safe(
            lambda: f"{platform.python_implementation()} {platform.python_version()}", UNKNOWN
        ),
        gpus=_safe(_gpus, ()),
        libraries=_safe(_libraries, {}),
        ort_providers=_safe(_ort_providers, ()),
        usable_cores=_safe(lambda: _usable_cores(logical), logical),
    )
    return _FINGERPRINT


# ------------------------------------------------------------------------------------------------
# Capabilities


@dataclass(frozen=True)
class Capabilities:
    """What precisions and runtimes this process can use.

    ``cpu_bf16`` / ``cpu_fp16``: native bf16 / fp16 arithmetic instructions (AVX512-BF16, AMX-BF16,
    Arm BF16; AVX512-FP16, AMX-FP16, Arm FP16).  ``cpu_vnni``: int8 dot-product instructions
    (AVX512-VNNI, AVX-VNNI, AMX-INT8, Arm dot product).  ``cuda_bf16`` is native support
    (Ampere and later), not emulation.
    """

    cuda: bool
    cuda_devices: int
    cuda_bf16: bool
    cuda_fp16: bool
    cpu_bf16: bool
    cpu_fp16: bool
    cpu_vnni: bool
    ort_providers: tuple[str, ...]
    tensorrt: bool
    torch_available: bool
    ort_available: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ort_providers"] = list(self.ort_providers)
        return d


_CAPABILITIES: Capabilities | None = None


def detect_capabilities(*, refresh: bool = False) -> Capabilities:
    """Probe torch, CUDA, onnxruntime and the CPU flags (cached for the process). Never raises."""
    global _CAPABILITIES
    if _CAPABILITIES is not None and not refresh:
        return _CAPABILITIES
    flags = set(fingerprint().cpu_flags)

    torch_available = cuda = cuda_bf16 = cuda_fp16 = False
    cuda_devices = 0
    try:
        import torch

        torch_available = True
        cuda = bool(torch.cuda.is_available())
        if cuda:
            cuda_devices = int(torch.cuda.device_count())
            major, minor = torch.cuda.get_device_capability(0)
            cuda_fp16 = (major, minor) >= (5, 3) or bool(getattr(torch.version, "hip", None))
            try:
                cuda_bf16 = bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # older torch: no emulation argument
                cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    except Exception:
        pass

    ort_available = False
    providers: tuple[str, ...] = ()
    try:
        import onnxruntime

        ort_available = True
        providers = tuple(str(p) for p in onnxruntime.get_available_providers())
    except Exception:
        pass

    _CAPABILITIES = Capabilities(
        cuda=cuda,
        cuda_devices=cuda_devices,
        cuda_bf16=cuda_bf16,
        cuda_fp16=cuda_fp16,
        cpu_bf16=bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
        cpu_fp16=bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp"}),
        cpu_vnni=bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}),
        ort_providers=providers,
        tensorrt="TensorrtExecutionProvider" in providers,
        torch_available=torch_available,
        ort_available=ort_available,
    )
    return _CAPABILITIES


# ------------------------------------------------------------------------------------------------
# peak FLOP/s


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
    _positive(seconds, "seconds", func)
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
            f"torch={_dist_version(('torch',)) or torch.__version__}",
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


# ------------------------------------------------------------------------------------------------
# cost

#: Default prices in US dollars per hour, used for ``cost_usd_per_million`` when a job sets none.
#:
#: Order-of-magnitude figures in the spirit of 2025–26 on-demand list prices of the large public
#: clouds, rounded: ``cpu-core`` is per vCPU-hour of a general-purpose instance (memory included;
#: e.g. a 2-vCPU instance at about $0.10/h); ``gpu:<model>`` is per GPU-hour of a GPU instance,
#: its share of host CPUs and memory included.  Specialised GPU clouds, reserved capacity and spot
#: prices are often several times cheaper, and prices change: they are defaults for comparing
#: configurations with each other, not quotes.  Jobs override them with their own price.
DEFAULT_PRICES_USD_PER_HOUR: dict[str, float] = {
    "cpu-core": 0.048,
    "gpu:H200": 5.0,
    "gpu:H100": 4.0,
    "gpu:A100": 2.5,
    "gpu:L40S": 1.9,
    "gpu:A10G": 1.0,
    "gpu:L4": 0.8,
    "gpu:T4": 0.5,
    "gpu:default": 2.0,
}


def _positive(value: object, name: str, func: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(float(value)) and float(value) > 0  # type: ignore[arg-type]
    if not ok:
        raise ValueError(
            f"The '{name}' parameter of {func} must be a positive finite number. "
            f"Got {value!r} instead."
        )
    return float(value)  # type: ignore[arg-type]


def _positive_int(value: object, name: str, func: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"The '{name}' parameter of {func} must be an int in [1, inf). Got {value!r} instead."
        )
    return value


def _gpu_price(name: str, prices: Mapping[str, float]) -> float:
    upper = name.upper()
    models = sorted(
        (k.split(":", 1)[1] for k in prices if k.startswith("gpu:") and k != "gpu:default"),
        key=len,
        reverse=True,
    )
    for model in models:
        if re.search(rf"(?<![A-Z0-9]){re.escape(model.upper())}(?![A-Z0-9])", upper):
            return float(prices[f"gpu:{model}"])
    return float(prices.get("gpu:default", DEFAULT_PRICES_USD_PER_HOUR["gpu:default"]))


def default_price_per_hour(
    fp: Fingerprint,
    device: str,
    threads: int,
    *,
    prices: Mapping[str, float] | None = None,
) -> float:
    """Price per hour of what a configuration occupies, from ``prices`` (default: the table).

    ``device="cpu"``: ``threads`` × the ``cpu-core`` price.  ``"cuda"`` / ``"cuda:N"`` / ``"gpu"``:
    the per-GPU price of that GPU's model (matched as a word in its name, e.g. ``H100`` in
    ``NVIDIA H100 80GB HBM3``), else ``gpu:default``; the host's share is included in it, so
    ``threads`` does not add to it.
    """
    func = "default_price_per_hour"
    threads = _positive_int(threads, "threads", func)
    table = DEFAULT_PRICES_USD_PER_HOUR if prices is None else prices
    if device == "cpu":
        return threads * _positive(table.get("cpu-core"), "prices['cpu-core']", func)
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(
            f"The 'device' parameter of {func} must be 'cpu', 'cuda', 'cuda:N' or 'gpu'. "
            f"Got {device!r} instead."
        )
    index = int(m.group(1) or 0)
    name = str(fp.gpus[index].get("name", "")) if index < len(fp.gpus) else ""
    return _positive(_gpu_price(name, table), "GPU price", func)


def cost_usd_per_million(
    latency_s_per_batch: float, batch_size: int, price_per_hour: float
) -> float:
    """Dollars for one million items: ``price_per_hour / 3600 × latency_s_per_batch / batch_size
    × 1e6`` (the machine fully busy with back-to-back batches)."""
    func = "cost_usd_per_million"
    latency = _positive(latency_s_per_batch, "latency_s_per_batch", func)
    batch = _positive_int(batch_size, "batch_size", func)
    price = _positive(price_per_hour, "price_per_hour", func)
    return price / 3600.0 * (latency / batch) * 1e6
