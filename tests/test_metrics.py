"""One declaration per metric: the vocabularies, the ratios to the baseline and a plugin's metric
all come from :class:`autotune.core.metrics.MetricInfo`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autotune.core import metrics
from autotune.core.metrics import FORWARD, GENERATION, MetricInfo
from autotune.record.study import derive_metrics


@pytest.fixture
def plugins(monkeypatch):
    """Installs entry points in ``autotune.declared_metrics`` (name -> what loading gives)."""

    def install(**loaded):
        eps = [SimpleNamespace(name=k, value=f"plugin:{k}", load=lambda v=v: v)
               for k, v in loaded.items()]
        monkeypatch.setattr(metrics, "_entry_points", lambda: eps)
        metrics.declared_metrics.cache_clear()

    yield install
    metrics.declared_metrics.cache_clear()


def test_every_metric_is_declared_once_and_the_tables_come_from_it() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    assert set(metrics.BUILTIN_METRICS) == {m.name for m in metrics.METRICS if FORWARD in m.workloads}
    # a metric both workloads compute is one declaration, described one way
    assert metrics.BUILTIN_METRICS["model_size_mb"] is metrics.GENERATION_METRICS["model_size_mb"]
    assert "ttft_p50_ms" in metrics.GENERATION_METRICS and "ttft_p50_ms" not in metrics.BUILTIN_METRICS
    # every ratio names a declared metric
    ratios = {m.name: m.ratio_of for m in metrics.METRICS if m.ratio_of}
    assert ratios == {"latency_ratio": "latency_per_item_ms", "speedup": "latency_per_item_ms"}


def test_the_ratios_to_the_baseline_come_from_the_declarations() -> None:
    out = derive_metrics({"latency_per_item_ms": 2.0, "quality": 0.9},
                         {"latency_per_item_ms": 8.0, "quality": 0.95}, "accuracy", True)
    assert out["latency_ratio"] == 0.25 and out["speedup"] == 4.0
    assert out["accuracy_drop"] == pytest.approx(0.05)
    base = derive_metrics({"latency_per_item_ms": 2.0}, None, "accuracy", True)
    assert base["latency_ratio"] == base["speedup"] == 1.0


def test_a_plugin_metric_is_one_declaration(plugins) -> None:
    energy = MetricInfo("energy_j", "minimize", "J", "energy of one batch")
    saving = MetricInfo("energy_ratio", "minimize", "", "energy over the baseline's",
                        workloads=(FORWARD, GENERATION), ratio_of="energy_j")
    plugins(energy=(energy, saving))
    assert metrics.vocabulary("accuracy", True)["energy_j"] is energy
    assert "energy_j" not in metrics.generation_vocabulary("token_agreement", True)
    assert "energy_ratio" in metrics.generation_vocabulary("token_agreement", True)
    out = derive_metrics({"energy_j": 3.0, "latency_per_item_ms": 1.0},
                         {"energy_j": 6.0, "latency_per_item_ms": 1.0}, "accuracy", True)
    assert out["energy_ratio"] == 0.5 and out["speedup"] == 1.0


def test_a_bad_plugin_metric_says_which_entry_point(plugins) -> None:
    plugins(energy="not a metric")
    with pytest.raises(TypeError, match=r"energy = plugin:energy .* is a str, not an "):
        metrics.declared_metrics()
    plugins(latency=MetricInfo("latency_p50_ms", "maximize", "ms", "a second meaning"))
    with pytest.raises(ValueError, match=r"latency_p50_ms .* redeclares"):
        metrics.declared_metrics()
