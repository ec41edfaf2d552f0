"""torch -> ONNX: dynamic batch and sequence axes accept sizes other than the example's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from autotune.measure.transforms.base import Context, ModelRef, apply
from autotune.measure.transforms.convert import default_axes


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_mlp_batch_axis_is_dynamic(mlp, mlp_onnx):
    sess = session(mlp_onnx.path)
    assert sess.get_inputs()[0].shape == ["batch", 16]
    # the model's own names: nn.Sequential.forward(input), one tensor out
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["output"]
    for n in (1, 7, 33):  # the example had 2 rows
        x = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        with torch.no_grad():
            ref = mlp(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-4, atol=1e-5)


def test_token_inputs_get_batch_and_sequence_axes(tokens, tokens_onnx):
    sess = session(tokens_onnx.path)
    assert sess.get_inputs()[0].shape == ["batch", "sequence"]
    assert sess.get_inputs()[0].name == "ids"  # forward(self, ids)
    assert tokens_onnx.lineage[-1].info["dynamic_axes"] == [{0: "batch", 1: "sequence"}]
    for shape in ((1, 3), (5, 6), (4, 17)):  # the example was (2, 6)
        ids = np.random.default_rng(sum(shape)).integers(0, 50, shape)
        with torch.no_grad():
            ref = tokens(torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(sess.run(None, {"ids": ids})[0], ref, rtol=1e-4, atol=1e-5)


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).mean(1)


def test_declared_axes(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert default_axes([torch.from_numpy(x)]) == [{0: "batch"}]  # float: only the batch
    model = Pool().eval()
    ctx = Context(example_inputs=(x,), dynamic_axes={"input_0": {1: "frames"}}, digest="frames")
    out = apply("export_onnx", ModelRef.torch(model, "pool"), ctx, cache_dir=tmp_path)
    sess = session(out.path)
    assert sess.get_inputs()[0].shape == ["batch", "frames", 8]
    y = np.random.default_rng(1).standard_normal((3, 11, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": y})[0], ref, rtol=1e-4, atol=1e-5)


def test_export_is_cached_with_lineage(mlp, mlp_context, mlp_onnx, cache):
    again = apply("export_onnx", ModelRef.torch(mlp, "mlp-seed0"), mlp_context, cache_dir=cache)
    assert again.lineage[-1].cached and again.path == mlp_onnx.path
    first = mlp_onnx.lineage[-1]
    assert first.transform == "export_onnx" and first.parent == "mlp-seed0"
    assert first.seconds > 0 or first.cached


def test_export_needs_example_inputs(mlp):
    from autotune.errors import TrialFailed

    with pytest.raises(TrialFailed, match="example inputs"):
        apply("export_onnx", ModelRef.torch(mlp, "m"), Context())


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(features) * mask
        return {"logits": h, "pooled": h.sum(-1)}


def test_inputs_and_outputs_carry_the_models_names(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    m = np.ones((2, 3), np.float32)
    ctx = Context(example_inputs=(x, m), digest="heads")
    out = apply("export_onnx", ModelRef.torch(TwoHeads().eval(), "heads"), ctx, cache_dir=tmp_path)
    sess = session(out.path)
    assert [i.name for i in sess.get_inputs()] == ["features", "mask"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "pooled"]
    got = dict(zip(["logits", "pooled"], sess.run(None, {"features": x, "mask": m}), strict=True))
    assert got["pooled"].shape == (2,)
