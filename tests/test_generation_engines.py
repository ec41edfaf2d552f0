"""Generation engines besides ours (llama.cpp; OpenVINO GenAI's reason), and the goodput search.

The llama.cpp tests convert tiny GLM-4 and Qwen2 models (built in seconds, cached) to GGUF and
check that llama.cpp's greedy tokens equal transformers'; they skip without llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from autotune.errors import TrialFailed
from autotune.measure.workloads.goodput import search

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
    reason="llama-cpp-python / gguf not installed (pip install 'autotune[llamacpp]')")


# ------------------------------------------------------------------------------ goodput search
def test_goodput_search_finds_the_highest_rate_meeting_the_slo() -> None:
    """A measurement seam with known figures: batch b serves 10*b requests/s at most; TTFT p95
    grows as 10 ms / (1 - rate/capacity) (a queue), TPOT p95 is 5*b ms.  With TTFT <= 200 ms and
    TPOT <= 50 ms, the highest rate is 0.95 x capacity for b <= 10, and b = 16 never meets."""
    calls: list[tuple[int, float | None]] = []

    def measure(b: int, rate: float | None) -> dict[str, float]:
        calls.append((b, rate))
        cap = 10.0 * b
        util = 0.99 if rate is None else min(rate / cap, 0.999)
        ttft = 10.0 / (1.0 - util)
        served = cap if rate is None else min(rate, cap)
        return {"ttft_p95_ms": ttft, "tpot_p95_ms": 5.0 * b, "output_tokens_per_s": served * 20,
                "requests_per_s": served, "goodput_rps": served if ttft <= 200 else 0.0}

    res = search(measure, [1, 4, 16], ttft_ms=200, tpot_ms=50, steps=8)
    for b in (1, 4):
        best = res.best_rate[b]
        assert best is not None and 0.9 * 9.5 * b <= best <= 9.5 * b, (b, best)
    assert res.best_rate[16] is None  # TPOT 80 ms > 50 at any rate
    assert res.best is not None and res.best.max_batch == 4 and res.best.meets
    assert {r for b, r in calls if r is None} == {None}  # a closed-loop pass per batch size
    assert all(p.meets == (p.ttft_p95_ms <= 200 and p.tpot_p95_ms <= 50) for p in res.points)


def test_goodput_search_reports_no_rate_when_even_a_trickle_misses() -> None:
    res = search(lambda b, r: {"ttft_p95_ms": 500.0, "tpot_p95_ms": 1.0,
                               "output_tokens_per_s": 1.0, "requests_per_s": 1.0},
                 [2], ttft_ms=200, tpot_ms=50)
    assert res.best is None and res.best_rate == {2: None}
    assert math.isnan(res.points[0].goodput_rps)


# ------------------------------------------------------------------------------ engines
def test_openvino_genai_fails_with_the_reason() -> None:
    from autotune.measure.workloads.generation import check_config

    with pytest.raises(TrialFailed, match="optimum-intel") as err:
        check_config({"runtime": "openvino_genai"})
    assert "transformers" in str(err.value)
    with pytest.raises(TrialFailed, match="generation runtimes are torch"):
        check_config({"runtime": "onnxruntime"})


def _tiny(module: str) -> str:
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return __import__(module).build_tiny()
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module", params=["glm_model", "qwen_model"])
def tiny_model(request: pytest.FixtureRequest) -> str:
    return _tiny(request.param)


def _reference(folder: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for ids in prompts:
            got = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                 min_new_tokens=n)
            out.append(got[0, len(ids):].tolist())
    return out


@needs_llama
def test_llama_cpp_greedy_tokens_equal_transformers(tiny_model: str, tmp_path: Path) -> None:
    """f32 GGUF converted here, served by llama.cpp with 3 sequences batched: the greedy tokens
    of every request equal transformers' own generate (GLM-4 and Qwen2)."""
    from autotune.measure.workloads.engine import ClosedLoop, load_tokenizer
    from autotune.measure.workloads.generation import folder_digest, kv_per_token_of
    from autotune.measure.workloads.llamacpp import LlamaCppEngine, LlamaCppSettings, to_gguf

    folder = Path(tiny_model)
    tok = load_tokenizer(folder)
    prompts = [tok(p)["input_ids"] for p in (". a robot sees the trees", ". the small birds",
                                             ". a quiet box sees a robot . the")]
    n = 6
    ref = _reference(tiny_model, prompts, n)
    path = to_gguf(folder, "f32", tmp_path, tok, folder_digest(folder))
    engine = LlamaCppEngine(path, LlamaCppSettings(gguf_type="f32", max_batch=3, threads=1),
                            n_ctx=256, kv_per_token=kv_per_token_of(folder))
    source = ClosedLoop([(ids, n) for ids in prompts * 2], 3)
    engine.run(source)
    done = sorted(source.done, key=lambda r: r.id)
    assert all(r.error is None for r in done)
    assert [r.tokens for r in done] == ref * 2
    assert engine.peak_kv_bytes > 0 and engine.weights_bytes() > 0
    ppl = engine.perplexity(tuple(prompts[2] * 3))
    assert 1.0 <= ppl < 1e4
    q8 = to_gguf(folder, "q8_0", tmp_path, tok, folder_digest(folder))
    assert q8.stat().st_size < path.stat().st_size
    engine.close()
