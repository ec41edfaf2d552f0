"""Conformance checks every runtime must pass (like :mod:`autotune.testing.agents`).

``tests/runtimes/test_runtime_conformance.py`` runs them over every registered runtime (built-ins and
installed plugins).  A third-party runtime can run the same checks::

    from autotune.testing.runtimes import CHECKS

    @pytest.mark.parametrize("check", CHECKS)
    def test_my_runtime(check, tmp_path):
        check("my-runtime", tmp_path)

The model is a small two-layer MLP whose forward names its input ``features`` and returns a dict
``{"logits": ...}``, so the checks also see that names survive build, bundle and load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import TrialFailed
from autotune.measure.runtimes import declared_parameters, get_runtime
from autotune.measure.runtimes.base import BuildContext
from autotune.measure.transforms.base import Context, ModelRef, apply, data_digest
from autotune.measure.workloads.forward import check_config

INPUT, OUTPUT = "features", "logits"


def _model() -> Any:
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))

        def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.body(features)}

    return Mlp().eval()


def _built(name: str, tmp_path: Path, config: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    rt = get_runtime(name)
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    ctx = Context(example_inputs=(x,), digest=data_digest(x))
    ref = ModelRef.torch(_model(), "conformance-mlp")
    if rt.takes == "onnx":
        ref = apply("export_onnx", ref, ctx, cache_dir=tmp_path)
    cfg = {"runtime": name, "threads": 1, "batch_size": 3, **(config or {})}
    return rt, rt.build(ref, cfg, BuildContext(ctx, tmp_path)), cfg


def _reference(x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return _model()(torch.from_numpy(x))["logits"].numpy()


def check_declarations(name: str, tmp_path: Path) -> None:
    """Every declared parameter's default and search values pass its own check; the runtime's
    name is a ``runtime`` choice of the vocabulary."""
    rt = get_runtime(name)
    declared = declared_parameters()
    assert name in declared["runtime"].choices
    for p in rt.parameters():
        assert p.check(p.default) is None, (p.name, p.default)
        for v in (p.search or {}).get("choices", []):
            assert p.check(v) is None, (p.name, v)
        assert p.name in declared


def check_build_runs_named(name: str, tmp_path: Path) -> None:
    """The built runner takes and returns the model's own names and computes the model."""
    _, built, _ = _built(name, tmp_path)
    assert [s.name for s in built.runner.inputs] == [INPUT]
    assert [s.name for s in built.runner.outputs] == [OUTPUT]
    x = np.random.default_rng(1).standard_normal((3, 12)).astype(np.float32)
    out = built.runner.run({INPUT: x})
    np.testing.assert_allclose(out[OUTPUT], _reference(x), rtol=1e-4, atol=1e-4)
    assert Path(built.model_path).is_file()


def check_bundle_round_trip(name: str, tmp_path: Path) -> None:
    """write_bundle → load_bundle (from bytes) gives the same outputs, and every key of the
    configuration the bundle's settings mention carries the configuration's value."""
    rt, built, cfg = _built(name, tmp_path)
    bundle = rt.write_bundle(built, cfg)
    assert bundle.model in bundle.files and not bundle.differs
    for key, value in cfg.items():
        if key in bundle.settings:
            assert bundle.settings[key] == value, (key, bundle.settings[key], value)
    assert bundle.settings.get("batch_size") == 3 and bundle.settings.get("threads") == 1
    runner = rt.load_bundle(lambda f: bytes(bundle.files[f]), {**bundle.settings,
                                                                 "model": bundle.model},
                            (built.runner.inputs, built.runner.outputs))
    x = np.random.default_rng(2).standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_allclose(runner.run({INPUT: x})[OUTPUT],
                               built.runner.run({INPUT: x})[OUTPUT], rtol=1e-5, atol=1e-6)


def check_unsupported_value_fails_clearly(name: str, tmp_path: Path) -> None:
    """A quantization the runtime does not declare is refused before anything is built."""
    rt = get_runtime(name)
    mine = {p.name: p for p in rt.parameters()}.get("quantization")
    others = [q for q in declared_parameters()["quantization"].choices
              if mine is None or mine.check(q) is not None]
    if not others:
        return
    try:
        check_config({"runtime": name, "quantization": others[0]}, rt, declared_parameters())
    except TrialFailed as exc:
        assert name in str(exc) and str(others[0]) in str(exc)
    else:
        raise AssertionError(f"{name} accepted quantization {others[0]!r}")


CHECKS: list[Callable[[str, Path], None]] = [
    check_declarations, check_build_runs_named, check_bundle_round_trip,
    check_unsupported_value_fails_clearly,
]

__all__ = ["CHECKS"]
