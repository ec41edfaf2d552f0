"""Trials per hour against the number of workers on one PostgreSQL-backed study.

    eval "$(.ci/postgres.sh)"        # or any PostgreSQL URL in AUTOTUNE_TEST_POSTGRES_URL
    python experiments/cluster_bench.py --workers 1 3 --trials 24

Each run makes a fresh study of a light job (the quickstart MLP, small, short measurements), starts
N ``autotune worker`` processes on this machine and reports trials/hour over the tuning window
(first trial started -> last trial finished; process start-up, model training and the baseline
are reported separately as start-up seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

JOB = """
name: {name}
model:
  factory: digits_model:build
  options: {{hidden: 32, epochs: 2}}
evaluation:
  dataset: digits_model:validation_data
  metric: accuracy
  max_samples: 128
search_space:
  parameters:
    runtime: [onnxruntime, torch]
    quantization: [fp32, int8_dynamic]
    pruning_ratio: {{low: 0.0, high: 0.6, step: 0.1}}
    batch_size: [1, 4, 8, 16]
    threads: {{low: 1, high: 1}}
objectives: [latency_p95_ms, accuracy]
agent: {{name: random, seed: 0}}
budget: {{max_trials: {trials}}}
measurement: {{warmup: 2, min_repeats: 10, max_repeats: 200, max_time_s: 0.1}}
storage: {storage}
tracking: {{enabled: false}}
"""


def bench(n_workers: int, trials: int, storage: str) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    tmp = Path(tempfile.mkdtemp(prefix="autotune-bench-"))
    shutil.copy(ROOT / "experiments" / "digits_model.py", tmp / "digits_model.py")
    name = f"bench{n_workers}-{uuid.uuid4().hex[:8]}"
    (tmp / "job.yaml").write_text(JOB.format(name=name, trials=trials, storage=storage).lstrip())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "autotune.cli", "worker", str(tmp / "job.yaml"),
                               "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(n_workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed:\n{err[-2000:]}")
    wall = time.time() - t0
    done = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials()
            if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    first = min(t.datetime_start for t in done).timestamp()
    last = max(t.datetime_complete for t in done).timestamp()
    window = last - first
    shutil.rmtree(tmp, ignore_errors=True)
    return {"workers": n_workers, "trials": len(done), "window_s": window,
            "trials_per_hour": len(done) / window * 3600, "startup_s": first - t0, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--storage", default=os.environ.get("AUTOTUNE_TEST_POSTGRES_URL"))
    a = ap.parse_args()
    if not a.storage:
        raise SystemExit("give --storage postgresql+psycopg2://... or set AUTOTUNE_TEST_POSTGRES_URL")
    print(f"{'workers':>7} {'trials':>6} {'window s':>9} {'trials/h':>9} {'start-up s':>10}")
    for n in a.workers:
        r = bench(n, a.trials, a.storage)
        print(f"{r['workers']:>7} {r['trials']:>6} {r['window_s']:>9.1f} "
              f"{r['trials_per_hour']:>9.0f} {r['startup_s']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
