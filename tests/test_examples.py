"""The example jobs validate, and the transformer example's generated task is what it claims."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from autotune.job.spec import load_job
from tests.conftest import EXPERIMENTS


@pytest.mark.parametrize("name", ["digits-cpu.yaml", "transformer-cpu.yaml"])
def test_example_jobs_validate(name):
    job = load_job(EXPERIMENTS / name)
    assert len(job.space) >= 4


def test_transformer_task_plants_one_motif_per_class():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import transformer_model as tm
    finally:
        sys.path.remove(str(EXPERIMENTS))
    x, y = tm.generate(200, seq_len=64, seed=3)
    assert x.shape == (200, 64) and x.dtype == np.int64 and set(np.unique(y)) == {0, 1, 2, 3}
    motifs = tm._motifs()
    for row, label in zip(x, y, strict=True):
        windows = np.lib.stride_tricks.sliding_window_view(row, tm.MOTIF_LEN)
        hits = [(windows == m).all(axis=1).sum() for m in motifs]
        assert hits[label] >= tm.PLANTS  # its own motif, planted
    # held-out split differs from training data
    assert not np.array_equal(tm.validation_data()[0][:10], tm.generate(10, 64, seed=1)[0])
