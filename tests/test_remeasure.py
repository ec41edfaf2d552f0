"""Contention never decides: a trial whose measurement ran while another process used the cores
is measured again (beside the baseline) before it is recorded, so its contended figure never
ranks, dominates or picks anything; a figure that could not be re-measured makes the trial a
candidate of the confirmation step however far behind it puts it.

The contention is put into the measurement seam (the harness the loop is handed): the real
in-process evaluator measures the tiny digits model, and for one configuration its result is
replaced by what a contended measurement gives (10x the latency, flagged contended).  Whether the
re-measurement's own rounds ran quiet is set the same way, so nothing rests on how busy the
machine running the tests is.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import EXPERIMENTS, TINY_JOB

from autotune.errors import TrialFailed
from autotune.job.spec import load_job
from autotune.measure.harness.contention import Contention, flag, only_contended
from autotune.measure.workloads.forward import CONTENTION_KEY, Evaluator
from autotune.tuning.confirm import BASELINE, candidates, confirm
from autotune.tuning.tuner import run, status

pytestmark = pytest.mark.slow

#: the configuration whose own measurement runs contended (warm-started as trial 1)
BUSY = {"runtime": "onnxruntime", "quantization": "int8_dynamic", "pruning_ratio": 0.0,
        "batch_size": 1, "threads": 1}
WARM = ("agent: {name: tpe, seed: 1, warm_start: ["
        "{runtime: onnxruntime, quantization: fp32, pruning_ratio: 0.0, batch_size: 1, "
        "threads: 1}, "
        "{runtime: onnxruntime, quantization: int8_dynamic, pruning_ratio: 0.0, batch_size: 1, "
        "threads: 1}]}")
SLOWER = 10.0


def _contention(contended: bool) -> dict[str, Any]:
    return Contention(other_cpu_pct=80.0 if contended else 2.0, steal_pct=0.0, load=2.0,
                      cores=2, window_s=1.0, contended=contended).to_dict()


class Seam:
    """The in-process evaluator, with contention put into chosen measurements."""

    def __init__(self, job: Any, *, rounds_contended: bool = False,
                 compare_fails: bool = False) -> None:
        self.ev = Evaluator(job)
        self.rounds_contended = rounds_contended
        self.compare_fails = compare_fails
        self.compared: list[list[str]] = []

    def evaluate(self, config: dict[str, Any]) -> Any:
        res = self.ev.evaluate(config)
        quiet = {**res.details, "contention": _contention(False)}
        if {k: config.get(k) for k in BUSY} != BUSY:
            return replace(res, details=quiet)
        # what another process on the cores does to this one measurement
        metrics = {k: v * SLOWER if k.startswith("latency_p") or k in (
            "latency_mean_ms", "latency_per_item_ms") else v for k, v in res.metrics.items()}
        metrics["throughput_ips"] = res.metrics["throughput_ips"] / SLOWER
        return replace(res, metrics=metrics, details={**quiet, "contention": _contention(True)})

    def compare(self, configs: dict[str, dict[str, Any]], rounds: int) -> dict[str, Any]:
        self.compared.append(list(configs))
        if self.compare_fails and "trial" in configs:  # the loop's re-measurement only
            raise TrialFailed("trial: the measuring process was killed (test)")
        out = self.ev.compare(configs, rounds)
        out[CONTENTION_KEY] = _contention(self.rounds_contended)
        return out

    def capabilities(self) -> dict[str, Any]:
        return self.ev.capabilities()

    def fingerprint(self) -> dict[str, Any]:
        return self.ev.fingerprint()

    def close(self) -> None:
        pass


def _job(tmp_path: Path) -> Any:
    shutil.copy(EXPERIMENTS / "digits_model.py", tmp_path)
    text = TINY_JOB.replace("MAXTRIALS", "2").replace("agent: {name: tpe, seed: 1}", WARM)
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return load_job(path)


def _busy_trial(summary: Any) -> Any:
    return next(t for t in summary.trials if {k: t.config.get(k) for k in BUSY} == BUSY)


def test_a_contended_trial_is_remeasured_on_quiet_cores_before_it_ranks(tmp_path: Path) -> None:
    job = _job(tmp_path)
    seam = Seam(job)
    messages: list[str] = []
    from autotune.tuning.loop import Progress

    summary = run(job, harness=seam, callbacks=[], progress=Progress(on_message=messages.append))
    t = _busy_trial(summary)
    again = t.user_attrs["details"]["remeasured"]
    assert again["how"] == "quiet" and "ran contended" in again["why"]
    assert [BASELINE, "trial"] in seam.compared  # measured beside the baseline
    # the recorded figure (what the agent was told, what the front ranks) is the re-measured one
    contended = again["contended"]["latency_p50_ms"]
    assert t.metrics["latency_p50_ms"] < contended / 3
    assert t.metrics["latency_ratio"] == pytest.approx(
        t.metrics["latency_per_item_ms"] / summary.baseline["latency_per_item_ms"])
    assert flag(t.user_attrs) == "re-measured" and not only_contended(t.user_attrs["details"])
    assert any("re-measured on quiet cores" in m for m in messages), messages
    # status --json and the manifest say which figure was re-measured and why
    from click.testing import CliRunner

    from autotune.cli import main

    out = CliRunner().invoke(main, ["status", str(job.source), "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)["remeasured"]
    assert [(r["trial"], r["how"]) for r in listed] == [(t.number, "quiet")]
    from autotune.deploy.export import export_bundle

    bundle = export_bundle(job, t.number, out=tmp_path / "bundle", register=False).bundle
    stated = json.loads((bundle / "manifest.json").read_text())["expected_latency"]
    assert stated["source"] == "re-measurement"
    assert stated["remeasured"]["how"] == "quiet" and "contended" in stated["remeasured"]["why"]
    assert stated["p50_ms"] == pytest.approx(t.metrics["latency_p50_ms"])


def test_cores_never_quiet_rank_by_the_interleaved_ratio(tmp_path: Path) -> None:
    job = _job(tmp_path)
    messages: list[str] = []
    from autotune.tuning.loop import Progress

    seam = Seam(job, rounds_contended=True)
    summary = run(job, harness=seam, callbacks=[], progress=Progress(on_message=messages.append))
    t = _busy_trial(summary)
    again = t.user_attrs["details"]["remeasured"]
    assert again["how"] == "ratio" and again["rounds_contended"]
    # the figure is the ratio measured side by side times the study's baseline
    assert t.metrics["latency_p50_ms"] == pytest.approx(
        again["ratio"] * summary.baseline["latency_per_item_ms"] * BUSY["batch_size"])
    assert t.metrics["latency_ratio"] == pytest.approx(again["ratio"])
    assert flag(t.user_attrs) == "ratio to baseline"
    assert any("never became quiet" in m for m in messages), messages
    # the confirmation, never quiet either, ranks by its interleaved ratios the same way
    res = confirm(job, harness=seam, k=2, min_rounds=2, max_rounds=2, tolerance=1.0)
    assert res.contended and any("never became quiet" in w for w in res.warnings)
    ref = summary.baseline["latency_per_item_ms"]
    assert res.baseline.p50_ms == pytest.approx(ref)
    for c in res.trials:
        assert c.p50_ms == pytest.approx(c.ratio * ref)


def test_a_figure_that_could_not_be_remeasured_is_confirmed(tmp_path: Path) -> None:
    job = _job(tmp_path)
    seam = Seam(job, compare_fails=True)
    summary = run(job, harness=seam, callbacks=[])
    t = _busy_trial(summary)
    assert t.user_attrs["details"]["remeasured"]["how"] == "failed"
    assert only_contended(t.user_attrs["details"]) and flag(t.user_attrs) == "contended"
    views = status(job).trials
    # a candidate whatever its contended figure (10x slower) says
    assert t.number in {c.number for c in candidates(views, job, k=1)}
    res = confirm(job, harness=seam, k=1, min_rounds=2, max_rounds=2, tolerance=1.0)
    assert t.number in {c.trial for c in res.trials}
    after = next(v for v in status(job).trials if v.number == t.number)
    assert flag(after.user_attrs).startswith("confirmed")
    assert after.metrics["latency_p50_ms"] < t.metrics["latency_p50_ms"] / 3


def test_candidates_take_every_trial_whose_only_figure_is_contended() -> None:
    """Far behind on a contended figure (3x the leader, dominated): still confirmed; the same
    figure once re-measured (or a quiet one) is left out like any dominated trial."""
    from types import SimpleNamespace

    from autotune.record.study import TrialView

    def view(n: int, lat: float, cos: float, details: dict[str, Any] | None = None) -> TrialView:
        return TrialView(number=n, state="complete", config={"x": n},
                         metrics={"latency_p50_ms": lat, "cosine": cos}, values=(lat, cos),
                         user_attrs={"details": details or {"contention": _contention(False)}})

    job = SimpleNamespace(objective_pairs=[("latency_p50_ms", "minimize"), ("cosine", "maximize")])
    busy = {"contention": _contention(True)}
    views = [view(0, 10.0, 0.999), view(1, 30.0, 0.998, busy),
             view(2, 30.0, 0.998, {**busy, "remeasured": {"how": "quiet"}}),
             view(3, 30.0, 0.998)]
    assert [t.number for t in candidates(views, job, k=1)] == [0, 1]


class BusyBaseline(Seam):
    """The seam, with the baseline's own measurements contended too (SLOWER x) until the first
    trial has been measured (``always``: throughout): the study flags its baseline contended
    (``loop.prepare`` measures it again and it is still contended)."""

    def __init__(self, job: Any, *, always: bool = False, **kw: Any) -> None:
        super().__init__(job, **kw)
        from autotune.measure.runtimes import job_default_runtime
        from autotune.tuning.loop import baseline_config

        self.base = baseline_config(job.space, job_default_runtime(job))
        self.always = always
        self.trials_measured = 0
        self.baseline_evaluations = 0

    def evaluate(self, config: dict[str, Any]) -> Any:
        if dict(config) != self.base:
            self.trials_measured += 1
            return super().evaluate(config)
        self.baseline_evaluations += 1
        res = self.ev.evaluate(config)
        if self.trials_measured and not self.always:
            return replace(res, details={**res.details, "contention": _contention(False)})
        metrics = {k: v * SLOWER if k.startswith("latency_p") or k in (
            "latency_mean_ms", "latency_per_item_ms") else v for k, v in res.metrics.items()}
        metrics["throughput_ips"] = res.metrics["throughput_ips"] / SLOWER
        return replace(res, metrics=metrics, details={**res.details,
                                                      "contention": _contention(True)})


def test_a_contended_baseline_never_inflates_a_ratio_ranked_figure(tmp_path: Path) -> None:
    """The baseline's figure ran contended (10x) and the busy trial's re-measurement never got
    quiet cores: its figure is its interleaved ratio times a QUIET baseline figure -- the
    baseline is measured again at the first quiet trial (trial 0) and replaces the study's --
    never times the contended one (the old code recorded ratio x the 10x baseline)."""
    job = _job(tmp_path)
    seam = BusyBaseline(job, rounds_contended=True)
    messages: list[str] = []
    from autotune.record.study import measurement_warnings, open_record
    from autotune.tuning.loop import Progress

    summary = run(job, harness=seam, callbacks=[], progress=Progress(on_message=messages.append))
    t = _busy_trial(summary)
    busy = t.user_attrs["details"]["remeasured"]
    assert busy["how"] == "ratio" and busy["rounds_contended"]
    # not inflated: its ratio times the baseline as it runs on quiet cores, not times the 10x
    # contended figure (what the old code recorded)
    quiet_now = seam.ev.evaluate(dict(seam.base)).metrics["latency_per_item_ms"]
    assert t.metrics["latency_p50_ms"] < 3 * busy["ratio"] * quiet_now * BUSY["batch_size"]
    record = open_record(job, create=False)
    again = record.attr("baseline_remeasured")
    assert again["how"] == "quiet" and "contended" in again["why"] and again["before_trial"] == 0
    assert not record.attr("baseline_contended")
    contended_base = again["contended"]["latency_per_item_ms"]
    quiet_base = summary.baseline["latency_per_item_ms"]
    assert quiet_base < contended_base / 3  # the study's baseline is the quiet figure now
    assert busy["baseline_p50_ms"] == pytest.approx(quiet_base * BUSY["batch_size"])
    assert t.metrics["latency_p50_ms"] == pytest.approx(busy["ratio"] * quiet_base)
    assert t.metrics["latency_p50_ms"] < busy["ratio"] * contended_base / 3  # not inflated
    assert t.metrics["latency_ratio"] == pytest.approx(busy["ratio"])
    assert any("baseline: re-measured on quiet cores" in m for m in messages), messages
    # status and the report say which baseline figure was re-measured and why; so does the
    # manifest of an export
    assert any("baseline was re-measured on quiet cores" in w
               for w in measurement_warnings(record))
    from autotune.deploy.export import export_bundle

    bundle = export_bundle(job, t.number, out=tmp_path / "bundle", register=False).bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["baseline_remeasured"]["how"] == "quiet"
    assert manifest["expected_latency"]["remeasured"]["baseline_p50_ms"] == pytest.approx(
        quiet_base * BUSY["batch_size"])


def test_a_ratio_is_not_scaled_by_a_baseline_figure_that_ran_contended(tmp_path: Path) -> None:
    """Never a quiet moment (the baseline contended throughout, every trial contended): the busy
    trial's ratio is not turned into a figure by the contended baseline; its contended figure
    stays flagged, so the confirmation step takes it, and status says the baseline is still
    contended."""
    job = _job(tmp_path)
    seam = BusyBaseline(job, rounds_contended=True, always=True)
    global BUSY
    keep = BUSY
    BUSY = {"runtime": "onnxruntime", "threads": 1}  # every trial of the warm start: contended
    try:
        summary = run(job, harness=seam, callbacks=[])
    finally:
        BUSY = keep
    from autotune.record.study import measurement_warnings, open_record

    record = open_record(job, create=False)
    assert record.attr("baseline_contended") and not record.attr("baseline_remeasured")
    for t in summary.trials:
        again = t.user_attrs["details"]["remeasured"]
        assert again["how"] == "failed" and "ran contended too" in again["error"]
        assert again["ratio"] > 0 and only_contended(t.user_attrs["details"])
    views = status(job).trials
    assert {t.number for t in summary.trials} <= {c.number for c in candidates(views, job, k=1)}
    assert any("never quiet" in w for w in measurement_warnings(record))
