"""The OpenVINO runtime (CPU): the model's ONNX export converted to OpenVINO IR
(``openvino.convert_model``; ``model.xml`` + ``model.bin``) and compiled with a performance hint,
an inference precision and a thread count.

Keys it reads: ``quantization`` (fp32, or bf16/fp16 as OpenVINO's ``INFERENCE_PRECISION_HINT``:
the IR keeps fp32 weights and the CPU plugin computes in the lower precision; or ``int8_static``:
NNCF post-training quantization of the IR, ``nncf.quantize`` with the transformer model type, its
activation ranges calibrated on the job's calibration split, preset ``ov_quant_preset``
(``performance``: symmetric activations, ``mixed``: asymmetric ones)), ``ov_performance_hint``
(LATENCY | THROUGHPUT), ``threads`` (``INFERENCE_NUM_THREADS``) and ``batch_size``.  The bundle is
the IR the trial was measured with plus these settings; loading reads the IR from bytes
(``Core.read_model``), no pickle.
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

XML, BIN = "model.xml", "model.bin"
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: integer precisions: an IR quantized by NNCF, run with f32 for what stays float
INT8 = ("int8_static",)
QUANT_PRESETS = ("performance", "mixed")
HINTS = ("LATENCY", "THROUGHPUT")


class OpenVinoRunner(Runner):
    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.inputs = tuple(IOSpec(p.get_any_name(), str(np.dtype(p.get_element_type().to_dtype())),
                                   tuple(None if d.is_dynamic else d.get_length()
                                         for d in p.get_partial_shape()))
                            for p in compiled.inputs)
        self.outputs = tuple(IOSpec(p.get_any_name(), str(np.dtype(p.get_element_type().to_dtype())),
                                    tuple(None if d.is_dynamic else d.get_length()
                                          for d in p.get_partial_shape()))
                             for p in compiled.outputs)
        self._request = compiled.create_infer_request()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self._request.infer(dict(feed))
        return {s.name: np.array(res[p]) for s, p in zip(self.outputs, self.compiled.outputs,
                                                         strict=True)}

    def first(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.array(self._request.infer(dict(feed))[self.compiled.outputs[0]])

    def settings(self) -> dict[str, Any]:
        c = self.compiled
        return {"INFERENCE_NUM_THREADS": int(c.get_property("INFERENCE_NUM_THREADS")),
                "PERFORMANCE_HINT": str(c.get_property("PERFORMANCE_HINT")),
                "INFERENCE_PRECISION_HINT": str(c.get_property("INFERENCE_PRECISION_HINT"))}


def compile_ir(xml: bytes, weights: bytes, settings: Mapping[str, Any]) -> OpenVinoRunner:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model=xml.decode(), weights=ov.Tensor(np.frombuffer(weights, np.uint8)))
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": str(settings.get("ov_performance_hint") or "LATENCY"),
        "INFERENCE_PRECISION_HINT": PRECISIONS.get(str(settings.get("quantization") or "fp32"),
                                                   "f32"),
    }
    if settings.get("threads"):
        config["INFERENCE_NUM_THREADS"] = int(settings["threads"])
    return OpenVinoRunner(core.compile_model(model, "CPU", config))


def _save(xml: Path, model: Any) -> None:
    """Write the IR atomically (a temporary name, then renamed), fp32 weights kept."""
    import openvino as ov

    tmp = xml.with_name(f"{xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)


def nncf_int8(onnx_path: Path, calibration: Sequence[np.ndarray], preset: str) -> Any:
    """The ONNX model converted to OpenVINO and quantized to int8 by NNCF post-training
    quantization (``nncf.quantize``, transformer model type: the attention's inputs, the
    layer norms and the softmax stay as NNCF's transformer scheme keeps them), activation ranges
    from ``calibration`` (one array per model input, in the model's input order, one sample per
    calibration step)."""
    import openvino as ov

    try:
        import nncf
    except ImportError as exc:  # excluded from the space where nncf is missing
        raise TrialFailed("OpenVINO int8 needs nncf: pip install nncf") from exc
    if not calibration:
        raise TrialFailed("OpenVINO int8 needs calibration inputs from the job's data")
    model = ov.convert_model(str(onnx_path))
    names = [p.get_any_name() for p in model.inputs]
    if len(names) != len(calibration):
        raise TrialFailed(f"the model has {len(names)} inputs ({', '.join(names)}) but the "
                          f"calibration data has {len(calibration)} arrays")
    n = int(calibration[0].shape[0])
    samples = [{k: np.ascontiguousarray(x[i:i + 1]) for k, x in zip(names, calibration,
                                                                      strict=True)}
               for i in range(n)]
    import logging

    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)  # progress bars and advice
    try:
        return nncf.quantize(
            model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed"
            else nncf.QuantizationPreset.PERFORMANCE, subset_size=n)
    finally:
        logging.getLogger("nncf").setLevel(level)


class OpenVinoRuntime(Runtime):
    name = "openvino"
    takes = "onnx"
    description = "OpenVINO (CPU): the ONNX export converted to OpenVINO IR"

    def available(self, caps: Mapping[str, Any]) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("openvino") else "openvino is not installed"

    def parameters(self) -> list[Parameter]:
        when = {"runtime": (self.name,)}
        return [
            Parameter("quantization", "categorical", "fp32", "OpenVINO: fp32, or bf16/fp16 "
                      "inference precision (INFERENCE_PRECISION_HINT), or int8_static (NNCF "
                      "post-training quantization, calibrated)", (*PRECISIONS, *INT8),
                      search={"choices": [*PRECISIONS, *INT8]}, owner=self.name),
            Parameter("ov_quant_preset", "categorical", "performance", "OpenVINO int8 (NNCF): "
                      "symmetric (performance) or asymmetric (mixed) activations", QUANT_PRESETS,
                      search={"choices": list(QUANT_PRESETS)},
                      when={**when, "quantization": INT8}, owner=self.name),
            Parameter("ov_performance_hint", "categorical", "LATENCY", "OpenVINO "
                      "PERFORMANCE_HINT", HINTS, search={"choices": list(HINTS)}, when=when,
                      owner=self.name),
        ]

    def excluded(self, caps: Mapping[str, Any]) -> list[Exclusion]:
        import importlib.util

        out = []
        if importlib.util.find_spec("nncf") is None:
            out.append(Exclusion("quantization", INT8, "nncf is not installed (pip install nncf)",
                                 {"runtime": self.name}))
        for q, flag in (("bf16", "cpu_bf16"), ("fp16", "cpu_fp16")):
            if not caps.get(flag):
                out.append(Exclusion("quantization", (q,), f"this CPU has no native {q} "
                                     "arithmetic (OpenVINO would fall back to fp32)",
                                     {"runtime": self.name}))
        return out

    def build(self, model: Any, config: Mapping[str, Any], ctx: BuildContext) -> Built:
        if str(config.get("device", "cpu")) != "cpu":
            raise TrialFailed("the openvino runtime runs on device 'cpu' only")
        quant = str(config.get("quantization") or "fp32")
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        xml = ctx.cache_dir / f"openvino-{model.model_id}.xml"
        if quant in INT8:
            tctx = ctx.transform_context
            preset = str(config.get("ov_quant_preset") or "performance")
            xml = ctx.cache_dir / f"openvino-{model.model_id}-int8-{preset}-{tctx.digest}.xml"
            if not xml.exists():
                _save(xml, nncf_int8(model.path, tctx.calibration, preset))
        elif not xml.exists():
            import openvino as ov

            _save(xml, ov.convert_model(str(model.path)))
        runner = compile_ir(xml.read_bytes(), xml.with_suffix(".bin").read_bytes(), config)
        size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        return Built(runner, xml, model, {"model_size_bytes": size})

    def write_bundle(self, built: Built, config: Mapping[str, Any]) -> BundleFiles:
        xml = Path(built.model_path)
        settings = {k: config.get(k, d) for k, d in (
            ("device", "cpu"), ("threads", None), ("quantization", "fp32"),
            ("ov_performance_hint", "LATENCY"), ("batch_size", 1))}
        if settings["quantization"] in INT8:  # in the IR itself; recorded for the reader
            settings["ov_quant_preset"] = config.get("ov_quant_preset", "performance")
        settings["weights"] = BIN
        return BundleFiles({XML: xml.read_bytes(), BIN: xml.with_suffix(".bin").read_bytes()},
                           XML, settings)

    def load_bundle(self, files: Callable[[str], bytes], settings: Mapping[str, Any],
                    io: tuple[Sequence[IOSpec], Sequence[IOSpec]]) -> Runner:
        return compile_ir(files(str(settings.get("model", XML))),
                          files(str(settings.get("weights", BIN))), settings)
