"""Benchmark every registered agent on multi-objective problems with known Pareto fronts.

    python experiments/bench_agents.py            # budgets 50/100, 5 seeds, all problems
    python experiments/bench_agents.py --agents auto gp tpe random rl-a2c rl-dqn rl-ppo
    python experiments/bench_agents.py --quick    # smoke test: budget 50, 2 seeds, 2 problems

Problems (each a custom objective: configuration dict in, metrics dict out):

* ``zdt1``, ``zdt2`` - 8 continuous variables in [0, 1], two minimized objectives; true fronts
  f2 = 1 - sqrt(f1) and f2 = 1 - f1^2.  Reference point (1.1, 2.0).
* ``dtlz2`` - 7 continuous variables (3 objectives, k = 5), minimized; the true front is the unit
  sphere in the positive orthant.  Reference point (1.5, 1.5, 1.5).
* ``digits-table`` - real measurements of the digits MLP over a full grid of 240 serving
  configurations (experiments/data/digits_grid.csv, made by make_digits_table.py with the real
  isolated harness): maximize throughput_ips and accuracy subject to latency_p95_ms <= 2 ms; the
  true front is the feasible front of the table.  Reference point (throughput 0, accuracy 0.96).
* ``serving-mixed`` - a synthetic cost model of CPU serving (runtime, quantization, graph level,
  per-channel scales, batch, threads, pruning; 5,376 configurations): latency, throughput and
  accuracy.
* ``deploy-constrained`` - a synthetic cost model of a CPU deployment (runtime x precision x
  threads x batch, pinning, fusion, ONNX Runtime's execution mode; 4,896 configurations, two
  invalid combinations) with a latency SLO and a memory limit: throughput and accuracy.

The score is the hypervolume of the feasible points an agent found within the budget divided by
the hypervolume of the true front (1.0 = the whole front found; analytic true hypervolumes for the
continuous problems).  Agents do not know the budget, so one run of the largest budget is scored
at every smaller budget too (its first 50, 100 trials are exactly a 50- or 100-trial run).

The loop drives agents directly through the Agent interface (suggest/observe), in-process, with
no study or MLflow per evaluation; the conformance suite covers the real tuner.  Overhead per
suggestion is the agent's own time (suggest + observe) as CPU time of the process (so a busy
machine does not inflate it), in ms, mean over the run.  Runs are spread
over the machine's cores with multiprocessing, each single-threaded.

The whole grid takes hours on two cores (the GP-based and RL agents spend 0.1-0.5 s per
suggestion), so every finished run is appended to a log (``--runs``, one JSON object per line) as
soon as it ends, and a run already in the log is not repeated: an interrupted benchmark continues
where it stopped, and agents can be run separately (``--agents skopt-gp``) and then tabled together
(``--table-only``).  ``--fresh`` starts a new log.

The tables are printed and written next to the CSV as Markdown (``bench_agents.md``).

Each run records ``code``: a hash of the source of the agent's modules (and of the versions of the
libraries it wraps) and of this problem's definition.  A logged run whose hash differs from the
current code's is stale: it is run again (``--table-only`` tables the log as it is, and says how
many of its runs are stale), so a changed agent is never tabled with its old results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from autotune.agents import AGENTS, create_agent  # noqa: E402
from autotune.agents.base import Observation  # noqa: E402
from autotune.core.metrics import Direction  # noqa: E402
from autotune.core.space import SearchSpace, parse_space  # noqa: E402

TABLE = HERE / "data" / "digits_grid.csv"
RESULTS = HERE / "results" / "bench_agents.csv"
RUNS = HERE / "results" / "bench_agents_runs.jsonl"
BUDGETS = (50, 100, 200)
DEFAULT_BUDGETS = (50, 100)


@dataclass(frozen=True)
class Problem:
    name: str
    space: SearchSpace
    objectives: list[tuple[str, Direction]]
    evaluate: Callable[[Mapping[str, Any]], dict[str, float]]
    reference: tuple[float, ...]
    true_hv: float
    constraints: list[Callable[[Mapping[str, float]], float]] = field(default_factory=list)


def _box(n: int) -> SearchSpace:
    return parse_space({"parameters": {f"x{i}": {"low": 0.0, "high": 1.0} for i in range(n)}})


def _zdt(which: int, n: int = 8) -> Problem:
    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        x = [float(c[f"x{i}"]) for i in range(n)]
        g = 1 + 9 * sum(x[1:]) / (n - 1)
        f1 = x[0]
        f2 = g * (1 - math.sqrt(f1 / g)) if which == 1 else g * (1 - (f1 / g) ** 2)
        return {"f1": f1, "f2": f2}

    ref = (1.1, 2.0)
    # dominated area of the true front: the box minus the area under the front on [0, 1]
    under = 1 / 3 if which == 1 else 2 / 3
    return Problem(f"zdt{which}", _box(n), [("f1", "minimize"), ("f2", "minimize")], evaluate,
                   ref, ref[0] * ref[1] - under)


def _dtlz2(n: int = 7, m: int = 3) -> Problem:
    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        x = [float(c[f"x{i}"]) for i in range(n)]
        g = sum((xi - 0.5) ** 2 for xi in x[m - 1:])
        f = []
        for i in range(m):
            v = 1 + g
            for xj in x[: m - 1 - i]:
                v *= math.cos(xj * math.pi / 2)
            if i > 0:
                v *= math.sin(x[m - 1 - i] * math.pi / 2)
            f.append(v)
        return {f"f{i + 1}": f[i] for i in range(m)}

    ref = (1.5, 1.5, 1.5)
    # the front is the unit sphere: dominated volume = box minus the ball's positive octant
    return Problem("dtlz2", _box(n), [(f"f{i + 1}", "minimize") for i in range(m)], evaluate,
                   ref, math.prod(ref) - math.pi / 6)


def _table() -> Problem:
    from autotune.core.pareto import hypervolume
    from autotune.job.spec import load_job

    space = load_job(HERE / "digits-grid.yaml").space
    rows: dict[str, dict[str, float]] = {}
    with TABLE.open() as f:
        for r in csv.DictReader(f):
            cfg = {}
            for p in space:
                raw = r[p.name]
                if raw == "":
                    continue
                cfg[p.name] = next(v for v in p.values() if str(v) == raw)
            rows[_key(cfg)] = {k: float(v) for k, v in r.items() if k not in space.names}
    objectives: list[tuple[str, Direction]] = [("throughput_ips", "maximize"),
                                               ("accuracy", "maximize")]
    limit = 2.0

    def violation(m: Mapping[str, float]) -> float:
        return m["latency_p95_ms"] - limit

    def evaluate(c: Mapping[str, Any]) -> dict[str, float]:
        return rows[_key(c)]

    ref = (0.0, 0.96)  # just below the lowest accuracy in the table (0.967)
    feasible = [[m[o] for o, _ in objectives] for m in rows.values() if violation(m) <= 0]
    true_hv = hypervolume(feasible, [d for _, d in objectives], ref)
    return Problem("digits-table", space, objectives, evaluate, ref, true_hv, [violation])


def _key(c: Mapping[str, Any]) -> str:
    return repr(sorted(c.items()))


#: the modules each agent's behaviour depends on besides its own (see :func:`code_hash`)
_COMMON = ("autotune.agents.base", "autotune.core.space", "autotune.core.explore")
_EXTRA = {"auto": ("autotune.agents.optuna", "autotune.core.pareto"),
          "rl": ("autotune.envs.config_search", "autotune.core.pareto")}
_LIBS = {"autotune.agents.optuna": ("optuna",), "autotune.agents.skopt": ("scikit-optimize",),
         "autotune.agents.rl": ("stable-baselines3", "torch", "gymnasium"),
         "autotune.agents.auto": ("optuna", "torch")}


def code_hash(agent: str, problem: str) -> str:
    """Twelve hex digits of a hash of what decides ``agent``'s results on ``problem``: the source
    of its modules, the versions of the libraries they wrap, and the problem's definition (its
    builder's source, its data file)."""
    import hashlib
    import importlib
    import inspect
    from importlib.metadata import PackageNotFoundError, version

    module = AGENTS[agent].split(":")[0]
    mods = [module, *_COMMON, *_EXTRA.get("rl" if agent.startswith("rl-") else agent, ())]
    h = hashlib.sha256()
    for m in dict.fromkeys(mods):
        try:
            h.update(inspect.getsource(importlib.import_module(m)).encode())
        except (ImportError, OSError, TypeError):
            h.update(f"missing {m}".encode())
    for lib in _LIBS.get(module, ()):
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            h.update(f"{lib} missing".encode())
    build = PROBLEMS[problem]
    h.update(inspect.getsource(build).encode())
    for fn in (_zdt, _dtlz2, _table, _mixed, _mixed_metrics, _deploy, _deploy_metrics):
        if fn.__name__ in inspect.getsource(build) or fn is build:
            h.update(inspect.getsource(fn).encode())
    if problem == "digits-table" and TABLE.exists():
        h.update(TABLE.read_bytes())
    if problem == "serving-mixed":
        h.update(repr(MIXED_SPACE).encode())
    if problem == "deploy-constrained":
        h.update(repr(DEPLOY_SPACE).encode())
    return h.hexdigest()[:12]


#: the serving-mixed problem's space: categorical runtime/precision knobs with conditional ones
#: (graph level on ONNX Runtime only, per-channel scales for int8 only), an invalid combination,
#: integer threads and batch sizes, a stepped pruning ratio: 5,376 valid configurations
MIXED_SPACE = {"parameters": {
    "runtime": {"choices": ["onnxruntime", "torch", "openvino"]},
    "quantization": {"choices": ["fp32", "fp16", "int8_dynamic", "int8_static"],
                     "invalid": [{"values": ["int8_static"], "when": {"runtime": "torch"},
                                  "reason": "static int8 is not implemented for torch"}]},
    "graph_optimization": {"choices": ["basic", "extended", "all"],
                           "when": {"runtime": "onnxruntime"}},
    "per_channel": {"choices": [False, True],
                    "when": {"quantization": ["int8_dynamic", "int8_static"]}},
    "batch_size": {"choices": [1, 4, 16, 64]},
    "threads": {"low": 1, "high": 8},
    "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.1},
}}


def _mixed_metrics(c: Mapping[str, Any]) -> dict[str, float]:
    """A cost model of CPU serving with the interactions tuning has to find (int8 kernels that pay
    off only on some runtimes, fusion that helps static int8 most, threads that help batches but
    not single items and hurt past the 4 physical cores, pruning that costs more accuracy once
    quantized), and a deterministic +-2 % wobble per configuration standing in for measurement
    noise.  Synthetic: it is a test of the search, not a claim about any runtime."""
    import zlib

    rt, q, b, t, p = (c["runtime"], c["quantization"], c["batch_size"], c["threads"],
                      c["pruning_ratio"])
    pc = bool(c.get("per_channel", False))
    speed = {"onnxruntime": 1.0, "torch": 1.6, "openvino": 0.85}[rt]
    overhead = {"onnxruntime": 0.15, "torch": 0.6, "openvino": 0.3}[rt]
    qs = {"fp32": 1.0, "fp16": {"onnxruntime": 1.3, "torch": 0.95, "openvino": 0.7}[rt],
          "int8_dynamic": {"onnxruntime": 0.55, "torch": 0.8, "openvino": 0.6}[rt],
          "int8_static": {"onnxruntime": 0.45, "torch": 1.0, "openvino": 0.35}[rt]}[q]
    qs *= 1.06 if pc else 1.0
    g = {"basic": 1.15, "extended": 1.0, "all": 0.92 if q != "int8_static" else 0.8,
         None: 1.0}[c.get("graph_optimization")]
    per_item = 2.0 * speed * qs * g * (1 - 0.6 * p)
    par = t ** 0.85 if b >= t else 1 + 0.35 * (t - 1) ** 0.7 * min(1.0, b / t + 0.3)
    par /= 1 + 0.15 * max(0, t - 4)
    latency = overhead + b * per_item / par
    wobble = zlib.crc32(_key(c).encode()) / 2**32
    latency *= 0.98 + 0.04 * wobble
    p95 = latency * (1.1 + 0.05 * t / 8)
    drop = {"fp32": 0.0, "fp16": 0.001, "int8_dynamic": 0.004 if pc else 0.012,
            "int8_static": (0.006 if rt == "openvino" else 0.008) if pc else 0.02}[q]
    drop += 0.25 * p ** 2 + (0.04 * p if q.startswith("int8") else 0.0)
    accuracy = 0.92 - drop + 0.002 * (wobble - 0.5)
    return {"latency_p95_ms": p95, "throughput_ips": 1000 * b / latency, "accuracy": accuracy}


def _mixed() -> Problem:
    import numpy as np

    from autotune.core.pareto import hypervolume, pareto_mask

    space = parse_space(MIXED_SPACE, name="serving-mixed")
    objectives: list[tuple[str, Direction]] = [("latency_p95_ms", "minimize"),
                                               ("throughput_ips", "maximize"),
                                               ("accuracy", "maximize")]
    rows = {_key(c): _mixed_metrics(c) for c in space.grid()}
    pts = np.array([[m[o] for o, _ in objectives] for m in rows.values()])
    # just beyond the worst point of the true front in each objective (its nadir): only points
    # near the front count, so covering the space at random scores low
    front = pts[pareto_mask(pts, [d for _, d in objectives])]
    ref = (float(front[:, 0].max()) * 1.05, float(front[:, 1].min()) * 0.95,
           float(front[:, 2].min()) - 0.001)
    true_hv = hypervolume(pts, [d for _, d in objectives], ref)
    return Problem("serving-mixed", space, objectives, lambda c: rows[_key(c)], ref, true_hv)


#: the deploy-constrained problem's space: a CPU deployment of a transformer encoder with the
#: knobs of a real one (runtime x weight precision x threads x batch, thread pinning, operator
#: fusion, and ONNX Runtime's execution mode only on ONNX Runtime), two invalid combinations, and
#: two constraints (a latency SLO and a memory limit): 4,896 valid configurations, 2,867 feasible
DEPLOY_SPACE = {"parameters": {
    "runtime": {"choices": ["onnxruntime", "openvino", "torch"]},
    "precision": {"choices": ["fp32", "bf16", "int8_dynamic", "int8_static", "int4_weight"],
                  "invalid": [{"values": ["int8_static"], "when": {"runtime": "torch"},
                               "reason": "static int8 is not implemented for torch"},
                              {"values": ["int4_weight"], "when": {"runtime": "onnxruntime"},
                               "reason": "no int4 weight-only kernels in this build"}]},
    "execution_mode": {"choices": ["sequential", "parallel"], "when": {"runtime": "onnxruntime"}},
    "fusion": {"choices": [False, True]},
    "pinning": {"choices": ["none", "compact", "scatter"]},
    "threads": {"low": 1, "high": 8},
    "batch_size": {"choices": [1, 2, 4, 8, 16, 32]},
}}


def _deploy_metrics(c: Mapping[str, Any]) -> dict[str, float]:
    """A cost model of a CPU deployment on a 2-socket machine with 4 physical cores per socket
    (threads 5-8 cross sockets) and bf16 matrix units that only torch uses: per-item compute by
    runtime and precision, fusion that pays most for static int8 on OpenVINO and costs int4,
    pinning that helps within a socket (compact) or across (scatter), ONNX Runtime's parallel
    executor that helps only batched inputs on several threads, memory that grows with batch and
    threads, and a deterministic +-2 % wobble per configuration standing in for measurement noise.
    Objectives: throughput (max) and accuracy (max); constraints: p95 latency <= 25 ms and peak
    memory <= 600 MB.  Synthetic: a test of the search, not a claim about any runtime."""
    import zlib

    rt, q, t, b = c["runtime"], c["precision"], c["threads"], c["batch_size"]
    fused, pin, mode = bool(c["fusion"]), c["pinning"], c.get("execution_mode")
    cost = {"onnxruntime": {"fp32": 6.0, "bf16": 9.0, "int8_dynamic": 3.4, "int8_static": 2.9},
            "openvino": {"fp32": 5.4, "bf16": 7.5, "int8_dynamic": 3.9, "int8_static": 2.4,
                         "int4_weight": 4.6},
            "torch": {"fp32": 8.0, "bf16": 3.8, "int8_dynamic": 5.0, "int4_weight": 4.2}}[rt][q]
    if fused:
        cost *= {"int8_static": 0.72 if rt == "openvino" else 0.85, "int4_weight": 1.08}.get(q, 0.88)
    # parallel efficiency: pinning decides how well threads beyond one socket scale
    within, across = min(t, 4), max(0, t - 4)
    eff_in = {"none": 0.8, "compact": 0.95, "scatter": 0.85}[pin]
    eff_x = {"none": 0.35, "compact": 0.15, "scatter": 0.7}[pin]
    par = 1 + eff_in * (within - 1) + eff_x * across
    if b < t:  # too few items to keep every thread busy
        par = 1 + (par - 1) * (0.4 + 0.6 * b / t)
    if rt == "onnxruntime" and mode == "parallel":
        par *= 1.25 if (b >= 8 and t >= 4) else 0.85
    overhead = {"onnxruntime": 0.4, "openvino": 0.9, "torch": 1.8}[rt]
    wobble = zlib.crc32(_key(c).encode()) / 2**32
    latency = (overhead + b * cost / par) * (0.98 + 0.04 * wobble)
    p95 = latency * (1.08 + (0.12 if pin == "none" and t > 4 else 0.03))
    weights = {"fp32": 440, "bf16": 225, "int8_dynamic": 120, "int8_static": 115,
               "int4_weight": 75}[q]
    memory = (weights * (1.0 if fused else 1.15) + {"onnxruntime": 90, "openvino": 140,
                                                    "torch": 260}[rt]
              + b * (14 if q in ("fp32", "int4_weight") else 8) + 6 * t)
    drop = {"fp32": 0.0, "bf16": 0.002, "int8_dynamic": 0.009, "int8_static": 0.014,
            "int4_weight": 0.03}[q]
    drop += 0.004 if fused and q == "int8_static" and rt != "openvino" else 0.0
    accuracy = 0.91 - drop + 0.003 * (wobble - 0.5)
    return {"throughput_ips": 1000 * b / latency, "latency_p95_ms": p95, "memory_mb": memory,
            "accuracy": accuracy}


def _deploy() -> Problem:
    from autotune.core.pareto import hypervolume

    space = parse_space(DEPLOY_SPACE, name="deploy-constrained")
    objectives: list[tuple[str, Direction]] = [("throughput_ips", "maximize"),
                                               ("accuracy", "maximize")]
    rows = {_key(c): _deploy_metrics(c) for c in space.grid()}
    constraints = [lambda m: m["latency_p95_ms"] - 25.0, lambda m: m["memory_mb"] - 600.0]
    feasible = [[m[o] for o, _ in objectives] for m in rows.values()
                if all(g(m) <= 0 for g in constraints)]
    # throughput 0 and the lowest accuracy of any configuration: the whole feasible front counts
    ref = (0.0, min(m["accuracy"] for m in rows.values()) - 0.001)
    true_hv = hypervolume(feasible, [d for _, d in objectives], ref)
    return Problem("deploy-constrained", space, objectives, lambda c: rows[_key(c)], ref, true_hv,
                   constraints)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "zdt1": lambda: _zdt(1), "zdt2": lambda: _zdt(2), "dtlz2": _dtlz2, "digits-table": _table,
    "serving-mixed": _mixed,
}
PROBLEMS["deploy-constrained"] = _deploy


# -------------------------------------------------------------------- one run
def run_one(task: tuple[str, str, int, int]) -> dict[str, Any]:
    """One agent on one problem with one seed for ``budget`` evaluations."""
    agent_name, problem_name, seed, budget = task
    from threadpoolctl import threadpool_limits

    from autotune.core.pareto import hypervolume_history
    from autotune.errors import AutotuneError

    problem = PROBLEMS[problem_name]()
    dirs = [d for _, d in problem.objectives]
    try:
        agent = create_agent(agent_name, problem.space, problem.objectives,
                             len(problem.constraints), seed=seed)
    except AutotuneError as exc:
        return {"agent": agent_name, "problem": problem_name, "seed": seed,
                "code": code_hash(agent_name, problem_name), "error": str(exc)}
    points, feasible, overhead = [], [], []
    with threadpool_limits(1):
        try:
            while len(points) < budget:
                t0 = time.process_time()
                config = agent.suggest()
                spent = time.process_time() - t0
                reason = problem.space.invalid_reason(config)
                if reason:  # the tuner records these without spending budget; so do we
                    agent.observe(Observation(config, None, state="invalid"))
                    continue
                m = problem.evaluate(config)
                values = tuple(m[o] for o, _ in problem.objectives)
                viol = tuple(c(m) for c in problem.constraints)
                obs = Observation(config, values, viol, number=len(points), metrics=m)
                t0 = time.process_time()
                agent.observe(obs)
                overhead.append(spent + time.process_time() - t0)
                points.append(values)
                feasible.append(obs.feasible)
        except AutotuneError as exc:
            return {"agent": agent_name, "problem": problem_name, "seed": seed,
                "code": code_hash(agent_name, problem_name), "error": str(exc)}
    agent.close()
    hv = hypervolume_history(points, feasible, dirs, problem.reference)
    return {
        "agent": agent_name, "problem": problem_name, "seed": seed,
        "code": code_hash(agent_name, problem_name),
        "hv_ratio": {b: float(hv[b - 1]) / problem.true_hv for b in BUDGETS if b <= budget},
        "overhead_ms": 1000 * statistics.fmean(overhead),
    }


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


# -------------------------------------------------------------------- reporting
def summarize(results: list[dict[str, Any]], budgets: tuple[int, ...]) -> tuple[list[dict], str]:
    rows: list[dict[str, Any]] = []
    by: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    over: dict[str, list[float]] = defaultdict(list)
    errors: dict[tuple[str, str], str] = {}
    for r in results:
        if "error" in r:
            errors[(r["problem"], r["agent"])] = r["error"]
            continue
        over[r["agent"]].append(r["overhead_ms"])
        for b, v in r["hv_ratio"].items():
            if b not in budgets:
                continue
            by[(r["problem"], r["agent"], b)].append(v)
            rows.append({"problem": r["problem"], "agent": r["agent"], "budget": b,
                         "seed": r["seed"], "hv_ratio": round(v, 5),
                         "overhead_ms": round(r["overhead_ms"], 3)})
    problems = sorted({r["problem"] for r in results}, key=list(PROBLEMS).index)
    agents = sorted({r["agent"] for r in results})
    lines = []
    head = f"{'problem':<13} {'agent':<11}" + "".join(f" {'B=' + str(b) + ' med [min, max]':>24}"
                                                     for b in budgets) + f" {'CPU ms/sugg':>12}"
    lines.append(head)
    lines.append("-" * len(head))
    for p in problems:
        for a in agents:
            if (p, a) in errors:
                lines.append(f"{p:<13} {a:<11} n/a: {errors[(p, a)][:70]}")
                continue
            cells = ""
            for b in budgets:
                v = by.get((p, a, b))
                cells += (f" {statistics.median(v):>8.3f} [{min(v):.3f}, {max(v):.3f}]"
                          if v else f" {'-':>24}")
            ms = [r["overhead_ms"] for r in results if r["agent"] == a and r["problem"] == p
                  and "overhead_ms" in r]
            lines.append(f"{p:<13} {a:<11}{cells} {statistics.median(ms) if ms else 0:>12.1f}")
        lines.append("")
    # mean over problems of the median ratio: one number per agent and budget
    lines.append(f"{'mean of medians over problems':<25}" + "".join(f" {'B=' + str(b):>8}"
                                                                 for b in budgets))
    for a in agents:
        cells = ""
        for b in budgets:
            meds = [statistics.median(by[(p, a, b)]) for p in problems if by.get((p, a, b))]
            ok = len(meds) == len(problems)
            cells += f" {statistics.fmean(meds):>8.3f}" if ok else f" {'(part)':>8}"
        lines.append(f"{a:<25}{cells}")
    from autotune.agents import DEFAULT_AGENT

    cpu = [r["overhead_ms"] for r in results if r["agent"] == DEFAULT_AGENT and "overhead_ms" in r]
    if cpu:
        lines.append(f"\nthe default agent ({DEFAULT_AGENT}) spends {statistics.median(cpu):.0f} ms "
                     f"of CPU per suggestion (median over its runs of the run's mean; the most in "
                     f"one run {max(cpu):.0f} ms; the target is <= 300 ms)")
    return rows, "\n".join(lines) + "\n" + _targets(by, problems, budgets)


def markdown(rows: list[dict[str, Any]], budgets: tuple[int, ...]) -> str:
    """The table for the README: per agent and problem the median ratio at each budget, the mean
    over problems, and the median overhead per suggestion."""
    med: dict[tuple[str, str, int], float] = {}
    cells: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    over: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["agent"], r["problem"], r["budget"])].append(r["hv_ratio"])
        over[r["agent"]].append(r["overhead_ms"])
    for k, v in cells.items():
        med[k] = statistics.median(v)
    problems = sorted({r["problem"] for r in rows}, key=list(PROBLEMS).index)
    agents = sorted({r["agent"] for r in rows})
    mean = {(a, b): statistics.fmean(med[(a, p, b)] for p in problems)
            for a in agents for b in budgets if all((a, p, b) in med for p in problems)}
    agents.sort(key=lambda a: -mean.get((a, max(budgets)), -1.0))
    bs = " / ".join(f"B={b}" for b in budgets)
    out = [f"| agent | {' | '.join(problems)} | mean over problems | ms per suggestion |",
           "|---" * (len(problems) + 3) + "|"]
    for a in agents:
        row = [" / ".join(f"{med[(a, p, b)]:.3f}" if (a, p, b) in med else "-" for b in budgets)
               for p in problems]
        row.append(" / ".join(f"{mean[(a, b)]:.3f}" if (a, b) in mean else "-" for b in budgets))
        row.append(f"{statistics.median(over[a]):.1f}")
        out.append(f"| {a} | " + " | ".join(row) + " |")
    return f"median hypervolume ratio over seeds, {bs}\n\n" + "\n".join(out)


def _targets(by: Mapping[tuple[str, str, int], list[float]], problems: list[str],
             budgets: tuple[int, ...]) -> str:
    """Per problem and budget: the default agent against Optuna's GP and TPE samplers (median and
    min over seeds; it beats one when its median is higher), and each RL agent against random
    search at the same budget."""
    from autotune.agents import DEFAULT_AGENT

    def cell(a: str, p: str, b: int) -> str:
        v = by.get((p, a, b))
        return f"{statistics.median(v):.3f} (min {min(v):.3f}, n={len(v)})" if v else "-"

    def med(a: str, p: str, b: int) -> float | None:
        v = by.get((p, a, b))
        return statistics.median(v) if v else None

    out = [f"\ndefault agent ({DEFAULT_AGENT}) vs Optuna GP and TPE: median (min, n seeds)"]
    out.append(f"{'problem':<18} {'B':>4} {DEFAULT_AGENT:>24} {'gp':>24} {'tpe':>24}  verdict")
    wins = total = 0
    for p in problems:
        for b in budgets:
            d, g, t = med(DEFAULT_AGENT, p, b), med("gp", p, b), med("tpe", p, b)
            if d is None or (g is None and t is None):
                continue
            rivals = [x for x in (g, t) if x is not None]
            ok = all(round(d, 3) > round(x, 3) for x in rivals)  # a tie at 3 digits is no win
            wins, total = wins + ok, total + 1
            out.append(f"{p:<18} {b:>4} {cell(DEFAULT_AGENT, p, b):>24} {cell('gp', p, b):>24} "
                       f"{cell('tpe', p, b):>24}  {'beats both' if ok else 'DOES NOT beat both'}")
    out.append(f"  the default beats GP and TPE in {wins} of {total} (problem, budget) cells (a cell "
               f"missing a rival's runs is judged against the rival that has them)")
    rl = sorted({a for _, a, _ in by if a.startswith("rl-")})
    if rl and any((p, "random", b) in by for p in problems for b in budgets):
        out.append("\nRL agents vs random search at the same budget: median (min, n seeds)")
        out.append(f"{'problem':<18} {'B':>4} {'random':>24}" + "".join(f" {a:>24}" for a in rl))
        verdict = {a: [0, 0] for a in rl}
        for p in problems:
            for b in budgets:
                r = med("random", p, b)
                if r is None:
                    continue
                row = f"{p:<18} {b:>4} {cell('random', p, b):>24}"
                for a in rl:
                    m = med(a, p, b)
                    if m is not None:
                        verdict[a][0] += round(m, 3) > round(r, 3)
                        verdict[a][1] += 1
                    row += f" {cell(a, p, b) + ('' if m is None or round(m, 3) > round(r, 3) else ' !'):>24}"
                out.append(row)
        for a, (w, n) in verdict.items():
            out.append(f"  {a} beats random in {w} of {n} (problem, budget) cells"
                       f"{'' if w == n else ' (! marks the others)'}")
    return "\n".join(out)


def load_runs(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Finished runs in the log, by (agent, problem, seed): the latest code's, the longest of
    those (a later line with another code hash replaces what came before)."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    if not path.exists():
        return runs
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (r["agent"], r["problem"], int(r["seed"]))
        except (ValueError, KeyError) as exc:
            sys.exit(f"{path}:{n}: not a run record ({exc}); remove the line or start anew with --fresh")
        if "hv_ratio" in r:
            r["hv_ratio"] = {int(b): v for b, v in r["hv_ratio"].items()}
        old = runs.get(key)
        if old is None or r.get("code") != old.get("code") or \
                max(r.get("hv_ratio", {0: 0})) >= max(old.get("hv_ratio", {0: 0})):
            runs[key] = r
    return runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="budget 50, 2 seeds, zdt1 + digits-table")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--budgets", type=int, nargs="*", default=None, help="subset of 50 100 200")
    ap.add_argument("--agents", nargs="*", default=None, help="default: every registered agent")
    ap.add_argument("--problems", nargs="*", default=None, choices=list(PROBLEMS))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS, help="the table as CSV (one row per run and budget)")
    ap.add_argument("--runs", type=Path, default=RUNS, help="log of finished runs (JSON lines)")
    ap.add_argument("--fresh", action="store_true", help="discard the log and run everything")
    ap.add_argument("--table-only", action="store_true", help="table the log; run nothing")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = ap.parse_args(argv)
    budgets = tuple(args.budgets or ((50,) if args.quick else DEFAULT_BUDGETS))
    seeds = args.seeds or (2 if args.quick else 5)
    problems = args.problems or (["zdt1", "digits-table"] if args.quick else list(PROBLEMS))
    if args.quick:  # the smoke test leaves the full results alone
        if args.runs == RUNS:
            args.runs = RUNS.with_name("bench_agents_quick_runs.jsonl")
        if args.out == RESULTS:
            args.out = RESULTS.with_name("bench_agents_quick.csv")
    if args.fresh and args.runs.exists():
        args.runs.unlink()
    done = load_runs(args.runs)
    agents = args.agents or (sorted({a for a, _, _ in done}) if args.table_only else sorted(AGENTS))
    wanted = [(a, p, s, max(budgets)) for p in problems for a in agents for s in range(seeds)]

    codes = {(a, p): code_hash(a, p) for a in agents for p in problems if a in AGENTS}

    def have(t: tuple[str, str, int, int], *, current: bool = True) -> bool:
        r = done.get(t[:3])
        if r is None or (current and r.get("code") != codes.get(t[:2])):
            return False  # not run, or run by code that has changed since
        return "error" in r or max(r["hv_ratio"]) >= t[3]

    stale = [t for t in wanted if have(t, current=False) and not have(t)]
    missing = [t for t in wanted if not have(t)]
    tasks = [] if args.table_only else missing
    # seed by seed (an interrupted benchmark has every agent on the same seeds), the slowest first
    # within a seed, so the pool does not end on one long run
    tasks.sort(key=lambda t: (t[2], "gp" not in t[0], "rl" not in t[0], "skopt" not in t[0]))
    print(f"{len(wanted)} runs ({len(agents)} agents x {len(problems)} problems x {seeds} seeds), "
          f"budgets {budgets}: {len(wanted) - len(missing)} in {args.runs}, {len(tasks)} to run "
          f"({len(stale)} of them because the code changed) on {args.workers} workers", flush=True)
    import multiprocessing as mp

    t0 = time.monotonic()
    args.runs.parent.mkdir(parents=True, exist_ok=True)
    if tasks:
        with mp.get_context("fork").Pool(args.workers, initializer=_init_worker) as pool, \
                args.runs.open("a") as log:
            for i, r in enumerate(pool.imap_unordered(run_one, tasks), 1):
                # the hash of the code when the benchmark started (a source file edited while a
                # run goes on would otherwise be read back by the worker)
                r["code"] = codes[(r["agent"], r["problem"])]
                log.write(json.dumps(r) + "\n")
                log.flush()
                done[(r["agent"], r["problem"], r["seed"])] = r
                if i % 10 == 0 or i == len(tasks):
                    spent = time.monotonic() - t0
                    # slowest runs go first, so this over-estimates what is left
                    print(f"  {i}/{len(tasks)} runs, {spent:.0f}s, at most "
                          f"~{spent / i * (len(tasks) - i) / 60:.0f} min left", flush=True)
    results = [done[t[:3]] for t in wanted if have(t, current=not args.table_only)]
    if len(results) < len(wanted):
        print(f"  {len(wanted) - len(results)} runs are not in the log: the table leaves them out")
    if args.table_only and stale:
        print(f"  {len(stale)} tabled runs are STALE (the agent's code changed since): run without "
              f"--table-only to re-run them")
    rows, table = summarize(results, budgets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["problem", "agent", "budget", "seed", "hv_ratio",
                                          "overhead_ms"])
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["problem"], r["agent"], r["budget"], r["seed"])))
    print(f"\nhypervolume ratio to the true front (median [min, max] over {seeds} seeds); "
          f"CPU ms/sugg = agent's CPU time per suggestion (median over seeds of the run's mean)\n")
    print(table)
    if args.markdown and rows:
        print("\n" + markdown(rows, budgets))
    if rows:  # the same tables next to the CSV, for reading without running anything
        md = args.out.with_suffix(".md")
        md.write_text(f"# {Path(__file__).name}: {len(results)} runs, {seeds} seeds\n\n"
                      f"{markdown(rows, budgets)}\n\n```\n{table}\n```\n")
    print(f"\nwrote {args.out} ({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
