"""Side by side without interference: identical configurations measured in one process by the
confirmation's own machinery (``Evaluator.compare``: interleaved rounds, ``stats.alternate``)
compare equal within the spread the confirmation states, whichever was created first, with a
torch contender in the rotation.

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
