"""Does the surrogate make the RL agent sample-efficient?  rl-ppo with and without the surrogate
against random search, on two analytic problems with a known true front.

    python experiments/bench_rl.py                 # budgets 50 and 100, 3 seeds
    python experiments/bench_rl.py --seeds 5 --train-steps 512

Problems
--------
* ``zdt1``: ZDT1 with 6 variables, each in [0, 1] with step 0.1 (11 values): f1 = x1,
  g = 1 + 9 · mean(x2..x6), f2 = g · (1 − sqrt(f1 / g)); both minimized.  True front: g = 1.
  Reference point (1.1, 5.0) (random configurations have g ≈ 5.5 on average, so the reference
  lets a good random point count while the true front fills most of the box).
* ``deploy``: a small discrete deployment space (runtime × quantization [+ calibration when
  int8] × batch × threads × pruning, 896 valid configurations, one invalid combination) with an
  analytic per-item latency (minimize), accuracy (maximize) and the constraint accuracy drop
  ≤ 2 points.  True front: every valid configuration enumerated.  Reference: the worst values
  over the whole grid, 1 % further out.

Each agent runs ``budget`` suggestions (the hypervolume at 50 is read from the same run as at
100: no agent knows the budget).  Printed: hypervolume of the feasible points found / hypervolume
of the true front (median, min, max over seeds) and the agent's mean time per suggestion.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.agents import create_agent
from autotune.agents.base import Observation
from autotune.core.pareto import hypervolume
from autotune.core.space import SearchSpace, parse_space

Problem = tuple[SearchSpace, list[tuple[str, str]], int, Callable[[dict[str, Any]], Any],
                np.ndarray, float]


def zdt1_problem() -> Problem:
    space = parse_space({"parameters": {
        f"x{i}": {"low": 0.0, "high": 1.0, "step": 0.1} for i in range(1, 7)}})

    def f(c: dict[str, Any]) -> tuple[tuple[float, float], tuple[float, ...]]:
        x = [c[f"x{i}"] for i in range(1, 7)]
        g = 1.0 + 9.0 * float(np.mean(x[1:]))
        return (x[0], g * (1.0 - math.sqrt(x[0] / g))), ()

    dirs = [("f1", "minimize"), ("f2", "minimize")]
    ref = np.array([1.1, 5.0])
    true = np.array([[k / 10, 1.0 - math.sqrt(k / 10)] for k in range(11)])
    return space, dirs, 0, f, ref, hypervolume(true, ["minimize", "minimize"], ref)


DEPLOY = {"parameters": {
    "runtime": ["torch", "onnxruntime", "openvino"],
    "quantization": {"choices": ["fp32", "fp16", "int8"],
                     "invalid": [{"values": ["fp16"], "when": {"runtime": "openvino"}}]},
    "calibration": {"choices": [32, 128, 512], "when": {"quantization": "int8"}},
    "batch_size": [1, 4, 16, 64],
    "threads": [1, 2, 4, 8],
    "pruning": [0.0, 0.25, 0.5, 0.75],
}}


def deploy_metrics(c: dict[str, Any]) -> tuple[float, float]:
    rt = {"torch": 1.0, "onnxruntime": 0.7, "openvino": 0.6}[c["runtime"]]
    q = {"fp32": 1.0, "fp16": 0.75, "int8": 0.45}[c["quantization"]]
    b, t, p = c["batch_size"], c["threads"], c["pruning"]
    speed = t ** 0.8 / (1.0 + 0.05 * t * (b == 1))  # threads help batches, not single items
    sparse = 1.0 - (0.6 * p if c["runtime"] == "onnxruntime" else 0.15 * p)
    latency = rt * q * sparse * (2.0 / b + 0.3) / speed + 0.05 * math.log2(b)
    drop = {"fp32": 0.0, "fp16": 0.002, "int8": 0.012}[c["quantization"]]
    if c["quantization"] == "int8":
        drop += {32: 0.02, 128: 0.006, 512: 0.0}[c["calibration"]]
    drop += 0.08 * p ** 2 + (0.01 * p if c["runtime"] == "openvino" else 0.0)
    return latency, 0.95 - drop


def deploy_problem() -> Problem:
    space = parse_space(DEPLOY)

    def f(c: dict[str, Any]) -> tuple[tuple[float, float], tuple[float, ...]]:
        lat, acc = deploy_metrics(c)
        return (lat, acc), ((0.95 - acc) - 0.02,)

    grid = space.grid()
    vals = np.array([deploy_metrics(c) for c in grid])
    feas = (0.95 - vals[:, 1]) <= 0.02 + 1e-12
    ref = np.array([vals[:, 0].max() * 1.01, vals[:, 1].min() * 0.99])
    dirs = [("latency", "minimize"), ("accuracy", "maximize")]
    true = hypervolume(vals[feas], ["minimize", "maximize"], ref)
    return space, dirs, 1, f, ref, true


def run_agent(problem: Problem, name: str, seed: int, budget: int, options: dict[str, Any]):
    space, dirs, n_cons, f, ref, true_hv = problem
    agent = create_agent(name, space, dirs, n_cons, seed=seed, **options)
    pts: list[tuple[float, ...]] = []
    feas: list[bool] = []
    t_suggest = 0.0
    hv_at: dict[int, float] = {}
    for i in range(1, budget + 1):
        t0 = time.perf_counter()
        c = agent.suggest()
        t_suggest += time.perf_counter() - t0
        values, viol = f(c)
        agent.observe(Observation(c, values, viol))
        pts.append(values)
        feas.append(all(v <= 0 for v in viol))
        if i in (50, 100) or i == budget:
            ok = np.array([p for p, ok in zip(pts, feas, strict=True) if ok]).reshape(-1, len(dirs))
            hv_at[i] = hypervolume(ok, [d for _, d in dirs], ref) / true_hv
    agent.close()
    return hv_at, t_suggest / budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--train-steps", type=int, default=256)
    ap.add_argument("--problems", default="zdt1,deploy")
    args = ap.parse_args()
    agents = [
        ("random", "random", {}),
        ("rl-ppo", "rl-ppo", {"train_steps": args.train_steps}),
        ("rl-ppo no-surrogate", "rl-ppo", {"surrogate": False}),
    ]
    problems = {"zdt1": zdt1_problem, "deploy": deploy_problem}
    print(f"budget {args.budget}, seeds 0..{args.seeds - 1}, rl train_steps {args.train_steps}")
    print(f"{'problem':8} {'agent':22} {'budget':>6} {'hv ratio median':>16} {'min':>6} {'max':>6} "
          f"{'s/suggest':>10}")
    for pname in args.problems.split(","):
        problem = problems[pname]()
        for label, name, opts in agents:
            if name == "rl-ppo" and pname == "zdt1":
                opts = {**opts, "bins": 11}  # one env value per grid value
            runs = [run_agent(problem, name, s, args.budget, opts) for s in range(args.seeds)]
            overhead = float(np.mean([r[1] for r in runs]))
            for b in sorted(runs[0][0]):
                r = np.array([h[b] for h, _ in runs])
                print(f"{pname:8} {label:22} {b:>6} {np.median(r):>16.3f} {r.min():>6.3f} "
                      f"{r.max():>6.3f} {overhead:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
