"""Tiny models for the transform tests: an MLP and a token classifier on nn.TransformerEncoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autotune.transforms.base import Context, ModelRef, apply, data_digest


class TokenClassifier(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, ff: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, ff, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(ids)).mean(1))


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4)).eval()


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
