"""Load test of `autotune serve`: hot swaps, 200 concurrent clients, and a malformed-request corpus.

    python experiments/bench_serve.py [--seconds 6] [--threads 8] [--trials 4]
                                      [--clients 200] [--load-seconds 10] [--bundle DIR]

Runs the tiny test job (digits MLP, a few trials) in a temporary folder (or serves --bundle),
exports two trials and, on 127.0.0.1 only:
  1. folder swap: N keep-alive client threads hammer /predict while the second trial is exported
     into the served bundle folder (in-process server); a failure is any non-200 or error;
  2. alias swap: the same while the server follows models:/bench@live and the alias moves;
  3. concurrency: `autotune serve` in a child process, 200 asyncio clients for 10 s with the
     default limits, then with --max-inflight 32 (overload must be answered 503 + Retry-After):
     connection resets, connections closed without an answer, throughput, p50/p99, 503s;
  4. malformed corpus (oversized, slow and truncated bodies, deep nesting, [[{"a":1}]], null,
     NaN, wrong shape/dtype/names, bad JSON, wrong content-type, unknown route, missing token,
     ...): each must be answered 4xx with a JSON error within 1 s (the child runs with
     --body-timeout 0.5 so that slow bodies are cut off within that second);
  5. SIGTERM: the child drains and exits 0.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]  # this checkout's autotune


def start_server(bundle: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`autotune serve` in a child process on a free loopback port; returns it and its URL."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", str(bundle), "--port", "0",
                             "--poll-interval", "0", *extra], stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    line = ""
    while "serving" not in line:
        line = proc.stderr.readline()
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"autotune serve did not start: {line}")
    m = re.search(r"on (http://\S+) ", line)
    assert m, line
    url = m[1]
    while True:  # the socket is bound before the line; wait until uvicorn answers
        try:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=2).read()
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def concurrency_and_corpus(bundle: Path, clients: int, seconds: float) -> int:
    """Phases 3-5; returns the number of failed checks."""
    import numpy as np

    from autotune.deploy.serve import concurrent_load, malformed_corpus, probe

    bad = 0
    max_body = 1 << 20
    token = "bench-token"
    for label, extra in (("default limits", ()), ("--max-inflight 32", ("--max-inflight", "32"))):
        proc, url = start_server(bundle, "--admin-token", token, "--body-timeout", "0.5",
                                 "--max-body-bytes", str(max_body), *extra)
        try:
            meta = json.loads(urllib.request.urlopen(url + "/v2/models/" + _name(url)).read())
            width = int(np.prod([d for d in meta["inputs"][0]["shape"][1:] if d > 0]))
            body = json.dumps({"inputs": [np.linspace(0, 1, width).tolist()]}).encode()
            rep = concurrent_load(url, body, clients=clients, seconds=seconds)
            print(f"{clients} clients, {label}: {rep.line()}", flush=True)
            broken = rep.resets + rep.no_answer + rep.timeouts + rep.connect_errors
            if broken or rep.retry_after_missing or set(rep.codes) - {200, 503}:
                print(f"  FAIL: {broken} broken connections, {rep.retry_after_missing} 503 without "
                      f"Retry-After; first errors: {list(rep.errors)[:3]}")
                bad += 1
            if label == "default limits":
                cases = malformed_corpus(url.split("//")[1], meta, max_body_bytes=max_body)
                results = probe(url, cases, timeout_s=5.0)
                slow = [r for r in results if r.seconds >= 1.0]
                failed = [r for r in results if not r.passed]
                print(f"malformed corpus: {len(results)} requests, "
                      f"{len(results) - len(failed)} answered 4xx JSON, {len(slow)} took >= 1 s, "
                      f"slowest {max(r.seconds for r in results) * 1000:.0f} ms")
                for r in results:
                    print(f"  {r.line()}")
                bad += bool(slow) + bool(failed)
                ok = urllib.request.urlopen(urllib.request.Request(
                    url + "/predict", data=body, headers={"Content-Type": "application/json"}))
                print(f"  after the corpus, /predict answers {ok.status}")
                bad += ok.status != 200
        finally:
            t0 = time.monotonic()
            rc = stop_server(proc)
            print(f"SIGTERM ({label}): exit status {rc} after {time.monotonic() - t0:.1f} s")
            bad += rc != 0
    return bad


def _name(url: str) -> str:
    return json.loads(urllib.request.urlopen(url + "/").read())["model"]


def swaps(args: argparse.Namespace, root: Path) -> tuple[int, Path]:
    """Phases 1-2 (in-process servers); returns the failures and a bundle for phases 3-5."""
    import numpy as np
    from conftest import TINY_JOB

    from autotune.deploy.export import pick_trial, register_bundle, set_alias, write_bundle
    from autotune.deploy.serve import ModelServer, load_test
    from autotune.job.spec import load_job
    from autotune.tuning.tuner import run

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
    failures = rep.failures + rep2.failures + base.failures
    print(f"swap phases: {failures} failed requests")
    return failures, bundles[a.number]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--load-seconds", type=float, default=10.0)
    ap.add_argument("--bundle", type=Path, default=None,
                    help="serve this bundle for phases 3-5 and skip tuning and the swap phases")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        bad = 0
        if args.bundle is None:
            bad, bundle = swaps(args, root)
        else:
            bundle = args.bundle.resolve()
        bad += concurrency_and_corpus(bundle, args.clients, args.load_seconds)
        print(f"failed checks: {bad}")
        sys.exit(1 if bad else 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
