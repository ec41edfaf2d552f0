"""The command line for scripts: ``--json`` outputs, exit codes, progress while waiting, the front
table's headers, ``autotune schema``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from autotune.cli import main
from tests.conftest import UNCONTENDED

OBJECTIVE = '''
import math, time

def zdt1(config):
    x = [config["x1"], config["x2"]]
    g = 1 + 9 * x[1]
    return {"f1": x[0], "f2": g * (1 - math.sqrt(x[0] / g)), "g": g}

def partial(config):
    return {"f1": config["x1"]}

def locked(config):
    from autotune.measure.harness.hostlock import measurement_lock

    with measurement_lock():
        return zdt1(config)
'''

JOB = """
name: cli
objective: obj:FUNC
search_space:
  parameters:
    x1: {low: 0.0, high: 1.0}
    x2: {low: 0.0, high: 1.0}
    mode: [a, b]
objectives:
  - {metric: f1, direction: minimize}
  - {metric: f2, direction: minimize}
constraints: [g <= 8]
agent: {name: random, seed: 3}
budget: {max_trials: TRIALS}
tracking: {enabled: false}
"""


def _job(tmp_path: Path, func: str = "zdt1", trials: int = 4) -> Path:
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(JOB).lstrip().replace("FUNC", func)
                    .replace("TRIALS", str(trials)))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_status_and_validate_json(tmp_path: Path) -> None:
    path = _job(tmp_path)
    r = _invoke("run", str(path), "--quiet")
    assert r.exit_code == 0, r.output
    r = _invoke("status", str(path), "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)  # the JSON object alone on stdout
    assert set(data) == {"job", "file", "finished", "budget", "trials", "objectives",
                         "constraints", "baseline", "space", "front", "failed", "remeasured",
                         "learned", "storage",
                         "tracking"}
    assert data["job"] == "cli" and data["finished"] is True
    assert data["space"] == {"configurations": None, "measured": 4}  # x1, x2 are continuous
    assert data["trials"] == {"total": 4, "complete": 4, "failed": 0, "running": 0, "invalid": 0}
    assert data["objectives"] == [{"metric": "f1", "direction": "minimize"},
                                  {"metric": "f2", "direction": "minimize"}]
    assert data["constraints"] == ["g <= 8"] and data["failed"] == []
    assert data["front"] and all(t["feasible"] and t["state"] == "complete" for t in data["front"])
    for t in data["front"]:
        assert set(t["config"]) == {"x1", "x2", "mode"} and set(t["metrics"]) == {"f1", "f2", "g"}
        assert t["metrics"]["g"] <= 8
    # the same front as the table shows
    text = _invoke("status", str(path)).stdout
    assert all(f"│ {t['number']:>5} │" in text for t in data["front"])

    r = _invoke("validate", str(path), "--json")
    assert r.exit_code == 0
    v = json.loads(r.stdout)
    assert v["ok"] is True and v["job"] == "cli" and v["agent"] == "random"
    assert v["search_space"][0] == {"name": "x1", "kind": "float", "low": 0.0, "high": 1.0,
                                    "step": None, "log": False, "when": None}
    assert v["search_space"][2]["choices"] == ["a", "b"]
    assert v["budget"] == {"max_trials": 4, "timeout_s": None}


def test_validate_json_reports_the_error_located(tmp_path: Path) -> None:
    path = _job(tmp_path)
    path.write_text(path.read_text().replace("max_trials", "max_trails"))
    r = _invoke("validate", str(path), "--json")
    assert r.exit_code == 2
    v = json.loads(r.stdout)
    assert v["ok"] is False and v["error"]["type"] == "SpecError"
    assert v["error"]["field"] == "budget.max_trails" and v["error"]["line"] == 13
    assert "max_trials" in v["error"]["message"] and "error:" in r.stderr


def test_a_run_where_every_trial_failed_exits_1(tmp_path: Path) -> None:
    path = _job(tmp_path, func="partial", trials=2)
    r = _invoke("run", str(path), "--quiet")
    assert r.exit_code == 1
    assert "every trial failed (2 of 2 in this run)" in r.stdout
    assert "returned no value for 'f2', 'g'" in r.stdout
    assert "finished" not in r.stdout and "no trial completed" in r.stdout
    # run again: nothing left to measure, and the study still has no complete trial
    r = _invoke("run", str(path), "--quiet")
    assert r.exit_code == 1 and "every trial failed (2 of 2)" in r.stdout
    data = json.loads(_invoke("status", str(path), "--json").stdout)
    assert data["trials"]["failed"] == 2 and data["front"] == []
    assert all("returned no value" in t["reason"] for t in data["failed"])


def test_progress_says_when_it_waits_for_the_measurement_lock(tmp_path: Path,
                                                               monkeypatch) -> None:
    from autotune.job.spec import load_job
    from autotune.tuning import tuner

    lock = tmp_path / "measure.lock"
    monkeypatch.setenv("AUTOTUNE_MEASURE_LOCK", str(lock))
    holder = subprocess.Popen(  # holds the lock until it is killed
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
         "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); print('held', flush=True); "
         "time.sleep(120)", str(lock)], stdout=subprocess.PIPE, text=True)
    statuses: list[str] = []

    def on_status(message: str) -> None:
        statuses.append(message)
        if message.startswith("waiting for the host measurement lock"):
            holder.kill()  # the trial goes on once the holder is gone

    try:
        assert holder.stdout.readline().strip() == "held"
        summary = tuner.run(load_job(_job(tmp_path, func="locked", trials=1)),
                            progress=tuner.Progress(on_status=on_status))
    finally:
        holder.kill()
        holder.wait()
    assert summary.n_complete == 1
    assert statuses[0].startswith("starting the measuring process")
    waits = [s for s in statuses if s.startswith("waiting for the host measurement lock")]
    assert len(waits) == 1, statuses
    assert f"held by pid {holder.pid}" in waits[0] and str(lock) in waits[0]


def test_retune_json_keeps_stdout_for_the_object(tmp_path: Path, monkeypatch) -> None:
    from autotune.retune import schedule

    def cycle(job, log):
        log("re-measuring the champion")
        print("a library talking on stdout")
        return schedule.CycleResult(job.name, "keep", "no drift", changed=("x1",),
                                    measured={"f1": 0.5, "f2": float("nan")}, wall_s=1.5)

    monkeypatch.setattr(schedule, "retune_once", cycle)
    r = _invoke("retune", str(_job(tmp_path)), "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["decision"] == "keep" and data["why"] == "no drift" and data["changed"] == ["x1"]
    assert data["measured"] == {"f1": 0.5, "f2": None}  # NaN is not JSON: null
    assert set(data) >= {"job", "champion", "challenger", "bundle", "started", "mlflow_run_id"}
    assert "a library talking on stdout" in r.stderr and "re-measuring" in r.stderr


@pytest.mark.slow
def test_export_json(tmp_path: Path) -> None:
    from _deploy_job import ORT_INT8, tuned_job

    job = tuned_job()
    out = tmp_path / "bundle"
    r = _invoke("export", job.source, "--pick", str(ORT_INT8), "--out", str(out), "--no-register",
                "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["bundle"] == str(out) and data["trial"] == ORT_INT8
    assert data["config"]["quantization"] == "int8_dynamic" and data["registered"] is None
    assert data["latency"]["p50_ms"] > 0 and data["manifest"]["config"] == data["config"]
    assert isinstance(data["notes"], list) and data["registry_error"] is None


def test_front_table_headers_are_not_truncated_at_160_columns() -> None:
    from rich.console import Console

    from autotune.cli import front_table
    from autotune.job.spec import load_job
    from autotune.record.study import TrialView

    job = load_job(Path(__file__).parent.parent / "experiments" / "digits-cpu.yaml")
    job = job.model_copy(update={"search_space": {"preset": "cpu-inference-full"}})
    names = job.space.names
    rows = []
    for i in range(3):
        config = {n: (p.choices[i % len(p.choices)] if p.kind == "categorical" else p.low + i)
                  for n, p in ((n, job.space[n]) for n in names)}
        metrics = {"latency_p95_ms": 0.0444 + i, "accuracy": 0.97 - i / 100,
                   "accuracy_drop": 0.002 * i}
        rows.append(TrialView(i, "complete", config, metrics, (0.0, 0.0), (-1.0,)))

    class Summary:
        front = rows

    console = Console(width=160, record=True, highlight=False)
    console.print(front_table(Summary, job))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 160
    # every header is there whole, once its lines are joined back
    lines = text.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("┏"))
    head = lines[top + 1:next(i for i, ln in enumerate(lines) if ln.startswith("┡"))]
    cells = [[c.strip() for c in ln.strip("┃").split("┃")] for ln in head]
    joined = ["".join(parts) for parts in zip(*cells, strict=True)]
    shown = set(joined)
    assert {"trial", "latency_p95_ms", "accuracy", "accuracy_drop"} <= shown
    assert {n for n in names if n in shown} == {
        n for n in names if len({str(r.config[n]) for r in rows}) > 1}


def test_schema_is_valid_json_schema_and_accepts_the_example_jobs(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    r = _invoke("schema")
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    root = Path(__file__).parent.parent
    jobs = sorted((root / "experiments").glob("*.yaml"))
    assert len(jobs) >= 3
    for path in jobs:
        errors = [e.message for e in check.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path
    ok = yaml.safe_load(_job(tmp_path).read_text())
    assert check.is_valid(ok)
    assert check.is_valid({**ok, "budget": {"max_trials": 3, "timeout": "10m"},
                           "tracking": "http://127.0.0.1:5000"})
    for bad in ({**ok, "budget": {"max_trails": 3}}, {**ok, "objectives": []},
                {**ok, "search_space": {"preset": "cpu-inference", "parameters": {}}},
                {**ok, "search_space": {"parameters": {"x": {"low": 0, "hihg": 1}}}},
                {**ok, "source": "x"}):
        assert not check.is_valid(bad), bad
    assert "cpu-inference" in json.dumps(schema["properties"]["search_space"])


@pytest.mark.slow
def test_quickstart_front_shows_a_trade_off(tmp_path: Path) -> None:
    """README command 1, for real (its search, budget and objectives), with shorter timing loops
    and without the closing confirmation (tests/test_confirm.py covers it) so it stays near a
    minute: the front has at least three points, and no configuration is the best at everything
    (the fastest, the most accurate and the smallest are not one trial)."""
    import shutil

    import yaml

    root = Path(__file__).parent.parent / "experiments"
    shutil.copy(root / "digits_model.py", tmp_path)
    job = yaml.safe_load((root / "digits-cpu.yaml").read_text())
    job["measurement"] = {"warmup": 2, "min_repeats": 10, "target_ci": 0.05, "max_time_s": 0.3,
                          **UNCONTENDED}
    job["tracking"] = {"enabled": False}
    path = tmp_path / "digits-cpu.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    r = _invoke("run", str(path), "--quiet", "--no-confirm")
    assert r.exit_code == 0, r.stdout
    data = json.loads(_invoke("status", str(path), "--json").stdout)
    assert data["trials"]["complete"] == job["budget"]["max_trials"]
    front = data["front"]
    assert len(front) >= 3, [(t["number"], t["metrics"]) for t in front]
    best = set()
    for o in data["objectives"]:
        sign = 1 if o["direction"] == "minimize" else -1
        best.add(min(front, key=lambda t, m=o["metric"], s=sign: s * t["metrics"][m])["number"])
    assert len(best) >= 2
