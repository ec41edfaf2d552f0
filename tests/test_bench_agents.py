"""The agent benchmark scores what it claims: its true fronts are the fronts, and its log resumes."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from autotune.core.pareto import hypervolume
from tests.conftest import EXPERIMENTS


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import bench_agents
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return bench_agents


def ratio(problem, configs) -> float:
    points = [[problem.evaluate(c)[o] for o, _ in problem.objectives] for c in configs]
    return hypervolume(points, [d for _, d in problem.objectives], problem.reference) / problem.true_hv


@pytest.mark.parametrize("name", ["zdt1", "zdt2"])
def test_zdt_true_hypervolume_is_the_dense_true_front(bench, name):
    p = bench.PROBLEMS[name]()
    front = [{"x0": t, **{f"x{i}": 0.0 for i in range(1, 8)}} for t in np.linspace(0, 1, 2001)]
    assert ratio(p, front) == pytest.approx(1.0, abs=2e-3)
    assert ratio(p, front[::2]) < ratio(p, front) <= 1.0 + 1e-9
    off = [{**c, "x1": 0.2} for c in front]  # g > 1: behind the front
    assert ratio(p, off) < 0.9


def test_dtlz2_true_hypervolume_is_the_dense_true_front(bench):
    p = bench.PROBLEMS["dtlz2"]()
    grid = np.linspace(0, 1, 61)
    front = [{"x0": a, "x1": b, **{f"x{i}": 0.5 for i in range(2, 7)}} for a in grid for b in grid]
    r = ratio(p, front)
    assert 0.97 < r <= 1.0 + 1e-9  # a 61 x 61 grid on the sphere misses a sliver of the volume
    for c in front[:50]:
        f = p.evaluate(c)
        assert math.isclose(sum(v * v for v in f.values()), 1.0)


def test_table_true_front_is_every_feasible_row(bench):
    p = bench.PROBLEMS["digits-table"]()
    configs = list(p.space.grid())
    assert len(configs) == 240
    feasible = [c for c in configs if all(v(p.evaluate(c)) <= 0 for v in p.constraints)]
    assert 0 < len(feasible) < len(configs)
    assert ratio(p, feasible) == pytest.approx(1.0)


def test_log_resumes_and_tables(bench, tmp_path, capsys):
    runs, out = tmp_path / "runs.jsonl", tmp_path / "table.csv"
    args = ["--agents", "random", "--problems", "zdt1", "--seeds", "2", "--budgets", "50",
            "--workers", "1", "--runs", str(runs), "--out", str(out)]
    bench.main(args)
    logged = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted(r["seed"] for r in logged) == [0, 1] and all(50 in map(int, r["hv_ratio"])
                                                              for r in logged)
    capsys.readouterr()
    bench.main([*args[:5], "3", *args[6:]])  # a third seed: only that one runs
    assert "2 in" in capsys.readouterr().out
    assert len(runs.read_text().splitlines()) == 3
    bench.main([*args, "--table-only", "--markdown"])
    text = capsys.readouterr().out
    assert "| random | " in text and "0 to run" in text
    assert len(out.read_text().splitlines()) == 1 + 2  # header + two seeds at B=50
