"""What precisions and runtimes a configuration may ask for on this machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autotune.measure.harness.fingerprint import fingerprint

__all__ = ["Capabilities", "detect_capabilities"]


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

