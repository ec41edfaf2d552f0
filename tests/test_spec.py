from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from autotune.errors import SpecError
from autotune.spec import load_job
from tests.conftest import EXPERIMENTS, TINY_JOB


def _job(write_job, text: str):
    return write_job(TINY_JOB.replace("MAXTRIALS", "4").replace(*text) if isinstance(text, tuple)
                     else text)


def test_quickstart_job_is_valid():
    job = load_job(EXPERIMENTS / "digits-cpu.yaml")
    assert job.objective_pairs == [("latency_p95_ms", "minimize"), ("accuracy", "maximize"),
                                  ("model_size_mb", "minimize")]
    assert "quantization" in job.space
    assert job.storage_url.startswith("sqlite:///")
    with pytest.raises(ValidationError):  # immutable
        job.name = "x"  # type: ignore[misc]


def test_typo_in_key_names_file_line_field_and_suggestion(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget:\n  max_trails: 4"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    msg = str(e.value)
    line = path.read_text().splitlines().index("  max_trails: 4") + 1
    assert e.value.line == line
    assert e.value.path == "budget.max_trails"
    assert str(path) in msg and f"line {line}" in msg and "max_trails" in msg
    assert "Did you mean 'max_trials'" in msg


def test_wrong_type_says_expected_and_found(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget: {max_trials: lots}"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    assert e.value.path == "budget.max_trials"
    assert "integer" in str(e.value) and "'lots'" in str(e.value)
    assert e.value.line == path.read_text().splitlines().index("budget: {max_trials: lots}") + 1


def test_unknown_metric_in_constraint(write_job):
    path = _job(write_job, ("accuracy_drop <= 5%", "acuracy_drop <= 5%"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    assert e.value.path == "constraints[0]"
    assert "unknown metric 'acuracy_drop'" in str(e.value)
    assert "Did you mean 'accuracy_drop'" in str(e.value)
    assert e.value.line == path.read_text().splitlines().index("  - acuracy_drop <= 5%") + 1


def test_bad_constraint_syntax(write_job):
    path = _job(write_job, ("accuracy_drop <= 5%", "accuracy_drop around 5"))
    with pytest.raises(SpecError, match="METRIC OP VALUE"):
        load_job(path)


def test_unknown_objective_metric_and_agent(write_job):
    with pytest.raises(SpecError, match="unknown metric 'latency_p96_ms'"):
        load_job(_job(write_job, ("[latency_p95_ms, accuracy]", "[latency_p96_ms, accuracy]")))
    with pytest.raises(SpecError, match="unknown agent 'tpee'") as e:
        load_job(_job(write_job, ("name: tpe,", "name: tpee,")))
    assert e.value.path == "agent.name"


def test_space_errors_are_located(write_job):
    path = _job(write_job, ("pruning_ratio: {low: 0.0, high: 0.6, step: 0.3}",
                            "pruning_ratio: {low: 0.9, high: 0.6}"))
    with pytest.raises(SpecError, match="greater than high") as e:
        load_job(path)
    assert e.value.path == "search_space.parameters.pruning_ratio"
    assert e.value.line is not None


def test_duplicate_key_and_bad_yaml(write_job, tmp_path):
    with pytest.raises(SpecError, match="appears twice"):
        load_job(write_job("name: a\nname: b\n"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(bad)


def test_missing_section(write_job):
    with pytest.raises(SpecError, match="required field is missing") as e:
        load_job(write_job("name: x\nobjectives: [accuracy]\nsearch_space: {}\n"))
    assert e.value.path in ("model", "evaluation")


def test_cli_prints_one_paragraph_without_traceback(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget: {max_trails: 4}"))
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "max_trails" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_preset_overrides(write_job):
    job = load_job(write_job("""
        name: p
        model: {factory: digits_model:build}
        evaluation: {dataset: digits_model:validation_data}
        search_space:
          preset: cpu-inference
          overrides:
            batch_size: [4]
            graph_optimization: null
        objectives: [latency_p50_ms]
    """))
    assert job.space["batch_size"].choices == (4,)
    assert "graph_optimization" not in job.space
    with pytest.raises(SpecError, match="no search-space preset named 'nope'"):
        load_job(write_job("""
            name: p
            model: {factory: digits_model:build}
            evaluation: {dataset: digits_model:validation_data}
            search_space: {preset: nope}
            objectives: [latency_p50_ms]
        """))
