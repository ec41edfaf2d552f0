"""A ``huggingface:`` generation job is tuned and then confirmed (the baseline and the leading
trials re-measured side by side on torch + transformers, where the loop measured them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autotune.job.spec import load_job
from autotune.record.study import CONFIRMATION, open_record
from autotune.tuning.confirm import BASELINE, confirm
from autotune.tuning.tuner import run

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

pytestmark = pytest.mark.slow

JOB = """\
name: hf-gen
model: {huggingface: MODEL, task: text-generation}
workload:
  prompts: [". a robot sees the trees", ". the small birds see", ". a quiet box"]
  requests: 4
  concurrency: 2
  max_new_tokens: 4
search_space:
  parameters:
    batching: {choices: [static, continuous]}
    max_batch: {choices: [1, 2]}
    threads: {choices: [1]}
objectives: [ttft_p95_ms, output_tokens_per_s]
constraints: [token_agreement >= 0.5]
agent: {name: random, seed: 0}
budget: {max_trials: 2}
measurement: {warmup: 1, min_repeats: 1, max_time_s: 0.3,
              contention_threshold_pct: 100, contention_wait_s: 0, quiet_wait_s: 0}
"""


@pytest.fixture(scope="module")
def tiny_dir() -> str:
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import glm_model

        return glm_model.build_tiny()
    finally:
        sys.path.remove(str(EXPERIMENTS))


def test_huggingface_generation_job_is_confirmed(tiny_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("MODEL", tiny_dir))
    job = load_job(path)
    assert job.model.huggingface and not job.model.factory
    run(job, callbacks=[])
    res = confirm(job, k=1, min_rounds=2, max_rounds=2, tolerance=10.0)
    assert res.baseline.name == BASELINE and res.baseline.rounds == 2
    # the leader, and the other trial too when its figure lies within noise of the leader's (on a
    # busy machine it does): at most 2 * k
    assert 1 <= len(res.trials) <= 2 and all(t.p50_ms > 0 for t in res.trials)
    attr = open_record(job, create=False).attr(CONFIRMATION)
    assert attr["rounds"] == 2 and attr["trials"]
    assert attr["baseline"]["metrics"]["output_tokens_per_s"] > 0
