"""optuna-dashboard reads the study the way autotune writes it: named objectives, constraint values
in the form it shows, one numeric user attr per metric, and "Best Trials" never infeasible.

The dashboard is exercised through its own WSGI application (the JSON its web page loads)."""

from __future__ import annotations

import io
import json
import math
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from autotune.core.constraints import parse_constraint
from autotune.core.space import parse_space
from autotune.record.study import StudyRecord, trial_details, trial_metrics
from autotune.review.dashboard import app as dashboard_app

OBJ = [("latency_p95_ms", "minimize"), ("accuracy", "maximize")]
SPACE = {"batch_size": {"choices": [1, 16, 64]}, "threads": {"low": 1, "high": 4}}


def _record(url: str, objectives=OBJ) -> StudyRecord:
    cons = [parse_constraint("accuracy_drop <= 2%")]
    record = StudyRecord(url, "dash", objectives, cons)
    record.set_attr("baseline", {"latency_p95_ms": 10.0, "accuracy": 0.97, "quality": 0.97})
    return record


def _add(record: StudyRecord, latency: float, accuracy: float, batch: int = 1) -> int:
    space = parse_space({"parameters": SPACE})
    n = record.start({"batch_size": batch, "threads": 2}, space, agent="test")
    record.complete(n, {"latency_p95_ms": latency, "accuracy": accuracy,
                        "accuracy_drop": 0.97 - accuracy, "latency_n": 40.0},
                    {"fingerprint_digest": "abc", "latency": {"n": 40}})
    return n


def _get(wsgi, path: str) -> dict:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(wsgi(environ, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


def _study_json(url: str) -> dict:
    wsgi = dashboard_app(url)
    studies = _get(wsgi, "/api/studies")["study_summaries"]
    (sid,) = [s["study_id"] for s in studies if s["study_name"] == "dash"]
    return _get(wsgi, f"/api/studies/{sid}")


def test_study_carries_names_per_metric_attrs_and_dashboard_constraints(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    record = _record(url)
    ok = _add(record, 5.0, 0.965)
    bad = _add(record, 1.0, 0.90)  # 7 points below the baseline: infeasible

    study = optuna.load_study(study_name="dash", storage=url)
    assert study.metric_names == ["latency_p95_ms", "accuracy"]
    t_ok, t_bad = study.trials[ok], study.trials[bad]
    # one numeric user attr per metric and per detail; no single JSON blob
    assert t_ok.user_attrs["metric.latency_p95_ms"] == 5.0
    assert isinstance(t_ok.user_attrs["metric.accuracy_drop"], float)
    assert "metrics" not in t_ok.user_attrs and "details" not in t_ok.user_attrs
    assert t_ok.user_attrs["detail.fingerprint_digest"] == "abc"
    # read back as before
    assert trial_metrics(t_ok.user_attrs)["accuracy"] == 0.965
    assert trial_details(t_ok.user_attrs) == {"fingerprint_digest": "abc", "latency": {"n": 40}}
    views = {v.number: v for v in record.trials()}
    assert views[ok].metrics["latency_p95_ms"] == 5.0 and views[ok].feasible
    assert views[ok].user_attrs["details"]["fingerprint_digest"] == "abc"
    assert not views[bad].feasible and len(views[bad].violations) == 1
    # both constraint forms: Optuna 5's per key and the list optuna-dashboard reads
    assert t_bad.system_attrs["constraints:c0"] == pytest.approx(0.05)
    assert t_bad.system_attrs["constraints"] == [pytest.approx(0.05)]

    data = _study_json(url)
    assert data["objective_names"] == ["latency_p95_ms", "accuracy"]
    trials = {t["number"]: t for t in data["trials"]}
    assert trials[bad]["constraints"] == [pytest.approx(0.05)]
    assert trials[ok]["constraints"] == [pytest.approx(-0.015)]
    # the metric attrs are sortable (numeric) columns in the dashboard
    sortable = {a["key"]: a["sortable"] for a in data["union_user_attrs"]}
    assert sortable["metric.latency_p95_ms"] is True


def test_infeasible_trial_is_never_best(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    record = StudyRecord(url, "dash", OBJ, [parse_constraint("latency_p95_ms >= 2")])
    record.set_attr("baseline", {"latency_p95_ms": 10.0, "accuracy": 0.97, "quality": 0.97})
    bad = _add(record, 1.0, 0.99)  # dominates every other trial, but violates the constraint
    ok1 = _add(record, 5.0, 0.965)
    ok2 = _add(record, 3.0, 0.955)
    dominated = _add(record, 6.0, 0.96)
    best = {t["number"] for t in _study_json(url)["best_trials"]}
    assert bad not in best
    assert best == {ok1, ok2}  # the feasible front, which the infeasible trial would hide
    assert dominated not in best
    # plain optuna-dashboard would have labelled the infeasible trial "Best Trial"
    from optuna.study import StudyDirection

    from autotune.review.dashboard import _feasible_front

    raw = optuna.load_study(study_name="dash", storage=url)
    dirs = [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]
    from optuna_dashboard._pareto_front import get_pareto_front_trials

    assert [t.number for t in get_pareto_front_trials(raw.trials, dirs)] == [bad]
    assert {t.number for t in _feasible_front(get_pareto_front_trials)(raw.trials, dirs)} \
        == {ok1, ok2}


def test_single_objective_best_is_feasible(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    rec = StudyRecord(url, "dash", OBJ[:1], [parse_constraint("latency_p95_ms >= 2")])
    rec.set_attr("baseline", {"latency_p95_ms": 10.0, "accuracy": 0.97, "quality": 0.97})
    _add(rec, 1.0, 0.99)
    ok = _add(rec, 3.0, 0.95)
    _add(rec, 5.0, 0.95)
    data = _study_json(url)
    assert [t["number"] for t in data["best_trials"]] == [ok]
    assert not math.isnan(data["best_trials"][0]["values"][0])


def test_dashboard_of_a_job_never_run_is_a_user_error(tiny_job):
    from click.testing import CliRunner

    from autotune.cli import main

    path = tiny_job(2)
    res = CliRunner().invoke(main, ["dashboard", str(path)])
    assert res.exit_code == 2 and "run the job first" in res.output
    assert not list(path.parent.rglob("study.db"))  # and no empty study was created
