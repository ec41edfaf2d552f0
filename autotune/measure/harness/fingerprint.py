"""What machine is this: :class:`Fingerprint` (CPU, ISA flags, memory, GPUs, library versions).

:meth:`Fingerprint.digest` is a short hash of the *hardware* part only, so results and caches can
be keyed by it across library upgrades.  The facts come from :mod:`autotune.measure.harness.cpu`
(psutil, ``/proc/cpuinfo`` or py-cpuinfo) and :mod:`autotune.measure.harness.gpu` (NVML).  Probing never
raises: what cannot be found out becomes ``"unknown"`` (strings), ``0`` (numbers) or empty.

Digest stability: the hardware fields and their rounding are those of every earlier version, so
a CPU machine keeps its digest.  GPU memory now comes from NVML (before: torch's
``total_memory`` when torch could see the GPU), which may move a GPU's ``memory_gib`` by one on
some boards; such a machine gets a new digest once (results and peak-FLOP/s caches keyed by the
old one are re-measured, nothing else changes).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from autotune._version import __version__
from autotune.measure.harness import cpu, gpu
from autotune.measure.harness.cpu import UNKNOWN

__all__ = ["Fingerprint", "dist_version", "fingerprint"]

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
        labels = cpu.headline_flags(self.cpu_flags)
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

def dist_version(names: tuple[str, ...]) -> str | None:
    """The installed version of the first of ``names`` that is installed."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _libraries() -> dict[str, str | None]:
    libs = {lib: dist_version(names) for lib, names in _LIBRARIES.items()}
    libs["autotune"] = __version__  # the code running, not some installed copy
    return libs


def _ort_providers() -> tuple[str, ...]:
    if importlib.util.find_spec("onnxruntime") is None:
        return ()
    import onnxruntime

    return tuple(str(p) for p in onnxruntime.get_available_providers())


T = TypeVar("T")


def _safe(probe: Callable[[], T], default: T) -> T:
    try:
        return probe()
    except Exception:
        return default


_FINGERPRINT: Fingerprint | None = None


def fingerprint(*, refresh: bool = False) -> Fingerprint:
    """Describe this machine (cached for the process; ``refresh=True`` probes again). Never
    raises."""
    global _FINGERPRINT
    if _FINGERPRINT is not None and not refresh:
        return _FINGERPRINT
    logical = _safe(cpu.logical_cores, 0)
    system = _safe(platform.system, "") or UNKNOWN
    release = _safe(platform.release, "")
    _FINGERPRINT = Fingerprint(
        cpu_model=_safe(cpu.cpu_model, UNKNOWN) or UNKNOWN,
        cpu_arch=_safe(platform.machine, "") or UNKNOWN,
        physical_cores=_safe(cpu.physical_cores, logical) or logical,
        logical_cores=logical,
        cpu_flags=_safe(cpu.cpu_flags, ()),
        memory_total_mb=_safe(cpu.memory_total_mb, 0.0),
        os=f"{system} {release}".strip(),
        python=_safe(
            lambda: f"{platform.python_implementation()} {platform.python_version()}", UNKNOWN
        ),
        gpus=_safe(gpu.gpus, ()),
        libraries=_safe(_libraries, {}),
        ort_providers=_safe(_ort_providers, ()),
        usable_cores=_safe(cpu.usable_cores, logical) or logical,
    )
    return _FINGERPRINT
