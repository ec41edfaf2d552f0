from __future__ import annotations

import optuna
import pytest

from autotune.errors import SpecError
from autotune.space import parse_space

SPACE = {
    "parameters": {
        "device": ["cpu", "cuda"],
        "runtime": ["torch", "onnxruntime"],
        "quantization": {
            "choices": ["fp32", "int8_dynamic"],
            "invalid": [{"values": ["int8_dynamic"], "when": {"device": "cuda"}}],
        },
        "graph_optimization": {"choices": ["basic", "all"], "when": {"runtime": "onnxruntime"}},
        "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.25},
        "threads": {"low": 1, "high": 4},
    }
}


def test_kinds_and_distributions():
    s = parse_space(SPACE)
    assert s["threads"].kind == "int" and s["pruning_ratio"].kind == "float"
    d = s.distributions()
    assert isinstance(d["device"], optuna.distributions.CategoricalDistribution)
    assert isinstance(d["threads"], optuna.distributions.IntDistribution)


def test_sample_respects_conditions():
    s = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_go = seen_no_go = False
    for _ in range(40):
        cfg = s.sample(study.ask())
        if cfg["runtime"] == "onnxruntime":
            assert "graph_optimization" in cfg
            seen_go = True
        else:
            assert "graph_optimization" not in cfg
            seen_no_go = True
        assert not [p for p in s.validate(cfg) if "cannot be combined" not in p]
    assert seen_go and seen_no_go


def test_invalid_combinations_and_validation():
    s = parse_space(SPACE)
    cfg = {"device": "cuda", "runtime": "torch", "quantization": "int8_dynamic",
           "pruning_ratio": 0.25, "threads": 2}
    assert "cannot be combined" in s.invalid_reason(cfg)
    assert s.validate({**cfg, "quantization": "fp32"}) == []
    probs = s.validate({**cfg, "quantization": "fp32", "pruning_ratio": 0.3, "extra": 1})
    assert any("pruning_ratio" in p for p in probs) and any("extra" in p for p in probs)
    grid = s.grid()
    assert all(s.invalid_reason(c) is None for c in grid)
    # device x runtime(+go) x quant x pruning x threads, minus cuda+int8
    assert len(grid) == (1 * 3 * 2 + 1 * 3 * 1) * 3 * 4


def test_restrict_gives_a_notice_and_refuses_emptying():
    s = parse_space(SPACE)
    s2, notice = s.restrict("device", ["cpu"], "no CUDA device")
    assert s2["device"].choices == ("cpu",)
    assert "removed device = cuda (no CUDA device)" in str(notice)
    assert s.restrict("device", ["cpu", "cuda"], "x")[1] is None
    with pytest.raises(SpecError, match="none of the choices"):
        s.restrict("device", ["tpu"], "nothing")


def test_condition_on_later_parameter_is_an_error():
    bad = {"parameters": {"a": {"choices": [1], "when": {"b": 1}}, "b": [1]}}
    with pytest.raises(SpecError, match="declared before"):
        parse_space(bad)
