"""The confirmation step: the baseline and the front re-measured side by side, recorded in the
study, used by the front and stated in the exported manifest."""

from __future__ import annotations

import html
import json
import shutil
import textwrap
from pathlib import Path

import pytest
from _deploy_job import WARM
from conftest import EXPERIMENTS, TINY_JOB

from autotune.deploy.export import export_bundle
from autotune.job.spec import load_job
from autotune.record.study import CONFIRMATION, open_record
from autotune.tuning.confirm import BASELINE, confirm
from autotune.tuning.tuner import run, status

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny job and its finished 3-trial study (tuned once per module)."""
    root = tmp_path_factory.mktemp("tuned")
    shutil.copy(EXPERIMENTS / "digits_model.py", root)
    path = root / "job.yaml"
    path.write_text(textwrap.dedent(
        TINY_JOB.replace("MAXTRIALS", "3").replace("agent: {name: tpe, seed: 1}", WARM)).lstrip())
    run(load_job(path), callbacks=[])
    return root


@pytest.fixture
def tuned(tuned_once: Path, tmp_path: Path):
    """A fresh copy of that folder per test: each test confirms (and writes) its own study."""
    folder = shutil.copytree(tuned_once, tmp_path / "tuned")
    return load_job(folder / "job.yaml")


def test_confirm_records_the_front_and_the_baseline(tuned) -> None:
    job = tuned
    before = {t.number: dict(t.metrics) for t in status(job).trials}
    res = confirm(job, k=2, min_rounds=3, max_rounds=4, tolerance=0.5)
    assert res.baseline.name == BASELINE and res.baseline.rounds >= 3
    # the front's leaders (k=2), plus any trial that could lead within its noise (at most 2k)
    assert 1 <= len(res.trials) <= 3
    attr = open_record(job, create=False).attr(CONFIRMATION)
    assert attr["baseline"]["rounds"] == res.rounds >= 3
    assert attr["baseline"]["metrics"]["latency_p50_ms"] == pytest.approx(res.baseline.p50_ms)
    for c in res.trials:
        rec = attr["trials"][str(c.trial)]
        assert rec["p50_low_ms"] <= rec["p50_ms"] <= rec["p50_high_ms"]
        assert rec["ratio_low"] <= rec["ratio"] <= rec["ratio_high"]
        assert rec["rounds"] == res.rounds
    # the study's views carry the confirmed figures, the original measurement is kept
    views = {t.number: t for t in status(job).trials}
    for c in res.trials:
        v = views[c.trial]
        assert v.metrics["latency_p50_ms"] == pytest.approx(c.p50_ms)
        assert v.metrics["latency_ratio"] == pytest.approx(c.ratio)
        assert v.user_attrs["measured"]["latency_p50_ms"] == before[c.trial]["latency_p50_ms"]
    # every measurement records the contention around it; the confirmation counts its rounds
    for v in views.values():
        if v.state == "complete":
            busy = v.user_attrs["details"]["contention"]
            assert {"other_cpu_pct", "steal_pct", "load", "contended"} <= set(busy)
    assert 0 <= attr["contended_rounds"] <= attr["rounds_measured"]
    assert res.contended == bool(res.baseline.contended_rounds)
    unconfirmed = set(views) - {c.trial for c in res.trials}
    for n in unconfirmed:
        assert "confirmed" not in views[n].user_attrs
    # status shows the confirmed baseline (the confirmed ratios rest on it); the first
    # measurement, which the trials' own ratios were derived from, stays in the study
    record = open_record(job, create=False)
    assert status(job).baseline["latency_p50_ms"] == pytest.approx(res.baseline.p50_ms)
    if any("never became quiet" in w for w in res.warnings):  # ranked by the ratios, scaled by
        assert record.baseline["latency_p50_ms"] == pytest.approx(res.baseline.p50_ms)  # it
    else:
        assert record.baseline["latency_p50_ms"] != pytest.approx(res.baseline.p50_ms)


def test_manifest_states_the_confirmed_p50_and_spread(tuned, tmp_path: Path) -> None:
    job = tuned
    res = confirm(job, k=1, min_rounds=3, max_rounds=3, tolerance=0.5)
    c = res.trials[0]
    out = export_bundle(job, c.trial, out=tmp_path / "bundle", register=False)
    man = json.loads((out.bundle / "manifest.json").read_text())
    exp = man["expected_latency"]
    assert exp["source"] == "confirmation"
    assert exp["p50_ms"] == pytest.approx(c.p50_ms)
    # the stated spread is the 95 % prediction interval of a re-measurement; it holds the range
    # the rounds themselves spanned
    assert (exp["spread_low_ms"], exp["spread_high_ms"]) == pytest.approx(
        (c.predict_low_ms, c.predict_high_ms))
    assert exp["spread_low_ms"] <= c.p50_low_ms <= c.p50_high_ms <= exp["spread_high_ms"]
    assert (exp["rounds_low_ms"], exp["rounds_high_ms"]) == pytest.approx(
        (c.p50_low_ms, c.p50_high_ms))
    assert man["metrics"]["latency_p50_ms"] == pytest.approx(c.p50_ms)


def test_cli_confirm_then_status_and_report_show_it(tuned) -> None:
    from click.testing import CliRunner

    from autotune.cli import main
    from autotune.review.report import build_report

    job = tuned
    out = CliRunner().invoke(main, ["confirm", job.source])
    assert out.exit_code == 0, out.output
    assert "confirmed over" in out.output and "trial " in out.output
    out = CliRunner().invoke(main, ["status", job.source])
    assert out.exit_code == 0, out.output
    assert "confirmed" in out.output  # the front's latency column
    attr = open_record(job, create=False).attr(CONFIRMATION)
    page = build_report(job).read_text()
    assert ">confirmed" in page
    for w in attr["warnings"]:  # a contended confirmation or unstable baseline is in the report
        assert html.escape(w.split(":")[0]) in page


def test_run_confirms_at_the_end_unless_told_not_to(write_job) -> None:
    from click.testing import CliRunner

    from autotune.cli import main

    path = write_job(TINY_JOB.replace("MAXTRIALS", "2").replace("agent: {name: tpe, seed: 1}",
                                                                 WARM))
    job = load_job(path)
    out = CliRunner().invoke(main, ["run", str(path), "--quiet", "--no-confirm"])
    assert out.exit_code == 0, out.output
    assert "confirmed over" not in out.output
    assert open_record(job, create=False).attr(CONFIRMATION) is None
    out = CliRunner().invoke(main, ["run", str(path), "--quiet", "--max-trials", "3"])
    assert out.exit_code == 0, out.output
    assert "confirmed over" in out.output
    attr = open_record(job, create=False).attr(CONFIRMATION)
    assert attr["rounds"] >= 3 and attr["trials"]
    # the run's closing summary shows the confirmed baseline, as status does
    from autotune.cli import _fmt

    shown = CliRunner().invoke(main, ["status", str(path)])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in out.output.splitlines() if x.startswith("baseline: "))
    assert line == next(x for x in shown.output.splitlines() if x.startswith("baseline: "))
    p95 = attr["baseline"]["metrics"]["latency_p95_ms"]
    assert f"latency_p95_ms={_fmt(p95)}" in line


def test_prediction_interval_covers_a_further_measurement() -> None:
    """The min-max of a few rounds holds a further round only (n-1)/(n+1) of the time; the
    stated 95 % prediction interval holds it about 95 % of the time (log-normal noise, as
    latencies have), and it widens with the noise and narrows with more rounds."""
    import numpy as np

    from autotune.tuning.confirm import prediction_interval

    rng = np.random.default_rng(0)
    for n, want_range in ((3, 0.5), (5, 4 / 6)):
        inside_pi = inside_range = 0
        trials = 4000
        for _ in range(trials):
            xs = 10.0 * np.exp(rng.normal(0, 0.05, n + 1))
            lo, hi = prediction_interval(list(xs[:n]))
            inside_pi += lo <= xs[n] <= hi
            inside_range += xs[:n].min() <= xs[n] <= xs[:n].max()
        assert 0.93 <= inside_pi / trials <= 0.97, (n, inside_pi / trials)
        assert abs(inside_range / trials - want_range) < 0.03
    narrow = prediction_interval([10.0, 10.1, 9.9, 10.05, 9.95])
    wide = prediction_interval([10.0, 11.0, 9.0, 10.5, 9.5])
    assert narrow[0] < 10 < narrow[1] and wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])
    assert all(np.isnan(prediction_interval([10.0])))  # one round says nothing about the spread


def test_candidates_include_trials_within_noise_of_the_leaders() -> None:
    """A trial dominated on one measurement by less than the noise (trial 3: 1 % slower than
    the fastest and a hair less faithful) is confirmed too: once the leader's figure is
    confirmed it could otherwise become the pick on its own lucky figure.  One clearly slower
    and dominated (trial 4) is not."""
    from types import SimpleNamespace

    from autotune.record.study import TrialView
    from autotune.tuning.confirm import candidates

    def view(n: int, lat: float, cos: float) -> TrialView:
        return TrialView(number=n, state="complete", config={"x": n},
                         metrics={"latency_p50_ms": lat, "cosine": cos}, values=(lat, cos))

    job = SimpleNamespace(objective_pairs=[("latency_p50_ms", "minimize"), ("cosine", "maximize")])
    views = [view(0, 10.0, 0.9990), view(1, 14.0, 0.9999), view(2, 20.0, 1.0),
             view(3, 10.1, 0.9989), view(4, 16.5, 0.9980)]
    assert [t.number for t in candidates(views, job, k=4)] == [0, 3, 1, 2]
    assert [t.number for t in candidates(views, job, k=1)] == [0, 3]
    assert [t.number for t in candidates(views, job, k=4, near=0.0)] == [0, 1, 2]


def test_drift_widens_the_interval_to_what_minutes_later_sees() -> None:
    """Rounds taken within a minute miss the machine's slower drift; with the drift measured
    between tuning and confirmation (RMS of the log ratios) the interval widens to hold it."""
    import math

    from autotune.tuning.confirm import drift_sd, prediction_interval

    rounds = [10.0, 10.1, 9.95, 10.05, 10.0]
    assert drift_sd([]) == 0.0
    d = drift_sd([(10.0, 10.5), (20.0, 19.0), (5.0, 5.25)])
    assert d == pytest.approx(math.sqrt((math.log(1.05) ** 2 * 2 + math.log(0.95) ** 2) / 3))
    lo, hi = prediction_interval(rounds)
    lo_d, hi_d = prediction_interval(rounds, d)
    assert lo_d < lo and hi_d > hi and hi_d > 10.0 * math.exp(1.9 * d)


def test_the_first_baselines_instability_warning_ends_with_its_confirmation() -> None:
    from autotune.record.study import measurement_warnings

    class Record:
        def __init__(self, attrs: dict) -> None:
            self.attrs = attrs

        def attr(self, key: str):
            return self.attrs.get(key)

    loose = "the baseline's latency is unstable: its median is known to +-74%"
    assert measurement_warnings(Record({"baseline_unstable": loose})) == [loose]
    confirmed = {CONFIRMATION: {"baseline": {"p50_ms": 20.0}, "warnings": ["ran contended"]}}
    assert measurement_warnings(Record({"baseline_unstable": loose, **confirmed})) == \
        ["ran contended"]


def test_each_contender_is_measured_in_its_own_process_taking_turns() -> None:
    """SeparateProcesses: one measuring process per contender, kept across rounds, blocks rotated
    as stats.alternate rotates them; the worst contention of the rounds is reported; a failure
    names its contender (so the confirmation drops only that one)."""
    from autotune.errors import TrialFailed
    from autotune.measure.workloads.forward import CONTENTION_KEY
    from autotune.tuning.confirm import SeparateProcesses

    made: list[FakeProc] = []
    order: list[str] = []

    class FakeProc:
        def __init__(self) -> None:
            self.seen: set[str] = set()
            self.closed = False
            made.append(self)

        def compare(self, configs, rounds):
            (name, cfg), = configs.items()
            assert rounds == 1
            self.seen.add(name)
            order.append(name)
            if cfg.get("broken"):
                raise TrialFailed("cannot build")
            busy = {"contended": name == "b", "other_cpu_pct": 40.0 if name == "b" else 1.0}
            return {name: [{"p50_ms": float(len(order))}], CONTENTION_KEY: busy}

        def close(self) -> None:
            self.closed = True

    sep = SeparateProcesses(job=None, factory=lambda job: FakeProc())  # type: ignore[arg-type]
    out = sep.compare({"baseline": {}, "a": {}, "b": {}}, 3)
    assert order == ["baseline", "a", "b", "a", "b", "baseline", "b", "baseline", "a"]
    assert len(made) == 3 and all(len(p.seen) == 1 for p in made)  # one process each, reused
    assert [len(out[n]) for n in ("baseline", "a", "b")] == [3, 3, 3]
    assert out[CONTENTION_KEY]["contended"] is True
    with pytest.raises(TrialFailed, match=r"^c: cannot build"):
        sep.compare({"baseline": {}, "c": {"broken": True}}, 1)
    sep.close()
    assert all(p.closed for p in made)
