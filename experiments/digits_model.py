"""The quickstart model: an MLP trained in about a second on scikit-learn's bundled digits.

Real data (1,797 8x8 handwritten digits shipped with scikit-learn), no download.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int64), test_size=0.3, random_state=0, stratify=y)


def build(hidden: int = 512, epochs: int = 40, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Train the MLP; returns (model, example inputs)."""
    torch.manual_seed(seed)
    x_tr, _, y_tr, _ = _split()
    model = nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval(), xt[:4]


def validation_data() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 30 % (540 digits) with their labels."""
    _, x_va, _, y_va = _split()
    return x_va, y_va
