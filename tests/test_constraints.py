from __future__ import annotations

import math

import pytest

from autotune.core.constraints import ConstraintSyntaxError, parse_constraint


@pytest.mark.parametrize(
    ("text", "metric", "op", "value", "relative"),
    [
        ("latency_p95_ms <= 50", "latency_p95_ms", "<=", 50.0, False),
        ("accuracy_drop <= 1%", "accuracy_drop", "<=", 0.01, False),
        ("latency_p95_ms <= 80% of baseline", "latency_p95_ms", "<=", 0.8, True),
        ("throughput_ips >= 1.5 * baseline", "throughput_ips", ">=", 1.5, True),
        ("throughput_ips>=baseline*2", "throughput_ips", ">=", 2.0, True),
        ("model_size_mb < 1e1", "model_size_mb", "<", 10.0, False),
    ],
)
def test_parse(text, metric, op, value, relative):
    c = parse_constraint(text)
    assert (c.metric, c.op, c.relative) == (metric, op, relative)
    assert math.isclose(c.value, value)


def test_violation_follows_optuna_convention():
    c = parse_constraint("latency_p95_ms <= 80% of baseline")
    base = {"latency_p95_ms": 10.0}
    assert c.violation({"latency_p95_ms": 7.0}, base) == pytest.approx(-1.0)
    assert c.violation({"latency_p95_ms": 9.0}, base) == pytest.approx(1.0)
    assert not c.satisfied({"latency_p95_ms": 9.0}, base)
    assert c.violation({}, base) == math.inf  # a missing metric is never feasible
    ge = parse_constraint("throughput_ips >= 100")
    assert ge.satisfied({"throughput_ips": 100}) and not ge.satisfied({"throughput_ips": 99})
    strict = parse_constraint("throughput_ips > 100")
    assert not strict.satisfied({"throughput_ips": 100})


@pytest.mark.parametrize("bad", ["latency", "latency_p95_ms = 5", "latency_p95_ms <= fast",
                                 "<= 5", "latency_p95_ms <= 5 of baseline"])
def test_syntax_errors_explain_the_grammar(bad):
    with pytest.raises(ConstraintSyntaxError, match="METRIC OP VALUE"):
        parse_constraint(bad)
