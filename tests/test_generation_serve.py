"""Generation bundles and their server: export, streaming, the OpenAI-compatible subset, and a
hot swap under concurrent requests with zero failures (tiny GLM-4, seconds)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from autotune.job.spec import load_job
from tests.test_generation import one_thread, write_job

TOKEN = "generation-admin-token"  # autotune serve --admin-token

__all__ = ["one_thread"]  # the module-wide fixture: one intra-op thread


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    from autotune.deploy.export import export_bundle
    from autotune.measure.workloads.generation import GenerationEvaluator
    from autotune.tuning.tuner import run

    tmp = tmp_path_factory.mktemp("genjob")
    job = load_job(write_job(tmp))
    job = job.model_copy(update={"tracking": job.tracking.model_copy(update={"enabled": False}),
                                 "budget": job.budget.model_copy(update={"max_trials": 2})})
    run(job, harness=GenerationEvaluator(job))
    a = export_bundle(job, 0, out=tmp / "bundle-a", register=False)
    b = export_bundle(job, 1, out=tmp / "bundle-b", register=False)
    return a.bundle, b.bundle, job


def test_bundle_holds_weights_tokenizer_settings_and_no_pickles(bundles: tuple) -> None:
    from autotune.deploy.genserve import is_generation_bundle, verified_bundle

    a, _, job = bundles
    names = {p.name for p in a.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation.yaml",
            "manifest.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".pth")) for n in names)
    assert is_generation_bundle(a)
    _, manifest, settings = verified_bundle(a)
    assert manifest["task"] == "text-generation" and "ttft_p95_ms" in manifest["metrics"]
    assert settings.max_batch >= 1
    from autotune.deploy.bundle import BundleError

    raw = (a / "generation.yaml").read_bytes()
    (a / "generation.yaml").write_bytes(raw + b"\n# edited\n")  # grown: refused before hashing
    with pytest.raises(BundleError, match="bytes, more than"):
        verified_bundle(a)
    (a / "generation.yaml").write_bytes(raw[:-2] + b"#\n")  # same size, other bytes
    with pytest.raises(BundleError, match="SHA-256"):
        verified_bundle(a)
    from autotune.deploy.export import write_bundle
    from autotune.tuning.tuner import open_record

    rec = open_record(job, create=False)
    write_bundle(job, rec.trials()[0], a, record=rec)  # restore for the other tests
    verified_bundle(a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundles: tuple):
    """``autotune serve BUNDLE`` in a child process (the CLI's dispatch to the generation
    server), on a free port."""
    import os
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from autotune.cli import main; main()", "serve",
         str(bundles[0]), "--port", str(port), "--poll-interval", "0", "--admin-token", TOKEN],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()) from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(20)


def _stream(client: httpx.Client, url: str, body: dict) -> tuple[list[str], str]:
    deltas, version = [], ""
    with client.stream("POST", url, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return deltas, version
            event = json.loads(data)
            assert "error" not in event, event
            version = event["x_version"]
            choice = event["choices"][0]
            deltas.append(choice.get("text", choice.get("delta", {}).get("content", "")))
    raise AssertionError("the stream ended without [DONE]")


def test_streams_tokens_like_the_plain_completion(server: str) -> None:
    url = server
    with httpx.Client(timeout=60) as c:
        body = {"prompt": "the cats see", "max_tokens": 6}
        deltas, _ = _stream(c, f"{url}/v1/completions", body)
        plain = c.post(f"{url}/v1/completions", json=body).json()
        assert len([d for d in deltas if d]) >= 5  # one event per token, not one at the end
        assert "".join(deltas) == plain["choices"][0]["text"]
        assert plain["object"] == "text_completion" and plain["usage"]["completion_tokens"] == 6
        chat = c.post(f"{url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "the dog"}], "max_tokens": 3}).json()
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert chat["choices"][0]["message"]["content"].strip()
        bad = c.post(f"{url}/v1/completions", json={"prompt": "the", "temperature": 0.7})
        assert bad.status_code == 400 and "greedy" in bad.json()["error"]["message"]
        assert c.get(f"{url}/v1/models").json()["data"][0]["settings"]["max_batch"] >= 1


def test_hot_swap_under_concurrent_requests_has_no_failures(server: str,
                                                            bundles: tuple) -> None:
    url = server
    first = httpx.get(f"{url}/health").json()["model_version"]
    failures: list[str] = []
    versions: dict[str, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set() or n < 2:
                n += 1
                try:
                    if (i + n) % 2:
                        deltas, v = _stream(c, f"{url}/v1/completions",
                                            {"prompt": "a robot finds", "max_tokens": 5})
                        ok = len(deltas) >= 5
                    else:
                        r = c.post(f"{url}/v1/chat/completions", json={
                            "messages": [{"role": "user", "content": "the dog"}],
                            "max_tokens": 4})
                        ok = r.status_code == 200
                        v = r.json().get("x_version", "")
                    with lock:
                        versions[v] = versions.get(v, 0) + 1
                    if not ok:
                        failures.append(f"client {i}: short answer")
                except Exception as exc:  # any failure counts
                    failures.append(f"client {i}: {type(exc).__name__}: {exc}")

    def answered(version: str) -> bool:  # a liveness bound, not a timing
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with lock:
                if versions.get(version, 0) >= 2:
                    return True
            if failures or not any(t.is_alive() for t in threads):
                return False
            time.sleep(0.02)
        return False

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert answered(first), (failures, versions)  # the first model answers before the swap
    with httpx.Client(timeout=60) as c:
        # the admin route swaps to any path: refused without the server's token
        r = c.post(f"{url}/admin/reload", json={"bundle": str(bundles[1])})
        assert r.status_code == 401 and "Bearer" in r.json()["error"], r.text
        r = c.post(f"{url}/admin/reload", json={"bundle": str(bundles[1])},
                   headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 401, r.text
        r = c.post(f"{url}/admin/reload", json={"bundle": str(bundles[1])},
                   headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["reloaded"], r.text
        swapped = r.json()["model_version"]
    answered(swapped)  # requests keep arriving until the new model has answered some too
    stop.set()
    for t in threads:
        t.join(60)
    assert failures == []
    now = httpx.get(f"{url}/health").json()
    assert now["model_version"] != first and now["swaps"] == 1
    assert versions.get(first, 0) > 0 and versions.get(now["model_version"], 0) > 0, versions


def test_the_openai_client_receives_the_stream_token_by_token(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    plain = client.completions.create(model=model, prompt="the cats see", max_tokens=6,
                                      temperature=0)
    chunks = list(client.completions.create(model=model, prompt="the cats see", max_tokens=6,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) >= 5, texts  # one chunk per token, not the text at the end
    assert "".join(texts) == plain.choices[0].text and plain.usage.completion_tokens == 6
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    chat = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "the dog"}], max_tokens=4,
        stream=True))
    assert len([c for c in chat if c.choices and c.choices[0].delta.content]) >= 3
    with pytest.raises(openai.BadRequestError, match="greedy"):
        client.completions.create(model=model, prompt="the", temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="positions"):
        client.completions.create(model=model, prompt="the", max_tokens=10**9)


def test_an_oversized_body_is_answered_413_to_every_client(server: str) -> None:
    """40 MB to /v1/completions: refused on Content-Length (httpx, http.client, which sends the
    whole body before reading) and while streaming a chunked body; the lingering close drains
    what is still arriving, so no client sees a reset."""
    import http.client

    big = b'{"prompt": "' + b"x" * (40 * 1024 * 1024) + b'"}'
    host, port = server.removeprefix("http://").split(":")
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", body=big, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    answer = json.loads(r.read())
    conn.close()
    took = time.monotonic() - t0
    print(f"\nhttp.client: 40 MB answered {r.status} in {took:.2f} s")
    assert r.status == 413 and "limit" in answer["error"]["message"]
    with httpx.Client(timeout=30) as c:
        t0 = time.monotonic()
        r2 = c.post(f"{server}/v1/completions", content=big,
                    headers={"Content-Type": "application/json"})
        print(f"httpx: 40 MB answered {r2.status_code} in {time.monotonic() - t0:.2f} s")
        assert r2.status_code == 413

        def chunks():  # no Content-Length: refused once the limit is crossed while reading
            for i in range(0, len(big), 1 << 20):
                yield big[i:i + (1 << 20)]

        r3 = c.post(f"{server}/v1/completions", content=chunks(),
                    headers={"Content-Type": "application/json"})
        assert r3.status_code == 413
        assert c.post(f"{server}/v1/completions",
                      json={"prompt": "the", "max_tokens": 1}).status_code == 200
        metrics = c.get(f"{server}/metrics").text
    assert 'autotune_serve_rejected_total{reason="too_large"}' in metrics
    assert 'route="/v1/completions"' in metrics and 'code="413"' in metrics
    assert "autotune_serve_time_to_first_token_seconds_count" in metrics
    assert "autotune_serve_generated_tokens_total" in metrics


def test_the_generation_routes_answer_503_with_retry_after_past_the_limit(bundles: tuple) -> None:
    """The generation routes share the predict server's admission: a request whose body is
    still arriving holds the only place, the next one is answered 503 + Retry-After."""
    from autotune.deploy.serve import Limits, ModelServer

    with ModelServer(bundles[0], port=0, poll_interval=0,
                     limits=Limits(max_inflight=1, retry_after_s=2)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as held:
            held.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
            deadline = time.monotonic() + 10
            while srv.metrics.inflight.values.get(()) != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "the", "max_tokens": 2},
                           timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
            assert "retry" in r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while srv.metrics.inflight.values.get(()) != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        ok = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "the", "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_the_engine_in_its_own_process_streams_the_same_tokens(bundles: tuple) -> None:
    """``process=True`` (AUTOTUNE_ENGINE_PROCESS=1): the engine runs in a child process; tokens
    come back through the same callbacks, equal to the engine in a thread; if the child dies the
    requests fail with that reason instead of hanging."""
    from autotune.deploy.genserve import GenerationService

    def tokens(service: GenerationService, ids: list[int]) -> tuple[list[int], list[int]]:
        seen: list[int] = []
        req = service.submit(ids, 5, lambda r, t: seen.append(t), lambda r: None)
        assert req.finished.wait(120) and req.error is None, req.error
        return seen, list(req.tokens)

    threaded = GenerationService(bundles[0], process=False)
    isolated = GenerationService(bundles[0], process=True)
    try:
        assert isolated.isolated and isolated.engine is None
        ids = list(threaded.tokenizer("the cats see")["input_ids"])
        streamed, whole = tokens(isolated, ids)
        assert streamed == whole == tokens(threaded, ids)[1] and len(whole) == 5
        isolated.source.proc.kill()  # the engine process dies: nothing hangs
        isolated.source.proc.join(10)
        deadline = time.monotonic() + 10
        while isolated.source.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        req = isolated.submit(ids, 3, None, lambda r: None)
        assert req.finished.wait(5) and "engine process" in (req.error or ""), req.error
    finally:
        threaded.close(drain_s=0)
        isolated.close(drain_s=0)


def test_a_stream_sends_one_event_per_engine_step() -> None:
    """Tokens of one engine step (a speculative step accepts several; they share their time
    stamp) go out in one server-sent event, each step in its own: fewer chunks for the client to
    parse, still streamed as produced."""
    import asyncio
    from types import SimpleNamespace

    from autotune.deploy.serve.completions import Answer, Completion, Wakeups
    from autotune.measure.workloads.engine import Request

    class Tok:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "".join(f" t{i}" for i in ids)

    steps = [[1, 2, 3], [4], [5, 6]]  # three engine steps

    class Service:
        tokenizer, name = Tok(), "m"

        def submit(self, ids: list[int], n: int, on_token: Any, on_finish: Any) -> Request:
            req = Request(list(ids), n, time.perf_counter(), on_token=on_token,
                          on_finish=on_finish)

            def engine() -> None:
                for k, step in enumerate(steps):
                    req.emit_all(step, float(k))  # as the engine emits a step
                    time.sleep(0.05)
                req.done = True
                req.finished.set()
                on_finish(req)

            threading.Thread(target=engine, daemon=True).start()
            return req

        def cancel(self, req: Request) -> None:
            req.done = True

    async def main() -> list[str]:
        server = SimpleNamespace(limits=SimpleNamespace(request_timeout_s=30))
        served = SimpleNamespace(predictor=Service(), version="v")
        answer = Answer(server, served, Completion(False, (7,), 6, True, False),
                        Wakeups(asyncio.get_running_loop()), lambda s: None)
        await answer.start()
        return [e async for e in answer.events()]

    body = b"".join(asyncio.run(main())).decode()
    texts = [json.loads(line[6:])["choices"][0]["text"] for line in body.split("\n\n")
             if line.startswith("data: {")]
    assert [t for t in texts if t] == [" t1 t2 t3", " t4", " t5 t6"], texts
    assert body.rstrip().endswith("data: [DONE]")


def test_streamed_text_equals_the_whole_decode_with_a_byte_level_tokenizer() -> None:
    """Incremental detokenization (the tokenizers library's stream decoder on a fast tokenizer,
    the window decoder otherwise) streams exactly the text the whole output decodes to, for any
    way the tokens are split into engine steps, with characters of several bytes split across
    byte-level tokens (held back until complete, never sent as a replacement character)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from autotune.deploy.serve.completions import Detokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    text = ["héllo wörld, the cats see 日本語 and ünïcode ✓ " * 3, "the dog sees the cat"]
    backend.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"]))
    rng = random.Random(0)
    for cleanup in (False, True):  # True: a stream cannot clean up spaces: the window decoder
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                      clean_up_tokenization_spaces=cleanup)
        assert (Detokenizer(tok)._stream is None) is cleanup
        for _ in range(200):
            ids = tok(rng.choice(text)[rng.randrange(40):])["input_ids"][:rng.randint(1, 30)]
            ids = [rng.randrange(len(tok)) if rng.random() < 0.2 else t for t in ids]
            detok, sent, k = Detokenizer(tok), "", 0
            while k < len(ids):
                k = min(len(ids), k + rng.randint(1, 3))  # an engine step's tokens
                delta = detok.step(ids[:k])
                assert "\ufffd" not in delta or "\ufffd" in tok.decode(ids[:k]), delta
                sent += delta
            sent += detok.finish(ids)
            assert sent == tok.decode(ids, skip_special_tokens=True), (ids, sent)
