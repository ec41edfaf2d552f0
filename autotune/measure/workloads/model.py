"""What a job measures: the model, its evaluation data and the quality metric.

Loaded inside the measuring process (it imports torch).  Everything the harness needs about the
user's code goes through here.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.core.refs import resolve
from autotune.errors import SpecError
from autotune.measure.runtimes import entry_points

if TYPE_CHECKING:
    from autotune.job.spec import Job


@dataclass
class Workload:
    module: Any | None  # torch.nn.Module, or None for an ONNX-file model
    onnx_path: Path | None
    inputs: list[np.ndarray]  # evaluation inputs, first axis = samples
    targets: np.ndarray | None
    quality_fn: Callable[[np.ndarray, np.ndarray], float]
    model_id: str  # content hash of the unmodified model, keys the transform cache
    #: calibration split (static quantization, gradient pruning), disjoint from ``inputs`` when
    #: the data allows (see :func:`split_calibration`)
    calibration: list[np.ndarray] | None = None
    calibration_targets: np.ndarray | None = None
    calibration_disjoint: bool = True
    loss_fn: Callable[[Any, Any], Any] | None = None
    loss_name: str = ""
    #: names of the model's inputs and outputs (Hugging Face models: the tokenizer's names, e.g.
    #: input_ids, attention_mask, token_type_ids); the ONNX export keeps them.  None: input_<i>
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.inputs[0].shape[0])

    def batch(self, batch_size: int, offset: int = 0) -> list[np.ndarray]:
        n = self.n_samples
        idx = (np.arange(batch_size) + offset) % n
        return [x[idx] for x in self.inputs]

    def example_inputs(self) -> list[Any]:
        import torch

        return [torch.from_numpy(x[:2]) for x in self.inputs]


def _as_list(x: Any) -> list[np.ndarray]:
    items = list(x) if isinstance(x, list | tuple) else [x]
    return [np.ascontiguousarray(i.detach().cpu().numpy() if hasattr(i, "detach") else np.asarray(i))
            for i in items]


def _accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    pred = outputs.argmax(axis=-1) if outputs.ndim > 1 else (outputs > 0.5).astype(int)
    return float((pred.reshape(-1) == np.asarray(targets).reshape(-1)).mean())


def fidelity_fn(name: str, reference: np.ndarray) -> Callable[[np.ndarray, Any], float]:
    """Built-in fidelity metrics against the unmodified model's outputs."""
    ref = reference.astype(np.float64)

    def top1_agreement(out: np.ndarray, _t: Any) -> float:
        return float((out.argmax(-1) == ref.argmax(-1)).mean())

    def cosine(out: np.ndarray, _t: Any) -> float:
        a = out.astype(np.float64).reshape(len(out), -1)
        b = ref.reshape(len(ref), -1)
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
        return float((num / den).mean())

    def mse(out: np.ndarray, _t: Any) -> float:
        return float(((out.astype(np.float64) - ref) ** 2).mean())

    return {"top1_agreement": top1_agreement, "cosine": cosine, "mse": mse}[name]


#: encoder inputs a tokenizer may return, in the order the wrapped model takes them
HF_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _hf_source(job: Job) -> str:
    """A local folder (relative to the job file) or a cached model id."""
    ref = str(job.model.huggingface)
    local = Path(job.base_dir) / ref
    return str(local.resolve()) if local.is_dir() else ref


def _hf_texts(job: Job) -> list[str]:
    texts = job.evaluation.texts
    if isinstance(texts, list):
        return [str(t) for t in texts]
    path = Path(job.base_dir) / str(texts)
    if not path.is_file():
        raise SpecError(f"no texts file at {path}: give a UTF-8 file with one text per line "
                        "(relative to the job file) or a list of texts.", path="evaluation.texts")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise SpecError(f"the texts file {path} has no non-empty lines.", path="evaluation.texts")
    return lines


def hf_encoder(source: str, task: str) -> tuple[Any, Any]:
    """(wrapped module, tokenizer) for a Hugging Face encoder, offline (``local_files_only``).

    ``feature-extraction``: the module returns the sentence embedding, the attention-mask-weighted
    mean of ``last_hidden_state`` (what sentence-transformers' mean pooling computes), output
    ``sentence_embedding``.  ``text-classification``: the ``logits``.  Its positional inputs are
    the tokenizer's encoder inputs in :data:`HF_INPUTS` order."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        cls = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
        # eager attention: the exported graph then matches ONNX Runtime's attention fusion
        model = cls.from_pretrained(source, local_files_only=True,
                                    attn_implementation="eager").eval()
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"cannot load the Hugging Face model {source!r} offline ({first}). Give a folder "
            "written by save_pretrained (model and tokenizer files) or the id of a model already "
            "in the local Hugging Face cache; nothing is downloaded.", path="model.huggingface",
        ) from None
    names = tuple(n for n in HF_INPUTS if n in tok.model_input_names or n == "input_ids")
    pool = task == "feature-extraction"

    class HFEncoder(torch.nn.Module):
        """A Hugging Face encoder with positional inputs ``input_names`` and one output."""

        input_names = names
        output_names = ("sentence_embedding",) if pool else ("logits",)

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            kw = {"input_ids": input_ids}
            if attention_mask is not None:
                kw["attention_mask"] = attention_mask
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            out = self.model(**kw)
            if not pool:
                return out.logits
            h = out.last_hidden_state
            if attention_mask is None:
                return h.mean(1)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    return HFEncoder().eval(), tok


def _load_hf(job: Job) -> tuple[Any, list[np.ndarray] | None, str, tuple[str, ...],
                                 tuple[str, ...]]:
    """(module, tokenized evaluation texts or None, model id, input names, output names)."""
    ev = job.evaluation
    source = _hf_source(job)
    module, tok = hf_encoder(source, str(job.model.task))
    names = module.input_names
    inputs = None
    if ev.texts is not None:
        enc = tok(_hf_texts(job), padding=ev.padding, truncation=True,
                  max_length=ev.sequence_length, return_tensors="np")
        inputs = [np.ascontiguousarray(enc[n].astype(np.int64)) for n in names]
    h = hashlib.sha256(f"{job.model.task}|{names}".encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return module, inputs, h.hexdigest()[:16], names, module.output_names


def io_names(module: Any, n_inputs: int) -> tuple[tuple[str, ...] | None,
                                                  tuple[str, ...] | None]:
    """A factory module's input and output names, from its ``input_names`` / ``output_names``
    attributes (e.g. ``("input_ids", "attention_mask", "token_type_ids")``); None where it
    declares none: the ONNX export then names them input_<i> / output."""
    ins = getattr(module, "input_names", None)
    outs = getattr(module, "output_names", None)
    if ins is not None:
        ins = tuple(str(n) for n in ins)
        if len(ins) != n_inputs or len(set(ins)) != n_inputs:
            raise SpecError(f"the model's input_names {list(ins)} must name each of its "
                            f"{n_inputs} example inputs once.", path="model.factory")
    return ins, (tuple(str(n) for n in outs) if outs is not None else None)


def load_workload(job: Job) -> Workload:
    import torch

    search = [job.base_dir]
    ev = job.evaluation
    module = onnx_path = None
    example: list[np.ndarray] | None = None
    texts: list[np.ndarray] | None = None
    input_names = output_names = None
    if job.model.huggingface is not None and job.model.is_encoder:
        module, texts, model_id, input_names, output_names = _load_hf(job)
    elif job.model.factory:
        factory = resolve(job.model.factory, search_paths=search, field="model.factory")
        made = factory(**job.model.options)
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
            raise SpecError(
                f"the model factory '{job.model.factory}' must return (torch.nn.Module, "
                f"example_inputs); it returned {type(made).__name__}.",
                path="model.factory",
            )
        module = made[0].eval()
        example = _as_list(made[1])
        input_names, output_names = io_names(module, len(example))
        h = hashlib.sha256()
        for k, v in module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        try:  # a changed forward() with the same weights is a different model (re-tuning)
            src = inspect.getsourcefile(factory)
            if src:
                h.update(Path(src).read_bytes())
        except (TypeError, OSError):
            pass
        model_id = h.hexdigest()[:16]
    else:
        onnx_path = (Path(job.base_dir) / str(job.model.onnx)).resolve()
        if not onnx_path.is_file():
            raise SpecError(f"no ONNX file at {onnx_path}.", path="model.onnx")
        model_id = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]

    targets = None
    if texts is not None:
        inputs, targets, cal, cal_t, disjoint = split_calibration(
            texts, None, ev.max_samples, ev.calibration_samples)
    elif ev.dataset:
        data_fn = resolve(ev.dataset, search_paths=search, field="evaluation.dataset")
        data = data_fn()
        if not (isinstance(data, tuple) and len(data) == 2):
            raise SpecError(
                f"the dataset function '{ev.dataset}' must return (inputs, targets).",
                path="evaluation.dataset",
            )
        inputs = _as_list(data[0])
        targets = None if data[1] is None else _as_list(data[1])[0]
        inputs, targets, cal, cal_t, disjoint = split_calibration(
            inputs, targets, ev.max_samples, ev.calibration_samples)
    elif example is not None:
        rng = np.random.default_rng(0)
        total = ev.max_samples + ev.calibration_samples
        inputs = [rng.standard_normal((total, *x.shape[1:])).astype(x.dtype)
                  if np.issubdtype(x.dtype, np.floating) else np.repeat(x[:1], total, 0)
                  for x in example]
        inputs, targets, cal, cal_t, disjoint = split_calibration(
            inputs, None, ev.max_samples, ev.calibration_samples)
    else:
        raise SpecError("an ONNX model with a fidelity metric needs evaluation.dataset for inputs.",
                        path="evaluation.dataset")
    loss_fn, loss_name = None, ""
    if ev.loss:
        loss_fn = resolve(ev.loss, search_paths=search, field="evaluation.loss")
        loss_name = ev.loss
    elif ev.metric == "accuracy":
        loss_fn = lambda out, t: torch.nn.functional.cross_entropy(out, t.long())  # noqa: E731
        loss_name = "cross_entropy"

    if ev.metric == "accuracy":
        if targets is None:
            raise SpecError("metric 'accuracy' needs targets from the dataset.", path="evaluation")
        quality_fn: Callable[[np.ndarray, Any], float] = _accuracy
    elif ev.is_fidelity:
        quality_fn = lambda out, t: 0.0  # noqa: E731 - replaced once the baseline has run
    else:
        plugin = entry_points("autotune.metrics").get(ev.metric)  # a metric plugin's name
        quality_fn = (plugin.load() if plugin is not None
                      else resolve(ev.metric, search_paths=search, field="evaluation.metric"))
    return Workload(module, onnx_path, inputs, targets, quality_fn, model_id, cal, cal_t,
                    disjoint, loss_fn, loss_name, input_names, output_names)


def split_calibration(inputs: list[np.ndarray], targets: np.ndarray | None, max_samples: int,
                      calibration_samples: int) -> tuple[Any, Any, Any, Any, bool]:
    """(eval inputs, eval targets, calibration inputs, calibration targets, disjoint).

    With at least ``max_samples + calibration_samples`` items, evaluation takes the first
    ``max_samples`` and calibration the next ones.  With fewer, calibration takes the last
    ``calibration_samples`` and evaluation the rest, as long as evaluation keeps at least half of
    the data; otherwise (tiny datasets) calibration reuses the first evaluation items and
    ``disjoint`` is False.
    """
    total = int(inputs[0].shape[0])
    n_cal = min(calibration_samples, total)
    if total >= max_samples + n_cal:
        n, cal = max_samples, slice(max_samples, max_samples + n_cal)
    elif total - n_cal >= total / 2:
        n, cal = total - n_cal, slice(total - n_cal, total)
    else:
        n, cal = min(max_samples, total), slice(0, n_cal)
    disjoint = cal.start >= n
    ev = [x[:n] for x in inputs]
    cx = [x[cal] for x in inputs]
    return (ev, None if targets is None else targets[:n], cx,
            None if targets is None else targets[cal], disjoint)
