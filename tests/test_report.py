"""``autotune report``: winners of the selection rules, the knee, and a self-contained page.

The study is written through the real StudyRecord (SQLite) with hand-chosen measurements, so the
expected winners are known without running the harness."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from autotune.cli import main
from autotune.errors import SpecError
from autotune.job.spec import load_job
from autotune.review.front import REFERENCE_ATTR
from autotune.review.report import build_report, default_rules, winners
from autotune.tuning.tuner import open_record

BASELINE = {"latency_p95_ms": 4.0, "accuracy": 0.90, "quality": 0.90, "model_size_mb": 2.0}
#            latency, accuracy, size, config
TRIALS = [
    (3.0, 0.895, 1.0, {"runtime": "torch", "quantization": "fp32", "batch_size": 1}),
    (1.0, 0.86, 0.5, {"runtime": "onnxruntime", "quantization": "int8_dynamic", "batch_size": 1}),
    (2.0, 0.893, 0.6, {"runtime": "onnxruntime", "quantization": "fp32", "batch_size": 8}),
    (6.0, 0.91, 2.0, {"runtime": "torch", "quantization": "fp32", "batch_size": 8}),
]


def _study(tiny_job, rules: str | None = None):
    extra = f"report: {{rules: {rules}}}\nbudget:" if rules else "budget:"
    job = load_job(tiny_job(10, **{"budget:": extra}))
    record = open_record(job)
    record.set_attr("baseline", BASELINE)
    record.set_attr("fingerprint", {"cpu_model": "Test CPU 9000", "logical_cores": 2,
                                    "libraries": {"torch": "2.13"}})
    space = job.space
    for lat, acc, size, cfg in TRIALS:
        n = record.start({**cfg, "pruning_ratio": 0.0, "threads": 1}, space, agent="tpe")
        record.complete(n, {"latency_p95_ms": lat, "accuracy": acc, "quality": acc,
                            "model_size_mb": size, "accuracy_drop": BASELINE["accuracy"] - acc})
    n = record.start({"runtime": "torch", "quantization": "int8_dynamic", "batch_size": 8,
                      "pruning_ratio": 0.6, "threads": 1}, space, agent="tpe")
    record.fail(n, "child process killed: out of memory (limit 64 MB)")
    return job, record


def test_default_rules_name_the_goal_when_there_is_one():
    assert default_rules([("latency_p95_ms", "minimize"), ("accuracy", "maximize")]) == \
        ["fastest", "max accuracy"]
    assert default_rules([("model_size_mb", "minimize"), ("throughput_ips", "maximize")]) == \
        ["smallest", "highest throughput"]


def test_winners_follow_the_rules_and_constraints(tiny_job):
    job, record = _study(tiny_job, '["fastest with accuracy_drop <= 1%", "smallest", '
                                   '"min latency_p95_ms with model_size_mb <= 25% of baseline", '
                                   '"fastest with accuracy >= 0.99"]')
    # all four complete trials are feasible (the job allows a 5 % accuracy drop)
    views = record.trials()
    got = winners(views, job, record.baseline)
    assert [w.label for w in got][:4] == list(job.report.rules)
    assert got[0].trial.number == 2  # fastest within 1 point of accuracy
    assert got[1].trial.number == 1  # smallest
    assert got[2].trial.number == 1  # 0.5 MB <= 25 % of 2 MB
    assert got[3].trial is None and "no feasible trial" in got[3].note
    assert got[4].label.startswith("knee") and got[4].trial is not None
    # a relative rule without a baseline value says why instead of failing the report
    no_base = winners(views, job, {})
    assert no_base[2].trial is None and "baseline" in no_base[2].note


def test_report_is_self_contained_and_shows_everything(tiny_job, tmp_path):
    job, record = _study(tiny_job, '["fastest with accuracy_drop <= 1%"]')
    path = build_report(job)
    assert path == job.out_dir / "report.html"
    text = path.read_text()
    assert "$" not in re.sub(r"<script.*?</script>", "", text, flags=re.S)  # all filled
    import plotly.offline

    assert text.count(plotly.offline.get_plotlyjs()[:300]) == 1  # plotly.js inlined, once
    assert "<script src" not in text  # nothing loaded from elsewhere
    assert text.count("Plotly.newPlot") >= 3  # front, hypervolume, parallel coordinates
    assert "fastest with accuracy_drop &lt;= 1%" in text
    assert "knee point" in text
    assert "out of memory (limit 64 MB)" in text  # failed trial with its reason
    assert "Test CPU 9000" in text  # hardware fingerprint
    assert len(record.attr(REFERENCE_ATTR)) == 2  # fixed once, stored in the study
    front = text.split('id="front"')[1].split("</section>")[0]
    assert ">2</td>" in front and ">1</td>" in front and ">0</td>" in front

    out = tmp_path / "elsewhere" / "r.html"
    res = CliRunner().invoke(main, ["report", job.source, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and str(out) in res.output


def test_report_of_a_job_never_run_is_a_user_error(tiny_job):
    res = CliRunner().invoke(main, ["report", str(tiny_job(2))])
    assert res.exit_code == 2 and "run the job first" in res.output


def test_bad_rule_in_the_job_file_is_located(tiny_job):
    with pytest.raises(SpecError) as err:
        load_job(tiny_job(2, **{"budget:": 'report: {rules: ["quickest"]}\nbudget:'}))
    assert err.value.path == "report.rules" and err.value.line is not None
    assert "cannot read the goal 'quickest'" in str(err.value)


def test_tied_max_accuracy_never_recommends_a_dominated_trial(tiny_job):
    """Two trials share the best accuracy; the slower one came first.  'max accuracy' picks the
    faster one, and no recommendation is dominated by another."""
    from autotune.review.report import dominated_recommendations

    job = load_job(tiny_job(10))
    record = open_record(job)
    record.set_attr("baseline", BASELINE)
    cfg = {"pruning_ratio": 0.0, "threads": 1, "quantization": "fp32"}
    for lat, acc, rt, b in [(6.0, 0.91, "torch", 1), (2.5, 0.91, "onnxruntime", 8),
                            (1.0, 0.87, "onnxruntime", 1)]:
        n = record.start({**cfg, "runtime": rt, "batch_size": b}, job.space, agent="tpe")
        record.complete(n, {"latency_p95_ms": lat, "accuracy": acc, "quality": acc,
                            "accuracy_drop": BASELINE["accuracy"] - acc})
    got = winners(record.trials(), job, record.baseline)
    assert [w.label for w in got[:2]] == ["fastest", "max accuracy"]
    assert got[1].trial.number == 1  # not trial 0: same accuracy, 2.4x slower
    assert dominated_recommendations(got, job) == {}
    rec = [w.trial for w in got if w.trial is not None]
    from autotune.review.front import dominates

    for a in rec:
        assert not any(dominates(b.metrics, a.metrics, job.objective_pairs) for b in rec)


def test_report_says_why_flags_unstable_and_formats_as_written(tiny_job):
    """Each recommendation gets a sentence against the baseline; a latency whose CI is wider than
    the job's target is flagged; accuracy_drop reads as a percentage (the constraint says 5 %),
    memory with thousands separators."""
    from autotune.review.front import format_value, percent_metrics, unstable, why_line

    job = load_job(tiny_job(10))
    record = open_record(job)
    base = {**BASELINE, "latency_per_item_ms": 4.0, "peak_memory_mb": 24000.0}
    record.set_attr("baseline", base)
    n = record.start({"runtime": "onnxruntime", "quantization": "int8_dynamic", "batch_size": 1,
                      "pruning_ratio": 0.0, "threads": 1}, job.space, agent="tpe")
    record.complete(n, {"latency_p95_ms": 1.0, "accuracy": 0.9024, "quality": 0.9024,
                        "accuracy_drop": -0.002427, "model_size_mb": 0.5, "speedup": 4.0,
                        "latency_ci_rel": 1.97, "latency_stable": 0.0,
                        "peak_memory_mb": 24110.3})
    (v,) = record.trials()
    assert percent_metrics(job) == {"accuracy_drop"}
    assert format_value("accuracy_drop", -0.002427, {"accuracy_drop"}) == "-0.243 %"
    assert format_value("peak_memory_mb", 24110.3) == "24,110"
    assert format_value("latency_p95_ms", 0.04735) == "0.04735"
    assert format_value("throughput_ips", 58900.6) == "58,901"
    why = why_line(v, base, "accuracy")
    assert why == ("vs the unmodified model: 4× faster per item, accuracy 90.24 % (+0.24 points), "
                   "model 0.5 MB (-75 %, was 2 MB)")
    assert unstable(v, job.measurement.target_ci).startswith("unstable: latency CI ±197 %")

    text = build_report(job).read_text()
    win = text.split('id="winners"')[1].split("</section>")[0]
    assert "why this one" in win and "4× faster per item" in win
    assert "⚠ unstable: latency CI ±197 %" in win
    assert "-0.243 %" in win and "-0.002427" not in text
    front = text.split('id="front"')[1].split("</section>")[0]
    assert "⚠ unstable: latency CI ±197 %" in front
    trials = text.split('id="trials"')[1].split("</section>")[0]
    assert "24,110" in trials and "2.411e+04" not in text
