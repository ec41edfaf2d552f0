"""Pruning: achieved sparsity / shrink matches the request; structured pruning really shrinks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import TokenClassifier, make_mlp
from torch import nn

from autotune.errors import TrialFailed
from autotune.measure.transforms.base import Context, ModelRef, apply
from autotune.measure.transforms.prune import gradient_prune, magnitude_prune, sparsity, structured_prune


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_magnitude_sparsity_matches_request(mlp, scope, ratio):
    out = apply("prune_magnitude", ModelRef.torch(mlp, "mlp"), ratio=ratio, scope=scope)
    assert out.info["sparsity"] == pytest.approx(ratio, abs=0.01)
    assert sparsity(mlp) == 0.0  # the input is untouched
    if scope == "layer":
        for m in out.module:
            if isinstance(m, nn.Linear):
                assert float((m.weight == 0).float().mean()) == pytest.approx(ratio, abs=0.02)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_structured_shrinks_hidden_units(mlp, mlp_data, ratio):
    out = apply("prune_structured", ModelRef.torch(mlp, "mlp"), ratio=ratio).module
    kept = 32 - round(32 * ratio)
    assert out[0].weight.shape == (kept, 16) and out[0].bias.shape == (kept,)
    assert out[2].weight.shape == (kept, kept)
    assert out[4].weight.shape == (4, kept)  # the output layer keeps its outputs
    assert mlp[0].weight.shape == (32, 16)
    _, x = mlp_data
    with torch.no_grad():
        assert out(torch.from_numpy(x)).shape == (64, 4)
    shrink = apply("prune_structured", ModelRef.torch(mlp, "mlp"), ratio=ratio).info["shrink"]
    assert shrink == pytest.approx(ratio)


def test_structured_removes_the_weakest_units_exactly():
    """Units whose weights are zero contribute nothing: removing them leaves outputs unchanged."""
    m = make_mlp(1)
    with torch.no_grad():
        for lin in (m[0], m[2]):
            lin.weight[::2] = 0.0  # every other unit dead (and ReLU(0 + bias) is removed too)
            lin.bias[::2] = 0.0
    x = torch.randn(20, 16)
    for norm in (1, 2):
        pruned, report = structured_prune(m, 0.5, norm=norm)
        assert report["hidden_after"] == report["hidden_before"] // 2
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), m(x))
    # and keeping the strongest half of a live network changes the outputs
    live, _ = structured_prune(make_mlp(1), 0.5)
    with torch.no_grad():
        assert not torch.allclose(live(x), make_mlp(1)(x))


def test_structured_slices_batchnorm_between_linears():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 20), nn.BatchNorm1d(20), nn.GELU(), nn.Dropout(0.1),
                      nn.Linear(20, 3)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
    out, report = structured_prune(m, 0.4)
    assert out[0].out_features == 12 and out[1].num_features == 12
    assert out[1].running_mean.shape == (12,) and out[4].in_features == 12
    assert report["params_after"] < report["params_before"]
    assert out(torch.randn(5, 8)).shape == (5, 3)


def test_structured_shrinks_transformer_ffn(tokens):
    out = apply("prune_structured", ModelRef.torch(tokens, "tokens"), ratio=0.5)
    for layer in out.module.enc.layers:
        assert layer.linear1.weight.shape == (16, 16)  # dim_feedforward 32 -> 16
        assert layer.linear2.weight.shape == (16, 16)
    assert tokens.enc.layers[0].linear1.out_features == 32
    ids = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        assert out.module(ids).shape == tokens(ids).shape == (3, 3)
    assert out.info["n_parameters"] < sum(p.numel() for p in tokens.parameters())


def test_structured_needs_something_to_shrink():
    with pytest.raises(TrialFailed, match="nothing to shrink"):
        structured_prune(nn.Linear(4, 2), 0.5)


def test_ratio_is_checked():
    with pytest.raises(ValueError, match="'ratio' parameter of prune_structured"):
        apply("prune_structured", ModelRef.torch(make_mlp(), "m"), ratio=1.0)
    with pytest.raises(ValueError, match="'ratio' parameter of magnitude_prune"):
        magnitude_prune(make_mlp(), -0.1)


def _crafted() -> tuple[nn.Module, list[np.ndarray], np.ndarray]:
    """Input feature 0 is always zero, yet its weights are the largest: magnitude keeps them,
    the gradient (zero for them) ranks them least important."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].weight[:, 0] = 5.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    x[:, 0] = 0.0
    return m, [x], rng.integers(0, 3, 64)


def test_gradient_pruning_differs_from_magnitude():
    m, x, y = _crafted()
    ce = lambda out, t: nn.functional.cross_entropy(out, t.long())  # noqa: E731
    by_grad = gradient_prune(m, 0.25, x, y, ce, scope="layer")
    by_mag = magnitude_prune(m, 0.25, scope="layer")
    assert (by_grad[0].weight[:, 0] == 0).all()  # useless column removed first
    assert (by_mag[0].weight[:, 0] != 0).all()  # the largest weights survive magnitude pruning
    assert sparsity(by_grad) == pytest.approx(sparsity(by_mag), abs=0.02)
    # the gradient-pruned network still computes what the original did on this data
    with torch.no_grad():
        xt = torch.from_numpy(x[0])
        err_grad = (by_grad(xt) - m(xt)).abs().mean()
        err_mag = (by_mag(xt) - m(xt)).abs().mean()
    assert err_grad < err_mag


def test_gradient_transform_uses_context_loss_and_is_cached(tmp_path):
    m, x, y = _crafted()
    ce = lambda out, t: nn.functional.cross_entropy(out, t.long())  # noqa: E731
    ctx = Context(calibration=tuple(x), calibration_targets=y, loss=ce, loss_name="ce",
                  digest="crafted")
    ref = ModelRef.torch(m, "crafted")
    out = apply("prune_gradient", ref, ctx, cache_dir=tmp_path, ratio=0.5, scope="global")
    assert out.info["sparsity"] == pytest.approx(0.5, abs=0.01) and out.info["loss"] == "ce"
    again = apply("prune_gradient", ref, ctx, cache_dir=tmp_path, ratio=0.5, scope="global")
    assert again.lineage[-1].cached
    torch.testing.assert_close(again.module[0].weight, out.module[0].weight)
    with pytest.raises(TrialFailed, match="needs a loss"):
        apply("prune_gradient", ref, Context(calibration=tuple(x)), ratio=0.5)


def test_transformer_magnitude_and_structured_chain(tokens):
    ref = ModelRef.torch(tokens, "tokens")
    a = apply("prune_structured", ref, ratio=0.25)
    b = apply("prune_magnitude", a, ratio=0.5)
    assert [s.transform for s in b.lineage] == ["prune_structured", "prune_magnitude"]
    assert b.lineage[1].parent == a.model_id
    assert b.info["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert isinstance(b.module, TokenClassifier)
