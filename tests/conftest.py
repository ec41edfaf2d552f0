from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

# The suite runs in parallel workers (pytest-xdist, `-n auto` in pyproject.toml).  Each worker
# process measures under its own host lock, inherited by the processes its tests start: with the
# host-wide /tmp/autotune-measure.lock the workers (and any tuning run of the user's on this
# machine) would queue behind each other's measurements.  No test's claim rests on measuring
# alone on the host (tests that check the lock itself point it at their own file).
_LOCK_DIR = tempfile.TemporaryDirectory(prefix="autotune-test-lock-")
os.environ["AUTOTUNE_MEASURE_LOCK"] = str(Path(_LOCK_DIR.name) / "measure.lock")


@pytest.fixture
def write_job(tmp_path: Path):
    """Write a job file (dedented) into a fresh folder beside a copy of the digits model."""

    def _write(text: str, name: str = "job.yaml") -> Path:
        shutil.copy(EXPERIMENTS / "digits_model.py", tmp_path / "digits_model.py")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return _write


#: measurement settings of a test whose claim does not rest on contention: a measurement is never
#: flagged contended, so none waits for quiet cores or is measured again beside the baseline.  On a
#: busy machine (AUTOTUNE_CI_LOAD=1, or a test's own processes) those waits and re-measurements
#: took minutes and made such a test take another path than on a quiet one.  Contention itself is
#: tested where it is made: tests/harness/test_contention.py, tests/test_remeasure.py.
UNCONTENDED = {"contention_threshold_pct": 100, "contention_wait_s": 0, "quiet_wait_s": 0}

TINY_JOB = """
name: tiny
model:
  factory: digits_model:build
  options: {hidden: 64, epochs: 3}
evaluation:
  dataset: digits_model:validation_data
  metric: accuracy
  max_samples: 256
search_space:
  parameters:
    runtime: [onnxruntime, torch]
    quantization: [fp32, int8_dynamic]
    pruning_ratio: {low: 0.0, high: 0.6, step: 0.3}
    batch_size: [1, 8]
    threads: {low: 1, high: 1}
objectives: [latency_p95_ms, accuracy]
constraints:
  - accuracy_drop <= 5%
agent: {name: tpe, seed: 1}
budget: {max_trials: MAXTRIALS}
measurement: {warmup: 2, min_repeats: 5, max_repeats: 50, max_time_s: 0.2, contention_wait_s: 0,
              quiet_wait_s: 0, contention_threshold_pct: 100}
"""


def tiny_job_text(max_trials: int = 4, **fields: object) -> str:
    """The tiny job as YAML with top-level fields replaced (``None`` removes one)."""
    import yaml

    job = yaml.safe_load(TINY_JOB.replace("MAXTRIALS", str(max_trials)))
    for key, value in fields.items():
        if value is None:
            job.pop(key, None)
        else:
            job[key] = value
    return yaml.safe_dump(job, sort_keys=False)


@pytest.fixture
def tiny_job(write_job):
    def _make(max_trials: int = 4, **replace: str) -> Path:
        text = TINY_JOB.replace("MAXTRIALS", str(max_trials))
        for k, v in replace.items():
            text = text.replace(k, v)
        return write_job(text)

    return _make
