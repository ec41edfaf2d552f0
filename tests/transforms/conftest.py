"""Tiny models for the transform tests: an MLP and a token classifier on nn.TransformerEncoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import TokenClassifier, make_mlp
from torch import nn

from autotune.measure.transforms.base import Context, ModelRef, apply, data_digest


@pytest.fixture(scope="session")
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture(scope="session")
def mlp_data() -> tuple[np.ndarray, np.ndarray]:
    """(calibration inputs, evaluation inputs): disjoint draws."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((96, 16)).astype(np.float32),
            rng.standard_normal((64, 16)).astype(np.float32))


@pytest.fixture(scope="session")
def mlp_context(mlp_data) -> Context:
    cal, ev = mlp_data
    return Context(example_inputs=(ev[:2],), calibration=(cal,), digest=data_digest(ev[:2], cal))


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> object:
    return tmp_path_factory.mktemp("transform-cache")


@pytest.fixture(scope="session")
def mlp_onnx(mlp, mlp_context, cache) -> ModelRef:
    return apply("export_onnx", ModelRef.torch(mlp, "mlp-seed0"), mlp_context, cache_dir=cache)


@pytest.fixture(scope="session")
def tokens() -> TokenClassifier:
    torch.manual_seed(0)
    return TokenClassifier().eval()


@pytest.fixture(scope="session")
def tokens_context() -> Context:
    ids = np.random.default_rng(1).integers(0, 50, (32, 6))
    return Context(example_inputs=(ids[:2],), calibration=(ids,), digest=data_digest(ids))


@pytest.fixture(scope="session")
def tokens_onnx(tokens, tokens_context, cache) -> ModelRef:
    return apply("export_onnx", ModelRef.torch(tokens, "tokens-seed0"), tokens_context,
                 cache_dir=cache)
