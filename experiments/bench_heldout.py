"""Agents on numeric problems that ``bench_agents.py``'s choices were not made on.

    python experiments/bench_heldout.py --agents auto --seeds 10
    python experiments/bench_heldout.py --agents auto gp --problems zdt3 zdt6 --seeds 5

A choice made on ``bench_agents.py``'s problems (the default agent's local moves, its start) is
checked here before it is kept: ZDT3 (a disconnected front of five pieces), ZDT6 (a front reached
only through a biased, multimodal first variable; 10 variables), DTLZ7 (three objectives, a
disconnected front of four patches; 8 variables) and ZDT1 in 16 variables instead of 8.  The score
is the raw hypervolume of the feasible points found within 50 and 100 trials (reference points
below; no true front is needed), per seed, then median and min.  Runs go through
``bench_agents.run_one``, one process per run, two at a time; nothing is logged, so compare two
versions of an agent by running this script in a checkout of each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Mapping
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_agents as B


def _zdt3(n: int = 8) -> B.Problem:
    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        x = [float(c[f"x{i}"]) for i in range(n)]
        g, f1 = 1 + 9 * sum(x[1:]) / (n - 1), x[0]
        return {"f1": f1, "f2": g * (1 - math.sqrt(f1 / g) - f1 / g * math.sin(10 * math.pi * f1))}

    return B.Problem("zdt3", B._box(n), [("f1", "minimize"), ("f2", "minimize")], evaluate,
                     (1.1, 2.0), 1.0)


def _zdt6(n: int = 10) -> B.Problem:
    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        x = [float(c[f"x{i}"]) for i in range(n)]
        f1 = 1 - math.exp(-4 * x[0]) * math.sin(6 * math.pi * x[0]) ** 6
        g = 1 + 9 * (sum(x[1:]) / (n - 1)) ** 0.25
        return {"f1": f1, "f2": g * (1 - (f1 / g) ** 2)}

    return B.Problem("zdt6", B._box(n), [("f1", "minimize"), ("f2", "minimize")], evaluate,
                     (1.1, 10.0), 1.0)


def _dtlz7(n: int = 8, m: int = 3) -> B.Problem:
    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        x = [float(c[f"x{i}"]) for i in range(n)]
        g = 1 + 9 / (n - m + 1) * sum(x[m - 1:])
        f = x[: m - 1]
        h = m - sum(fi / (1 + g) * (1 + math.sin(3 * math.pi * fi)) for fi in f)
        return {**{f"f{i + 1}": f[i] for i in range(m - 1)}, f"f{m}": (1 + g) * h}

    return B.Problem("dtlz7", B._box(n), [(f"f{i + 1}", "minimize") for i in range(m)], evaluate,
                     (1.1, 1.1, 10.0), 1.0)


def _zdt1_16() -> B.Problem:
    p = B._zdt(1, 16)
    return B.Problem("zdt1-16", p.space, p.objectives, p.evaluate, p.reference, 1.0)


HELD_OUT = {"zdt3": _zdt3, "zdt6": _zdt6, "dtlz7": _dtlz7, "zdt1-16": _zdt1_16}


def _one(task: tuple[str, str, int]) -> tuple[str, str, int, dict[str, Any]]:
    agent, problem, seed = task
    B.PROBLEMS.update(HELD_OUT)
    return agent, problem, seed, B.run_one((agent, problem, seed, 100))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", nargs="+", default=["auto"])
    ap.add_argument("--problems", nargs="+", default=list(HELD_OUT), choices=list(HELD_OUT))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    tasks = [(a, p, s) for p in args.problems for a in args.agents for s in range(args.seeds)]
    with Pool(args.workers, initializer=B._init_worker, maxtasksperchild=1) as pool:
        runs = pool.map(_one, tasks)
    print("raw hypervolume of the feasible points found (reference points in the source): "
          "median (min) over seeds, then per seed at 100 trials")
    for p in args.problems:
        for a in args.agents:
            got = sorted((s, r) for aa, pp, s, r in runs if (aa, pp) == (a, p))
            bad = [r["error"] for _, r in got if "error" in r]
            if bad:
                print(f"{p:8s} {a:8s} error: {bad[0]}")
                continue
            cells = [f"B={b} {statistics.median(v):.3f} ({min(v):.3f})" for b in (50, 100)
                     for v in [[r["hv_ratio"][b] for _, r in got]]]
            ms = statistics.median(r["overhead_ms"] for _, r in got)
            print(f"{p:8s} {a:8s} {'   '.join(cells)}   {ms:.0f} ms/sugg   per seed: "
                  + " ".join(f"{r['hv_ratio'][100]:.3f}" for _, r in got))


if __name__ == "__main__":
    main()
