"""How good are autotune's measurements on this machine?  Run: ``python experiments/bench_harness.py``.

Prints (and writes to ``experiments/results/bench_harness.csv``):

1. repeatability: the coefficient of variation of p50 over 5 re-measurements of one configuration
   by ``Evaluator.evaluate`` inside one job (target <= 3 %), and a verdict
   (``stats.repeatability``) that is "stable" only when the p50s agree *between* runs (half-range
   within ``measurement.target_ci``), each run is stable on its own, and no run was contended
   (it says which of these failed);
2. comparisons: the spread of the latency ratio of two configurations measured alternately
   (``stats.alternate`` + ``stats.ratio_spread``), with a verdict that says when the rounds ran
   contended;
3. overhead: for one predictor, a bare ``perf_counter`` loop vs ``stats.measure`` vs the wall time
   of a full ``Evaluator.evaluate`` (build, quality, timing, FLOPs/roofline, the rest).

``--transformer`` (``experiments/bench_transformer.csv``): on the transformer example, fp32 vs int8
(ONNX Runtime dynamic quantization) and unpruned vs pruned, latency ratios measured alternately and
the accuracy lost.  Compare figures only within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

RESULTS = HERE / "results"


def _job(yaml_name: str, out_dir: str):  # type: ignore[no-untyped-def]
    from autotune.job.spec import load_job

    job = load_job(HERE / yaml_name)
    return job.model_copy(update={"output_dir": out_dir})


def _row(rows: list[dict[str, Any]], section: str, name: str, value: float, unit: str,
         note: str = "") -> None:
    rows.append({"section": section, "name": name, "value": value, "unit": unit, "note": note})


def _print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    w = max(len(r["name"]) for r in rows) + 2
    sec = None
    for r in rows:
        if r["section"] != sec:
            sec = r["section"]
            print(f"  [{sec}]")
        v = r["value"]
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"    {r['name']:<{w}} {text:>12} {r['unit']:<8} {r['note']}")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["section", "name", "value", "unit", "note"])
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten: {path.relative_to(HERE.parent)}")


def _machine_note() -> str:
    from autotune.measure.harness.hardware import fingerprint

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{fingerprint().short()} · load average {load:.2f}"


def bench_harness(out_dir: str, repeats: int, rounds: int) -> list[dict[str, Any]]:
    from autotune.measure.harness import contention
    from autotune.measure.harness.stats import (
        LatencyStats,
        alternate,
        cv,
        measure,
        ratio_spread,
        repeatability,
    )
    from autotune.measure.workloads.forward import Evaluator

    job = _job("digits-cpu.yaml", out_dir)
    m = job.measurement
    ev = Evaluator(job)
    rows: list[dict[str, Any]] = []
    cfg_a = {"runtime": "onnxruntime", "quantization": "fp32", "batch_size": 16, "threads": 1}
    cfg_b = {"runtime": "onnxruntime", "quantization": "int8_dynamic", "batch_size": 16,
             "threads": 1}
    ev.evaluate(cfg_a)  # export, caches, peak FLOP/s: once, outside the figures

    # 1. repeatability of p50 inside one job: the verdict looks at the spread between the runs
    # (each run can be stable on its own while the machine moves its p50 from run to run) and at
    # whether any run ran contended
    runs, busy, walls = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = ev.evaluate(cfg_a)
        walls.append(time.perf_counter() - t0)
        runs.append(LatencyStats.from_dict(r.details["latency"]))
        busy.append(bool((r.details.get("contention") or {}).get("contended")))
    p50s = [s.p50_ms for s in runs]
    rep = repeatability(runs, m.target_ci, busy)
    sec = f"1. p50 over {repeats} re-measurements (ORT fp32, batch 16, 1 thread)"
    _row(rows, sec, "p50 median", statistics.median(p50s), "ms")
    _row(rows, sec, "p50 min..max", f"{min(p50s):.4f}..{max(p50s):.4f}", "ms")
    _row(rows, sec, "p50 CV", 100 * cv(p50s), "%", "target <= 3 %")
    _row(rows, sec, "p50 half-range / median", 100 * rep["spread_rel"], "%",
         f"target <= {100 * m.target_ci:g} % (measurement.target_ci)")
    _row(rows, sec, "runs stable on their own", f"{rep['own_stable']}/{repeats}", "")
    _row(rows, sec, "runs contended", f"{rep['contended']}/{repeats}", "")
    _row(rows, sec, "verdict", "stable" if rep["stable"] else "UNSTABLE", "", rep["verdict"])

    # 2. ratio of two configurations measured alternately
    pa, _ = ev._build(cfg_a)
    pb, _ = ev._build(cfg_b)
    batch = ev.workload.batch(16)
    kw = {"warmup": m.warmup, "min_repeats": m.min_repeats, "max_repeats": m.max_repeats,
          "target_ci": m.target_ci, "max_time_s": m.max_time_s}
    with contention.watch() as seen:
        res = alternate({"int8": lambda: pb(batch), "fp32": lambda: pa(batch)}, rounds, **kw)
    spread = ratio_spread(res["int8"], res["fp32"])
    sec = f"2. latency ratio int8/fp32 (ORT, batch 16), {rounds} alternating rounds"
    _row(rows, sec, "ratio median", spread["median"], "")
    _row(rows, sec, "ratio min..max", f"{spread['min']:.4f}..{spread['max']:.4f}", "")
    _row(rows, sec, "ratio CV", 100 * spread["cv"], "%")
    _row(rows, sec, "p50 CV fp32 across rounds", 100 * cv([s.p50_ms for s in res["fp32"]]), "%")
    half = (spread["max"] - spread["min"]) / 2 / spread["median"]
    why = [f"ratio varies +-{half:.1%} between rounds (target +-{m.target_ci:.0%})"] \
        if half > m.target_ci else []
    if seen.result is not None and seen.result.contended:
        why.append(f"contended: {seen.result.describe()}")
    _row(rows, sec, "verdict", "UNSTABLE" if why else "stable", "", "; ".join(why))

    _print_table("autotune measurement benchmark: harness (sections 1-2)", rows)  # as they come
    # 3. overhead: the same predictor three ways
    st = measure(lambda: pa(batch), **kw)
    n = st.n
    import numpy as np

    samples = np.empty(n)
    pc = time.perf_counter
    for _ in range(m.warmup):
        pa(batch)
    t_all = pc()
    for i in range(n):
        t0 = pc()
        pa(batch)
        samples[i] = pc() - t0
    bare_wall = pc() - t_all
    sec = "3. harness overhead (ORT fp32, batch 16, 1 thread)"
    _row(rows, sec, "bare loop p50", 1e3 * float(np.median(samples)), "ms", f"{n} calls")
    _row(rows, sec, "stats.measure p50", st.p50_ms, "ms", f"{n} samples ({st.stop_reason})")
    _row(rows, sec, "measure p50 / bare p50", st.p50_ms / (1e3 * float(np.median(samples))), "")
    _row(rows, sec, "bare loop wall", bare_wall, "s")
    _row(rows, sec, "stats.measure wall", st.elapsed_s, "s", f"incl. {st.warmup} warm-up calls")
    cold = measure(lambda: pa(batch), **{**kw, "warmup": 0, "warmup_s": 0.0})
    per_call = (cold.elapsed_s - cold.n * cold.mean_ms / 1e3) / cold.n
    _row(rows, sec, "measure bookkeeping/sample", 1e6 * per_call, "us",
         f"(wall - sum of samples) / n, no warm-up, {cold.n} samples")
    r = ev.evaluate(cfg_a)
    t = r.details["timings_s"]
    total = r.details["elapsed_s"]
    known = t["build_s"] + t["quality_s"] + t["lock_wait_s"] + t["measure_s"]
    _row(rows, sec, "evaluate wall", total, "s")
    for k in ("build_s", "quality_s", "lock_wait_s", "measure_s"):
        _row(rows, sec, f"  {k.removesuffix('_s')}", t[k], "s", f"{100 * t[k] / total:.0f} %")
    _row(rows, sec, "  rest (FLOPs, cost, memory)", total - known, "s",
         f"{100 * (total - known) / total:.0f} %")

    from autotune.measure.harness.isolate import IsolatedHarness
    from autotune.measure.workloads.registry import evaluator_for

    with IsolatedHarness(job, evaluator=evaluator_for) as h:
        t0 = time.perf_counter()
        h.evaluate(cfg_a)  # child start, imports, workload
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        r2 = h.evaluate(cfg_a)
        second = time.perf_counter() - t0
    _row(rows, sec, "isolated call, fresh child", first, "s", "spawn + imports + model")
    _row(rows, sec, "isolated call, warm child", second, "s",
         f"evaluate inside: {r2.details['elapsed_s']:.3f} s")
    return rows


def bench_transformer(out_dir: str, rounds: int, threads: int) -> list[dict[str, Any]]:
    from autotune.measure.harness.stats import alternate, ratio_spread
    from autotune.measure.workloads.forward import HARNESS_PARAMS, Evaluator

    job = _job("transformer-cpu.yaml", out_dir)
    m = job.measurement
    ev = Evaluator(job)
    base = {"runtime": "onnxruntime", "quantization": "fp32", "pruning_ratio": 0.0,
            "batch_size": 8, "threads": threads}
    variants: dict[str, Mapping[str, Any]] = {
        "fp32": base,
        "int8 dynamic (ORT)": {**base, "quantization": "int8_dynamic"},
        "pruned 50 % (L1 unstructured)": {**base, "pruning_ratio": 0.5},
    }
    if "pruning_method" in HARNESS_PARAMS:  # structured pruning, where the harness has it
        variants["pruned 50 % structured"] = {**base, "pruning_ratio": 0.5,
                                              "pruning_method": "structured"}
    rows: list[dict[str, Any]] = []
    quality, predictors, results = {}, {}, {}
    for name, cfg in variants.items():
        try:
            r = ev.evaluate(cfg)
        except Exception as exc:  # a variant this branch cannot build: say so, go on
            _row(rows, "failed", name, float("nan"), "", str(exc)[:100])
            continue
        results[name] = r
        quality[name] = r.metrics["quality"]
        predictors[name], _ = ev._build(cfg)
    batch = ev.workload.batch(base["batch_size"])
    kw = {"warmup": m.warmup, "min_repeats": m.min_repeats, "max_repeats": m.max_repeats,
          "target_ci": m.target_ci, "max_time_s": m.max_time_s}
    sec = f"transformer (2 layers, d 128, 64 tokens), ORT, batch 8, {threads} threads"
    _row(rows, sec, "fp32 accuracy", quality["fp32"], "")
    _row(rows, sec, "fp32 p50", results["fp32"].metrics["latency_p50_ms"], "ms")
    _row(rows, sec, "fp32 achieved", results["fp32"].metrics.get("achieved_gflops", 0.0),
         "GFLOP/s", f"{results['fp32'].metrics.get('roofline_pct', 0.0):.1f} % of measured peak")
    for name in variants:
        if name == "fp32" or name not in predictors:
            continue
        res = alternate({name: (lambda p=predictors[name]: p(batch)),
                         "fp32": lambda: predictors["fp32"](batch)}, rounds, **kw)
        s = ratio_spread(res[name], res["fp32"])
        sec = f"{name} vs fp32, {rounds} alternating rounds"
        _row(rows, sec, "latency ratio median", s["median"], "", "< 1 = faster")
        _row(rows, sec, "latency ratio min..max", f"{s['min']:.3f}..{s['max']:.3f}", "")
        _row(rows, sec, "latency ratio CV", 100 * s["cv"], "%")
        _row(rows, sec, "accuracy", quality[name], "")
        _row(rows, sec, "accuracy drop", quality["fp32"] - quality[name], "",
             "points of accuracy (0.01 = 1 %)")
        _row(rows, sec, "model size", results[name].metrics["model_size_mb"], "MiB",
             f"fp32: {results['fp32'].metrics['model_size_mb']:.2f} MiB")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transformer", action="store_true", help="the transformer comparisons")
    ap.add_argument("--repeats", type=int, default=5, help="re-measurements for the CV")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds for the ratios")
    ap.add_argument("--threads", type=int, default=1, help="threads of the transformer configs")
    ap.add_argument("--out", default=None, help="job output folder (default: a temp dir)")
    args = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        out = args.out or tmp
        print(f"machine: {_machine_note()}")
        if args.transformer:
            rows = bench_transformer(out, args.rounds, args.threads)
            _print_table("autotune measurement benchmark: transformer example", rows)
            _write_csv(RESULTS / "bench_transformer.csv", rows)
        else:
            rows = bench_harness(out, args.repeats, args.rounds)
            _print_table("autotune measurement benchmark: harness", rows)
            _write_csv(RESULTS / "bench_harness.csv", rows)
        print(f"machine after: {_machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
