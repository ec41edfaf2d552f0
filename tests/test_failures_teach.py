"""Failures teach (issue 21 item 3): a trial that fails for a reason its configuration determines
makes every configuration sharing the cause invalid for the rest of the study (kept in the study,
shown by ``status`` and the next ``validate``); ``validate`` and ``run`` drop what the job cannot
run (gradient pruning without a loss and targets) with a notice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_job_text

from autotune.cli import main
from autotune.errors import SpecError
from autotune.job.check import check_job
from autotune.job.spec import load_job
from autotune.tuning import tuner

OBJECTIVE = '''
from pathlib import Path
from autotune.errors import TrialFailed

def f(config):
    with open(Path(__file__).with_name("calls.txt"), "a") as out:
        out.write(config["algo"] + "\\n")
    if config["algo"] == "b":
        raise TrialFailed("algo b needs a GPU", cause={"algo": "b"})
    return {"f1": config["x"], "f2": 1.0 - config["x"]}
'''

JOB = """
name: teach
objective: myobj:f
search_space:
  parameters:
    x: {low: 0.0, high: 1.0, step: 0.25}
    algo: [a, b]
objectives:
  - {metric: f1, direction: minimize}
  - {metric: f2, direction: minimize}
agent: {name: random, seed: 0}
budget: {max_trials: 6}
tracking: {enabled: false}
"""


def test_a_deterministic_failure_is_not_proposed_again(tmp_path: Path) -> None:
    (tmp_path / "myobj.py").write_text(OBJECTIVE)
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(JOB).lstrip())
    job = load_job(path)
    summary = tuner.run(job, callbacks=[])
    calls = (tmp_path / "calls.txt").read_text().split()
    assert calls.count("b") == 1, calls  # measured once, then known invalid
    assert calls.count("a") == 5  # the budget went to the configurations that can run
    proposed_again = [t for t in summary.trials if t.state == "invalid"]
    assert all("learned from trial" in t.reason and "algo b needs a GPU" in t.reason
               for t in proposed_again)
    # the next run of the study (more budget) does not measure it either
    tuner.run(job, max_trials=8, callbacks=[])
    assert (tmp_path / "calls.txt").read_text().split().count("b") == 1
    # status and the next validate say so
    status = tuner.status(job)
    assert any("algo = b" in n and "algo b needs a GPU" in n for n in status.notices)
    out = CliRunner().invoke(main, ["status", str(path)])
    assert "invalid for the rest of the study" in out.output and "algo = b" in out.output
    checked = check_job(path, import_timeout=0)
    assert any("algo = b" in n and "not proposed again" in n for n in checked.notices)
    assert checked.space.invalid_reason({"x": 0.0, "algo": "b"})


def _pruning_job(write_job, methods: list[str], **evaluation: object) -> Path:
    space = {"parameters": {"runtime": ["torch"], "pruning_method": methods,
                            "pruning_ratio": {"low": 0.0, "high": 0.6, "step": 0.3}}}
    return write_job(tiny_job_text(4, search_space=space, evaluation=evaluation,
                                   objectives=["latency_p95_ms", "cosine"],
                                   constraints=["cosine >= 0.9"]))


def test_validate_drops_gradient_pruning_for_a_fidelity_metric_job(write_job) -> None:
    path = _pruning_job(write_job, ["l1_unstructured", "gradient"], metric="cosine")
    checked = check_job(path, import_timeout=0)
    assert checked.space["pruning_method"].choices == ("l1_unstructured",)
    assert any("removed pruning_method = gradient" in n and "needs loss and targets" in n
               for n in checked.notices), checked.notices
    out = CliRunner().invoke(main, ["validate", "--import-timeout", "0", str(path)])
    assert out.exit_code == 0, out.output
    assert "notice" in out.output and "gradient pruning needs" in out.output
    # a job with a loss and targets keeps it
    kept = _pruning_job(write_job, ["l1_unstructured", "gradient"],
                        dataset="digits_model:validation_data", metric="accuracy")
    kept_text = kept.read_text().replace("cosine", "accuracy")
    kept.write_text(kept_text)
    assert "gradient" in check_job(kept, import_timeout=0).space["pruning_method"].choices
    # only gradient pruning, and no loss: a located error, not 40 failed trials
    only = _pruning_job(write_job, ["gradient"], metric="cosine")
    with pytest.raises(SpecError, match="gradient pruning needs loss and targets") as err:
        check_job(only, import_timeout=0)
    assert err.value.line and err.value.path == "search_space.parameters.pruning_method"
