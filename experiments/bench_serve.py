"""Load test of `autotune serve` with hot swaps: prints requests, failures, p50/p95 per phase.

    python experiments/bench_serve.py [--seconds 6] [--threads 8] [--trials 4]

Runs the tiny test job (digits MLP, a few trials) in a temporary folder, exports two trials,
serves the first on 127.0.0.1 (free port) and hammers /predict from N keep-alive client threads:
  1. folder swap: the second trial is exported into the served bundle folder mid-run;
  2. alias swap: the server follows models:/bench@live and the alias is moved mid-run.
A failure is any non-200 answer or connection error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # this checkout's autotune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--trials", type=int, default=4)
    args = ap.parse_args()

    import numpy as np
    from conftest import TINY_JOB

    from autotune.deploy.export import pick_trial, register_bundle, set_alias, write_bundle
    from autotune.deploy.serve import ModelServer, load_test
    from autotune.spec import load_job
    from autotune.tuner import run

    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        shutil.copy(HERE / "digits_model.py", root / "digits_model.py")
        warm = ("agent: {name: tpe, seed: 1, warm_start: ["
                "{runtime: onnxruntime, quantization: fp32, pruning_ratio: 0.0, batch_size: 8, threads: 1},"
                "{runtime: onnxruntime, quantization: int8_dynamic, pruning_ratio: 0.3, batch_size: 1, "
                "threads: 1}]}")
        text = TINY_JOB.replace("MAXTRIALS", str(args.trials)).replace("agent: {name: tpe, seed: 1}", warm)
        (root / "job.yaml").write_text(textwrap.dedent(text).lstrip())
        job = load_job(root / "job.yaml")
        print(f"tuning {args.trials} trials ...", flush=True)
        run(job)
        a, b = pick_trial(job, 0), pick_trial(job, 1)
        body = json.dumps({"inputs": [np.linspace(0, 1, 64).tolist()]}).encode()

        served = root / "served"
        write_bundle(job, a, served)
        with ModelServer(served, port=0, poll_interval=1.0) as srv:
            base = load_test(srv.url, body, seconds=args.seconds / 2, threads=args.threads)
            print(f"steady (trial {a.number}, batch {a.config['batch_size']}): {base.line()}")
            rep = load_test(srv.url, body, seconds=args.seconds, threads=args.threads,
                            events=((args.seconds / 3, lambda: write_bundle(job, b, served)),))
            print(f"folder swap trial {a.number} -> {b.number}: {rep.line()}  swaps={srv.swaps}")
            print(f"  batcher: {srv.batcher.items} items in {srv.batcher.batches} predict calls")

        bundles = {t.number: root / f"b{t.number}" for t in (a, b)}
        for t in (a, b):
            write_bundle(job, t, bundles[t.number])
        regs = [register_bundle(bundles[t.number], tracking_uri=job.tracking_uri, name="bench",
                                alias=None, artifacts=job.out_dir / "mlartifacts") for t in (a, b)]
        set_alias(job.tracking_uri, "bench", "live", regs[0].version)
        with ModelServer("models:/bench@live", port=0, poll_interval=1.0,
                         tracking_uri=job.tracking_uri) as srv:
            move = lambda: set_alias(job.tracking_uri, "bench", "live", regs[1].version)  # noqa: E731
            rep2 = load_test(srv.url, body, seconds=args.seconds, threads=args.threads,
                             events=((args.seconds / 3, move),))
            print(f"alias swap v{regs[0].version} -> v{regs[1].version}: {rep2.line()}  "
                  f"swaps={srv.swaps}")
        bad = rep.failures + rep2.failures + base.failures
        print(f"total failures: {bad}")
        sys.exit(1 if bad else 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
