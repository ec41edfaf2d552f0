from __future__ import annotations

import re

import optuna
import pytest

from autotune.core.space import parse_space
from autotune.errors import SpecError

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


# ------------------------------------------------------------------ overrides and malformed input
PRESET = {"parameters": {
    "runtime": ["torch", "onnxruntime"],
    "quantization": {"choices": ["fp32", "int8_static"], "description": "precision",
                     "invalid": [{"values": ["int8_static"], "when": {"runtime": "torch"},
                                  "reason": "ORT only"}]},
    "graph_optimization": {"choices": ["basic", "all"], "when": {"runtime": "onnxruntime"}},
}}


def test_merge_overrides_keeps_rules_unless_replaced():
    from autotune.core.space import merge_overrides

    merged = merge_overrides(PRESET, {"quantization": {"choices": ["fp32"]},
                                      "graph_optimization": ["all"]})
    q = merged["parameters"]["quantization"]
    assert q["choices"] == ["fp32"] and q["invalid"] == PRESET["parameters"]["quantization"][
        "invalid"] and q["description"] == "precision"
    assert merged["parameters"]["graph_optimization"]["when"] == {"runtime": "onnxruntime"}
    replaced = merge_overrides(PRESET, {"quantization": {"choices": ["fp32"], "invalid": None},
                                        "graph_optimization": {"choices": ["all"], "when": {}}})
    s = parse_space(replaced)
    assert s["quantization"].invalid == () and not s["graph_optimization"].when
    assert list(merge_overrides(PRESET, {"runtime": None})["parameters"]) == [
        "quantization", "graph_optimization"]
    assert PRESET["parameters"]["quantization"]["choices"] == ["fp32", "int8_static"]  # untouched


@pytest.mark.parametrize(("overrides", "path", "words"), [
    (["batch_size"], "search_space.overrides", "found a list"),
    ({"nope": None}, "search_space.overrides.nope", "does not have"),
    ({"runtime": 5}, "search_space.overrides.runtime", "found 5"),
    ({1: [1]}, "search_space.overrides", "must be text"),
])
def test_merge_overrides_refuses_malformed_overrides(overrides, path, words):
    from autotune.core.space import merge_overrides

    with pytest.raises(SpecError, match=words) as e:
        merge_overrides(PRESET, overrides)
    assert e.value.path == path


@pytest.mark.parametrize(("param", "path", "words"), [
    ({"choices": ["a", ["b"]]}, "p.choices[1]", "found a list"),
    ({"choices": [1, 1]}, "p.choices", "distinct"),
    ({"choices": []}, "p.choices", "empty list"),
    ({"choices": "abc"}, "p.choices", "non-empty list"),
    ({"choices": [1], "low": 0}, "p.low", "cannot go with 'choices'"),
    ({"low": 0, "high": 1, "step": 0}, "p.step", "greater than 0"),
    ({"low": 0, "high": 1, "step": -0.5}, "p.step", "greater than 0"),
    ({"low": float("nan"), "high": 1}, "p.low", "finite"),
    ({"low": 0, "high": float("inf")}, "p.high", "finite"),
    ({"low": 2, "high": 1}, "p", "greater than high"),
    ({"low": "a", "high": 1}, "p.low", "expected a number"),
    ({"low": 0, "high": 1, "log": "yes"}, "p.log", "true or false"),
    ({"low": 0.5, "high": 3, "type": "int"}, "p.low", "whole numbers"),
    ({"low": 0, "high": 1, "type": ["int"]}, "p.type", "categorical, int or float"),
    ({"choices": [1], "invalid": 5}, "p.invalid", "list of rules"),
    ({"choices": [1], "invalid": [5]}, "p.invalid[0]", "found 5"),
    ({"choices": [1], "invalid": [{"values": [1], "when": {"a": 1}, "reson": "x"}]},
     "p.invalid[0].reson", "unknown key"),
    ({"choices": [1], "invalid": [{"values": [1], "when": {}}]}, "p.invalid[0].when",
     "non-empty"),
    ({"choices": [1], "invalid": [{"values": [[1]], "when": {"a": 1}}]},
     "p.invalid[0].values[0]", "found a list"),
    ({"choices": [1], "when": 5}, "p.when", "mapping of parameter"),
    ({"choices": [1], "when": {"b": 1}}, "p.when.b", "declared before"),
    ({"choices": [1], "when": {"a": {"x": 1}}}, "p.when.a", "found a mapping"),
    ({"choices": [1], "description": [1]}, "p.description", "expected text"),
    ({"choices": [1], "choises": [1]}, "p.choises", "Did you mean 'choices'"),
    (5, "p", "found 5"),
])
def test_malformed_parameters_name_their_field(param, path, words):
    with pytest.raises(SpecError, match=re.escape(words)) as e:
        parse_space({"parameters": {"a": [1, 2], "p": param}})
    assert e.value.path == f"search_space.parameters.{path}"


def test_parameter_names_must_be_text():
    with pytest.raises(SpecError, match="must be text"):
        parse_space({"parameters": {True: [1]}})
    with pytest.raises(SpecError, match="expected a mapping with 'parameters'"):
        parse_space([1])  # type: ignore[arg-type]


def test_declared_parameters_check_names_values_ranges_and_rule_values():
    from autotune.core.space import check_declared
    from autotune.job.declared import declared_parameters

    declared = declared_parameters()
    ok = parse_space({"parameters": {
        "runtime": ["torch", "onnxruntime"], "quantization": ["fp32", "int8_dynamic"],
        "threads": {"low": 1, "high": 4}, "pruning_ratio": {"low": 0.0, "high": 0.5},
        "per_channel": {"choices": [False, True], "when": {"quantization": "int8_dynamic"}}}})
    check_declared(ok, declared)
    cases = [
        ({"runtime": ["tensorflow"]}, "runtime.choices[0]", "not a value of 'runtime'"),
        ({"quantization": ["int4"]}, "quantization.choices[0]", "int8_dynamic"),
        ({"threads": {"low": 0, "high": 4}}, "threads.low", "an integer >= 1"),
        ({"threads": {"low": 1.0, "high": 4.5}}, "threads", "whole numbers"),
        ({"pruning_ratio": {"low": 0.0, "high": 1.0}}, "pruning_ratio.high", "[0, 1)"),
        ({"runtime": {"low": 1, "high": 2}}, "runtime", "cannot be a range"),
        ({"batch_sise": [1]}, "batch_sise", "Did you mean 'batch_size'"),
        ({"runtime": ["torch"], "graph_optimization": {"choices": ["all"],
                                                       "when": {"runtime": "tf"}}},
         "graph_optimization.when.runtime", "never applies"),
        ({"runtime": ["torch"], "quantization": {"choices": ["fp32"], "invalid": [
            {"values": ["int4"], "when": {"runtime": "torch"}}]}},
         "quantization.invalid[0].values", "never applies"),
    ]
    for params, path, words in cases:
        with pytest.raises(SpecError) as e:
            check_declared(parse_space({"parameters": params}), declared)
        assert e.value.path == f"search_space.parameters.{path}", str(e.value)
        assert words in str(e.value), str(e.value)


def test_every_bundled_preset_uses_declared_parameters_only():
    import yaml

    from autotune.core.space import PRESET_DIR, check_declared
    from autotune.job.declared import declared_generation_parameters, declared_parameters

    presets = sorted(PRESET_DIR.glob("*.yaml"))
    assert len(presets) >= 3
    for preset in presets:  # a language-model preset names the generation knobs
        declared = declared_generation_parameters() if preset.stem.startswith("llm") \
            else declared_parameters()
        check_declared(parse_space(yaml.safe_load(preset.read_text())), declared)
