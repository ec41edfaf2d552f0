"""Command line: ``autotune validate|run|status JOB``."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from autotune.errors import AutotuneError


def _console() -> Any:
    import shutil

    from rich.console import Console

    width = shutil.get_terminal_size((160, 40)).columns if sys.stdout.isatty() else 160
    return Console(highlight=False, width=max(width, 100))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def front_table(summary: Any, job: Any, title: str = "Pareto front (feasible trials)") -> Any:
    from rich.table import Table

    from autotune.tuner import front_row

    rows = [front_row(t, job) for t in summary.front]
    cols = list(dict.fromkeys(c for r in rows for c in r)) if rows else ["trial"]
    params = set(job.space.names)
    # a parameter every front configuration shares goes into the caption, so the table fits
    shared = {c: rows[0].get(c) for c in cols if c in params and len(rows) > 1
              and all(r.get(c) == rows[0].get(c) for r in rows)}
    cols = [c for c in cols if c not in shared]
    caption = ("all with " + ", ".join(f"{k}={v}" for k, v in shared.items())) if shared else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in cols:
        table.add_column(c, justify="right" if c not in job.space.names else "left")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    return table


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
    from autotune.spec import load_job

    return load_job(path)


@contextmanager
def _progress(console: Any, job: Any, quiet: bool) -> Iterator[Any]:
    """Progress callbacks for a tuning loop; the bar is stopped however the loop ends."""
    from autotune.tuner import Progress

    bar = _Bar(console, job)
    prog = Progress(on_message=lambda m: console.print(f"[dim]{m}[/]"))
    if not quiet:
        prog.on_start, prog.on_trial = bar.start, bar.trial
    try:
        yield prog
    finally:
        bar.stop()


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def validate(job_file: str) -> None:
    """Check a job file and show what it will search."""
    job = _load(job_file)
    space = job.space
    console = _console()
    console.print(f"[green]ok[/] {job_file}: job '{job.name}'")
    console.print(f"  objectives : {', '.join(f'{d} {m}' for m, d in job.objective_pairs)}")
    console.print(f"  constraints: {', '.join(job.constraints) or 'none'}")
    console.print(f"  agent      : {job.agent.name}   budget: {job.budget.max_trials} trials")
    for p in space:
        rng = ", ".join(map(str, p.choices)) if p.kind == "categorical" else \
            f"{p.low}..{p.high}" + (f" step {p.step}" if p.step else "") + (" log" if p.log else "")
        cond = f"  (when {dict(p.when)})" if p.when else ""
        console.print(f"  {p.name:<20} {rng}{cond}")
    console.print(f"  study      : {job.storage_url}")
    console.print(f"  tracking   : {job.tracking_uri}")
    from autotune.harness.isolate import memory_limit

    mem, why = memory_limit(job)
    console.print(f"  memory     : {f'{mem} MiB per trial' if mem else 'no limit'} ({why})")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--max-trials", type=int, default=None, help="Override budget.max_trials.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(job_file: str, max_trials: int | None, quiet: bool) -> None:
    """Run the job (or continue it where it stopped)."""
    from autotune.tuner import run as run_job

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
    _report(console, job, summary)
    console.print(f"wall time {time.monotonic() - t0:.1f} s, {summary.new_trials} new trials")


def _report(console: Any, job: Any, summary: Any) -> None:
    n = len([t for t in summary.trials if t.state != "invalid"])
    console.print(
        f"job '{job.name}': {n} trials, {summary.n_complete} complete, {summary.n_failed} failed"
        f"{', finished' if summary.finished else ''}"
    )
    if summary.baseline:
        b = summary.baseline
        shown = [m for m, _ in job.objective_pairs] + [c.metric for c in job.parsed_constraints]
        console.print("baseline: " + ", ".join(f"{m}={_fmt(b[m])}" for m in dict.fromkeys(shown)
                                               if m in b))
    console.print(front_table(summary, job))
    if summary.tracking_error:
        console.print(f"[yellow]MLflow was unavailable ({summary.tracking_error}); run "
                      f"'autotune sync' to write the missing runs.[/]")
    console.print(f"study   : {job.storage_url}\nMLflow  : mlflow ui --backend-store-uri "
                  f"{job.tracking_uri}")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def status(job_file: str) -> None:
    """Trials done and failed, and the current Pareto front."""
    from autotune.tuner import status as job_status

    console = _console()
    job = _load(job_file)
    summary = job_status(job)
    _report(console, job, summary)
    failed = [t for t in summary.trials if t.state == "failed"]
    for t in failed[-10:]:
        console.print(f"[yellow]failed trial {t.number}[/]: {t.reason.splitlines()[0][:200]}")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
def sync(job_file: str) -> None:
    """Write the trials MLflow is missing (e.g. after the server was down) from the study."""
    from autotune.tracking import sync_job

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
    from autotune.report import build_report

    job = _load(job_file)
    path = build_report(job, out)
    click.echo(f"report written to {path}")


@main.command("export")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--pick", default="knee", show_default=True,
              help="A trial number, 'knee', or a rule like 'fastest with accuracy_drop <= 1%'.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Bundle folder (default: <out_dir>/bundles/trial-N).")
@click.option("--alias", default="champion", show_default=True, help="MLflow registry alias.")
@click.option("--name", "model_name", default=None, help="Registered model name (default: job name).")
@click.option("--no-register", is_flag=True, help="Write the bundle only.")
@click.option("--sign", "sign_key", default=None, type=click.Path(dir_okay=False),
              help="Sign the bundle's manifest (HMAC-SHA256) with the secret key in this file.")
def export_cmd(job_file: str, pick: str, out: str | None, alias: str, model_name: str | None,
               no_register: bool, sign_key: str | None) -> None:
    """Export a measured configuration as a deployable bundle and register it in MLflow."""
    from pathlib import Path

    from autotune.deploy.bundle import read_key
    from autotune.deploy.export import export_bundle

    console = _console()
    job = _load(job_file)
    key = read_key(sign_key) if sign_key else None
    res = export_bundle(job, pick, out=Path(out) if out else None, register=not no_register,
                        alias=alias, model_name=model_name, key=key)
    m = res.manifest
    console.print(f"[green]bundle[/] {res.bundle}  (trial {res.trial}: "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in m["config"].items()) + ")")
    lat = m.get("latency") or {}
    if lat:
        console.print(f"  latency p50 {_fmt(lat.get('p50_ms'))} ms (95% CI {_fmt(lat.get('ci95_low_ms'))}"
                      f"..{_fmt(lat.get('ci95_high_ms'))}), p95 {_fmt(lat.get('p95_ms'))} ms, "
                      f"n={lat.get('n')}, measured on {m['runtime']['measured']}")
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
@click.option("--verify-key", default=None, type=click.Path(dir_okay=False),
              help="Serve only bundles signed with the key in this file (also on every swap).")
def serve_cmd(source: str, host: str, port: int, poll_interval: float, max_wait_ms: float,
              tracking_uri: str | None, job_file: str | None, verify_key: str | None) -> None:
    """Serve a bundle folder or models:/NAME@ALIAS over HTTP, swapping in new models live."""
    from autotune.deploy.bundle import read_key, require_signature
    from autotune.deploy.serve import serve

    if verify_key:
        require_signature(read_key(verify_key))
    try:
        if job_file and not tracking_uri:
            tracking_uri = _load(job_file).tracking_uri
        serve(source, host=host, port=port, poll_interval=poll_interval, max_wait_ms=max_wait_ms,
              tracking_uri=tracking_uri,
              on_ready=lambda s: click.echo(f"serving {s.served.version} from {source} on {s.url} "
                                            f"(batch size {s.served.batch_size})", err=True))
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
    from autotune.worker import WorkerOptions, run_worker

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
def retune(job_file: str) -> None:
    """Run one re-tuning cycle now (for cron, systemd timers, Kubernetes CronJobs)."""
    from autotune.schedule import retune_once

    console = _console()
    job = _load(job_file)
    res = retune_once(job, log=lambda m: console.print(f"[dim]{m}[/]"))
    _print_cycle(console, res)
    if res.decision == "skipped":
        sys.exit(3)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--max-cycles", type=int, default=None, help="Stop after this many cycles.")
def schedule(job_file: str, max_cycles: int | None) -> None:
    """Re-tune on the job's 'schedule:' in the foreground (a long-lived process)."""
    from autotune.schedule import run_schedule

    console = _console()
    try:
        job = _load(job_file)
        run_schedule(job, max_cycles=max_cycles, log=lambda m: console.print(f"[dim]{m}[/]"),
                     on_cycle=lambda r: _print_cycle(console, r))
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
