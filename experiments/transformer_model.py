"""A small transformer encoder that classifies generated token sequences by the motif they carry.

The task (generated, no download): sequences of ``seq_len`` tokens drawn uniformly from a
vocabulary of 64; each sequence has one of four classes, and a class is a *motif*, three tokens in
a row (e.g. 7 19 42), planted three times at random positions.  The motif tokens also occur as ordinary
noise, so counting tokens is not enough: the model has to see which tokens follow which, which is
what attention over positions gives it.  It reaches > 99 % held-out accuracy after 60 steps of
32 sequences (seconds on an idle laptop CPU; the trained weights are cached in the temp dir).

Latency depends on everything a deployment can change: the sequence length (attention is
quadratic in it), the batch size, int8 quantization of the Linear layers (most of the FLOPs) and
the number of threads.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOCAB = 64
N_CLASSES = 4
MOTIF_LEN = 3
PLANTS = 3


def _motifs(seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(VOCAB, size=(N_CLASSES, MOTIF_LEN), replace=False).reshape(N_CLASSES,
                                                                                   MOTIF_LEN)


def generate(n: int, seq_len: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences (int64, shape (n, seq_len)) and their classes."""
    rng = np.random.default_rng(seed)
    motifs = _motifs()
    x = rng.integers(0, VOCAB, size=(n, seq_len), dtype=np.int64)
    y = rng.integers(0, N_CLASSES, size=n, dtype=np.int64)
    slots = seq_len // MOTIF_LEN
    for i in range(n):
        # distinct, non-overlapping slots for the plants
        for s in rng.choice(slots, size=PLANTS, replace=False):
            x[i, s * MOTIF_LEN:(s + 1) * MOTIF_LEN] = motifs[y[i]]
    return x, y


class MotifClassifier(nn.Module):
    """Token + learned position embeddings → nn.TransformerEncoder → mean pool → Linear."""

    def __init__(self, d_model: int = 128, layers: int = 2, heads: int = 4, ff: int = 256,
                 max_len: int = 256) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, N_CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos[:, : tokens.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


def _train(model: MotifClassifier, seq_len: int, steps: int, seed: int, batch: int = 32,
           log: bool = False) -> None:
    x, y = generate(4096, seq_len, seed=seed + 1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        sched.step()
        if log and step % 20 == 0:
            print(step, float(loss.detach()), flush=True)
    model.eval()


def build(d_model: int = 128, layers: int = 2, heads: int = 4, ff: int = 256, seq_len: int = 64,
          steps: int = 60, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Train (or load the cached) classifier; returns (model, example inputs)."""
    torch.manual_seed(seed)
    model = MotifClassifier(d_model, layers, heads, ff, max_len=max(256, seq_len))
    key = hashlib.sha256(repr((d_model, layers, heads, ff, seq_len, steps, seed,
                               torch.__version__)).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"autotune-transformer-{key}.pt"
    try:
        model.load_state_dict(torch.load(cache, weights_only=True))
        model.eval()
    except Exception:
        _train(model, seq_len, steps, seed)
        tmp = cache.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cache)
    example = torch.from_numpy(generate(2, seq_len, seed=7)[0])
    return model, example


def validation_data(seq_len: int = 64, n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A held-out generated split (a different seed from training)."""
    return generate(n, seq_len, seed=99)


def validation_data_128() -> tuple[np.ndarray, np.ndarray]:
    return validation_data(seq_len=128)
