"""Text-generation jobs: the spec, the engine's batching, the evaluator's metrics.

A tiny GLM-4 (2 layers, hidden 32; experiments/glm_model.py:build_tiny) is built once per machine
(seconds) and cached in the temp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotune.core.yamlsrc import load_located
from autotune.errors import SpecError, TrialFailed
from autotune.job.spec import job_from_located, load_job

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

JOB = """\
name: gtiny
model: {factory: glm_model:build_tiny, task: text-generation}
workload:
  prompts: glm_model:prompts
  requests: 6
  concurrency: 3
  max_new_tokens: {min: 2, max: 6}
  held_out: glm_model:held_out_text
search_space:
  parameters:
    batching: {choices: [static, continuous]}
    quantization: {choices: [fp32, int8_weight_only]}
    max_batch: {choices: [1, 3]}
objectives: [ttft_p95_ms, output_tokens_per_s, token_agreement]
constraints: [ttft_p95_ms <= 5000, token_agreement >= 0.5]
agent: {name: random, seed: 0}
budget: {max_trials: 3}
measurement: {warmup: 1, min_repeats: 1, max_time_s: 0.5,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""


def write_job(tmp: Path, text: str = JOB) -> Path:
    shutil.copy(EXPERIMENTS / "glm_model.py", tmp / "glm_model.py")
    path = tmp / "job.yaml"
    path.write_text(text)
    return path


def parse(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "job.yaml"
        p.write_text(text)
        return job_from_located(load_located(p))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy shared machine two threads contend badly (10x slower)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_dir() -> str:
    import sys

    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import glm_model

        return glm_model.build_tiny()
    finally:
        sys.path.remove(str(EXPERIMENTS))


# ------------------------------------------------------------------------------ spec
def test_generation_job_validates_with_generation_metrics(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path))
    assert job.is_generation
    assert job.evaluation.metric == "token_agreement"  # the default quality of generation jobs
    pairs = dict(job.objective_pairs)
    assert pairs == {"ttft_p95_ms": "minimize", "output_tokens_per_s": "maximize",
                     "token_agreement": "maximize"}
    assert "latency_p95_ms" not in job.metric_vocabulary  # no single-forward metrics here


@pytest.mark.parametrize("change, where, what", [
    (("  max_new_tokens: {min: 2, max: 6}\n", "  max_new_tokens: {min: 9, max: 6}\n"),
     "workload.max_new_tokens", "above max"),
    (("  concurrency: 3\n", "  concurrency: 0\n"), "workload.concurrency", "greater than"),
    (("  concurrency: 3\n", "  concurrency: 3\n  turnaround_ms: -1\n"),
     "workload.turnaround_ms", "greater than or equal"),
    (("  concurrency: 3\n", "  turnaround_ms: 5\n  request_rate: 4\n"), "workload",
     "'turnaround_ms' (a closed loop"),
    (("  requests: 6\n", "  requets: 6\n"), "workload.requets", "unknown key 'requets'"),
    (("constraints: [ttft_p95_ms", "constraints: [latency_p95_ms"), "constraints[0]",
     "unknown metric 'latency_p95_ms'"),
])
def test_generation_spec_errors_are_located(change: tuple[str, str], where: str,
                                            what: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(JOB.replace(*change))
    text = str(err.value)
    assert where in text and what in text, text


def test_workload_needs_a_generation_model_and_vice_versa() -> None:
    no_workload = JOB.split("workload:")[0] + "search_space:" + JOB.split("search_space:")[1]
    with pytest.raises(SpecError, match="needs a 'workload'"):
        parse(no_workload)
    with pytest.raises(SpecError, match="task"):
        parse(JOB.replace("model: {factory: glm_model:build_tiny, task: text-generation}",
                          "model: {huggingface: ./folder}\nevaluation: {metric: cosine}"))


def test_unknown_generation_parameter_is_a_spec_error(tmp_path: Path) -> None:
    # refused when the job is loaded (the space is checked against the generation knobs)
    with pytest.raises(SpecError, match=r"batch_size.*Known parameters: runtime, batching") as e:
        load_job(write_job(tmp_path, JOB.replace("    max_batch:", "    batch_size:")))
    assert e.value.path == "search_space.parameters.batch_size" and e.value.line


# ------------------------------------------------------------------------------ engine
def _items(tok, n: int = 6):
    import sys

    sys.path.insert(0, str(EXPERIMENTS))
    import glm_model

    sys.path.remove(str(EXPERIMENTS))
    return [(tok(p)["input_ids"], 2 + i % 5) for i, p in enumerate(glm_model.prompts(n))]


@pytest.mark.parametrize("settings", [
    {"batching": "static", "max_batch": 3},
    {"batching": "continuous", "max_batch": 3},
    {"batching": "continuous", "max_batch": 2, "prefill_chunk": 3, "attention": "eager"},
    {"batching": "continuous", "max_batch": 3, "speculative": 3},
])
def test_batched_engine_matches_one_request_at_a_time(tiny_dir: str, settings: dict) -> None:
    from autotune.measure.workloads.engine import ClosedLoop, Engine, GenSettings, load_model, load_tokenizer

    tok = load_tokenizer(tiny_dir)
    items = _items(tok)
    single = GenSettings(batching="continuous", max_batch=1)
    ref_src = ClosedLoop(items, 1)
    Engine(load_model(tiny_dir, single), tok, single).run(ref_src)
    ref = {r.id: r.tokens for r in ref_src.done}
    s = GenSettings(**settings)
    src = ClosedLoop(items, 3)
    engine = Engine(load_model(tiny_dir, s), tok, s)
    engine.run(src)
    got = {r.id: r for r in src.done}
    assert sorted(got) == list(range(len(items)))
    for i, (_, n) in enumerate(items):
        r = got[i]
        assert len(r.tokens) == n  # each request's own length, even inside a longer batch
        assert r.tokens == ref[i]  # left padding and batching do not change greedy tokens
        assert 0 < r.ttft <= r.latency
    assert engine.peak_kv_bytes > 0
    if s.batching == "continuous" and not s.prefill_chunk:  # joins fused into decode steps
        assert engine.counts["fused"] > 0


def test_closed_loop_arrivals_follow_the_turnaround() -> None:
    """The clients' first requests are spread over one turnaround; a client's next request
    arrives a turnaround after its previous one ended (times given, no clock read)."""
    from autotune.measure.workloads.engine import ClosedLoop

    src = ClosedLoop([([1], 2)] * 5, 4, turnaround=1.0)
    t0 = min(r.arrival for r in src._pending)
    assert src.poll(t0 - 0.001) == []  # nothing is due before the pass began
    first = src.poll(t0)
    assert [r.id for r in first] == [0]  # alone: the other clients' requests are not there yet
    assert [r.id for r in src.poll(t0 + 0.26)] == [1]
    rest = src.poll(t0 + 10)
    assert [r.id for r in rest] == [2, 3]
    assert [r.arrival - t0 for r in rest] == pytest.approx([0.5, 0.75])
    src.on_done(first[0], t0 + 20)
    assert src.poll(t0 + 20.99) == [] and not src.exhausted
    nxt = src.poll(t0 + 21)
    assert [r.id for r in nxt] == [4] and nxt[0].arrival == pytest.approx(t0 + 21)
    instant = ClosedLoop([([1], 2)] * 5, 4)  # turnaround 0: all four clients at once
    assert len(instant.poll(instant._pending[-1].arrival)) == 4


@pytest.mark.parametrize("turnaround, wait_ms, first_batch", [
    (0.0, 0.0, 3), (1.0, 0.0, 1), (1.0, 1000.0, 3), (1.0, 400.0, 2)])
def test_static_batch_starts_with_what_has_arrived(tiny_dir: str, monkeypatch: pytest.MonkeyPatch,
                                                   turnaround: float, wait_ms: float,
                                                   first_batch: int) -> None:
    """With a client turnaround the measurement's first static batch is no longer full, unless
    ``batch_wait_ms`` gathers the clients' requests (they arrive 1/3 s apart here; the engine's
    clock is a fake that moves 1 ms per read and by what it sleeps: no timing luck)."""
    from autotune.measure.workloads import engine as eng

    class Clock:
        t = 1000.0

        def perf_counter(self) -> float:
            self.t += 0.001
            return self.t

        def sleep(self, s: float) -> None:
            self.t += max(s, 0.0)

    monkeypatch.setattr(eng, "time", Clock())
    tok = eng.load_tokenizer(tiny_dir)
    s = eng.GenSettings(batching="static", max_batch=3, batch_wait_ms=wait_ms)
    engine = eng.Engine(eng.load_model(tiny_dir, s), tok, s)
    sizes: list[int] = []
    take = engine._take

    def recorded(n: int) -> list:
        out = take(n)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(engine, "_take", recorded)
    src = eng.ClosedLoop(_items(tok, 3), 3, turnaround)
    engine.run(src)
    assert sizes[0] == first_batch and sum(sizes) == 3 and len(src.done) == 3


def test_server_source_gathers_a_static_batch(tiny_dir: str, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """Served (a :class:`Live` source, requests submitted from another thread), ``batch_wait_ms``
    holds the first request until the second one arrives, and the batch starts as soon as
    ``max_batch`` requests are there (the window, 10 minutes, is never waited out)."""
    import threading
    import time

    from autotune.measure.workloads import engine as eng

    tok = eng.load_tokenizer(tiny_dir)
    s = eng.GenSettings(batching="static", max_batch=2, batch_wait_ms=600_000)
    engine = eng.Engine(eng.load_model(tiny_dir, s), tok, s)
    sizes: list[int] = []
    take = engine._take
    monkeypatch.setattr(engine, "_take", lambda n: sizes.append(len(out := take(n))) or out)
    live, stop = eng.Live(), threading.Event()
    worker = threading.Thread(target=engine.run, args=(live,), kwargs={"stop": stop})
    worker.start()
    try:
        (a, n), (b, m) = _items(tok, 2)
        first = live.submit(eng.Request(a, n, time.perf_counter(), id=0))
        assert not first.finished.wait(0.2)  # held for a batch of two
        second = live.submit(eng.Request(b, m, time.perf_counter(), id=1))
        assert first.finished.wait(300) and second.finished.wait(300)
        assert sizes == [2] and first.error is None and len(first.tokens) == n
    finally:
        stop.set()
        worker.join(60)


def test_offloaded_cache_without_gpu_fails_with_reason() -> None:
    from autotune.measure.workloads.engine import GenSettings

    with pytest.raises(TrialFailed, match="nothing to offload"):
        GenSettings(cache_implementation="offloaded")
    with pytest.raises(TrialFailed, match="continuous batching"):
        GenSettings(batching="continuous", cache_implementation="static")
    with pytest.raises(TrialFailed, match="admits each request as it arrives"):
        GenSettings(batching="continuous", batch_wait_ms=5)


# ------------------------------------------------------------------------------ evaluator
def test_evaluator_measures_serving_and_fidelity(tmp_path: Path) -> None:
    from autotune.measure.workloads.generation import GenerationEvaluator

    job = load_job(write_job(tmp_path))
    ev = GenerationEvaluator(job)
    base = ev.evaluate({"runtime": "torch", "quantization": "fp32", "pruning_ratio": 0.0})
    m = base.metrics
    for name in ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms",
                 "output_tokens_per_s", "request_latency_p95_ms", "kv_cache_mb",
                 "peak_memory_mb", "perplexity_ratio"):
        assert m[name] > 0, name
    assert m["ttft_p50_ms"] <= m["ttft_p95_ms"] <= m["request_latency_p95_ms"]
    assert m["quality"] == 1.0  # the unmodified model agrees with itself
    assert m["perplexity_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert base.details["output_tokens_per_pass"] == sum(n for _, n in ev.workload.items)
    q = ev.evaluate({"batching": "continuous", "quantization": "int8_weight_only"}).metrics
    assert q["model_size_mb"] < m["model_size_mb"]  # int8 weights are smaller
    assert 0.0 <= q["quality"] <= 1.0 and q["perplexity_ratio"] > 0
    with pytest.raises(TrialFailed, match="not a generation parameter"):
        ev.evaluate({"batch_size": 4})
    rounds = ev.compare({"a": {}, "b": {"batching": "continuous"}}, 2)
    assert len(rounds["a"]) == 2 and rounds["b"][0]["p50_ms"] > 0
