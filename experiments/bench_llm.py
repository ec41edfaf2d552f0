"""Serving a language model to a client: the tuned bundle through ``autotune serve`` vs what people
run instead, side by side on the job's model and workload, in interleaved rounds.

Each round serves the job's whole workload (its prompts, output lengths and concurrency) once
with every contender, in turn:

(b)  ``generate`` batched by hand at the workload's concurrency, in this process (left padding,
     default cache and attention, torch's default threads): the baseline a careful user writes;
(b1) the same with one intra-op thread (on a busy 2-core machine, two threads can be 10x slower);
(c)  the tuned configuration in this process (``--trial N``, else the feasible trial of the
     job's study with the most output tokens/s);
(d)  the same trial exported (``autotune export``) and served by ``autotune serve`` in another
     process, driven by the official ``openai`` client: ``concurrency`` client threads, each
     streaming ``completions.create(..., temperature=0, stream=True)`` and sending its next
     request when served; TTFT and TPOT are measured at the client;
(d0) with ``--baseline-src DIR``: the same bundle served by ``autotune serve`` from the code in
     DIR (``PYTHONPATH=DIR``; e.g. ``git archive COMMIT | tar -x -C DIR``), for a before/after of
     the server side by side in the same rounds;
(s)  the ``openai`` client alone: the same client threads against a stub server that answers
     each request at once with the bytes (d) streamed for it (recorded before the rounds): what
     the client itself costs on this machine, the ceiling of any served figure here;
(e)  llama.cpp's own server (``python -m llama_cpp.server``, its default settings: one sequence at
     a time, n_ctx 2048, n_batch 512, its default threads; but ``--interrupt_requests false``:
     by default a new request cuts the streamed one short, so 8 concurrent clients got 1-2
     tokens each) on the model converted to GGUF Q8_0 (the usual CPU choice), driven the same
     way; skipped with the reason when it cannot run.

Figures: output tokens/s (tokens / wall time of the round), TTFT p50/p95, TPOT p50, goodput
(requests/s meeting the workload's SLO: TTFT <= slo.ttft_ms and TPOT <= slo.tpot_ms), and greedy
text agreement (share of requests whose text equals the unmodified model's greedy text, one
request at a time, fp32).

Ratios per round are printed against (b), (b1) and, for the served contenders, against (c):
what the server keeps of the engine it serves.

    python experiments/bench_llm.py experiments/glm-cpu.yaml [--rounds 5] [--trial N]
        [--baseline-src DIR] [--no-llama-server]
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): "
                               f"{proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def client_pass(base_url: str, model: str, items: list[tuple[int, str, int]], concurrency: int,
                slo: tuple[float, float], usage: bool = True) -> dict[str, Any]:
    """Serve the workload through an OpenAI-compatible server with the official client:
    ``concurrency`` closed-loop client threads, streaming; timings at the client.  A chunk may
    carry several tokens (a speculative step's), so tokens are counted from the usage the stream
    ends with (``usage``), else one per chunk."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    todo: queue.Queue[tuple[int, str, int]] = queue.Queue()
    for it in items:
        todo.put(it)
    out: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    extra = {"stream_options": {"include_usage": True}} if usage else {}

    def worker() -> None:
        while True:
            try:
                i, prompt, n = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            times: list[float] = []
            text = []
            count = None
            try:
                stream = client.completions.create(model=model, prompt=prompt, max_tokens=n,
                                                   temperature=0, stream=True, **extra)
                for chunk in stream:
                    if chunk.usage is not None:
                        count = chunk.usage.completion_tokens
                    if not chunk.choices:
                        continue
                    c = chunk.choices[0]
                    if c.text:
                        times.append(time.perf_counter())
                        text.append(c.text)
            except Exception as exc:  # counted, shown
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            out[i] = {"start": t0, "times": times, "text": "".join(text),
                      "n": count if count is not None else len(times)}

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max((r["times"][-1] for r in out.values() if r["times"]), default=time.perf_counter())
    tokens = sum(r["n"] for r in out.values())
    ttft = [r["times"][0] - r["start"] for r in out.values() if r["times"]]

    def tpot(r: dict[str, Any]) -> float | None:
        return (r["times"][-1] - r["times"][0]) / (r["n"] - 1) if r["n"] > 1 and r["times"] \
            else None

    tpots = [t for r in out.values() if (t := tpot(r)) is not None]
    good = sum(1 for r in out.values() if r["times"] and r["times"][0] - r["start"] <= slo[0]
               and ((t := tpot(r)) is None or t <= slo[1]))
    wall = end - start
    return {"tokens_per_s": tokens / wall, "ttft": ttft, "tpot": tpots, "goodput": good / wall,
            "texts": {i: r["text"] for i, r in out.items()}, "errors": errors}


def inproc_pass(engine: Any, wl: Any, tok: Any, slo: tuple[float, float],
                threads: int) -> dict[str, Any]:
    import torch

    from autotune.measure.workloads.generation import serve_pass

    torch.set_num_threads(threads)  # process-wide: each contender runs with its own
    p = serve_pass(engine, wl)
    good = sum(1 for a, b in zip(p.ttft_s, _tpots(p), strict=True)
               if a <= slo[0] and (b is None or b <= slo[1]))
    return {"tokens_per_s": p.tokens_per_s, "ttft": list(p.ttft_s), "tpot": list(p.tpot_s),
            "goodput": good / p.makespan_s, "errors": [],
            "texts": {i: tok.decode(list(t), skip_special_tokens=True)
                      for i, t in enumerate(p.tokens)}}


def _tpots(p: Any) -> list[float | None]:
    # PassResult keeps TPOTs of multi-token requests only; per request, in order
    out: list[float | None] = []
    it = iter(p.tpot_s)
    for toks in p.tokens:
        out.append(next(it) if len(toks) > 1 else None)
    return out


def pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


#: a stub OpenAI server: answers each completion at once with the bytes recorded for its
#: (prompt, max_tokens), in one chunked write (argv: port, the recordings' JSON file)
_STUB = r"""
import asyncio, json, sys
rec = json.load(open(sys.argv[2]))
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            body = json.loads(await r.readexactly(n))
            data = rec[json.dumps([body["prompt"], body["max_tokens"]])].encode()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


def record_streams(base_url: str, model: str, items: list[tuple[int, str, int]],
                   path: Path) -> None:
    """The server-sent event bytes the server streams for each (prompt, max_tokens)."""
    import json

    import httpx

    rec = {}
    for _, prompt, n in items:
        r = httpx.post(f"{base_url}/completions", timeout=600, json={
            "model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        r.raise_for_status()
        rec[json.dumps([prompt, n])] = r.text
    path.write_text(json.dumps(rec))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("job", nargs="?", default=str(Path(__file__).with_name("glm-cpu.yaml")))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trial", type=int, default=None, help="the tuned trial (default: the "
                    "feasible trial with the most output tokens/s)")
    ap.add_argument("--no-llama-server", action="store_true", help="leave out (e)")
    ap.add_argument("--baseline-src", default=None, help="(d0): also serve the bundle with "
                    "the autotune package in this folder (another checkout), side by side")
    args = ap.parse_args(argv)

    import torch

    default_threads = torch.get_num_threads()  # before anything sets it
    from autotune.deploy.export import export_bundle
    from autotune.job.spec import load_job
    from autotune.measure.harness.hostlock import measurement_lock
    from autotune.measure.workloads.generation import GenerationEvaluator
    from autotune.tuning.tuner import open_record

    job = load_job(args.job)
    views = open_record(job, create=False).trials()
    done = [t for t in views if t.state == "complete"]
    if args.trial is not None:
        tuned = next(t for t in done if t.number == args.trial)
    else:
        feasible = [t for t in done if t.feasible]
        if not feasible:
            print("the job has no feasible trial yet: run it first (autotune run JOB)")
            return 1
        tuned = max(feasible, key=lambda t: t.metrics["output_tokens_per_s"])
    ev = GenerationEvaluator(job)
    wl = ev.workload
    tok = ev._tok
    ref_tokens = ev.reference()
    reference = {i: tok.decode(list(t), skip_special_tokens=True)
                 for i, t in enumerate(ref_tokens)}
    slo = (job.workload.slo.ttft_ms / 1000.0, job.workload.slo.tpot_ms / 1000.0)
    prompts = [(i, wl.prompts[i % len(wl.prompts)], n) for i, (_, n) in enumerate(wl.items)]

    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    bundle = export_bundle(job, tuned.number, out=tmp / "bundle", register=False).bundle
    procs: list[subprocess.Popen] = []
    contenders: dict[str, Any] = {}
    notes: list[str] = []
    try:
        engine_b = ev.build({})[0]
        engine_b1 = ev.build({"threads": 1})[0]
        engine_c = ev.build({k: v for k, v in tuned.config.items()})[0]
        tuned_threads = int(tuned.config.get("threads") or default_threads)
        contenders[f"(b) generate, hand-batched x{wl.concurrency} (in-process)"] = \
            lambda: inproc_pass(engine_b, wl, tok, slo, default_threads)
        contenders["(b1) (b) with 1 thread"] = lambda: inproc_pass(engine_b1, wl, tok, slo, 1)
        contenders[f"(c) tuned trial {tuned.number}, in-process"] = \
            lambda: inproc_pass(engine_c, wl, tok, slo, tuned_threads)
        port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        serve = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", str(bundle),
                                  "--port", str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=env)
        procs.append(serve)
        _wait_http(f"http://127.0.0.1:{port}/health", serve)
        served_url = f"http://127.0.0.1:{port}/v1"
        contenders[f"(d) trial {tuned.number} via autotune serve + openai"] = \
            lambda: client_pass(served_url, job.name, prompts, wl.concurrency, slo)
        if args.baseline_src:
            bport = _free_port()
            base = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", str(bundle),
                                     "--port", str(bport)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=args.baseline_src,
                                    env={**env, "PYTHONPATH": str(Path(args.baseline_src)
                                                                   .resolve())})
            procs.append(base)
            _wait_http(f"http://127.0.0.1:{bport}/health", base)
            base_url = f"http://127.0.0.1:{bport}/v1"
            contenders[f"(d0) (d) served by {Path(args.baseline_src).name}/"] = \
                lambda: client_pass(base_url, job.name, prompts, wl.concurrency, slo)
        record_streams(served_url, job.name, prompts, tmp / "streams.json")
        sport = _free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", _STUB, str(sport),
                                       str(tmp / "streams.json")], env=env))
        _wait_port(sport)
        stub_url = f"http://127.0.0.1:{sport}/v1"
        contenders["(s) the openai client alone (stub server)"] = \
            lambda: client_pass(stub_url, job.name, prompts, wl.concurrency, slo)
        if not args.no_llama_server:
            why = llama_server_reason(wl.model_dir)
            if why:
                notes.append(f"(e) llama.cpp server: {why}")
            else:
                from autotune.measure.workloads.generation import folder_digest
                from autotune.measure.workloads.llamacpp import to_gguf

                gguf = to_gguf(wl.model_dir, "q8_0", job.out_dir / "cache", tok,
                               folder_digest(wl.model_dir))
                lport = _free_port()
                llama = subprocess.Popen(
                    [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                     "--port", str(lport), "--verbose", "false",
                     # its default (true) cuts a streamed answer short when the next request
                     # arrives: 8 concurrent clients then get 1-2 tokens each
                     "--interrupt_requests", "false"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
                procs.append(llama)
                _wait_http(f"http://127.0.0.1:{lport}/v1/models", llama)
                lurl = f"http://127.0.0.1:{lport}/v1"
                contenders["(e) llama.cpp server, GGUF Q8_0 + openai"] = \
                    lambda: client_pass(lurl, str(gguf), prompts, wl.concurrency, slo,
                                        usage=False)
        per: dict[str, list[dict[str, Any]]] = {n: [] for n in contenders}
        load = os.getloadavg()
        t0 = time.perf_counter()
        for fn in contenders.values():  # warm-up
            fn()
        with measurement_lock():
            for _ in range(args.rounds):
                for name, fn in contenders.items():
                    per[name].append(fn())
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    b = next(iter(per))
    print(f"job {job.name} ({Path(args.job).name}): {len(wl.items)} requests, concurrency "
          f"{wl.concurrency}, {sum(n for _, n in wl.items)} output tokens per pass; "
          f"{args.rounds} interleaved rounds ({wall:.0f} s); medians over rounds; SLO TTFT <= "
          f"{slo[0] * 1000:g} ms, TPOT <= {slo[1] * 1000:g} ms; load average before "
          f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min)\n")
    head = (f"{'contender':54s} {'tokens/s':>9s} {'vs (b)':>7s} {'TTFT p50':>9s} "
            f"{'TTFT p95':>9s} {'TPOT p50':>9s} {'goodput':>8s} {'same text':>9s} {'errors':>6s}")
    print(head)
    print("-" * len(head))
    for name, rounds in per.items():
        ratios = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(rounds, per[b],
                                                                         strict=True)]
        same = []
        for r in rounds:
            for i, text in r["texts"].items():
                same.append(text.strip() == reference[i].strip())
        med = statistics.median
        print(f"{name:54s} {med(r['tokens_per_s'] for r in rounds):9.1f} "
              f"{med(ratios):6.2f}x {med(pct(r['ttft'], 50) for r in rounds) * 1000:7.1f}ms "
              f"{med(pct(r['ttft'], 95) for r in rounds) * 1000:7.1f}ms "
              f"{med(pct(r['tpot'], 50) for r in rounds) * 1000:7.2f}ms "
              f"{med(r['goodput'] for r in rounds):8.2f} "
              f"{sum(same) / max(1, len(same)):9.3f} {sum(len(r['errors']) for r in rounds):6d}")
    b1, c = list(per)[1], list(per)[2]
    for name, rounds in per.items():
        # the served contenders (and the client alone) also against the engine in-process
        bases = [] if name in (b, b1) else [b, b1, *([c] if name[1] in "ds" else [])]
        if name.startswith("(d0"):  # before/after: this code's server against the other's
            bases.append(next(n for n in per if n.startswith("(d)")))
        for base in bases:
            ratios = [x["tokens_per_s"] / y["tokens_per_s"]
                      for x, y in zip(rounds, per[base], strict=True)]
            print(f"{name.split()[0]}/{base.split()[0]} tokens/s per round: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)} (median "
                  f"{statistics.median(ratios):.2f})")
        differ = [(i, t) for i, t in rounds[-1]["texts"].items()
                  if t.strip() != reference[i].strip()]
        if differ:
            i, t = differ[0]
            print(f"{name.split()[0]} first text differing from the reference (request {i}): {t!r} "
                  f"vs {reference[i]!r}")
        errs = [e for r in rounds for e in r["errors"]]
        if errs:
            print(f"{name.split()[0]} errors: {errs[0]}")
    print(f"tuned configuration (trial {tuned.number}): {dict(tuned.config)}")
    for n in notes:
        print(n)
    return 0


def llama_server_reason(folder: Path) -> str | None:
    """Why llama.cpp's server cannot serve this model here (None: it can)."""
    import importlib.util

    from autotune.measure.workloads.llamacpp import convertible, missing

    why = missing()
    if why:
        return why
    for mod in ("sse_starlette", "starlette_context", "pydantic_settings", "fastapi"):
        if importlib.util.find_spec(mod) is None:
            return (f"llama_cpp.server needs llama-cpp-python's [server] extra ({mod} is not "
                    "installed)")
    why = convertible(folder)
    if why:
        return why
    from autotune.measure.workloads.llamacpp import bpe_merges

    if not bpe_merges(folder):
        return ("llama.cpp's server takes text and tokenizes it with llama.cpp's own tokenizers "
                "(BPE, SentencePiece, WordPiece, Unigram families); this model's tokenizer is not "
                "BPE (the GLM example's is word-level), so the server would feed the model token "
                "ids it was never trained on. The llama_cpp runtime (token ids in and out) runs "
                "it; compare that through autotune serve instead")
    return None


if __name__ == "__main__":
    sys.exit(main())
