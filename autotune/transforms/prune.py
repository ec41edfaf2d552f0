"""Pruning transforms."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune as tprune

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def magnitude_prune(model: nn.Module, ratio: float, *, scope: str = "global") -> nn.Module:
    """L1 (magnitude) unstructured pruning of Linear/Conv weights; returns a pruned copy.

    ``scope='global'`` ranks all weights together; ``'layer'`` prunes each layer by ``ratio``.
    The pruning masks are made permanent (the zeros are in the weights themselves).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"The 'ratio' parameter of magnitude_prune must be in [0, 1). Got {ratio}.")
    out = copy.deepcopy(model)
    if ratio == 0.0:
        return out
    params = prunable_parameters(out)
    if not params:
        return out
    if scope == "global":
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=ratio)
    elif scope == "layer":
        for module, name in params:
            tprune.l1_unstructured(module, name, amount=ratio)
    else:
        raise ValueError(
            f"The 'scope' parameter of magnitude_prune must be 'global' or 'layer'. Got {scope!r}."
        )
    for module, name in params:
        tprune.remove(module, name)
    return out


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all prunable weights."""
    total = zeros = 0
    with torch.no_grad():
        for module, name in prunable_parameters(model):
            w = getattr(module, name)
            total += w.numel()
            zeros += int((w == 0).sum())
    return zeros / total if total else 0.0
