"""Does the server keep the engine's gain?  A generation bundle's engine in-process vs the same
bundle under ``autotune serve`` driven by the official ``openai`` client, side by side.

Both serve the same requests (the prompts, tokenized once; each request's ``max_tokens``) from
``--clients`` closed-loop clients (each sends its next request when its previous one is
answered).  In-process: the engine the server builds for the bundle, driven by
``autotune.measure.workloads.engine.ClosedLoop`` with no turnaround (the engine alone; the tuning
measurement adds the workload's ``turnaround_ms``).  Served: ``autotune
serve BUNDLE`` in a child process; ``--clients`` threads, each with its own ``openai.OpenAI``
client calling ``completions.create`` (``--stream``: server-sent events, TTFT at the client).
Rounds alternate which goes first; the figure is output tokens per second of wall-clock time
(first request sent → last answer), its median over rounds, and served / in-process per round.
Greedy text must be identical.  ``--process`` adds the same bundle served with the engine in a
process of its own (``AUTOTUNE_ENGINE_PROCESS=1``) as a third contender.

    python experiments/bench_genserve.py BUNDLE [--rounds 5] [--clients 8] [--requests 32]
        [--max-tokens 32] [--stream] [--process] [--prompts glm]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _prompts(kind: str, n: int) -> list[str]:
    if kind == "glm":
        sys.path.insert(0, str(HERE))
        import glm_model

        return glm_model.prompts(n)
    return [line for line in Path(kind).read_text().splitlines() if line.strip()][:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_process(engine: Any, items: list[tuple[list[int], int]], clients: int) -> dict[str, Any]:
    from autotune.measure.workloads.engine import ClosedLoop

    source = ClosedLoop(items, clients)
    t0 = time.perf_counter()
    engine.run(source)
    wall = time.perf_counter() - t0
    done = sorted(source.done, key=lambda r: r.id)
    assert all(r.error is None for r in done), [r.error for r in done if r.error]
    n = sum(len(r.tokens) for r in done)
    return {"tps": n / wall, "tokens": n, "wall": wall, "ttft": [r.ttft for r in done],
            "out": [tuple(r.tokens) for r in done]}


def served(url: str, model: str, prompts: list[str], limits: list[int], clients: int,
           stream: bool) -> dict[str, Any]:
    import openai

    todo = list(enumerate(zip(prompts, limits, strict=True)))
    lock = threading.Lock()
    texts: dict[int, str] = {}
    ttft: list[float] = []
    tokens = [0]
    errors: list[str] = []

    # each thread's client is built before the clock starts (building one loads certificates:
    # tens of ms of CPU that would otherwise count against the server)
    made = [openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
            for _ in range(clients)]

    def client(c: Any) -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, (prompt, n) = todo.pop(0)
            t = time.perf_counter()
            try:
                if stream:
                    parts, first = [], None
                    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=n,
                                                   temperature=0, stream=True):
                        if ch.choices and ch.choices[0].text:
                            first = first or time.perf_counter()
                            parts.append(ch.choices[0].text)
                    text, got = "".join(parts), n
                    with lock:
                        ttft.append((first or time.perf_counter()) - t)
                else:
                    r = c.completions.create(model=model, prompt=prompt, max_tokens=n,
                                             temperature=0)
                    text, got = r.choices[0].text, r.usage.completion_tokens
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                texts[i] = text
                tokens[0] += got

    threads = [threading.Thread(target=client, args=(c,)) for c in made]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"tps": tokens[0] / wall, "tokens": tokens[0], "wall": wall, "errors": errors,
            "ttft": ttft, "texts": [texts.get(i, "") for i in range(len(prompts))]}


def _start(bundle: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from autotune.cli import main; main()", "serve", bundle,
         "--port", str(port), "--poll-interval", "0"], env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen, url: str) -> str:
    import httpx

    deadline = time.monotonic() + 600
    while True:
        try:
            return str(httpx.get(f"{url}/v1/models", timeout=2).json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, ValueError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(proc.stderr.read() if proc.stderr else "") from None
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--stream", action="store_true", help="stream (SSE) through the client")
    ap.add_argument("--prompts", default="glm", help="'glm' (experiments/glm_model.py's prompts) "
                    "or a text file, one prompt a line")
    ap.add_argument("--process", action="store_true", help="also serve with the engine in a "
                    "process of its own (AUTOTUNE_ENGINE_PROCESS=1), side by side")
    args = ap.parse_args(argv)

    from autotune.deploy.genserve import ENGINE_PROCESS_ENV, GenerationService

    prompts = _prompts(args.prompts, args.requests)
    limits = [args.max_tokens] * len(prompts)
    servers = {"served": _start(args.bundle, {ENGINE_PROCESS_ENV: "0"})}
    if args.process:
        servers["served-process"] = _start(args.bundle, {ENGINE_PROCESS_ENV: "1"})
    # the engine the server runs, built the same way, driven here (its thread is not needed)
    service = GenerationService(args.bundle, process=False)
    service.close(drain_s=0)
    engine, tok = service.engine, service.tokenizer
    items = [(list(tok(p)["input_ids"]), n) for p, n in zip(prompts, limits, strict=True)]
    try:
        model = ""
        for proc, url in servers.values():
            model = _wait(proc, url)
        print(f"bundle {args.bundle}: {service.settings}; {len(items)} requests x "
              f"{args.max_tokens} tokens, {args.clients} clients"
              f"{', streamed' if args.stream else ''}; torch threads here "
              f"{__import__('torch').get_num_threads()}; load average {os.getloadavg()}")

        def run(which: str) -> dict[str, Any]:
            if which == "in":
                return in_process(engine, items, args.clients)
            return served(servers[which][1], model, prompts, limits, args.clients, args.stream)

        names = ["in", *servers]
        in_process(engine, items[: args.clients], args.clients)  # warm-up, all sides
        for name in servers:
            served(servers[name][1], model, prompts[: args.clients], limits[: args.clients],
                   args.clients, args.stream)
        ratios: dict[str, list[float]] = {n: [] for n in servers}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            got = {which: run(which) for which in order}
            text_in = [tok.decode(list(t), skip_special_tokens=True) for t in got["in"]["out"]]
            parts = [f"in-process {got['in']['tps']:.0f} tok/s"]
            for name in servers:
                g = got[name]
                same = sum(a == b for a, b in zip(text_in, g["texts"], strict=True))
                ratio = g["tps"] / got["in"]["tps"]
                ratios[name].append(ratio)
                ttft = (f", client TTFT p50 {statistics.median(g['ttft']) * 1e3:.0f} ms"
                        if g["ttft"] else "")
                parts.append(f"{name} {g['tps']:.0f} tok/s ({ratio:.3f}x; identical text "
                             f"{same}/{len(items)}; errors {len(g['errors'])}{ttft})")
                if g["errors"]:
                    parts.append(f"errors: {g['errors'][:2]}")
            print(f"round {r + 1} ({order[0]} first): " + "; ".join(parts))
        for name, rows in ratios.items():
            print(f"{name} / in-process tokens/s: median {statistics.median(rows):.3f} "
                  f"(rounds {min(rows):.3f}-{max(rows):.3f})")
        for name in list(servers)[1:]:  # the default server against each variant, per round
            rows = [a / b for a, b in zip(ratios["served"], ratios[name], strict=True)]
            print(f"served / {name} tokens/s per round: {', '.join(f'{x:.2f}' for x in rows)} "
                  f"(median {statistics.median(rows):.2f}, {sum(x > 1 for x in rows)} of "
                  f"{len(rows)} rounds above 1)")
        print(f"load average {os.getloadavg()}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
