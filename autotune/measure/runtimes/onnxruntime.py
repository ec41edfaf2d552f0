"""The ONNX Runtime runtime: an ONNX file (exported, optionally quantized by ONNX Runtime's
tools) run by an ``InferenceSession`` with every session option a trial can set.

Keys it reads: ``quantization`` (fp32, fp16, int8_dynamic, int8_static and the int8 transforms'
own keys, declared by those transforms), ``execution_provider`` (cpu | cuda | tensorrt; the
default follows ``device``), ``graph_optimization``, ``execution_mode``, ``threads`` (intra-op),
``inter_op_threads`` and ``intra_op_spinning``.  The bundle is the ONNX file itself plus these
settings; the harness and :func:`autotune.deploy.load` build their session options with the same
function (:func:`autotune.measure.runtimes.ortsession.session_options`), so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import TrialFailed
from autotune.measure.runtimes.base import (
    BuildContext,
    Built,
    BundleFiles,
    Exclusion,
    IOSpec,
    Parameter,
    Runner,
    Runtime,
)
from autotune.measure.runtimes.ortsession import EXECUTION_MODES, GRAPH_LEVELS, session_options
from autotune.measure.transforms.base import apply, get_transform

MODEL_FILE = "model.onnx"
QUANTIZATIONS = ("fp32", "fp16", "int8_dynamic", "int8_static")
#: ``execution_provider`` value → the providers a session is given, in order
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                          "CPUExecutionProvider"]}
#: trial key → parameter name of the ONNX Runtime int8 transforms (where they differ)
_RENAMED = {"quant_op_types": "op_types"}
#: ONNX tensor type → numpy dtype name
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def ort_providers(config: Mapping[str, Any]) -> list[str]:
    """ONNX Runtime providers for a configuration: ``execution_provider``, else from ``device``."""
    ep = config.get("execution_provider") or ("cuda" if config.get("device") == "cuda" else "cpu")
    if ep not in PROVIDERS:
        raise TrialFailed(f"unknown execution_provider '{ep}' ({', '.join(PROVIDERS)})")
    if config.get("device", "cpu") == "cpu" and ep != "cpu":
        raise TrialFailed(f"execution_provider '{ep}' needs device 'cuda'")
    return list(PROVIDERS[ep])


def _specs(args: Sequence[Any]) -> tuple[IOSpec, ...]:
    return tuple(IOSpec(a.name, ORT_DTYPES.get(a.type, "float32"),
                        tuple(d if isinstance(d, int) else None for d in a.shape)) for a in args)


class OrtRunner(Runner):
    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = _specs(session.get_inputs())
        self.outputs = _specs(session.get_outputs())
        self._names = [o.name for o in self.outputs]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.session.run(self._names, dict(feed)), strict=True))

    def first(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run(self._names[:1], dict(feed))[0]

    def positional(self) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        names = [s.name for s in self.inputs]
        first = self._names[:1]
        sess = self.session

        def predict(batch: Sequence[np.ndarray]) -> np.ndarray:
            return sess.run(first, dict(zip(names, batch, strict=True)))[0]

        return predict

    def settings(self) -> dict[str, Any]:
        so = self.session.get_session_options()
        return {
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "graph_optimization_level": str(so.graph_optimization_level),
            "execution_mode": str(so.execution_mode),
            "providers": list(self.session.get_providers()),
        }


def session(model: str | bytes | Path, settings: Mapping[str, Any]) -> Any:
    """An InferenceSession with the settings' options and providers; raises TrialFailed when a
    provider is missing or ONNX Runtime silently fell back to another."""
    import onnxruntime as ort

    try:
        so = session_options(settings)
    except ValueError as exc:
        raise TrialFailed(str(exc)) from None
    providers = ort_providers(settings)
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise TrialFailed(f"ONNX Runtime here has no {providers[0]} "
                          f"(available: {', '.join(available)})")
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=providers)
    if sess.get_providers()[0] != providers[0]:  # ORT falls back silently; we do not
        raise TrialFailed(f"{providers[0]} could not be used for this model "
                          f"(session got {', '.join(sess.get_providers())})")
    return sess


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    takes = "onnx"
    description = "ONNX Runtime: an ONNX file in an InferenceSession"

    def available(self, caps: Mapping[str, Any]) -> str | None:
        return None if caps.get("ort_available", True) else "onnxruntime is not installed"

    def parameters(self) -> list[Parameter]:
        from autotune.measure.runtimes import from_tparam
        when = {"runtime": (self.name,)}
        out = [
            Parameter("quantization", "categorical", "fp32", "ONNX Runtime: fp32, fp16 (float "
                      "initializers and compute, float32 I/O), int8 dynamic or static "
                      "(calibrated)", QUANTIZATIONS, search={"choices": list(QUANTIZATIONS)},
                      owner=self.name),
            Parameter("execution_provider", "categorical", None, "ONNX Runtime execution "
                      "provider (default from device)", tuple(PROVIDERS), when=when,
                      owner=self.name, nullable=True),
            Parameter("graph_optimization", "categorical", "all", "ONNX Runtime graph "
                      "optimization level", GRAPH_LEVELS, search={"choices": ["basic", "all"]},
                      when=when, owner=self.name),
            Parameter("execution_mode", "categorical", "sequential", "ONNX Runtime runs "
                      "independent operators one by one or in parallel", EXECUTION_MODES,
                      search={"choices": list(EXECUTION_MODES)}, when=when, owner=self.name),
            Parameter("ort_fusion", "categorical", "none", "ONNX Runtime transformer graph fusion "
                      "(attention, layer norm, GELU) before quantization: none | bert (applied "
                      "by the pipeline to the TorchScript export)", ("none", "bert"),
                      search={"choices": ["none", "bert"]}, when=when, owner=self.name),
            Parameter("ort_attention", "categorical", "fused", "the fused graph's attention: one "
                      "Attention operator with packed Q/K/V (QAttention under int8) or separate "
                      "Q/K/V MatMuls and a float MultiHeadAttention", ("fused", "multihead"),
                      search={"choices": ["fused", "multihead"]},
                      when={**when, "ort_fusion": ("bert",)}, owner=self.name),
            Parameter("intra_op_spinning", "categorical", True, "ONNX Runtime's thread pools "
                      "spin-wait for work between operators and runs (ORT's default: a little "
                      "faster alone; keeps a core busy while idle, which slows other work on it)",
                      (True, False), when=when, owner=self.name),
            Parameter("inter_op_threads", "int", None, "threads running independent operators "
                      "in parallel (ONNX Runtime: parallel execution mode)", low=1, high=None,
                      search={"choices": [1, 2]}, when=when, owner=self.name, nullable=True),
        ]
        static = get_transform("ort_int8_static")
        dynamic = get_transform("ort_int8_dynamic")
        int8 = {"quantization": ("int8_dynamic", "int8_static"), **when}
        seen = set()
        for cls, cond in ((dynamic, int8), (static, {"quantization": ("int8_static",)})):
            for tname, tp in cls.params.items():
                key = next((k for k, v in _RENAMED.items() if v == tname), tname)
                if key in seen:
                    continue
                seen.add(key)
                out.append(from_tparam(key, tp, f"{self.name} ({cls.name})", when=cond,
                                       any_string=key in ("quant_op_types", "exclude_nodes")))
        return out

    def excluded(self, caps: Mapping[str, Any]) -> list[Exclusion]:
        providers = set(caps.get("ort_providers") or ("CPUExecutionProvider",))
        missing = []
        if not ("CUDAExecutionProvider" in providers and caps.get("cuda", True)):
            missing.append("cuda")
        if not (caps.get("tensorrt") or "TensorrtExecutionProvider" in providers):
            missing.append("tensorrt")
        return [Exclusion("execution_provider", tuple(missing),
                          "ONNX Runtime here has no such execution provider")] if missing else []

    def build(self, model: Any, config: Mapping[str, Any], ctx: BuildContext) -> Built:
        ref = model
        quant = config.get("quantization") or "fp32"
        tctx, cache = ctx.transform_context, ctx.cache_dir
        if quant in ("int8_dynamic", "int8_static"):
            name = f"ort_{quant}"
            keys = get_transform(name).params
            params = {_RENAMED.get(k, k): v for k, v in config.items()
                      if _RENAMED.get(k, k) in keys and k not in ("opset",)}
            if "exclude_nodes" in params and not params["exclude_nodes"]:
                params["exclude_nodes"] = "none"
            ref = apply(name, ref, tctx, cache_dir=cache, **params)
        elif quant == "fp16":
            ref = apply("ort_fp16", ref, tctx, cache_dir=cache)
        sess = session(ref.path, config)
        return Built(OrtRunner(sess), Path(ref.path), ref,
                     {"providers": sess.get_providers()})

    def write_bundle(self, built: Built, config: Mapping[str, Any]) -> BundleFiles:
        settings = {k: config.get(k, d) for k, d in (
            ("device", "cpu"), ("execution_provider", None), ("threads", None),
            ("inter_op_threads", None), ("execution_mode", "sequential"),
            ("graph_optimization", "all"), ("quantization", "fp32"), ("batch_size", 1),
            ("intra_op_spinning", True))}
        settings["providers"] = ort_providers(config)
        return BundleFiles({MODEL_FILE: built.model_path.read_bytes()}, MODEL_FILE, settings)

    def load_bundle(self, files: Callable[[str], bytes], settings: Mapping[str, Any],
                    io: tuple[Sequence[IOSpec], Sequence[IOSpec]]) -> Runner:
        return OrtRunner(session(files(str(settings.get("model", MODEL_FILE))), settings))
