"""Pruning transforms.

* ``prune_magnitude`` — unstructured L1 magnitude pruning, ranked over all layers (``global``) or
  per layer (``layer``); the zeros are in the weights.
* ``prune_gradient`` — unstructured pruning ranked by first-order Taylor importance
  ``|w · ∂L/∂w|``, the gradient summed over the job's calibration split.  The loss is the job's
  ``evaluation.loss`` (``module:function(outputs, targets) -> scalar tensor``) or, for
  ``accuracy`` jobs, cross-entropy against the dataset's targets.
* ``prune_structured`` — removes whole hidden units so the tensors really shrink: the output
  neurons of a ``Linear`` (ranked by the L1/L2 norm of their weight rows) together with the
  matching input columns of the next ``Linear`` in an ``nn.Sequential`` (through element-wise
  activations, dropout and ``BatchNorm1d``, which is sliced too), and the feed-forward hidden
  dimension of ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (``linear1`` out,
  ``linear2`` in).  The last layer of a model is never shrunk, so outputs keep their shape.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from autotune.errors import TrialFailed
from autotune.measure.transforms.base import (
    Categorical,
    Context,
    ModelRef,
    Range,
    TParam,
    Transform,
    in_range,
    one_of,
)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU,
                 nn.Mish, nn.Hardswish, nn.Softplus, nn.Dropout, nn.Identity)


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def _check_ratio(ratio: float, func: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"The 'ratio' parameter of {func} must be a float in [0, 1). "
                         f"Got {ratio!r} instead.")


def _unstructured(model: nn.Module, ratio: float, scope: str, func: str,
                  scores: dict[nn.Module, torch.Tensor] | None = None) -> nn.Module:
    """Prune ``model`` in place by ``scores`` (None: |w|); the masks are made permanent."""
    _check_ratio(ratio, func)
    if scope not in ("global", "layer"):
        raise ValueError(f"The 'scope' parameter of {func} must be 'global' or 'layer'. "
                         f"Got {scope!r} instead.")
    params: ClassVar[dict[str, TParam]] = prunable_parameters(model)
    if ratio == 0.0 or not params:
        return model
    if scope == "global":
        tprune.global_unstructured(
            params, pruning_method=tprune.L1Unstructured, amount=ratio,
            importance_scores=None if scores is None else {(m, n): scores[m] for m, n in params},
        )
    else:
        for module, name in params:
            tprune.l1_unstructured(module, name, amount=ratio,
                                   importance_scores=None if scores is None else scores[module])
    for module, name in params:
        tprune.remove(module, name)
    return model


def magnitude_prune(model: nn.Module, ratio: float, *, scope: str = "global") -> nn.Module:
    """L1 (magnitude) unstructured pruning of Linear/Conv weights; returns a pruned copy."""
    return _unstructured(copy.deepcopy(model), ratio, scope, "magnitude_prune")


def gradient_scores(model: nn.Module, inputs: list[np.ndarray], targets: Any,
                    loss_fn: Any, *, batch: int = 64) -> dict[nn.Module, torch.Tensor]:
    """|w · ∂L/∂w| for every prunable weight, the gradient summed over ``inputs``."""
    params: ClassVar[dict[str, TParam]] = prunable_parameters(model)
    for m, _ in params:
        m.weight.grad = None
    n = int(inputs[0].shape[0])
    with torch.enable_grad():
        for start in range(0, n, batch):
            xs = [torch.from_numpy(np.ascontiguousarray(x[start:start + batch])) for x in inputs]
            t = targets[start:start + batch]
            t = torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
            loss = loss_fn(model(*xs), t)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TrialFailed("the job's loss must return a scalar torch tensor")
            loss.backward()
    scores = {}
    for m, _ in params:
        g = m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight)
        scores[m] = (m.weight.detach() * g).abs()
        m.weight.grad = None
    return scores


def gradient_prune(model: nn.Module, ratio: float, inputs: list[np.ndarray], targets: Any,
                   loss_fn: Any, *, scope: str = "global") -> nn.Module:
    """Unstructured pruning by |w · ∂L/∂w|; returns a pruned copy."""
    out = copy.deepcopy(model)
    scores = gradient_scores(out, inputs, targets, loss_fn)
    return _unstructured(out, ratio, scope, "gradient_prune", scores)


# ------------------------------------------------------------------------ structured
def _pairs(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear, list[nn.BatchNorm1d]]]:
    """(producer, consumer, norms between) whose shared hidden dimension can shrink."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            out.append((m.linear1, m.linear2, []))
        elif _hf_ffn(m) is not None:
            out.append((*_hf_ffn(m), []))  # type: ignore[arg-type]
        elif isinstance(m, nn.Sequential):
            kids = list(m.children())
            for i, k in enumerate(kids):
                if not isinstance(k, nn.Linear):
                    continue
                j, norms = i + 1, []
                while j < len(kids) and isinstance(kids[j], (*_PASS_THROUGH, nn.BatchNorm1d)):
                    if isinstance(kids[j], nn.BatchNorm1d):
                        norms.append(kids[j])
                    j += 1
                if j < len(kids) and isinstance(kids[j], nn.Linear):
                    out.append((k, kids[j], norms))
    return out


def _hf_ffn(m: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """A Hugging Face BertLayer-style block's feed-forward pair: ``intermediate.dense`` (hidden →
    intermediate) and ``output.dense`` (intermediate → hidden)."""
    up = getattr(getattr(m, "intermediate", None), "dense", None)
    down = getattr(getattr(m, "output", None), "dense", None)
    if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) \
            and up.out_features == down.in_features:
        return up, down
    return None


def _hf_attention(m: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """A Hugging Face BertAttention-style block: ``self`` (query/key/value Linear layers and an
    ``attention_head_size``) and ``output.dense`` (heads → hidden)."""
    sa = getattr(m, "self", None)
    dense = getattr(getattr(m, "output", None), "dense", None)
    if sa is None or not isinstance(dense, nn.Linear):
        return None
    qkv = [getattr(sa, k, None) for k in ("query", "key", "value")]
    size = getattr(sa, "attention_head_size", None)
    if not all(isinstance(x, nn.Linear) for x in qkv) or not isinstance(size, int) or size < 1:
        return None
    if any(x.out_features != dense.in_features for x in qkv) or dense.in_features % size:
        return None
    return sa, dense


def prune_heads(model: nn.Module, ratio: float, *, norm: int = 2) -> tuple[int, int]:
    """Remove ``round(ratio * heads)`` attention heads (at least one kept) of every Hugging Face
    BertAttention-style block in place, the heads whose query/key/value/output weights have the
    smallest norm; returns (heads before, heads after) over all blocks."""
    before = after = 0
    for m in list(model.modules()):
        found = _hf_attention(m)
        if found is None:
            continue
        sa, dense = found
        size = sa.attention_head_size
        heads = dense.in_features // size
        keep_n = max(1, heads - round(ratio * heads))
        before += heads
        after += keep_n
        if keep_n == heads:
            continue
        with torch.no_grad():
            score = sum(getattr(sa, k).weight.detach().abs().pow(norm).reshape(heads, -1).sum(1)
                        for k in ("query", "key", "value"))
            score = score + dense.weight.detach().abs().pow(norm).t().reshape(heads, -1).sum(1)
        kept = torch.sort(torch.topk(score, keep_n).indices).values
        idx = (kept[:, None] * size + torch.arange(size)[None, :]).reshape(-1)
        for k in ("query", "key", "value"):
            _slice_linear(getattr(sa, k), idx, 0)
        _slice_linear(dense, idx, 1)
        sa.num_attention_heads = keep_n
        sa.all_head_size = keep_n * size
    return before, after


def _slice_linear(lin: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    with torch.no_grad():
        w = lin.weight.index_select(dim, keep).clone()
        lin.weight = nn.Parameter(w)
        if dim == 0:
            if lin.bias is not None:
                lin.bias = nn.Parameter(lin.bias.index_select(0, keep).clone())
            lin.out_features = len(keep)
        else:
            lin.in_features = len(keep)


def _slice_bn(bn: nn.BatchNorm1d, keep: torch.Tensor) -> None:
    with torch.no_grad():
        if bn.affine:
            bn.weight = nn.Parameter(bn.weight.index_select(0, keep).clone())
            bn.bias = nn.Parameter(bn.bias.index_select(0, keep).clone())
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean.index_select(0, keep).clone()
            bn.running_var = bn.running_var.index_select(0, keep).clone()
    bn.num_features = len(keep)


def structured_prune(model: nn.Module, ratio: float, *, norm: int = 2) -> tuple[nn.Module, dict]:
    """Remove ``round(ratio * hidden)`` hidden units of every prunable pair; returns a copy and
    the shrink report (``hidden_before``, ``hidden_after``, ``shrink`` = share of hidden units
    removed, ``params_before``/``params_after`` of the pruned layers)."""
    _check_ratio(ratio, "structured_prune")
    if norm not in (1, 2):
        raise ValueError(f"The 'norm' parameter of structured_prune must be 1 or 2. Got {norm!r}.")
    out = copy.deepcopy(model)
    pairs = _pairs(out)
    heads_before, heads_after = prune_heads(out, ratio, norm=norm)
    if not pairs and not heads_before:
        raise TrialFailed(
            "structured pruning found nothing to shrink: it needs Linear layers chained in an "
            "nn.Sequential, nn.Transformer*Layer feed-forward blocks, or Hugging Face "
            "BertLayer-style blocks (attention heads, intermediate units)"
        )
    seen: set[int] = set()
    before = after = p_before = p_after = 0
    for prod, cons, norms in pairs:
        if id(prod) in seen:
            continue
        seen.add(id(prod))
        hidden = prod.out_features
        keep_n = max(1, hidden - round(ratio * hidden))
        p_before += prod.weight.numel() + cons.weight.numel()
        before += hidden
        after += keep_n
        if keep_n < hidden:
            importance = prod.weight.detach().abs().pow(norm).sum(1)
            keep = torch.sort(torch.topk(importance, keep_n).indices).values
            _slice_linear(prod, keep, 0)
            for bn in norms:
                _slice_bn(bn, keep)
            _slice_linear(cons, keep, 1)
        p_after += prod.weight.numel() + cons.weight.numel()
    report = {"hidden_before": before, "hidden_after": after,
              "shrink": 1 - after / before if before else 0.0,
              "params_before": p_before, "params_after": p_after}
    if heads_before:
        report.update(heads_before=heads_before, heads_after=heads_after)
    return out, report


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all prunable weights."""
    total = zeros = 0
    with torch.no_grad():
        for module, name in prunable_parameters(model):
            w = getattr(module, name)
            total += w.numel()
            zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ transforms
_RATIO = TParam(0.0, Range(0.0, 0.8, 0.1), "share of weights (units) removed",
                in_range(0.0, 1.0, high_open=True), "a float in [0, 1)")
_SCOPE = TParam("global", Categorical(["global", "layer"]), "rank all layers together or each",
                one_of("global", "layer"), "'global' or 'layer'")


class MagnitudePrune(Transform):
    name = "prune_magnitude"
    takes = gives = "torch"
    #: the value of the trial's ``pruning_method`` that selects this transform
    pruning_method: ClassVar[str] = "l1_unstructured"
    params: ClassVar[dict[str, TParam]] = {"ratio": _RATIO, "scope": _SCOPE}

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        m = magnitude_prune(model.module, params["ratio"], scope=params["scope"])
        return m, {"sparsity": sparsity(m)}


class GradientPrune(Transform):
    name = "prune_gradient"
    takes = gives = "torch"
    pruning_method: ClassVar[str] = "gradient"
    reads_data = True
    needs = frozenset({"loss", "targets"})
    params: ClassVar[dict[str, TParam]] = {"ratio": _RATIO, "scope": _SCOPE}

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        if context.loss is None or context.calibration_targets is None or not context.calibration:
            raise TrialFailed(
                "gradient pruning needs a loss and targets: give evaluation.loss "
                "(module:function(outputs, targets)) or use metric 'accuracy' with a dataset",
                cause={"pruning_method": self.pruning_method})
        m = gradient_prune(model.module, params["ratio"], list(context.calibration),
                           context.calibration_targets, context.loss, scope=params["scope"])
        return m, {"sparsity": sparsity(m), "loss": context.loss_name}


class StructuredPrune(Transform):
    name = "prune_structured"
    takes = gives = "torch"
    pruning_method: ClassVar[str] = "structured"
    params: ClassVar[dict[str, TParam]] = {"ratio": _RATIO,
              "norm": TParam(2, Categorical([1, 2]), "rank units by the L1 or L2 norm of weights",
                             one_of(1, 2), "1 or 2")}

    def transform(self, model: ModelRef, params: dict[str, Any], context: Context,
                  out: Path | None) -> tuple[Any, Mapping[str, Any]]:
        m, report = structured_prune(model.module, params["ratio"], norm=params["norm"])
        return m, {**report, "n_parameters": n_parameters(m)}
