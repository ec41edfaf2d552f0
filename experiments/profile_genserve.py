"""Where a served generation bundle loses time against its engine in-process: engine steps, CPU
per thread and request turnaround, the same requests both ways.

The bundle is served by ``autotune serve``'s server in this process (the engine in its thread, as
by default), driven by the official ``openai`` client in a child process: ``--clients`` threads
sharing one client (built before the clock starts), each streaming its next request when the
previous one ended.  Then the same engine serves the same requests in-process
(``ClosedLoop`` with no turnaround: the engine alone, each next request there at once;
the tuning measurement adds the workload's ``turnaround_ms``).  Per pass it prints:

- engine steps: how many, wall and CPU time (``time.thread_time``) per step, rows per step, and
  the share of the pass the engine was stepping (the rest it waited for requests);
- CPU per pass of the engine thread, the event loop thread and the client process;
- turnaround (``time.perf_counter`` is the same clock in both processes): the client's create →
  the server's submit; submit → the engine's first token; an engine end → the next submit
  (in-process the next request is there at once).

    python experiments/profile_genserve.py BUNDLE [--passes 4] [--clients 8] [--requests 16]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

_CLIENT = r"""
import json, queue, sys, threading, time
import openai
url, prompts, limits, clients, passes = sys.argv[1], *json.loads(sys.argv[2])
client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
log = []

def one_pass():
    todo = queue.Queue()
    for i in range(len(prompts)):
        todo.put(i)

    def worker():
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            for _ in client.completions.create(model="m", prompt=prompts[i], max_tokens=limits[i],
                                               temperature=0, stream=True):
                pass
            log.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

one_pass()  # warm-up
log.clear()
print("READY", flush=True)
sys.stdin.readline()
t = time.process_time()
walls = []
for _ in range(passes):
    t0 = time.perf_counter()
    one_pass()
    walls.append(time.perf_counter() - t0)
print(json.dumps({"log": log, "cpu": time.process_time() - t, "walls": walls}), flush=True)
"""


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    s = sorted(xs)
    return f"p50 {statistics.median(s) * 1e3:.1f} ms, p90 {s[int(len(s) * 0.9)] * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args(argv)

    import psutil

    sys.path.insert(0, str(HERE))
    import glm_model

    from autotune.deploy.serve import ModelServer
    from autotune.measure.workloads.engine import ClosedLoop

    random.seed(0)
    prompts = glm_model.prompts(args.requests)
    limits = [random.randint(8, 32) for _ in prompts]
    load0 = os.getloadavg()[0]
    srv = ModelServer(args.bundle, port=0, poll_interval=0)
    srv.start()
    svc = srv.served.predictor
    eng = svc.engine
    steps: list[tuple[float, float, int]] = []  # wall, cpu, rows
    step = eng._continuous_step if eng.settings.batching == "continuous" else eng._static_batch

    def timed(source: Any) -> None:
        t, c = time.perf_counter(), time.thread_time()
        rows = len(eng._rows) + min(len(eng._queue), eng.settings.max_batch - len(eng._rows))
        step(source)
        steps.append((time.perf_counter() - t, time.thread_time() - c, rows))

    setattr(eng, "_continuous_step" if eng.settings.batching == "continuous" else "_static_batch",
            timed)
    subs: list[float] = []
    ends: list[float] = []
    firsts: list[float] = []
    submit = svc.submit

    def traced(ids: list[int], n: int, on_token: Any, on_finish: Any) -> Any:
        def token(r: Any, t: int) -> None:
            if len(r.tokens) == 1:
                firsts.append(r.token_times[0] - r.arrival)
            if on_token is not None:
                on_token(r, t)

        def finish(r: Any) -> None:
            ends.append(time.perf_counter())
            on_finish(r)

        req = submit(ids, n, token, finish)
        subs.append(req.arrival)
        return req

    svc.submit = traced
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"{srv.url}/v1",
         json.dumps([prompts, limits, args.clients, args.passes])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdin is not None
    while "READY" not in client.stdout.readline():
        pass
    names = {t.native_id: t.name for t in threading.enumerate()}
    me = psutil.Process()
    cpu0 = {t.id: t.user_time + t.system_time for t in me.threads()}
    steps.clear()
    subs.clear()
    ends.clear()
    firsts.clear()
    client.stdin.write("\n")
    client.stdin.flush()
    out = json.loads(client.stdout.readline())
    cpu1 = {t.id: t.user_time + t.system_time for t in me.threads()}
    client.wait(30)
    served_steps = list(steps)
    per_thread = {names.get(k, str(k)): v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    svc.close(drain_s=0)  # the engine thread stops; the same engine now runs here
    tok = svc.tokenizer
    items = [(list(tok(p)["input_ids"]), n) for p, n in zip(prompts, limits, strict=True)]
    eng.run(ClosedLoop(items, args.clients))  # warm-up
    steps.clear()
    walls = []
    c = time.thread_time()
    for _ in range(args.passes):
        t0 = time.perf_counter()
        eng.run(ClosedLoop(items, args.clients))
        walls.append(time.perf_counter() - t0)
    inproc_cpu = time.thread_time() - c
    srv.stop()

    tokens = sum(limits)
    print(f"bundle {args.bundle}: {svc.settings}; {len(prompts)} requests ({tokens} tokens) from "
          f"{args.clients} clients, {args.passes} passes; load average before {load0:.2f}, "
          f"after {os.getloadavg()[0]:.2f} (1 min)")
    for name, st, w in (("served", served_steps, out["walls"]), ("in-process", list(steps), walls)):
        n = len(st) / args.passes
        busy = sum(s[0] for s in st) / sum(w)
        print(f"{name:10s}: {tokens / statistics.median(w):6.0f} tokens/s (median pass "
              f"{statistics.median(w) * 1e3:.0f} ms); {n:.1f} engine steps per pass, "
              f"{statistics.mean(s[0] for s in st) * 1e3:.2f} ms wall / "
              f"{statistics.mean(s[1] for s in st) * 1e3:.2f} ms CPU per step, "
              f"{statistics.mean(s[2] for s in st):.2f} rows per step, engine stepping "
              f"{busy:.0%} of the pass")
    engine_cpu = next((v for k, v in per_thread.items() if k.startswith("autotune-gen")), 0.0)
    loop_cpu = next((v for k, v in per_thread.items() if k == "autotune-http"), 0.0)
    print(f"CPU per pass: served engine thread {engine_cpu / args.passes * 1e3:.0f} ms, event "
          f"loop thread {loop_cpu / args.passes * 1e3:.0f} ms, openai client process "
          f"{out['cpu'] / args.passes * 1e3:.0f} ms; engine in-process "
          f"{inproc_cpu / args.passes * 1e3:.0f} ms")
    ordered = sorted(subs)
    create = [ordered[i] - t0 for t0, _ in out["log"]
              if (i := bisect.bisect_left(ordered, t0)) < len(ordered)]
    done = sorted(ends)
    turn = [s - done[i] for s in ordered if (i := bisect.bisect_left(done, s) - 1) >= 0
            and s - done[i] < 1.0]
    print(f"turnaround (served): client create -> server submit {_ms(create)}; submit -> the "
          f"engine's first token {_ms(firsts)}; an engine end -> the next submit {_ms(turn)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
