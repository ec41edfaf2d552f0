"""The pure ``_get_*_info`` steps of the plots (and the review data they share), plus a smoke
check that each drawing step turns its info into the expected plotly traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.core.pareto import hypervolume
from autotune.record.study import TrialView
from autotune.review.front import compute_reference, hypervolume_series, pareto_ranks, trial_table
from autotune.review.plots import (
    _get_hypervolume_history_info,
    _get_parallel_coordinate_info,
    _get_pareto_front_info,
    plot_hypervolume_history,
    plot_parallel_coordinate,
    plot_pareto_front,
    study_figures,
)

OBJ2 = [("latency_p95_ms", "minimize"), ("accuracy", "maximize")]


def view(n: int, lat: float | None, acc: float | None, *, state: str = "complete",
         feasible: bool = True, **config) -> TrialView:
    metrics = {k: v for k, v in (("latency_p95_ms", lat), ("accuracy", acc)) if v is not None}
    return TrialView(number=n, state=state, config=config or {"runtime": "torch", "batch_size": 1},
                     metrics=metrics if state == "complete" else {},
                     violations=(0.0,) if feasible else (0.5,),
                     reason="" if state == "complete" else "boom: out of memory", agent="tpe")


def dominates(a, b, dirs) -> bool:
    sa = [x if d == "minimize" else -x for x, d in zip(a, dirs, strict=True)]
    sb = [x if d == "minimize" else -x for x, d in zip(b, dirs, strict=True)]
    return all(x <= y for x, y in zip(sa, sb, strict=True)) and sa != sb


def test_pareto_info_keeps_infeasible_grey_and_off_the_front():
    views = [
        view(0, 10.0, 0.90),
        view(1, 5.0, 0.80),
        view(2, 1.0, 0.99, feasible=False),  # dominates everything but is infeasible
        view(3, 12.0, 0.85),  # dominated by 0
        view(4, None, None, state="failed"),
        view(5, math.nan, 0.95),  # not finite: not drawn
        view(6, 5.0, 0.80, runtime="onnxruntime"),  # duplicate of 1: also on the front
    ]
    info = _get_pareto_front_info(views, OBJ2)
    assert [p.number for p in info.points] == [0, 1, 2, 3, 6]
    assert [p.number for p in info.front] == [1, 6, 0]  # best latency first, ties by number
    by = {p.number: p for p in info.points}
    assert not by[2].feasible and not by[2].on_front and by[2].rank is None
    assert by[3].rank == 1 and not by[3].on_front
    assert "runtime: onnxruntime" in by[6].hover and "trial 6" in by[6].hover
    assert info.knee in {1, 6, 0}

    fig = plot_pareto_front(info)
    names = [t.name for t in fig.data]
    assert names == ["infeasible", "feasible", "Pareto front"]
    assert list(fig.data[0].customdata) == [2]
    assert list(fig.data[2].x) == [5.0, 5.0, 10.0]


def test_pareto_plot_is_3d_for_three_objectives_and_refuses_other_counts():
    obj3 = [*OBJ2, ("model_size_mb", "minimize")]
    views = [TrialView(i, "complete", {"q": q}, {"latency_p95_ms": lat, "accuracy": a,
                                                 "model_size_mb": s})
             for i, (q, lat, a, s) in enumerate([("a", 1, 0.5, 3), ("b", 2, 0.9, 1), ("c", 3, 0.4, 4)])]
    info = _get_pareto_front_info(views, obj3)
    assert {p.number for p in info.front} == {0, 1}
    fig = plot_pareto_front(info)
    assert {t.type for t in fig.data} == {"scatter3d"}
    with pytest.raises(ValueError, match="2 or 3"):
        plot_pareto_front(_get_pareto_front_info(views, OBJ2[:1]))
    assert "pareto_front_3d" in study_figures(views, obj3, None)
    assert "pareto_front_2d" not in study_figures(views, [*obj3, ("sparsity", "maximize")], None)


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, st.booleans(), st.sampled_from(["complete", "failed"])),
                max_size=25))
def test_pareto_info_front_is_exactly_the_non_dominated_feasible_points(rows):
    views = [view(i, x, y, feasible=f, state=s) for i, (x, y, f, s) in enumerate(rows)]
    info = _get_pareto_front_info(views, OBJ2)
    feas = [(i, (x, y)) for i, (x, y, f, s) in enumerate(rows) if f and s == "complete"]
    dirs = [d for _, d in OBJ2]
    expected = {i for i, p in feas if not any(dominates(q, p, dirs) for _, q in feas)}
    assert {p.number for p in info.front} == expected
    assert info.knee is None if not feas else info.knee in expected
    assert {p.number for p in info.points} == {i for i, r in enumerate(rows) if r[3] == "complete"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1), st.booleans()), min_size=1,
                max_size=20))
def test_hypervolume_info_is_monotone_and_matches_the_feasible_hypervolume(rows):
    views = [view(i, x, y, feasible=f) for i, (x, y, f) in enumerate(rows)]
    ref = [150.0, -0.5]
    info = _get_hypervolume_history_info(views, OBJ2, ref)
    assert info.numbers == tuple(range(len(rows)))
    assert all(b >= a for a, b in zip(info.values, info.values[1:], strict=False))
    for k in range(len(rows)):
        pts = [(x, y) for x, y, f in rows[:k + 1] if f]
        want = hypervolume(np.array(pts).reshape(-1, 2), ["minimize", "maximize"], ref)
        assert info.values[k] == pytest.approx(want, rel=1e-9, abs=1e-9)
    fig = plot_hypervolume_history(info)
    assert list(fig.data[0].y) == list(info.values)


def test_hypervolume_series_counts_failed_trials_as_steps_and_skips_running():
    views = [view(0, 2.0, 0.5), view(1, None, None, state="failed"),
             TrialView(2, "running", {"a": 1}), view(3, 1.0, 0.7)]
    series = hypervolume_series(views, OBJ2, [3.0, 0.0])
    assert [n for n, _ in series] == [0, 1, 3]
    assert series[0][1] == pytest.approx(1.0 * 0.5)
    assert series[1][1] == series[0][1]
    assert series[2][1] == pytest.approx(2.0 * 0.7)


def test_parallel_coordinate_info_maps_categories_and_drops_constants():
    views = [
        view(0, 3.0, 0.9, runtime="torch", batch_size=1, threads=2),
        view(1, 2.0, 0.8, runtime="onnxruntime", batch_size=8, threads=2),
        view(2, 1.0, 0.7, runtime="torch", batch_size=16, threads=2, feasible=False),
        view(3, 4.0, 0.6, runtime="onnxruntime", batch_size=8, threads=2),
    ]
    info = _get_parallel_coordinate_info(views, OBJ2)
    assert info.numbers == (0, 1, 3)  # feasible only
    dims = {d.label: d for d in info.dimensions}
    assert list(dims) == ["runtime", "batch_size", "latency_p95_ms", "accuracy"]  # threads constant
    assert dims["runtime"].ticktext == ("torch", "onnxruntime")
    assert dims["runtime"].values == (0.0, 1.0, 1.0)
    # integers are discrete levels (categorical axis, ascending), not a continuous range
    assert dims["batch_size"].categorical and dims["batch_size"].ticktext == ("1", "8")
    assert dims["batch_size"].values == (0.0, 1.0, 1.0)
    assert info.color == (3.0, 2.0, 4.0) and info.reverse_scale
    fig = plot_parallel_coordinate(info)
    assert [d.label for d in fig.data[0].dimensions] == list(dims)
    assert list(fig.data[0].dimensions[1].ticktext) == ["1", "8"]


def test_parallel_coordinate_one_outlier_goes_on_a_log_axis():
    lats = [0.03, 0.05, 0.04, 0.06, 32.0]  # one unstable measurement, 500x the others
    views = [view(i, lat, 0.9 - i / 100, threads=1 + i % 2, pruning_ratio=[0.0, 0.3][i % 2])
             for i, lat in enumerate(lats)]
    info = _get_parallel_coordinate_info(views, OBJ2)
    dims = {d.label: d for d in info.dimensions}
    lat = dims["latency_p95_ms (log)"]
    assert lat.values == pytest.approx([math.log10(x) for x in lats])
    assert lat.ticktext[0] == "0.03" and lat.ticktext[-1] == "30" and not lat.categorical
    assert len(lat.ticktext) <= 8  # 1-3 steps over these 4 decades
    assert dims["threads"].categorical and not dims["pruning_ratio"].categorical
    assert "accuracy" in dims  # a narrow range stays linear
    # the bulk of the lines spreads over a visible part of the axis (linear: its bottom 0.1 %)
    span = max(lat.values) - min(lat.values)
    assert (sorted(lat.values)[-2] - min(lat.values)) / span > 0.05
    fig = plot_parallel_coordinate(info)
    d = fig.data[0].dimensions[-2]
    assert list(d.tickvals) == pytest.approx([math.log10(float(t)) for t in lat.ticktext])


def test_trial_table_has_every_trial_and_stores_as_parquet(tmp_path):
    views = [view(0, 3.0, 0.9, quantization="fp32", pruning_ratio=0.0),
             view(1, 2.0, 0.8, quantization="int8", pruning_ratio="n/a"),  # mixed types
             view(2, None, None, state="failed", quantization="fp32", pruning_ratio=0.3)]
    table = trial_table(views, OBJ2)
    assert list(table["trial"]) == [0, 1, 2]
    assert list(table.columns[:7]) == ["trial", "state", "feasible", "pareto_rank", "agent",
                                       "duration_s", "reason"]
    assert table["pareto_rank"].tolist()[:2] == [0, 0] and table["pareto_rank"].isna().iloc[2]
    assert table.loc[2, "reason"].startswith("boom")
    table.to_parquet(tmp_path / "t.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["pruning_ratio"].tolist() == ["0.0", "n/a", "0.3"]
    assert pareto_ranks(views, OBJ2) == {0: 0, 1: 0}


def test_reference_point_rule():
    base = {"latency_p95_ms": 2.0, "accuracy": 0.8}
    ref = compute_reference(OBJ2, base)
    assert ref == pytest.approx([2.2, 0.72])  # 10 % worse than the unmodified model
    assert compute_reference(OBJ2, base, declared={"latency_p95_ms": 9, "accuracy": 0}) == [9, 0]
    # the baseline lacks an objective: fall back to the finished trials
    ref = compute_reference(OBJ2, {"latency_p95_ms": 2.0}, [view(0, 1.0, 0.5), view(1, 3.0, 0.7)])
    assert ref == pytest.approx([3.2, 0.48])
    assert compute_reference(OBJ2, None, []) is None


def test_latency_spanning_decades_gets_a_log_axis():
    from autotune.review.plots import log_axis

    assert log_axis([0.02, 0.05, 170.0]) == "log"
    assert log_axis([1.0, 2.0, 30.0]) == "linear"
    assert log_axis([0.0, 1.0, 1000.0]) == "linear"  # zero cannot go on a log axis
    views = [view(0, 0.02, 0.9), view(1, 170.0, 0.95), view(2, 5.0, 0.5)]
    fig = plot_pareto_front(_get_pareto_front_info(views, OBJ2))
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "linear"
