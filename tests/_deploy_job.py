"""One small tuned job shared by the deploy tests (export, load, serve) within a pytest run.

It is conftest's TINY_JOB (4 trials) with three warm-start configurations so that the trials the
tests export are known: 0 = onnxruntime fp32 batch 8, 1 = onnxruntime int8 pruned batch 1,
2 = torch fp32 pruned batch 8; trial 3 is TPE's choice.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import textwrap
from pathlib import Path

from conftest import EXPERIMENTS, TINY_JOB

WARM = (
    "agent: {name: tpe, seed: 1, warm_start: ["
    "{runtime: onnxruntime, quantization: fp32, pruning_ratio: 0.0, batch_size: 8, threads: 1}, "
    "{runtime: onnxruntime, quantization: int8_dynamic, pruning_ratio: 0.3, batch_size: 1, "
    "threads: 1}, "
    "{runtime: torch, quantization: fp32, pruning_ratio: 0.3, batch_size: 8, threads: 1}]}"
)
ORT_FP32, ORT_INT8, TORCH_FP32 = 0, 1, 2


@functools.cache
def tuned_job_file() -> Path:
    from autotune.job.spec import load_job
    from autotune.tuning.tuner import run

    root = Path(tempfile.mkdtemp(prefix="autotune-deploy-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copy(EXPERIMENTS / "digits_model.py", root / "digits_model.py")
    text = TINY_JOB.replace("MAXTRIALS", "4").replace("agent: {name: tpe, seed: 1}", WARM)
    path = root / "job.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    summary = run(load_job(path))
    states = {t.number: t.state for t in summary.trials}
    assert all(states.get(n) == "complete" for n in (ORT_FP32, ORT_INT8, TORCH_FP32)), states
    return path


def tuned_job():
    from autotune.job.spec import load_job

    return load_job(tuned_job_file())
