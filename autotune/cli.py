"""Command line: ``autotune validate|run|status|report|export|retune JOB``, ``autotune schema``."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from autotune.api import job_schema
from autotune.deploy.bundle import read_key, require_signature
from autotune.deploy.export import export_bundle
from autotune.deploy.serve import Limits, serve
from autotune.errors import AutotuneError, SpecError
from autotune.job.check import check_job
from autotune.job.machine import exclusions
from autotune.job.portfolio import applicable, job_portfolio
from autotune.job.spec import load_job
from autotune.measure.harness.contention import flag
from autotune.measure.harness.hardware import detect_capabilities, fingerprint
from autotune.measure.harness.isolate import memory_limit
from autotune.measure.workloads.generation import GenerationEvaluator
from autotune.measure.workloads.goodput import evaluator_measure, search
from autotune.record.study import measurement_warnings
from autotune.retune import schedule as scheduling  # (module: tests patch scheduling.retune_once)
from autotune.review.dashboard import serve as serve_dashboard
from autotune.review.front import front_row
from autotune.review.report import build_report
from autotune.review.tracking import sync_job
from autotune.tuning.confirm import confirm
from autotune.tuning.loop import coverage
from autotune.tuning.tuner import Progress, WorkerOptions, open_record, run_worker
from autotune.tuning.tuner import run as run_job
from autotune.tuning.tuner import status as job_status


def _console(stderr: bool = False) -> Any:
    """Rich console; ``stderr=True`` for commands whose stdout is JSON (``--json``)."""
    import shutil

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = shutil.get_terminal_size((160, 40)).columns if stream.isatty() else 160
    return Console(highlight=False, width=max(width, 100), stderr=stderr)


def _json_option(f: Any) -> Any:
    """``--json``, kept out of the command's arguments (read it with :func:`_as_json`)."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=lambda ctx, _p, v: ctx.meta.__setitem__("autotune.json", v),
                        help="Print one JSON object on stdout (messages go to stderr).")(f)


def _as_json() -> bool:
    return bool(click.get_current_context().meta.get("autotune.json"))


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """While a ``--json`` command works, whatever libraries print goes to stderr, so stdout
    carries the JSON object alone (Python-level writes, and the file descriptor when stdout is
    the process's own)."""
    if not active:
        yield
        return
    import contextlib
    import os

    saved = None
    with contextlib.suppress(Exception):
        if sys.stdout.fileno() == 1:
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(_jsonable(data), indent=2, allow_nan=False))


def _jsonable(v: Any) -> Any:
    """Plain JSON values: mappings/sequences recursively, NaN/inf as null, paths as strings."""
    from collections.abc import Mapping
    from pathlib import PurePath

    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, PurePath):
        return str(v)
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    return str(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def front_table(summary: Any, job: Any, title: str = "Pareto front (feasible trials)",
                width: int = 160) -> Any:
    """The front as a rich table that fits ``width`` columns: parameters every front point
    shares go to the caption, and long headers are broken at underscores (never truncated)."""
    from rich.table import Table

    rows = [front_row(t, job) for t in summary.front]
    flags = [flag(t.user_attrs) for t in summary.front]
    if any(flags):  # confirmed by side-by-side rounds, or measured while the cores were busy
        rows = [{**r, "latency": f or "single run"} for r, f in zip(rows, flags, strict=True)]
    cols = list(dict.fromkeys(c for r in rows for c in r)) if rows else ["trial"]
    params = set(job.space.names)
    # a parameter every front configuration shares goes into the caption, so the table fits
    shared = {c: rows[0].get(c) for c in cols if c in params and len(rows) > 1
              and all(r.get(c) == rows[0].get(c) for r in rows)}
    cols = [c for c in cols if c not in shared]
    caption = ("all with " + ", ".join(f"{k}={v}" for k, v in shared.items())) if shared else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    data_w = [max([len(row[i]) for row in cells] + [1]) for i in range(len(cols))]
    for c, header in zip(cols, _headers(cols, data_w, width), strict=True):
        table.add_column(header, justify="right" if c not in params else "left",
                         overflow="fold")
    for row in cells:
        table.add_row(*row)
    return table


def _headers(names: Sequence[str], data_w: Sequence[int], width: int) -> list[str]:
    """Headers that let the table fit ``width``: while it does not, the header that overhangs
    its values the most is broken into lines at underscores ("latency_p95_ms" over "1.23" becomes
    "latency" / "_p95_ms"); a table that fits keeps its headers on one line."""
    heads = list(names)

    def col_w(i: int) -> int:
        return max(data_w[i], *(len(line) for line in heads[i].split("\n")))

    tried: set[int] = set()
    while sum(col_w(i) + 3 for i in range(len(heads))) + 1 > width:
        overhang = [(col_w(i) - data_w[i], i) for i in range(len(heads)) if i not in tried]
        if not overhang or max(overhang)[0] <= 0:
            break
        i = max(overhang)[1]
        tried.add(i)
        heads[i] = _wrap_header(names[i], max(data_w[i], 6))
    return heads


def _wrap_header(name: str, width: int) -> str:
    parts = name.split("_")
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "_" + part
        else:
            lines.append("_" + part)
    return "\n".join(lines)


class _Bar:
    """Progress: trial k of n, best so far per objective, front size, ETA."""

    def __init__(self, console: Any, job: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.job = job
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]trial"), MofNCompleteColumn(), BarColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=console, transient=False,
        )
        self.task: Any = None

    def start(self, done: int, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("", total=total, completed=done)

    def trial(self, view: Any, done: int, total: int, front: Sequence[Any]) -> None:
        best = []
        for m, d in self.job.objective_pairs:
            vals = [t.metrics[m] for t in front if m in t.metrics]
            if vals:
                best.append(f"{m}={_fmt(min(vals) if d == 'minimize' else max(vals))}")
        state = view.state if view.state != "complete" else (
            "ok" if view.feasible else "infeasible")
        if view.state == "failed":
            self.progress.console.print(
                f"[yellow]trial {view.number} failed:[/] {view.reason.splitlines()[0][:200]}")
        desc = f"#{view.number} {state} · front {len(front)} · best " + ", ".join(best)
        self.progress.update(self.task, completed=done, description=desc)

    def status(self, message: str) -> None:
        """What the loop waits for: a line before the bar starts, the bar's text once it runs."""
        if self.task is None:
            self.console.print(f"[dim]{message}[/]")
        else:
            self.progress.update(self.task, description=message)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


class _Group(click.Group):
    """Every command's user errors (AutotuneError) end as one paragraph on stderr, exit code 2,
    without a traceback; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AutotuneError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="autotune")
def main() -> None:
    """autotune: hardware-aware tuning of how to run ML models."""


def _load(path: str) -> Any:
    return load_job(path)


@contextmanager
def _progress(console: Any, job: Any, quiet: bool) -> Iterator[Any]:
    """Progress callbacks for a tuning loop; the bar is stopped however the loop ends.

    ``prog.extra["measured"]`` collects the trials this process measured (for the exit code)."""
    bar = _Bar(console, job)
    measured: list[Any] = []

    def on_trial(view: Any, done: int, total: int, front: Sequence[Any]) -> None:
        measured.append(view)
        if not quiet:
            bar.trial(view, done, total, front)

    prog = Progress(on_message=lambda m: console.print(f"[dim]{m}[/]"), on_trial=on_trial,
                    on_status=bar.status, extra={"measured": measured})
    if not quiet:
        prog.on_start = bar.start
    try:
        yield prog
    finally:
        bar.stop()


def _all_failed(console: Any, measured: Sequence[Any], summary: Any) -> bool:
    """Say so, honestly, when every trial this process measured failed (or the study has no
    complete trial at all); the command then exits with 1."""
    failed = [t for t in measured if t.state == "failed"]
    if measured and len(failed) < len(measured):
        return False
    if not measured and (summary.n_complete or not summary.n_failed):
        return False
    last = failed[-1] if failed else next(
        t for t in reversed(summary.trials) if t.state == "failed")
    n = len(failed) if measured else summary.n_failed
    console.print(f"[red]every trial failed[/] ({n} of {n}{' in this run' if measured else ''});"
                  f" the last one, trial {last.number}: {last.reason.splitlines()[0][:300]}. "
                  "See 'autotune status' for each reason and runs/<job>/logs/harness.log.")
    return True


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--import-timeout", type=click.FloatRange(0, 86400), default=60.0, show_default=True,
              help="Seconds to import the job's module:function references in a child process "
                   "(0 skips the import check).")
@_json_option
def validate(job_file: str, import_timeout: float) -> None:
    """Check a job file and show what it will search."""
    if _as_json():
        _validate_json(job_file, import_timeout)
        return
    checked = check_job(job_file, import_timeout=import_timeout)
    job, space = checked.job, checked.space
    console = _console()
    console.print(f"[green]ok[/] {job_file}: job '{job.name}'")
    console.print(f"  objectives : {', '.join(f'{d} {m}' for m, d in job.objective_pairs)}")
    console.print(f"  constraints: {', '.join(job.constraints) or 'none'}")
    console.print(f"  agent      : {job.agent.name}   budget: {job.budget.max_trials} trials")
    for p in space:
        rng = ", ".join(map(str, p.choices)) if p.kind == "categorical" else \
            f"{p.low}..{p.high}" + (f" step {p.step}" if p.step else "") + (" log" if p.log else "")
        console.print(f"  {p.name:<20} {rng}")
        for rule in checked.rules_of(p.name).lines():
            console.print(f"  {'':<20}   {rule}", markup=False)
    for imp in checked.imports:
        console.print(f"  imported   : {imp.field} = {imp.ref} ({imp.seconds:.1f} s)", markup=False)
    for note in checked.notices:
        console.print(f"  notice     : {note}", markup=False)
    _print_portfolio(console, job, space)
    console.print(f"  study      : {job.storage_url}")
    console.print(f"  tracking   : {job.tracking_uri}")
    mem, why = memory_limit(job)
    console.print(f"  memory     : {f'{mem} MiB per trial' if mem else 'no limit'} ({why})")


def _validate_json(job_file: str, import_timeout: float) -> None:
    """``autotune validate --json``: ``{"ok": true, "job": ..., "search_space": [...]}``, or
    ``{"ok": false, "error": {"message", "file", "line", "field", "hint"}}`` with exit code 2."""
    try:
        checked = check_job(job_file, import_timeout=import_timeout)
        job, space = checked.job, checked.space
    except AutotuneError as exc:
        spec = exc if isinstance(exc, SpecError) else None
        _emit_json({"ok": False, "file": job_file, "error": {
            "type": type(exc).__name__, "message": str(exc),
            "file": spec.file if spec else None, "line": spec.line if spec else None,
            "field": spec.path if spec else None, "hint": spec.hint if spec else None}})
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    params = []
    for p in space:
        d: dict[str, Any] = {"name": p.name, "kind": p.kind}
        if p.kind == "categorical":
            d["choices"] = list(p.choices)
        else:
            d.update(low=p.low, high=p.high, step=p.step, log=bool(p.log))
        d["when"] = {k: list(v) if isinstance(v, tuple | list) else v
                     for k, v in dict(p.when).items()} if p.when else None
        params.append(d)
    _emit_json({
        "ok": True, "file": job_file, "job": job.name,
        "objectives": [{"metric": m, "direction": d} for m, d in job.objective_pairs],
        "constraints": list(job.constraints),
        "agent": job.agent.name,
        "budget": {"max_trials": job.budget.max_trials, "timeout_s": job.budget.timeout},
        "search_space": params, "storage": job.storage_url, "tracking": job.tracking_uri,
        "rules": [r.to_dict() for r in checked.rules],
        "imports": [i.to_dict() for i in checked.imports],
        "notices": list(checked.notices),
    })


def _print_portfolio(console: Any, job: Any, space: Any) -> None:
    """The hardware portfolio entries that apply on this machine (measured first), and why the
    others do not."""
    entries = [] if job.is_custom else job_portfolio(job.search_space, Path(job.base_dir))
    if not entries:
        return
    fp = fingerprint()
    found = applicable(entries, space, fp.cpu_flags, detect_capabilities().to_dict(),
                       fp.usable_cores or fp.logical_cores or 1)
    for e, cfg in found.configs:
        console.print(f"  portfolio  : {e.name} (measured first here): {cfg}", markup=False)
    for e, why in found.skipped:
        console.print(f"  portfolio  : {e.name}: not here ({why})", markup=False)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--max-trials", type=int, default=None, help="Override budget.max_trials.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-confirm", is_flag=True,
              help="Skip the confirmation step (side-by-side re-measurement of the front).")
def run(job_file: str, max_trials: int | None, quiet: bool, no_confirm: bool) -> None:
    """Run the job (or continue it where it stopped), then confirm the leading trials."""
    console = _console()
    job = _load(job_file)
    t0 = time.monotonic()
    try:
        with _progress(console, job, quiet) as prog:
            summary = run_job(job, max_trials=max_trials, progress=prog)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished trials are kept; run the same command "
                      "again to continue.")
        sys.exit(130)
    if summary.new_trials and not no_confirm and not job.is_custom and summary.front:
        summary = _confirm(console, job, summary)
    _report(console, job, summary)
    console.print(f"wall time {time.monotonic() - t0:.1f} s, {summary.new_trials} new trials")
    if _all_failed(console, prog.extra["measured"], summary):
        sys.exit(1)


def _confirm(console: Any, job: Any, summary: Any, *, strict: bool = False,
             **options: Any) -> Any:
    """Run the confirmation step and return the summary re-read with the confirmed figures."""
    from dataclasses import replace

    try:
        res = confirm(job, log=lambda m: console.print(f"[dim]{m}[/]", markup=True), **options)
    except AutotuneError as exc:
        if strict:
            raise
        console.print(f"[yellow]confirmation skipped[/]: {exc}")
        return summary
    b = res.baseline
    console.print(f"confirmed over {res.rounds} interleaved rounds: baseline p50 {b.p50_ms:.4g} ms "
                  f"(rounds {b.p50_low_ms:.4g}-{b.p50_high_ms:.4g})")
    for c in res.trials:
        console.print(f"  trial {c.trial}: p50 {c.p50_ms:.4g} ms (rounds {c.p50_low_ms:.4g}-"
                      f"{c.p50_high_ms:.4g}; 95% prediction {c.predict_low_ms:.4g}-"
                      f"{c.predict_high_ms:.4g}), {c.ratio:.3f}x the baseline (rounds "
                      f"{c.ratio_low:.3f}-{c.ratio_high:.3f}){'' if c.stable else ', UNSTABLE'}"
                      f"{', CONTENDED' if c.contended_rounds else ''}", markup=False)
    for w in res.warnings:
        console.print(f"[bold yellow]warning[/]: {w}")
    fresh = job_status(job)
    return replace(summary, trials=fresh.trials, front=fresh.front, baseline=fresh.baseline)


@main.command()
@click.argument("model")
@click.option("--task", type=click.Choice(["feature-extraction", "text-classification"]),
              default=None, help="What the model computes (default: from its architectures).")
@click.option("--texts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="UTF-8 file, one text per line: fidelity and calibration (default: generic "
                   "English sentences).")
@click.option("--objective", type=click.Choice(["latency", "throughput"]), default="latency",
              show_default=True, help="latency: one text per call; throughput: batches too.")
@click.option("--budget", default="10m", show_default=True, help="Tuning time (e.g. 10m, 600s).")
@click.option("--max-trials", type=click.IntRange(1, 10000), default=40, show_default=True)
@click.option("--sequence-length", type=click.IntRange(8, 100000), default=128,
              show_default=True, help="Texts are padded and truncated to this many tokens.")
@click.option("--threads", type=click.IntRange(1, 4096), default=None,
              help="Intra-op threads (default: this machine's usable cores).")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=None,
              help="Texts per call (default: 1 for latency; 1, 8 and 32 searched for throughput).")
@click.option("--write-only", is_flag=True, help="Write the job file and stop (review it, then "
                                                 "'autotune run' it).")
@click.option("--job", "job_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the job (default: ./<model>-optimize.yaml).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Bundle folder (default: <out_dir>/bundle).")
@click.option("--no-register", is_flag=True, help="Write the bundle only (no MLflow registry).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def optimize(model: str, task: str | None, texts: str | None, objective: str, budget: str,
             max_trials: int, sequence_length: int, threads: int | None,
             batch_size: int | None, write_only: bool, job_path: str | None, out: str | None,
             no_register: bool, quiet: bool) -> None:
    """Tune a Hugging Face encoder in one command: derive the job from the model and this
    machine, write it, tune, confirm, export."""
    from pathlib import Path

    import yaml

    from autotune.job.optimize import derive_job, header, model_facts, sample_texts

    console = _console()
    local = Path(model)
    source = str(local.resolve()) if local.is_dir() else model
    facts = model_facts(source, task)
    job_file = Path(job_path) if job_path else Path(f"{facts.name}-optimize.yaml")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    if texts:
        lines = [ln for ln in Path(texts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        texts_ref = str(Path(texts).resolve())
    else:
        lines = sample_texts(128)
        texts_file = job_file.with_name(f"{job_file.stem}-texts.txt")
        texts_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        texts_ref = texts_file.name
        console.print(f"[yellow]no --texts[/]: fidelity and calibration use {len(lines)} generic "
                      f"English texts ({texts_file}); your own texts calibrate better")
    fp = fingerprint()
    caps = detect_capabilities().to_dict()
    available, excl = exclusions(caps)
    cores = int(threads or fp.usable_cores or fp.logical_cores or 1)
    data = derive_job(facts, texts=texts_ref, objective=objective, budget=budget,
                      max_trials=max_trials, sequence_length=sequence_length, threads=cores,
                      cpu_flags=fp.cpu_flags, capabilities=caps, runtimes=available,
                      excluded=excl, n_texts=len(lines), batch_size=batch_size)
    machine = f"{fp.cpu_model or 'CPU'}, {cores} threads, runtimes {', '.join(available)}"
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    job_file.write_text(header(facts, machine) + text, encoding="utf-8")
    console.print(f"[green]job[/] {job_file} (edit it and re-run: autotune run {job_file})")
    job = _load(str(job_file))
    if write_only:
        return
    with _progress(console, job, quiet) as prog:
        summary = run_job(job, progress=prog)
    if summary.new_trials and summary.front:
        summary = _confirm(console, job, summary)
    _report(console, job, summary)
    if _all_failed(console, prog.extra["measured"], summary) or not summary.front:
        console.print("[red]no configuration met the constraints[/]; nothing exported" if
                      summary.n_complete else f"[red]no trial finished within the budget[/] "
                      f"({budget}); nothing exported: raise --budget and run the same command "
                      "again (the study continues)")
        sys.exit(1)
    rule = data["report"]["rules"][0]
    res = export_bundle(job, rule, out=Path(out) if out else job.out_dir / "bundle",
                        register=not no_register)
    m = res.manifest
    console.print(f"[green]bundle[/] {res.bundle}  (trial {res.trial}, '{rule}': "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in m["config"].items()) + ")")
    for note in res.notes:
        console.print(f"  [yellow]note[/]: {note}")
    if res.registry_error:
        click.echo(f"error: the bundle is written, but MLflow registration failed: "
                   f"{res.registry_error}", err=True)
        sys.exit(1)


@main.command("confirm")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--candidates", "k", type=click.IntRange(1, 32), default=4, show_default=True,
              help="How many leading feasible trials to re-measure.")
@click.option("--max-rounds", type=click.IntRange(5, 100), default=10, show_default=True,
              help="At most this many interleaved rounds (at least 5 are measured).")
@click.option("--tolerance", type=click.FloatRange(0.001, 1.0), default=0.05, show_default=True,
              help="Stable when every ratio to the baseline varies by at most this between rounds.")
def confirm_cmd(job_file: str, k: int, max_rounds: int, tolerance: float) -> None:
    """Re-measure the baseline and the leading trials side by side; record confirmed figures."""
    console = _console()
    job = _load(job_file)
    summary = job_status(job)
    if not summary.front:
        raise AutotuneError(f"job '{job.name}' has no feasible trial to confirm")
    _report(console, job, _confirm(console, job, summary, strict=True, k=k,
                                   max_rounds=max_rounds, tolerance=tolerance))


def _report(console: Any, job: Any, summary: Any) -> None:
    n = len([t for t in summary.trials if t.state != "invalid"])
    done = (", budget used up" if summary.n_complete else ", budget used up with no trial "
            "completed") if summary.finished else ""
    console.print(
        f"job '{job.name}': {n} trials, {summary.n_complete} complete, {summary.n_failed} failed"
        f"{done}"
    )
    if summary.baseline:
        b = summary.baseline
        shown = [m for m, _ in job.objective_pairs] + [c.metric for c in job.parsed_constraints]
        console.print("baseline: " + ", ".join(f"{m}={_fmt(b[m])}" for m in dict.fromkeys(shown)
                                               if m in b))
    if summary.space_size is not None or summary.measured_configs:
        console.print(f"space   : {coverage(summary)}", highlight=False)
    console.print(front_table(summary, job, width=console.width))
    _measurement_warnings(console, job, summary)
    if summary.tracking_error:
        console.print(f"[yellow]MLflow was unavailable ({summary.tracking_error}); run "
                      f"'autotune sync' to write the missing runs.[/]")
    console.print(f"study   : {job.storage_url}\nMLflow  : mlflow ui --backend-store-uri "
                  f"{job.tracking_uri}")


def _measurement_warnings(console: Any, job: Any, summary: Any) -> None:
    """Loud lines for an unstable baseline, a contended confirmation and contended front trials."""
    try:
        warnings = measurement_warnings(open_record(job, create=False))
    except AutotuneError:
        warnings = []
    for w in warnings:
        console.print(f"[bold yellow]warning[/]: {w}", highlight=False)
    busy = [t.number for t in summary.trials if t.feasible and
            flag(t.user_attrs) == "contended"]
    if busy:
        console.print(f"[yellow]trial(s) {', '.join(map(str, busy))} have only a figure measured "
                      "while other processes used the cores (contended); it ranks nothing until "
                      f"'autotune confirm {job.source}' re-measures them side by side[/]")
    # which figures were re-measured, how and why (each trial's reason: status --json)
    for how, text in (("re-measured", "re-measured beside the baseline on quiet cores"),
                      ("ratio to baseline", "ranked by their interleaved ratio to the baseline "
                                            "(the cores never became quiet)")):
        again = [t.number for t in summary.trials if flag(t.user_attrs) == how]
        if again:
            console.print(f"[dim]trial(s) {', '.join(map(str, again))}: {text}, as their own "
                          "measurement ran contended[/]", highlight=False)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@_json_option
def status(job_file: str) -> None:
    """Trials done and failed, and the current Pareto front."""
    console = _console()
    job = _load(job_file)
    summary = job_status(job)
    if _as_json():
        _emit_json(status_json(job, summary))
        return
    _report(console, job, summary)
    failed = [t for t in summary.trials if t.state == "failed"]
    for t in failed[-10:]:
        console.print(f"[yellow]failed trial {t.number}[/]: {t.reason.splitlines()[0][:200]}")
    for note in summary.notices:  # failure causes the study learned (autotune.job.machine)
        console.print(f"[yellow]invalid for the rest of the study[/]: {note}")


def _trial_json(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state, "feasible": t.feasible,
            "config": dict(t.config), "metrics": dict(t.metrics), "reason": t.reason or None,
            "duration_s": t.duration_s}


def status_json(job: Any, summary: Any) -> dict[str, Any]:
    """``autotune status --json``: stable keys (``trials`` counts by state, ``front`` and
    ``failed`` as trial objects with number, state, feasible, config, metrics, reason)."""
    states = [t.state for t in summary.trials]
    return {
        "job": job.name,
        "file": job.source,
        "finished": summary.finished,
        "budget": {"max_trials": job.budget.max_trials, "timeout_s": job.budget.timeout},
        "trials": {"total": sum(s != "invalid" for s in states),
                   **{k: states.count(k) for k in ("complete", "failed", "running", "invalid")}},
        "objectives": [{"metric": m, "direction": d} for m, d in job.objective_pairs],
        "constraints": list(job.constraints),
        "baseline": dict(summary.baseline),
        "space": {"configurations": summary.space_size, "measured": summary.measured_configs},
        "front": [_trial_json(t) for t in summary.front],
        "failed": [_trial_json(t) for t in summary.trials if t.state == "failed"],
        # trials whose own measurement ran contended: how their figures were re-measured, why
        "remeasured": [{"trial": t.number, "latency": flag(t.user_attrs),
                        **{k: v for k, v in (t.user_attrs.get("details") or {})
                           .get("remeasured", {}).items() if k in ("how", "why", "error")}}
                       for t in summary.trials
                       if (t.user_attrs.get("details") or {}).get("remeasured")],
        "learned": list(summary.notices),
        "storage": job.storage_url,
        "tracking": job.tracking_uri,
    }


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def sync(job_file: str) -> None:
    """Write the trials MLflow is missing (e.g. after the server was down) from the study."""
    job = _load(job_file)
    n, error = sync_job(job)
    if error:
        click.echo(f"error: MLflow at {job.tracking_uri} is unavailable ({error}); nothing was "
                   "written, the study still holds every trial.", err=True)
        sys.exit(1)
    click.echo(f"synced job '{job.name}' to {job.tracking_uri}: {n} new trial run(s)")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the HTML file (default: <output dir>/report.html).")
def report(job_file: str, out: str | None) -> None:
    """Write a self-contained HTML report of the job's study (works offline)."""
    job = _load(job_file)
    path = build_report(job, out)
    click.echo(f"report written to {path}")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def dashboard(job_file: str, host: str, port: int) -> None:
    """optuna-dashboard on the job's study, "Best Trials" chosen among feasible trials only."""
    job = _load(job_file)
    open_record(job, create=False)  # a job never run: a clear error, not an empty dashboard
    click.echo(f"optuna-dashboard for '{job.name}' on http://{host}:{port}/ (Ctrl-C stops)",
               err=True)
    try:
        serve_dashboard(job.storage_url, host=host, port=port)
    except KeyboardInterrupt:
        click.echo("dashboard stopped", err=True)


@main.command("export")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--pick", default="knee", show_default=True,
              help="A trial number, 'knee', or a rule like 'fastest with accuracy_drop <= 1%'.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Bundle folder (default: <out_dir>/bundles/trial-N).")
@click.option("--alias", default="champion", show_default=True, help="MLflow registry alias.")
@click.option("--name", "model_name", default=None, help="Registered model name (default: job name).")
@click.option("--no-register", is_flag=True, help="Write the bundle only.")
@_json_option
@click.option("--sign", "sign_key", default=None, type=click.Path(dir_okay=False),
              help="Sign the bundle's manifest (HMAC-SHA256) with the secret key in this file.")
def export_cmd(job_file: str, pick: str, out: str | None, alias: str, model_name: str | None,
               no_register: bool, sign_key: str | None) -> None:
    """Export a measured configuration as a deployable bundle and register it in MLflow."""
    from pathlib import Path

    as_json = _as_json()
    console = _console(stderr=as_json)
    job = _load(job_file)
    key = read_key(sign_key) if sign_key else None
    with _stdout_to_stderr(as_json):
        res = export_bundle(job, pick, out=Path(out) if out else None, register=not no_register,
                            alias=alias, model_name=model_name, key=key)
    if as_json:
        _emit_json(export_json(res))
        if res.registry_error:
            click.echo(f"error: the bundle is written, but MLflow registration failed: "
                       f"{res.registry_error}", err=True)
            sys.exit(1)
        return
    m = res.manifest
    console.print(f"[green]bundle[/] {res.bundle}  (trial {res.trial}: "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in m["config"].items()) + ")")
    lat = m.get("latency") or {}
    if lat:  # the trial's own measurement
        console.print(f"  latency p50 {_fmt(lat.get('p50_ms'))} ms (95% CI {_fmt(lat.get('ci95_low_ms'))}"
                      f"..{_fmt(lat.get('ci95_high_ms'))}), p95 {_fmt(lat.get('p95_ms'))} ms, "
                      f"n={lat.get('n')}, measured on {m['runtime']['measured']}")
    exp = m.get("expected_latency") or {}
    if exp.get("source") == "confirmation":
        console.print(f"  confirmed p50 {_fmt(exp['p50_ms'])} ms (a re-measurement should land in "
                      f"{_fmt(exp['spread_low_ms'])}..{_fmt(exp['spread_high_ms'])}, 95%), "
                      f"{_fmt(exp['ratio_to_baseline'])}x the baseline, {exp['rounds']} rounds"
                      f"{'' if exp['stable'] else ', not stable'}"
                      f"{', ran contended' if exp.get('contended_rounds') else ''}")
    for note in res.notes:
        console.print(f"  [yellow]note[/]: {note}")
    if res.registered:
        r = res.registered
        console.print(f"  registered {r.model_uri}" + (f"  alias models:/{r.name}@{r.alias}" if r.alias
                                                       else ""))
    if res.registry_error:
        click.echo(f"error: the bundle is written, but MLflow registration failed: "
                   f"{res.registry_error}", err=True)
        sys.exit(1)


def export_json(res: Any) -> dict[str, Any]:
    """``autotune export --json``: bundle, trial, config, latency, runtime, notes, registered
    (name, version, alias, model_uri, run_id; null when not registered), registry_error, and
    the whole manifest."""
    from dataclasses import asdict

    m = res.manifest
    return {"bundle": str(res.bundle), "trial": res.trial, "config": dict(m.get("config") or {}),
            "latency": dict(m.get("latency") or {}), "runtime": m.get("runtime"),
            "notes": list(res.notes),
            "registered": asdict(res.registered) if res.registered else None,
            "registry_error": res.registry_error, "manifest": dict(m)}


@main.command("serve")
@click.argument("source")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--poll-interval", default=1.0, show_default=True, type=float,
              help="Seconds between checks for a new model (0: only POST /admin/reload).")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=float,
              help="How long to gather requests into one batch.")
@click.option("--tracking-uri", default=None, help="MLflow registry for models:/NAME@ALIAS.")
@click.option("--job", "job_file", default=None, type=click.Path(dir_okay=False),
              help="Take the MLflow tracking URI from this job file.")
@click.option("--admin-token", default=None, envvar="AUTOTUNE_ADMIN_TOKEN", show_envvar=True,
              help="Bearer token for POST /admin/reload (admin routes are disabled without one).")
@click.option("--model-name", default=None,
              help="The name in /v2/models/{name} (default: the job's or registry model's name).")
@click.option("--max-body-bytes", default=8 * 1024 * 1024, show_default=True, type=int,
              help="Larger request bodies are refused (413).")
@click.option("--body-timeout", default=10.0, show_default=True, type=float,
              help="Seconds for a whole request body to arrive (else 408).")
@click.option("--header-timeout", default=10.0, show_default=True, type=float,
              help="Seconds for request headers to arrive (else the connection is closed).")
@click.option("--max-inflight", default=256, show_default=True, type=int,
              help="Inference requests answered at once; beyond: 503 with Retry-After.")
@click.option("--max-connections", default=1024, show_default=True, type=int,
              help="Open connections; beyond: 503 with Retry-After.")
@click.option("--verify-key", default=None, type=click.Path(dir_okay=False),
              help="Serve only bundles signed with the key in this file (also on every swap).")
@click.option("--drain-timeout", default=30.0, show_default=True, type=float,
              help="On SIGTERM, seconds the requests in flight may take before the server exits.")
def serve_cmd(source: str, host: str, port: int, poll_interval: float, max_wait_ms: float,
              tracking_uri: str | None, job_file: str | None, admin_token: str | None,
              model_name: str | None, max_body_bytes: int, body_timeout: float,
              header_timeout: float, max_inflight: int, max_connections: int,
              drain_timeout: float, verify_key: str | None) -> None:
    """Serve a bundle folder or models:/NAME@ALIAS over HTTP, swapping in new models live.

    API: GET / and /docs; SIGTERM stops accepting, finishes the requests in flight and exits.
    """
    if verify_key:
        require_signature(read_key(verify_key))
    try:
        if job_file and not tracking_uri:
            tracking_uri = _load(job_file).tracking_uri
        limits = Limits(max_body_bytes=max_body_bytes, body_timeout_s=body_timeout,
                        header_timeout_s=header_timeout, max_inflight=max_inflight,
                        max_connections=max_connections, drain_timeout_s=drain_timeout)
        serve(source, host=host, port=port, poll_interval=poll_interval, max_wait_ms=max_wait_ms,
              tracking_uri=tracking_uri, admin_token=admin_token, limits=limits,
              model_name=model_name,
              on_ready=lambda s: click.echo(
                  f"serving {s.served.version} from {source} on {s.url} as {s.model_name!r} "
                  f"({s.kind}: {s.url}{'/v1' if s.kind == 'generation' else '/predict'}; "
                  f"batch size {s.served.batch_size}; admin routes "
                  f"{'on' if s.admin_token else 'off: no --admin-token'}; API: {s.url}/docs)",
                  err=True))
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--max-trials", type=int, default=None, help="Override budget.max_trials (global).")
@click.option("--heartbeat", type=int, default=10, show_default=True,
              help="Seconds between heartbeats of the running trial.")
@click.option("--grace", type=int, default=30, show_default=True,
              help="Seconds without a heartbeat after which a trial is failed and re-queued.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def worker(job_file: str, max_trials: int | None, heartbeat: int, grace: int, quiet: bool) -> None:
    """Join the job's shared study (storage: postgresql://...) as one of several workers."""
    console = _console()
    job = _load(job_file)
    opts = WorkerOptions(heartbeat_s=heartbeat, grace_s=grace)
    try:
        with _progress(console, job, quiet) as prog:
            summary = run_worker(job, opts=opts, max_trials=max_trials, progress=prog)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the running trial is re-queued for another worker "
                      "once its heartbeat is stale.")
        sys.exit(130)
    console.print(f"worker done: {summary.new_trials} trials measured here; study has "
                  f"{summary.n_complete} complete, {summary.n_failed} failed")
    if _all_failed(console, prog.extra["measured"], summary):
        sys.exit(1)


def _print_cycle(console: Any, res: Any) -> None:
    color = {"promote": "green", "keep": "cyan", "refresh": "green", "initial": "green"}.get(
        res.decision, "yellow")
    console.print(f"[{color}]{res.decision}[/]: {res.why}")
    if res.changed:
        console.print("  changed : " + "; ".join(res.changed))
    if res.bundle:
        console.print(f"  deployed: {res.bundle}")
    console.print(f"  cycle   : {res.wall_s:.1f} s" + (
        f", MLflow run {res.mlflow_run_id}" if res.mlflow_run_id else ""))


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@_json_option
def retune(job_file: str) -> None:
    """Run one re-tuning cycle now (for cron, systemd timers, Kubernetes CronJobs)."""
    as_json = _as_json()
    console = _console(stderr=as_json)
    job = _load(job_file)
    with _stdout_to_stderr(as_json):
        res = scheduling.retune_once(job, log=lambda m: console.print(f"[dim]{m}[/]"))
    if as_json:  # CycleResult's fields: job, decision, why, changed, champion, challenger, ...
        _emit_json(res.to_dict())
    else:
        _print_cycle(console, res)
    if res.decision == "skipped":
        sys.exit(3)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--max-cycles", type=int, default=None, help="Stop after this many cycles.")
def schedule(job_file: str, max_cycles: int | None) -> None:
    """Re-tune on the job's 'schedule:' in the foreground (a long-lived process)."""
    console = _console()
    try:
        job = _load(job_file)
        scheduling.run_schedule(job, max_cycles=max_cycles, log=lambda m: console.print(f"[dim]{m}[/]"),
                     on_cycle=lambda r: _print_cycle(console, r))
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/]")
        sys.exit(130)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--trial", type=int, default=None,
              help="The configuration: this trial's (default: the feasible trial with the most "
              "output tokens/s; the baseline when the study has none).")
@click.option("--batches", default="1,2,4,8", show_default=True,
              help="max_batch values to search (comma-separated).")
@click.option("--ttft-ms", type=float, default=None, help="TTFT p95 limit (default: the "
              "workload's slo.ttft_ms, 200).")
@click.option("--tpot-ms", type=float, default=None, help="TPOT p95 limit (default: the "
              "workload's slo.tpot_ms, 50).")
@click.option("--steps", type=click.IntRange(1, 12), default=5, show_default=True,
              help="Bisections of the arrival rate per batch size.")
def goodput(job_file: str, trial: int | None, batches: str, ttft_ms: float | None,
            tpot_ms: float | None, steps: int) -> None:
    """The highest Poisson arrival rate meeting TTFT p95 and TPOT p95 limits, over batch sizes
    (text-generation jobs)."""
    console = _console()
    job = _load(job_file)
    if not job.is_generation:
        console.print("[red]goodput[/]: a text-generation job (model.task: text-generation) only")
        sys.exit(2)
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        console.print(f"[red]--batches[/]: expected integers separated by commas, got {batches!r}")
        sys.exit(2)
    config: dict[str, Any] = {}
    try:
        views = [t for t in job_status(job).trials if t.state == "complete" and t.feasible]
    except Exception:  # no study yet: the unmodified model's configuration
        views = []
    if trial is not None:
        chosen = [t for t in views if t.number == trial]
        if not chosen:
            console.print(f"[red]--trial {trial}[/]: no feasible complete trial with that number")
            sys.exit(2)
        config = dict(chosen[0].config)
    elif views:
        best = max(views, key=lambda t: t.metrics.get("output_tokens_per_s", 0.0))
        config, trial = dict(best.config), best.number
    config.pop("max_batch", None)
    slo = job.workload.slo
    ttft, tpot = ttft_ms or slo.ttft_ms, tpot_ms or slo.tpot_ms
    console.print(f"configuration: {'trial ' + str(trial) if trial is not None else 'baseline'} "
                  f"{config}; SLO TTFT p95 <= {ttft:g} ms, TPOT p95 <= {tpot:g} ms")
    measure = evaluator_measure(GenerationEvaluator(job), config, ttft_ms=ttft, tpot_ms=tpot)
    res = search(measure, sizes, ttft_ms=ttft,
                 tpot_ms=tpot, steps=steps, log=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"{'max_batch':>9s} {'rate req/s':>11s} {'TTFT p95':>9s} {'TPOT p95':>9s} "
                  f"{'goodput':>8s} {'tokens/s':>9s}  SLO")
    for p in res.points:
        rate = "closed" if p.rate is None else f"{p.rate:.2f}"
        console.print(f"{p.max_batch:9d} {rate:>11s} {p.ttft_p95_ms:7.1f}ms {p.tpot_p95_ms:7.2f}ms"
                      f" {p.goodput_rps:8.2f} {p.output_tokens_per_s:9.1f}  "
                      f"{'meets' if p.meets else 'misses'}")
    for b, r in res.best_rate.items():
        console.print(f"max_batch {b}: " + (f"highest rate meeting the SLO {r:.2f} requests/s"
                                            if r else "no rate tried meets the SLO"))
    if res.best is None:
        console.print("[yellow]no batch size meets the SLO at any rate tried[/]")
        sys.exit(1)
    console.print(f"[green]best[/]: max_batch {res.best.max_batch} at {res.best.rate:.2f} "
                  f"requests/s (goodput {res.best.goodput_rps:.2f} requests/s)")


@main.command()
def schema() -> None:
    """Print the JSON Schema of job files (for editor completion: see the README)."""
    import json

    click.echo(json.dumps(job_schema(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
