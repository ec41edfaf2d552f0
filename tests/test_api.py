"""The Python API for notebooks: ``autotune.tune`` / ``load_results`` / ``trials_frame``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import autotune
from autotune.errors import SpecError, StudyError

OBJECTIVE = '''
import math

def zdt1(config):
    g = 1 + 9 * config["x2"]
    if config["mode"] == "broken" and config["x1"] > 0.7:
        raise RuntimeError("no good")
    return {"f1": config["x1"], "f2": g * (1 - math.sqrt(config["x1"] / g)), "g": g}
'''

JOB = {
    "name": "api",
    "objective": "obj:zdt1",
    "search_space": {"parameters": {"x1": {"low": 0.0, "high": 1.0},
                                    "x2": {"low": 0.0, "high": 1.0},
                                    "mode": ["ok", "broken"]}},
    "objectives": [{"metric": "f1", "direction": "minimize"},
                   {"metric": "f2", "direction": "minimize"}],
    "constraints": ["g <= 6"],
    "agent": {"name": "random", "seed": 5},
    "budget": {"max_trials": 6},
    "tracking": {"enabled": False},
}


def test_import_is_light_and_the_api_is_exported() -> None:
    code = ("import sys, autotune; heavy = [m for m in ('torch', 'pandas', 'optuna', 'mlflow', "
            "'onnxruntime', 'pydantic', 'autotune.api') if m in sys.modules]; print(heavy); "
            "autotune.tune; print('autotune.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"  # loaded on first use only
    for name in autotune.__all__:
        assert getattr(autotune, name) is not None
    assert {"tune", "load_results", "trials_frame", "Results", "job_schema"} <= set(
        autotune.__all__)
    with pytest.raises(AttributeError, match="no attribute 'tuen'"):
        autotune.tuen  # noqa: B018


def test_tune_a_dict_then_read_the_results_as_a_dataframe(tmp_path: Path) -> None:
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    with pytest.raises(StudyError, match="run the job first"):
        autotune.load_results(JOB, base_dir=tmp_path)

    res = autotune.tune(JOB, base_dir=tmp_path, quiet=True)
    assert isinstance(res, autotune.Results) and res.finished and res.new_trials == 6
    assert (tmp_path / "runs" / "api" / "study.db").is_file()  # next to base_dir
    assert res.n_complete + res.n_failed == 6 and res.front
    df = res.to_frame()
    assert df.index.name == "trial" and list(df.index) == [t.number for t in res.trials]
    assert list(df.columns[:6]) == ["state", "feasible", "pareto", "x1", "x2", "mode"]
    assert list(df.columns[6:8]) == ["f1", "f2"]  # the objectives first
    assert set(df.columns) >= {"g", "reason", "duration_s"}
    assert set(df.index[df.pareto]) == {t.number for t in res.front}
    front = df[df.pareto]
    assert (front.state == "complete").all() and front.feasible.all() and (front.g <= 6).all()
    failed = df[df.state == "failed"]
    assert (failed["mode"] == "broken").all() and (failed.x1 > 0.7).all()
    assert failed.reason.str.contains("RuntimeError: no good").all()
    assert df.loc[res.front[0].number, "f1"] == res.front[0].metrics["f1"]

    # the same study from a file (a path) and as trials_frame; nothing is measured again
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(JOB, sort_keys=False))
    again = autotune.load_results(path)
    assert again.new_trials == 0 and [t.number for t in again.front] == [
        t.number for t in res.front]
    pd.testing.assert_frame_equal(autotune.trials_frame(str(path)), df)
    more = autotune.tune(autotune.as_job(path), max_trials=8, quiet=True)  # a Job object
    assert more.new_trials == 2 and len(more.to_frame()) == 8


def test_tune_prints_progress_unless_quiet(tmp_path: Path, capsys) -> None:
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    autotune.tune({**JOB, "budget": {"max_trials": 2}}, base_dir=tmp_path)
    err = capsys.readouterr().err
    assert "starting the measuring process" in err
    assert "trial 1/2 #0" in err and "trial 2/2 #1" in err


def test_a_bad_job_dict_is_a_located_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        autotune.tune({**JOB, "budget": {"max_trails": 3}}, base_dir=tmp_path)
    assert e.value.path == "budget.max_trails" and "max_trials" in str(e.value)
    with pytest.raises(SpecError, match="a path to a job file, a dict"):
        autotune.tune(42)


def test_a_script_without_main_guard_gets_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    """The measuring process is spawned and imports the caller's script (as multiprocessing
    does): a script calling tune() at top level must fail with the fix, not deadlock."""
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    script = tmp_path / "tune_it.py"
    script.write_text("import autotune\n"
                      f"autotune.tune({dict(JOB, budget={'max_trials': 1})!r}, "
                      f"base_dir={str(tmp_path)!r}, quiet=True)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=240, cwd=tmp_path)
    assert r.returncode != 0
    assert "put the call under `if __name__ == \"__main__\":`" in r.stderr
