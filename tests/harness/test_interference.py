"""Side by side without interference: identical configurations compare equal within the spread
the confirmation states, whichever was created first, with a torch contender in the rotation --
measured in one process (``Evaluator.compare``: interleaved rounds, ``stats.alternate``, what a
trial's re-measurement beside the baseline uses) and through the confirmation's and re-tuning's
own machinery (``SeparateProcesses``: each contender in a measuring process of its own).

Without the settle pause between blocks (``stats.SETTLE_S``) an ONNX Runtime session's spinning
intra-op pool keeps a core busy after its own block and takes it from the next contender: the
same model in several sessions then measured up to 17 % apart depending on creation order.
"""

from __future__ import annotations

import itertools
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import EXPERIMENTS, TINY_JOB

pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

ORT = {"runtime": "onnxruntime", "quantization": "fp32", "pruning_ratio": 0.0, "batch_size": 8,
       "threads": 2}
TORCH = {**ORT, "runtime": "torch"}
SESSIONS = 2
ROUNDS = 6


def test_identical_sessions_compare_equal_in_every_creation_order(tmp_path: Path) -> None:
    from autotune.job.spec import load_job
    from autotune.measure.workloads.forward import Evaluator
    from autotune.tuning.confirm import prediction_interval

    shutil.copy(EXPERIMENTS / "digits_model.py", tmp_path)
    path = tmp_path / "job.yaml"
    text = TINY_JOB.replace("MAXTRIALS", "1").replace("max_time_s: 0.2", "max_time_s: 0.1")
    path.write_text(textwrap.dedent(text).lstrip())
    ev = Evaluator(load_job(path))
    names = [f"ort{i}" for i in range(SESSIONS)] + ["torch"]
    configs = {n: (TORCH if n == "torch" else ORT) for n in names}
    for start in range(len(names)):  # each contender created (and first measured) first once
        order = names[start:] + names[:start]
        out = ev.compare({n: configs[n] for n in order}, ROUNDS)
        p50s = {n: [r["p50_ms"] for r in out[n]] for n in order}
        for a, b in itertools.combinations([n for n in order if n != "torch"], 2):
            # the confirmation's stated spread, on the per-round ratio of the two (which load
            # outside the process hits alike): identical work must hold 1.0 inside it
            ratios = [x / y for x, y in zip(p50s[a], p50s[b], strict=True)]
            lo, hi = prediction_interval(ratios)
            assert lo <= 1.0 <= hi, (
                f"created in the order {order}: {a}/{b} per round {np.round(ratios, 3)}, "
                f"stated spread [{lo:.3f}, {hi:.3f}] excludes 1; p50s {p50s}")


def test_identical_configurations_compare_equal_through_the_confirmations_processes(
        tmp_path: Path) -> None:
    """The confirmation's (and re-tuning's) own machinery, :class:`SeparateProcesses`: each
    contender in a measuring process of its own, the processes taking turns.  Two identical ONNX
    Runtime configurations (spinning on, ONNX Runtime's default) and a torch one, every contender
    first in one of the calls: the two identical ones compare equal within the stated spread."""
    from autotune.job.spec import load_job
    from autotune.tuning.confirm import SeparateProcesses, prediction_interval

    shutil.copy(EXPERIMENTS / "digits_model.py", tmp_path)
    path = tmp_path / "job.yaml"
    text = TINY_JOB.replace("MAXTRIALS", "1").replace("max_time_s: 0.2", "max_time_s: 0.1")
    path.write_text(textwrap.dedent(text).lstrip())
    names = [f"ort{i}" for i in range(SESSIONS)] + ["torch"]
    configs = {n: (TORCH if n == "torch" else ORT) for n in names}
    apart = SeparateProcesses(load_job(path))
    try:
        for start in range(len(names)):  # each contender first (its process created first once)
            order = names[start:] + names[:start]
            out = apart.compare({n: configs[n] for n in order}, 4)
            p50s = {n: [r["p50_ms"] for r in out[n]] for n in order}
            ratios = [x / y for x, y in zip(p50s["ort0"], p50s["ort1"], strict=True)]
            lo, hi = prediction_interval(ratios)
            assert lo <= 1.0 <= hi, (
                f"order {order}: ort0/ort1 per round {np.round(ratios, 3)}, stated spread "
                f"[{lo:.3f}, {hi:.3f}] excludes 1; p50s {p50s}")
    finally:
        apart.close()


def test_spinning_is_a_declared_session_knob_the_bundle_keeps() -> None:
    """Spinning stays ONNX Runtime's default for a deployed session (fastest alone); a job may
    search ``intra_op_spinning`` like the other session settings, and its bundle keeps it."""
    from autotune.measure.runtimes import declared_parameters
    from autotune.measure.runtimes.ortsession import session_options

    p = declared_parameters()["intra_op_spinning"]
    assert p.default is True and p.choices == (True, False)
    assert p.when == {"runtime": ("onnxruntime",)}
    off = session_options({"intra_op_spinning": False})
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="does not have configuration"):  # ORT's default: spin
        session_options({}).get_session_config_entry("session.intra_op.allow_spinning")
