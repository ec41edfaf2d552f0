"""Does the tuning measurement rank configurations as the server does?  Generation bundles
measured in-process the way a trial is (``serve_pass`` on the job's workload) with the clients'
first requests all at one instant and no turnaround (the measurement before
``workload.turnaround_ms``), with the job's turnaround, and served by ``autotune serve`` to the
official ``openai`` client (experiments/bench_llm.py's (d)), in interleaved rounds (the order
rotates every round).  ``BUNDLE:key=value,...`` serves a copy of BUNDLE whose engine settings
(generation.yaml and the manifest, re-sealed) have those values, e.g. ``qwen20:batch_wait_ms=10``.

For each way of serving it prints each bundle's output tokens/s (median over rounds) and, per
round, each bundle's tokens/s over each later one's: the ranking the tuner would see against the
ranking a client gets.

    python experiments/bench_arrivals.py experiments/qwen-cpu.yaml BUNDLE BUNDLE... [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm import _free_port, _wait_http, client_pass, inproc_pass


def variant(spec: str, out: Path) -> str:
    """``PATH`` as it is, or ``PATH:key=value,...``: a copy of the bundle with those settings."""
    import hashlib
    import json
    import shutil

    import yaml

    from autotune.deploy.bundle import write_manifest

    path, _, sets = spec.partition(":")
    if not sets:
        return path
    dest = out / f"{Path(path).name}-{sets.replace('=', '').replace(',', '-')}"
    shutil.copytree(path, dest)
    gen = yaml.safe_load((dest / "generation.yaml").read_text())
    manifest = json.loads((dest / "manifest.json").read_text())
    for kv in sets.split(","):
        k, v = kv.split("=")
        gen["settings"][k] = gen["config"][k] = manifest["settings"][k] = \
            manifest["config"][k] = yaml.safe_load(v)
    raw = yaml.safe_dump(gen, sort_keys=False).encode()
    (dest / "generation.yaml").write_bytes(raw)
    manifest["files"]["generation.yaml"] = {"sha256": hashlib.sha256(raw).hexdigest(),
                                            "bytes": len(raw)}
    write_manifest(dest, manifest)
    return str(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("job")
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    from autotune.deploy.genserve import GenerationService
    from autotune.job.spec import load_job
    from autotune.measure.harness.hostlock import measurement_lock
    from autotune.measure.workloads.generation import load_generation_workload

    job = load_job(args.job)
    wl = load_generation_workload(job)
    instant = replace(wl, turnaround_s=0.0)
    slo = (wl.slo_ttft_s, wl.slo_tpot_s)
    prompts = [(i, wl.prompts[i % len(wl.prompts)], n) for i, (_, n) in enumerate(wl.items)]
    modes = ("instant", f"turnaround {wl.turnaround_s * 1000:g} ms", "served")
    runs: dict[tuple[str, str], Any] = {}
    procs: list[subprocess.Popen] = []
    names = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-arrivals-"))
    try:
        for b in (variant(spec, tmp) for spec in args.bundles):
            service = GenerationService(b, process=False)
            service.close(drain_s=0)
            engine, tok, threads = service.engine, service.tokenizer, service.settings.threads or 1
            name = Path(b).name
            names.append(name)
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", b, "--port",
                                     str(port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            procs.append(proc)
            _wait_http(f"http://127.0.0.1:{port}/health", proc)
            url = f"http://127.0.0.1:{port}/v1"
            runs[name, modes[0]] = (lambda e=engine, t=tok, n=threads:
                                    inproc_pass(e, instant, t, slo, n))
            runs[name, modes[1]] = (lambda e=engine, t=tok, n=threads:
                                    inproc_pass(e, wl, t, slo, n))
            runs[name, modes[2]] = lambda u=url: client_pass(u, job.name, prompts,
                                                             wl.concurrency, slo)
        load = os.getloadavg()
        for fn in runs.values():  # warm-up
            fn()
        keys = list(runs)
        got: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
        t0 = time.perf_counter()
        with measurement_lock():
            for r in range(args.rounds):
                for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                    out = runs[k]()
                    if out["errors"]:
                        raise RuntimeError(f"{k}: {out['errors'][0]}")
                    got[k].append(out["tokens_per_s"])
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    print(f"job {job.name}: {len(wl.items)} requests, concurrency {wl.concurrency}; "
          f"{args.rounds} interleaved rounds ({wall:.0f} s); load average before {load[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f} (1 min)")
    for mode in modes:
        print(f"{mode}: " + "; ".join(f"{n} {statistics.median(got[n, mode]):.0f} tokens/s"
                                      for n in names))
        for i, one in enumerate(names):
            for other in names[i + 1:]:
                rows = [a / b for a, b in zip(got[one, mode], got[other, mode], strict=True)]
                print(f"  {one} / {other} per round: {', '.join(f'{x:.2f}' for x in rows)} "
                      f"(median {statistics.median(rows):.2f}, {sum(x > 1 for x in rows)} of "
                      f"{len(rows)} above 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
