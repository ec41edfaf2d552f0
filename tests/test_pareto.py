"""Tests for autotune.core.pareto: hand-computed examples, brute-force oracles and property tests."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.core.pareto import (
    GOALS,
    Record,
    SelectionRule,
    default_reference,
    front,
    hypervolume,
    hypervolume_history,
    knee_point,
    non_dominated_sort,
    pareto_mask,
    parse_rule,
    to_minimization,
)
from autotune.errors import SpecError

MIN2 = ["minimize", "minimize"]
MIN3 = ["minimize"] * 3
MIN4 = ["minimize"] * 4

PROPS = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Brute force, minimization."""
    return bool(np.all(a <= b) and np.any(a < b))


def hv_inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume (minimization) as the inclusion–exclusion sum over boxes; tiny n only."""
    pts = [p for p in points if np.all(np.isfinite(p)) and np.all(p < ref)]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = np.max(np.array(subset), axis=0)
            total += (-1) ** (k + 1) * float(np.prod(ref - corner))
    return total


# --------------------------------------------------------------------------------------------
# Strategies: points drawn in the minimization view, then shown in random user directions
# --------------------------------------------------------------------------------------------

grid = st.integers(0, 6).map(float)  # small grid: many ties and duplicates
reals = st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, m: int, max_n: int, coords=grid, ref_coords=None):
    """(raw points, directions, raw reference, minimization points, minimization reference)."""
    n = draw(st.integers(0, max_n))
    q = np.array([[draw(coords) for _ in range(m)] for _ in range(n)], dtype=float).reshape(n, m)
    ref_q = np.array([draw(ref_coords or st.sampled_from([4.0, 7.0, 7.5])) for _ in range(m)])
    directions = draw(st.lists(st.sampled_from(["minimize", "maximize"]), min_size=m, max_size=m))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return q * signs, directions, ref_q * signs, q, ref_q


# --------------------------------------------------------------------------------------------
# Conversion and sorting
# --------------------------------------------------------------------------------------------


def test_to_minimization_negates_maximized_columns():
    out = to_minimization([[1.0, 2.0], [3.0, -4.0]], ["minimize", "maximize"])
    assert out.tolist() == [[1.0, -2.0], [3.0, 4.0]]


def test_bad_shapes_and_directions_are_rejected():
    with pytest.raises(ValueError):
        to_minimization([[1.0, 2.0]], ["minimize"])
    with pytest.raises(ValueError):
        to_minimization([[1.0]], ["smaller"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        hypervolume([[1.0, 2.0]], MIN2, [3.0])
    with pytest.raises(ValueError):
        hypervolume([[1.0, 2.0]], MIN2, [3.0, math.nan])
    assert to_minimization([], MIN2).shape == (0, 2)


def test_non_dominated_sort_hand_example():
    pts = [
        [1, 5],  # front 0
        [2, 2],  # front 0
        [5, 1],  # front 0
        [2, 2],  # duplicate of a front point: front 0
        [3, 3],  # dominated by (2, 2): front 1
        [6, 6],  # dominated by (3, 3): front 2
        [math.nan, 0],  # never on the front: ranked last
        [-math.inf, -math.inf],
    ]
    ranks = non_dominated_sort(pts, MIN2)
    assert ranks.tolist() == [0, 0, 0, 0, 1, 2, 3, 3]
    assert pareto_mask(pts, MIN2).tolist() == [True] * 4 + [False] * 4


def test_non_dominated_sort_respects_maximize():
    # accuracy (max), latency (min)
    pts = [[0.9, 10.0], [0.8, 5.0], [0.7, 6.0], [0.9, 12.0]]
    ranks = non_dominated_sort(pts, ["maximize", "minimize"])
    assert ranks.tolist() == [0, 0, 1, 1]


def test_all_nonfinite_rows_are_never_on_the_front():
    assert non_dominated_sort([[math.nan, 1.0]], MIN2).tolist() == [1]
    assert not pareto_mask([[math.inf, 1.0], [1.0, math.nan]], MIN2).any()
    assert non_dominated_sort([], MIN2).shape == (0,)


@PROPS
@given(problems(m=3, max_n=12))
def test_ranks_are_correct_fronts(problem):
    raw, directions, _, q, _ = problem
    ranks = non_dominated_sort(raw, directions)
    for i, j in itertools.product(range(len(q)), repeat=2):
        if dominates(q[i], q[j]):
            assert ranks[i] < ranks[j]
    for j in range(len(q)):
        if ranks[j] > 0:  # each later-front point is dominated by a point one front up
            assert any(dominates(q[i], q[j]) for i in np.flatnonzero(ranks == ranks[j] - 1))


@PROPS
@given(problems(m=3, max_n=12, coords=st.one_of(grid, st.just(math.nan), st.just(math.inf))))
def test_front_is_non_dominated_and_complete(problem):
    raw, directions, _, q, _ = problem
    mask = pareto_mask(raw, directions)
    finite = np.all(np.isfinite(q), axis=1)
    assert not np.any(mask & ~finite)
    on_front = q[mask]
    for p in on_front:  # non-dominated: by no finite point at all
        assert not any(dominates(other, p) for other in q[finite])
    for p in q[finite & ~mask]:  # complete: every finite point left out is dominated by the front
        assert any(dominates(f, p) for f in on_front)


# --------------------------------------------------------------------------------------------
# Hypervolume: hand-computed
# --------------------------------------------------------------------------------------------


def test_hypervolume_one_objective():
    assert hypervolume([[3.0], [1.0], [2.0]], ["minimize"], [5.0]) == 4.0
    assert hypervolume([[3.0], [1.0]], ["maximize"], [0.5]) == 2.5
    assert hypervolume([[6.0]], ["minimize"], [5.0]) == 0.0


def test_hypervolume_2d_staircase():
    pts = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    assert hypervolume(pts, MIN2, [4.0, 4.0]) == pytest.approx(6.0)
    # dominated points and duplicates change nothing
    assert hypervolume([*pts, [3.0, 3.0], [2.0, 2.0]], MIN2, [4.0, 4.0]) == pytest.approx(6.0)


def test_hypervolume_2d_with_a_maximized_objective():
    # accuracy (maximize) and latency (minimize); reference: accuracy 0.5, latency 20
    pts = [[0.9, 10.0], [0.8, 5.0]]
    # boxes 0.4 x 10 and 0.3 x 15 overlapping in 0.3 x 10
    hv = hypervolume(pts, ["maximize", "minimize"], [0.5, 20.0])
    assert hv == pytest.approx(4.0 + 4.5 - 3.0)


def test_reference_excludes_points_that_are_not_strictly_better():
    ref = [4.0, 4.0]
    assert hypervolume([[5.0, 1.0]], MIN2, ref) == 0.0  # worse than the reference in x
    assert hypervolume([[4.0, 1.0]], MIN2, ref) == 0.0  # equal in x: contributes nothing
    assert hypervolume([[5.0, 1.0], [3.0, 3.0]], MIN2, ref) == pytest.approx(1.0)
    assert hypervolume([[0.9, 1.0]], ["maximize", "minimize"], [0.95, 4.0]) == 0.0
    assert hypervolume([[math.nan, 1.0], [1.0, math.inf]], MIN2, ref) == 0.0
    assert hypervolume([], MIN2, ref) == 0.0


def test_hypervolume_3d_unit_cubes_and_staircase():
    assert hypervolume([[0.0, 0.0, 0.0]], MIN3, [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # 2x2x1 and 1x1x2 boxes overlapping in a unit cube
    two = [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    assert hypervolume(two, MIN3, [2.0, 2.0, 2.0]) == pytest.approx(5.0)
    # three 6-volume boxes, pairwise overlaps of 2, triple overlap of 1: 18 - 6 + 1
    stair = [[0.0, 1.0, 2.0], [1.0, 2.0, 0.0], [2.0, 0.0, 1.0]]
    assert hypervolume(stair, MIN3, [3.0, 3.0, 3.0]) == pytest.approx(13.0)
    # the same in maximization: negate points and reference
    neg = (-np.array(stair)).tolist()
    assert hypervolume(neg, ["maximize"] * 3, [-3.0, -3.0, -3.0]) == pytest.approx(13.0)


def test_hypervolume_4d_hand_examples():
    assert hypervolume([[0.0] * 4], MIN4, [1.0] * 4) == pytest.approx(1.0)
    # 2*2*2*1 and 1*1*1*2 boxes overlapping in a unit hypercube
    pts = [[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    assert hypervolume(pts, MIN4, [2.0] * 4) == pytest.approx(9.0)
    # five objectives go through the same recursion
    pts5 = [[0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 0.0]]
    assert hypervolume(pts5, ["minimize"] * 5, [2.0] * 5) == pytest.approx(16.0 + 2.0 - 1.0)


def test_default_reference_rule():
    ref = default_reference([[1.0, 10.0], [3.0, 20.0]], ["minimize", "maximize"])
    assert ref.tolist() == pytest.approx([3.2, 9.0])
    # zero range: margin x |value|, or margin when the value is 0
    ref = default_reference([[5.0, 0.0, -4.0], [5.0, 0.0, -4.0]], ["minimize"] * 2 + ["maximize"])
    assert ref.tolist() == pytest.approx([5.5, 0.1, -4.4])
    # non-finite rows are ignored; none finite is an error
    ref = default_reference([[1.0, 1.0], [math.nan, 100.0]], MIN2, margin=0.5)
    assert ref.tolist() == pytest.approx([1.5, 1.5])
    with pytest.raises(ValueError):
        default_reference([[math.nan, 1.0]], MIN2)
    # a range below the values' resolution still gives a strictly worse reference
    above = np.nextafter(5.0, 10.0)
    assert default_reference([[5.0], [above]], ["minimize"])[0] > above
    assert default_reference([[-5.0], [-above]], ["maximize"])[0] < -above


@PROPS
@given(problems(m=3, max_n=8, coords=reals))
def test_default_reference_is_worse_than_every_point(problem):
    raw, directions, _, q, _ = problem
    if len(q) == 0:
        return
    ref = default_reference(raw, directions)
    ref_q = to_minimization(ref[None, :], directions)[0]
    assert np.all(q < ref_q)
    # every point counts: the first one alone gets its whole box
    box = float(np.prod(ref_q - q[0]))
    assert hypervolume(raw[:1], directions, ref) == pytest.approx(box, rel=1e-12, abs=0)


# --------------------------------------------------------------------------------------------
# Hypervolume: properties against the inclusion–exclusion oracle
# --------------------------------------------------------------------------------------------


@PROPS
@given(problems(m=2, max_n=6, coords=st.one_of(grid, reals)))
def test_2d_hypervolume_matches_inclusion_exclusion(problem):
    raw, directions, ref, q, ref_q = problem
    expected = hv_inclusion_exclusion(q, ref_q)
    assert hypervolume(raw, directions, ref) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@PROPS
@given(problems(m=3, max_n=6, coords=st.one_of(grid, reals)))
def test_3d_hypervolume_matches_inclusion_exclusion(problem):
    raw, directions, ref, q, ref_q = problem
    expected = hv_inclusion_exclusion(q, ref_q)
    assert hypervolume(raw, directions, ref) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@PROPS
@given(problems(m=4, max_n=6, coords=st.one_of(grid, reals)))
def test_4d_wfg_matches_inclusion_exclusion(problem):
    raw, directions, ref, q, ref_q = problem
    expected = hv_inclusion_exclusion(q, ref_q)
    assert hypervolume(raw, directions, ref) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(problems(m=5, max_n=5))
def test_5d_wfg_matches_inclusion_exclusion(problem):
    raw, directions, ref, q, ref_q = problem
    expected = hv_inclusion_exclusion(q, ref_q)
    assert hypervolume(raw, directions, ref) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@PROPS
@given(problems(m=3, max_n=10), st.lists(grid, min_size=3, max_size=3))
def test_hypervolume_never_decreases_when_a_point_is_added(problem, extra):
    raw, directions, ref, _, _ = problem
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    more = np.vstack([raw.reshape(-1, 3), np.array(extra) * signs])
    assert hypervolume(more, directions, ref) >= hypervolume(raw, directions, ref) - 1e-12


@PROPS
@given(st.integers(2, 4).flatmap(lambda m: problems(m=m, max_n=10)))
def test_hypervolume_of_a_set_equals_that_of_its_front(problem):
    raw, directions, ref, _, _ = problem
    raw = raw.reshape(-1, len(directions))
    on_front = raw[pareto_mask(raw, directions)]
    whole = hypervolume(raw, directions, ref)
    assert hypervolume(on_front, directions, ref) == pytest.approx(whole, rel=1e-12, abs=1e-12)


@PROPS
@given(problems(m=3, max_n=10, coords=reals), st.randoms(use_true_random=False))
def test_hypervolume_does_not_depend_on_order(problem, rnd):
    raw, directions, ref, _, _ = problem
    shuffled = list(raw.reshape(-1, 3))
    rnd.shuffle(shuffled)
    expected = hypervolume(raw, directions, ref)
    assert hypervolume(np.array(shuffled).reshape(-1, 3), directions, ref) == pytest.approx(
        expected, rel=1e-12, abs=1e-12
    )


# --------------------------------------------------------------------------------------------
# Hypervolume history
# --------------------------------------------------------------------------------------------


def test_hypervolume_history_hand_example():
    pts = [
        [3.0, 3.0],  # 1
        [1.0, 1.0],  # infeasible: ignored
        [math.nan, 1.0],  # failed: ignored
        [3.0, 3.0],  # duplicate: no change
        [2.0, 3.5],  # adds (3-2) x (4-3.5) = 0.5
        [5.0, 0.0],  # beyond the reference: ignored
        [3.5, 3.5],  # dominated
        [1.0, 1.0],  # feasible now: 9 in all
    ]
    feasible = [True, False, True, True, True, True, True, True]
    hist = hypervolume_history(pts, feasible, MIN2, [4.0, 4.0])
    assert hist.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 9.0])
    assert hypervolume_history([], [], MIN2, [4.0, 4.0]).shape == (0,)
    with pytest.raises(ValueError):
        hypervolume_history(pts, feasible[:-1], MIN2, [4.0, 4.0])


@PROPS
@given(
    st.integers(2, 4).flatmap(
        lambda m: st.tuples(
            problems(m=m, max_n=12, coords=st.one_of(grid, reals, st.just(math.nan))),
            st.lists(st.booleans(), min_size=12, max_size=12),
        )
    )
)
def test_hypervolume_history_is_monotone_and_ends_at_the_feasible_hypervolume(args):
    (raw, directions, ref, _, _), feasible = args
    raw = raw.reshape(-1, len(directions))
    feasible = feasible[: len(raw)]
    hist = hypervolume_history(raw, feasible, directions, ref)
    assert hist.shape == (len(raw),)
    assert np.all(np.diff(hist) >= 0)
    for k in range(len(raw)):  # every prefix, not just the last value
        prefix = raw[: k + 1][np.array(feasible[: k + 1], dtype=bool)]
        expected = hypervolume(prefix, directions, ref)
        assert hist[k] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_hypervolume_history_is_fast_on_a_full_3d_front():
    # worst case for the incremental update: every trial is non-dominated (points on a sphere)
    rng = np.random.default_rng(7)
    pts = np.abs(rng.normal(size=(500, 3)))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    feasible = rng.random(500) > 0.1
    ref = [1.1, 1.1, 1.1]
    start = time.process_time()  # this process's CPU time: other processes' load is not in it
    hist = hypervolume_history(pts, feasible, MIN3, ref)
    elapsed = time.process_time() - start
    assert hist[-1] == pytest.approx(hypervolume(pts[feasible], MIN3, ref), rel=1e-9)
    assert elapsed < 1.0, f"500 trials x 3 objectives took {elapsed:.2f}s"


# --------------------------------------------------------------------------------------------
# Knee point
# --------------------------------------------------------------------------------------------


def test_knee_on_a_convex_front_is_the_elbow():
    pts = [
        [0.0, 10.0],
        [1.0, 4.0],
        [6.0, 6.0],  # dominated
        [2.0, 2.0],  # the elbow
        [4.0, 1.0],
        [10.0, 0.0],
        [2.0, 2.0],  # duplicate: the lower index wins
    ]
    assert knee_point(pts, MIN2) == 3
    # the same front as (accuracy to maximize, latency to minimize)
    flipped = [[-x, y] for x, y in pts]
    assert knee_point(flipped, ["maximize", "minimize"]) == 3


def test_knee_fallbacks_use_the_point_closest_to_the_ideal():
    assert knee_point([], MIN2) is None
    assert knee_point([[math.nan, 1.0]], MIN2) is None
    assert knee_point([[1.0, 2.0]], MIN2) == 0
    # two front points: both at distance 1 from the ideal point; the lower index wins
    assert knee_point([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], MIN2) == 0
    # concave front: nothing on the ideal side of the extremes' line
    # (distances to the ideal point: 1, 0.78, 1)
    concave = [[0.0, 1.0], [0.5, 0.6], [1.0, 0.0]]
    assert knee_point(concave, MIN2) == 1
    # three objectives: closest to the ideal point in normalised space
    pts3 = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.4, 0.4, 0.4], [0.9, 0.9, 0.9]]
    assert knee_point(pts3, MIN3) == 3


# --------------------------------------------------------------------------------------------
# Records and fronts
# --------------------------------------------------------------------------------------------


def rec(number: int, feasible: bool = True, **metrics: float) -> Record:
    return Record(number=number, metrics=metrics, feasible=feasible)


def test_front_of_records():
    records = [
        rec(0, latency_p95_ms=10.0, quality=0.90),
        rec(1, latency_p95_ms=5.0, quality=0.80),
        rec(2, latency_p95_ms=4.0, quality=0.95, feasible=False),  # would dominate both
        rec(3, latency_p95_ms=6.0, quality=0.70),  # dominated by 1
        rec(4, latency_p95_ms=math.nan, quality=0.99),  # failed measurement
        rec(5, quality=0.99),  # no latency at all
        rec(6, latency_p95_ms=20.0, quality=0.92),
        rec(7, latency_p95_ms=5.0, quality=0.80),  # duplicate of 1: also on the front
    ]
    objectives = [("latency_p95_ms", "minimize"), ("quality", "maximize")]
    assert [r.number for r in front(records, objectives)] == [1, 7, 0, 6]
    # maximized first objective: best (highest) first
    flipped = [("quality", "maximize"), ("latency_p95_ms", "minimize")]
    assert [r.number for r in front(records, flipped)] == [6, 0, 1, 7]
    assert front([], objectives) == []
    assert Record(1, {}, True).params == {}


# --------------------------------------------------------------------------------------------
# Selection rules
# --------------------------------------------------------------------------------------------

BASELINE = {"latency_p95_ms": 20.0, "throughput_ips": 100.0, "quality": 0.90}
TRIALS = [
    rec(0, latency_p95_ms=20.0, accuracy_drop=0.0, model_size_mb=10.0, throughput_ips=100.0),
    rec(1, latency_p95_ms=8.0, accuracy_drop=0.005, model_size_mb=4.0, throughput_ips=300.0),
    rec(2, latency_p95_ms=6.0, accuracy_drop=0.02, model_size_mb=3.0, throughput_ips=400.0),
    rec(3, latency_p95_ms=7.0, accuracy_drop=0.008, model_size_mb=6.0, throughput_ips=350.0),
    rec(4, False, latency_p95_ms=1.0, accuracy_drop=0.0, model_size_mb=1.0, throughput_ips=999.0),
    rec(5, latency_p95_ms=8.0, accuracy_drop=0.001, model_size_mb=4.5, throughput_ips=290.0),
    rec(6, latency_p95_ms=15.0, accuracy_drop=math.nan, model_size_mb=2.0, throughput_ips=150.0),
]


def select(rule: str, baseline=None, records=TRIALS):
    chosen = parse_rule(rule).select(records, baseline)
    return None if chosen is None else chosen.number


def test_goals_pick_the_right_record_and_skip_infeasible_ones():
    assert select("fastest") == 2  # trial 4 is faster but infeasible
    assert select("smallest") == 6
    assert select("highest throughput") == 2
    assert select("max throughput_ips") == 2
    assert select("min accuracy_drop") == 0


def test_constraints_narrow_the_choice():
    assert select("fastest with accuracy_drop <= 1%") == 3
    assert select("fastest with accuracy_drop <= 1% and model_size_mb <= 5") == 1  # tie with 5
    assert select("  FASTEST   With accuracy_drop <= 1%  AND  model_size_mb <= 5 ") == 1
    # a NaN metric never satisfies a constraint
    assert select("smallest with accuracy_drop <= 0.5") == 2


def test_relative_constraints_use_the_baseline():
    rule = "max throughput_ips with latency_p95_ms <= 40% of baseline and accuracy_drop <= 1%"
    assert select(rule, BASELINE) == 3
    assert select("smallest with throughput_ips >= 3 * baseline", BASELINE) == 2
    with pytest.raises(SpecError, match="baseline"):
        select("fastest with latency_p95_ms <= 50% of baseline")


def test_nothing_qualifies_returns_none():
    assert select("fastest with accuracy_drop <= 0.1% and model_size_mb <= 2") is None
    assert select("cheapest") is None  # no trial reports a cost
    assert select("fastest", records=[TRIALS[4]]) is None  # only an infeasible trial
    assert select("fastest", records=[]) is None


def test_every_named_goal_parses():
    for goal, (metric, direction) in GOALS.items():
        rule = parse_rule(goal.upper())
        assert (rule.metric, rule.direction, rule.constraints) == (metric, direction, ())
    assert parse_rule("fastest p50").metric == "latency_p50_ms"
    assert parse_rule("most accurate") == SelectionRule("most accurate", "quality", "maximize", ())
    rule = parse_rule("leanest with peak_memory_mb <= 512 and quality_drop < 0.5%")
    assert [c.metric for c in rule.constraints] == ["peak_memory_mb", "quality_drop"]
    assert rule.constraints[1].value == pytest.approx(0.005)
    with pytest.raises(AttributeError):
        rule.metric = "other"  # type: ignore[misc]


def test_most_accurate_and_ties_go_to_the_lower_trial_number():
    records = [rec(3, quality=0.9), rec(1, quality=0.9), rec(2, quality=0.8)]
    assert select("most accurate", records=records) == 1
    assert select("min quality", records=records) == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "quickest",
        "fastest with",
        "fastest with accuracy_drop ~ 1%",
        "fastest with accuracy_drop <= 1% and",
        "fastest and accuracy_drop <= 1%",
        "min",
        "min 5metric",
        "maximize throughput_ips",
        "fastest with accuracy_drop <= lots",
    ],
)
def test_nonsense_rules_raise_spec_error_with_help(text):
    with pytest.raises(SpecError) as info:
        parse_rule(text)
    message = str(info.value)
    assert "'fastest'" in message and "'most accurate'" in message
    assert "Example: 'fastest with accuracy_drop <= 1% and model_size_mb <= 5'" in message
