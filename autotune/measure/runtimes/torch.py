"""The torch runtime: fp32, fp16/bf16 casts and the torchao int8 forms, run as a
``torch.export`` program.

**Artifact format, and why.**  A trial's model is captured with ``torch.export`` (an
``ExportedProgram``: the forward as an ATen graph, with its weights) and written as ONE
safetensors file, ``model.safetensors``:

* the tensors: weights and buffers (``w/<name>``), tensor constants (``c/<name>``) and one
  example input per positional input (``x/<i>``; ``torch.export`` needs them to rebuild the call
  signature);
* the header metadata: the program itself in torch.export's JSON schema
  (``torch._export.serde.serialize``), the input/output names and dtypes.

Why not the alternatives: a ``state_dict`` (``torch.save``) needs the user's model code to run,
and both an unrestricted ``torch.load`` and ``torch.export.load`` (.pt2) unpickle — the .pt2
loader turns weights-only loading off for its sample inputs and pickles tensor subclasses
such as torchao's int8 weights.  Here torchao's subclasses are first flattened into plain tensors
(``torchao.utils.unwrap_tensor_subclass``), the program is JSON and the tensors are safetensors:
loading parses JSON and copies bytes; nothing is unpickled and no user code is needed.

**Ship what you measured.**  :meth:`TorchRuntime.build` measures that same exported program
(read back from the file it will ship), not the eager module, so a bundle's latency is the
measured one.  A model ``torch.export`` cannot capture (data-dependent control flow, ...) is still
measured (eagerly) and is marked ``not exportable`` with the exporter's reason.

Float inputs and outputs stay float32 at the boundary: an fp16/bf16 program casts its float
inputs inside the graph and its float outputs back, as ONNX Runtime's fp16 models do.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

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
from autotune.measure.transforms.base import apply

MODEL_FILE = "model.safetensors"
FORMAT = "autotune-torch-export/1"
QUANTIZATIONS = ("fp32", "fp16", "bf16", "int8_dynamic", "int8_weight_only")


def flatten_outputs(out: Any) -> tuple[list[str], list[Any]]:
    from autotune.measure.transforms.convert import flatten_outputs as flat

    return flat(out)


def input_names(module: Any, n: int) -> list[str]:
    from autotune.measure.transforms.convert import input_names as names

    return names(module, n)


class TorchRunner(Runner):
    """Runs a callable taking positional tensors and returning a tuple of tensors."""

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[IOSpec],
                 outputs: Sequence[IOSpec], device: str, kind: str) -> None:
        import torch

        self._fn = fn
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._device = torch.device(device)
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.kind = kind  # "exported" or "eager"

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            xs = [torch.from_numpy(np.ascontiguousarray(feed[s.name])).to(self._device)
                  for s in self.inputs]
            outs = self._fn(*xs)
            self._sync()
            return {s.name: o.detach().cpu().numpy() for s, o in zip(self.outputs, outs,
                                                                      strict=True)}

    def settings(self) -> dict[str, Any]:
        import torch

        return {"intra_op_num_threads": torch.get_num_threads(),
                "inter_op_num_threads": torch.get_num_interop_threads(),
                "device": str(self._device), "program": self.kind}


# ------------------------------------------------------------------------ helpers
def output_names(module: Any, example: Sequence[Any]) -> list[str]:
    import torch

    with torch.inference_mode():
        return flatten_outputs(module(*example))[0]


def _max_positions(module: Any) -> int:
    """The longest sequence the model takes: a Hugging Face config's ``max_position_embeddings``
    (BERT: 512; torch.export refuses a dynamic sequence axis bounded beyond it), else 65536."""
    for m in module.modules():
        n = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(n, int) and n > 1:
            return n
    return 65536


def _float_dtype(module: Any) -> Any:
    import torch

    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _wrapper(module: Any, dtype: Any) -> Any:
    """The model with float32 at its boundary and its outputs flattened to a tuple."""
    import torch

    class Boundary(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, *xs: Any) -> Any:
            xs = tuple(x.to(dtype) if x.is_floating_point() else x for x in xs)
            _, outs = flatten_outputs(self.model(*xs))
            return tuple(o.float() if o.is_floating_point() else o for o in outs)

    return Boundary().eval()


def _unwrapped(module: Any) -> Any:
    """A copy of ``module`` whose torchao tensor subclasses are plain tensors + parametrizations."""
    import copy

    out = copy.deepcopy(module)
    try:
        from torchao.utils import unwrap_tensor_subclass
    except ImportError:  # pragma: no cover - torchao is a dependency
        return out
    unwrap_tensor_subclass(out)
    return out


def export_program(module: Any, example: Sequence[Any], dynamic_axes: Any, path: Path) -> None:
    """Capture ``module`` with torch.export and write the safetensors artifact (see the module
    docstring).  Raises whatever torch.export raises."""
    import torch
    from safetensors.torch import save
    from torch._export.serde.serialize import serialize

    from autotune.measure.transforms.convert import default_axes

    names = input_names(module, len(example))
    dtype = _float_dtype(module)
    outs = output_names(module, [x.to(dtype) if x.is_floating_point() else x for x in example])
    wrapped = _wrapper(_unwrapped(module), dtype)
    axes = default_axes(example, dynamic_axes, names)
    dims: dict[str, Any] = {}
    seq_max = _max_positions(module)
    shapes = tuple({ax: dims.setdefault(n, torch.export.Dim(
        n, min=1, max=seq_max if n == "sequence" else 65536)) for ax, n in a.items()}
        for a in axes)
    ep = torch.export.export(wrapped, tuple(example), dynamic_shapes=(shapes,), strict=False)
    with torch.inference_mode():
        got = wrapped(*example)
    art = serialize(ep)
    tensors = {f"w/{k}": v.detach().contiguous() for k, v in ep.state_dict.items()}
    for k, v in ep.constants.items():
        if not isinstance(v, torch.Tensor):
            raise TrialFailed(f"the exported program holds a non-tensor constant {k!r} "
                              f"({type(v).__name__}), which cannot be shipped without pickle")
        tensors[f"c/{k}"] = v.detach().contiguous()
    for i, x in enumerate(example):
        tensors[f"x/{i}"] = x.contiguous()
    meta = {
        "format": FORMAT,
        "program": art.exported_program.decode(),
        "inputs": json.dumps([IOSpec(n, str(x.numpy().dtype), (None, *x.shape[1:])).to_dict()
                              for n, x in zip(names, example, strict=True)]),
        "outputs": json.dumps([IOSpec(n, str(o.detach().cpu().numpy().dtype),
                                      (None, *o.shape[1:])).to_dict()
                               for n, o in zip(outs, got, strict=True)]),
        "torch": torch.__version__,
    }
    data = save(tensors, metadata=meta)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _header(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise ValueError("not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8:8 + n])
    return dict(head.get("__metadata__") or {})


def load_program(data: bytes, device: str = "cpu") -> TorchRunner:
    """A runner from the bytes :func:`export_program` wrote (JSON + safetensors; no pickle)."""
    import torch
    from safetensors.torch import load
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    meta = _header(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not an autotune torch program (format {meta.get('format')!r})")
    tensors = load(data)
    program = meta["program"]
    if "torch.ops.torchao." in program:  # torchao's int8 kernels are registered on import
        import torchao  # noqa: F401
    spec = json.loads(program)
    params = {s["parameter"]["parameter_name"]
              for s in spec["graph_module"]["signature"]["input_specs"] if "parameter" in s}
    state = {k[2:]: (torch.nn.Parameter(v, requires_grad=False) if k[2:] in params else v)
             for k, v in tensors.items() if k.startswith("w/")}
    consts = {k[2:]: v for k, v in tensors.items() if k.startswith("c/")}
    example = tuple(tensors[f"x/{i}"] for i in range(sum(k.startswith("x/") for k in tensors)))
    ep = deserialize(SerializedArtifact(program.encode(), state, consts, (example, {})))
    fn = ep.module()
    if device != "cpu":
        fn = fn.to(device)
    inputs = [IOSpec.from_dict(d) for d in json.loads(meta["inputs"])]
    outputs = [IOSpec.from_dict(d) for d in json.loads(meta["outputs"])]
    return TorchRunner(fn, inputs, outputs, device, "exported")


def set_threads(config: Mapping[str, Any], info: dict[str, Any] | None = None) -> None:
    import torch

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    if config.get("inter_op_threads"):
        try:
            torch.set_num_interop_threads(int(config["inter_op_threads"]))
            applied = True
        except RuntimeError:  # only settable before the process's first parallel work
            applied = torch.get_num_interop_threads() == int(config["inter_op_threads"])
        if info is not None:
            info["inter_op_threads_applied"] = applied


# ------------------------------------------------------------------------ the runtime
class TorchRuntime(Runtime):
    name = "torch"
    takes = "torch"
    description = "PyTorch: a torch.export program of the (cast or torchao-quantized) model"
    _KEYS: ClassVar[tuple[str, ...]] = ("device", "threads", "inter_op_threads", "quantization",
                                        "batch_size")

    def parameters(self) -> list[Parameter]:
        when = {"runtime": ("torch",)}
        return [
            Parameter("quantization", "categorical", "fp32",
                      "torch: fp32, a float16/bfloat16 cast, or torchao int8 (dynamic "
                      "activations, or weight-only)", QUANTIZATIONS,
                      search={"choices": list(QUANTIZATIONS)}, owner=self.name),
            Parameter("inter_op_threads", "int", None, "threads running independent operators "
                      "in parallel (torch: set once per process)", low=1, high=None,
                      when=when, owner=self.name, nullable=True),
        ]

    def excluded(self, caps: Mapping[str, Any]) -> list[Exclusion]:
        out = []
        cpu = {"device": "cpu", "runtime": self.name}
        if not caps.get("cpu_fp16"):
            out.append(Exclusion("quantization", ("fp16",), "this CPU has no native fp16 "
                                 "arithmetic (torch would emulate it)", cpu))
        if not caps.get("cpu_bf16"):
            out.append(Exclusion("quantization", ("bf16",), "this CPU has no native bf16 "
                                 "arithmetic (torch would emulate it)", cpu))
        if caps.get("cuda"):
            if not caps.get("cuda_bf16"):
                out.append(Exclusion("quantization", ("bf16",), "this GPU has no native bf16",
                                     {"device": "cuda"}))
            if not caps.get("cuda_fp16"):
                out.append(Exclusion("quantization", ("fp16",), "this GPU has no fast fp16",
                                     {"device": "cuda"}))
        return out

    def build(self, model: Any, config: Mapping[str, Any], ctx: BuildContext) -> Built:
        import torch

        device = str(config.get("device", "cpu"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TrialFailed("device 'cuda' asked for, but torch sees no CUDA device")
        quant = config.get("quantization") or "fp32"
        ref = model
        if quant != "fp32":
            ref = apply("quantize_torch", ref, ctx.transform_context, cache_dir=ctx.cache_dir,
                        mode=quant)
        info: dict[str, Any] = {}
        set_threads(config, info)
        tctx = ctx.transform_context
        example = [torch.from_numpy(np.ascontiguousarray(x)) for x in tctx.example_inputs]
        path = ctx.cache_dir / f"torch-{ref.model_id}.safetensors"
        reason_file = path.with_suffix(".not-exportable")
        if not path.exists() and not reason_file.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                export_program(ref.module, example, tctx.dynamic_axes, path)
            except TrialFailed as exc:
                reason_file.write_text(str(exc))
            except Exception as exc:
                reason_file.write_text(f"torch.export cannot capture this model: "
                                       f"{type(exc).__name__}: {str(exc)[:300]}")
        if path.exists():
            return Built(load_program(path.read_bytes(), device), path, ref, info)
        info["not_exportable"] = reason_file.read_text()
        runner, weights = self._eager(ref.module, example, device, path)
        return Built(runner, weights, ref, info)

    @staticmethod
    def _eager(module: Any, example: Sequence[Any], device: str,
               path: Path) -> tuple[TorchRunner, Path]:
        """The eager module (for a model torch.export cannot capture); its weights are written
        to ``path`` for the model-size metric only."""
        import copy

        import torch
        from safetensors.torch import save_file

        mod = copy.deepcopy(module).to(device) if device != "cpu" else module
        weights = path.with_suffix(".weights.safetensors")
        if not weights.exists():
            sd = {k: v.detach().contiguous().cpu() for k, v in _unwrapped(module).state_dict().items()
                  if type(v) is torch.Tensor or type(v) is torch.nn.Parameter}
            save_file(sd, str(weights))
        names = input_names(module, len(example))
        dtype = _float_dtype(module)
        wrapped = _wrapper(mod, dtype)
        with torch.inference_mode():
            outs = flatten_outputs(module(*[x.to(dtype) if x.is_floating_point() else x
                                     for x in example]))[0]
        ins = [IOSpec(n, str(x.numpy().dtype), (None, *x.shape[1:])) for n, x in zip(names, example,
                                                                                   strict=True)]
        runner = TorchRunner(wrapped, ins, [IOSpec(n, "float32", ()) for n in outs], device,
                             "eager")
        return runner, weights

    def exportable(self, config: Mapping[str, Any], built: Built | None = None) -> str | None:
        if built is not None:
            return built.info.get("not_exportable")
        return None

    def write_bundle(self, built: Built, config: Mapping[str, Any]) -> BundleFiles:
        reason = self.exportable(config, built)
        if reason:
            raise TrialFailed(reason)
        settings = {k: config.get(k, d) for k, d in (
            ("device", "cpu"), ("threads", None), ("inter_op_threads", None),
            ("quantization", "fp32"), ("batch_size", 1))}
        return BundleFiles({MODEL_FILE: built.model_path.read_bytes()}, MODEL_FILE, settings)

    def load_bundle(self, files: Callable[[str], bytes], settings: Mapping[str, Any],
                    io: tuple[Sequence[IOSpec], Sequence[IOSpec]]) -> Runner:
        set_threads(settings)
        return load_program(files(str(settings.get("model", MODEL_FILE))),
                            str(settings.get("device") or "cpu"))
