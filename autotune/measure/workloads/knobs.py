"""The generation knobs, declared next to their implementation (:mod:`autotune.measure.workloads.engine`).

A leaf module (nothing from autotune imported), so the job loader can check a generation job's
search space against it (:func:`autotune.job.declared.declared_generation_parameters`) without loading
the evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """A generation parameter: its values (``choices`` or ``low``/``high``), the default (what the
    unmodified baseline uses), what it does and when it applies."""

    name: str
    description: str
    default: Any
    choices: tuple[Any, ...] | None = None
    low: int | None = None
    high: int | None = None
    when: Mapping[str, tuple[Any, ...]] | None = None  # applies only when these hold

    def to_space(self) -> dict[str, Any]:
        """The parameter in the search-space vocabulary (``search_spaces/*.yaml``)."""
        out: dict[str, Any] = {"description": self.description}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out["low"], out["high"] = self.low, self.high
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


#: the generation knobs (register through the runtime interface as the torch/transformers
#: generation runtime's parameters).  ``max_batch`` default None = the workload's concurrency.
GENERATION_PARAMS: tuple[Knob, ...] = (
    Knob("runtime", "the engine: torch + transformers (ours) | llama_cpp (llama.cpp through "
         "llama-cpp-python, the model converted to GGUF) | openvino_genai (not runnable here: "
         "its model export needs optimum-intel, whose releases require transformers < 5.6)",
         "torch", choices=("torch", "llama_cpp", "openvino_genai")),
    Knob("batching", "static: batches of up to max_batch through generate; continuous: "
         "iteration-level scheduling (requests join and leave the batch every step)", "static",
         choices=("static", "continuous")),
    Knob("quantization", "weights: fp32 | bf16 cast | torchao int8 weight-only | int8 dynamic "
         "(int8 activations too); no int4: torchao 0.18 has no CPU int4 kernel", "fp32",
         choices=("fp32", "bf16", "int8_weight_only", "int8_dynamic")),
    Knob("cache_implementation", "KV cache: dynamic (grows) | static (preallocated) | offloaded "
         "(to CPU; for GPUs) | quantized (needs optimum-quanto or hqq)", "dynamic",
         choices=("dynamic", "static", "offloaded", "quantized"),
         when={"batching": ("static",)}),
    Knob("batch_wait_ms", "static batching: wait up to this long after the oldest waiting "
         "request arrived for max_batch requests before starting a batch (Triton's "
         "max_queue_delay; 0: start with what has arrived)", 0.0, choices=(0.0, 5.0, 10.0, 20.0),
         when={"batching": ("static",)}),
    Knob("attention", "attention kernel: sdpa (torch scaled_dot_product_attention) | eager",
         "sdpa", choices=("sdpa", "eager")),
    Knob("compile", "torch.compile the model's forward (dynamic shapes)", False,
         choices=(False, True)),
    Knob("max_batch", "most requests in one batch (default: the workload's concurrency)", None,
         low=1, high=None),
    Knob("threads", "intra-op threads", None, low=1, high=None),
    Knob("prefill_chunk", "prompt tokens per prefill forward (0 = whole prompt); between chunks "
         "the running requests decode", 0, choices=(0, 8, 16, 32),
         when={"batching": ("continuous",)}),
    Knob("gguf_type", "llama_cpp: GGUF weight type (llama.cpp's llama_model_quantize; K-quants "
         "fall back per tensor where rows are not a multiple of 256)", "q8_0",
         choices=("f32", "f16", "q8_0", "q4_0", "q4_k_m"), when={"runtime": ("llama_cpp",)}),
    Knob("n_batch", "llama_cpp: most tokens per llama_decode call (prompts are split into "
         "chunks of this size)", 512, choices=(32, 128, 512), when={"runtime": ("llama_cpp",)}),
    Knob("n_ctx", "llama_cpp: KV-cache cells for all sequences together (0: what the workload's "
         "longest request needs times max_batch)", 0, low=0, high=None,
         when={"runtime": ("llama_cpp",)}),
    Knob("speculative", "draft tokens per decode step from n-gram lookup in the request's own "
         "context, verified in the same forward (exact greedy output; 0 = off)", 0,
         choices=(0, 2, 4), when={"batching": ("continuous",)}),
)
PARAM_NAMES = tuple(k.name for k in GENERATION_PARAMS)
#: the generation engines besides torch (each may be unavailable here: :func:`engine_unavailable`)
GENERATION_ENGINES = ("llama_cpp", "openvino_genai")


def engine_unavailable(runtime: str) -> str | None:
    """Why the generation engine ``runtime`` cannot run on this machine (None: it can); read
    from what is installed, without importing it."""
    import importlib.util
    from importlib import metadata

    if runtime == "llama_cpp":
        for mod, pkg in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf")):
            if importlib.util.find_spec(mod) is None:
                return (f"runtime 'llama_cpp' needs the packages llama-cpp-python and gguf "
                        f"('{pkg}' is not installed; autotune's extra 'llamacpp' installs both)")
        return None
    if runtime == "openvino_genai":
        def version(dist: str) -> str | None:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return None

        tf, oi = version("transformers"), version("optimum-intel")
        # OpenVINO GenAI's LLMPipeline / ContinuousBatchingPipeline read a stateful OpenVINO IR
        # (the KV cache as model state, the tokenizer as openvino_tokenizer.xml) that
        # optimum-intel's exporter writes
        if oi is None:
            return ("runtime 'openvino_genai' cannot run here: OpenVINO GenAI serves a stateful "
                    "OpenVINO IR that optimum-intel's exporter writes (optimum-cli export "
                    "openvino), and optimum-intel is not installed; its newest release (2.2.0) "
                    f"requires transformers >= 4.51, < 5.6, while this project runs "
                    f"transformers {tf}")
        return (f"runtime 'openvino_genai' cannot run here: optimum-intel {oi} is installed "
                f"beside transformers {tf}; autotune does not drive its exporter (its releases "
                "require transformers < 5.6)")
    return None
