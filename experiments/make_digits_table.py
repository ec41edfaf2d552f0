"""Measure the digits model over the full grid of experiments/digits-grid.yaml with the real,
isolated harness and write experiments/data/digits_grid.csv (one row per configuration).

The benchmark replays this table (bench_agents.py, problem ``digits-table``): an agent "measures"
a configuration by looking its row up, so agents are compared on real measurements without paying
for them again.  Run once:  python experiments/make_digits_table.py
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from autotune.job.spec import load_job  # noqa: E402
from autotune.measure.harness.isolate import IsolatedHarness  # noqa: E402
from autotune.measure.workloads.registry import evaluator_for  # noqa: E402
from autotune.record.study import derive_metrics  # noqa: E402
from autotune.tuning.tuner import baseline_config  # noqa: E402

METRICS = ["latency_p50_ms", "latency_p95_ms", "throughput_ips", "accuracy", "accuracy_drop",
           "model_size_mb", "peak_memory_mb"]


def main(out: Path = HERE / "data" / "digits_grid.csv") -> None:
    job = load_job(HERE / "digits-grid.yaml")
    space = job.space
    grid = space.grid()
    print(f"{len(grid)} configurations", flush=True)
    t0 = time.monotonic()
    with IsolatedHarness(job, evaluator=evaluator_for) as harness:
        base = harness.evaluate(baseline_config(space, "torch"))
        baseline = derive_metrics(base.metrics, None, "accuracy", True)
        rows = []
        for i, config in enumerate(grid):
            result = harness.evaluate(config)
            m = derive_metrics(result.metrics, baseline, "accuracy", True)
            rows.append({**{p: config.get(p, "") for p in space.names},
                         **{k: round(float(m[k]), 6) for k in METRICS}})
            if i % 20 == 0:
                print(f"{i}/{len(grid)} {time.monotonic() - t0:.0f}s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*space.names, *METRICS])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows, {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
