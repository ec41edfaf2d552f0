"""The torch runtime's artifact: loads without unpickling, and a model torch.export cannot capture
is measured but marked not exportable (with the reason) instead of shipping something else."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from autotune.errors import TrialFailed
from autotune.measure.runtimes import get_runtime
from autotune.measure.runtimes.base import BuildContext
from autotune.measure.runtimes.torch import load_program
from autotune.measure.transforms.base import Context, ModelRef, data_digest


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def _build(module: nn.Module, tmp_path, **config):
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    ctx = Context(example_inputs=(x,), digest=data_digest(x))
    rt = get_runtime("torch")
    return rt, rt.build(ModelRef.torch(module.eval(), "m"), {"runtime": "torch", **config},
                        BuildContext(ctx, tmp_path))


def test_uncapturable_model_runs_but_is_not_exportable(tmp_path):
    rt, built = _build(Branchy(), tmp_path)
    reason = rt.exportable({}, built)
    assert reason and "torch.export" in reason
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(built.runner.run({"x": x})["output"],
                               Branchy.forward(built.model_ref.module, torch.from_numpy(x))
                               .detach().numpy(), rtol=1e-6)
    with pytest.raises(TrialFailed, match=r"torch\.export"):
        rt.write_bundle(built, {})


@pytest.mark.parametrize("quant", ["bf16", "int8_dynamic"])
def test_program_loads_without_unpickling(tmp_path, monkeypatch, quant):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    rt, built = _build(model, tmp_path, quantization=quant)
    data = rt.write_bundle(built, {"quantization": quant}).files["model.safetensors"]

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    runner = load_program(data)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(runner.run({"input": x})["output"],
                                  built.runner.run({"input": x})["output"])
    assert runner.outputs[0].dtype == "float32"  # float32 at the boundary, bf16 inside
