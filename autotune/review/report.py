"""``autotune report``: one self-contained HTML file to review a job.

The page is ``dashboards/report.html.tmpl`` (a :class:`string.Template`, CSS inline) filled from
the study: the selection rules' winners and the knee point, the Pareto front (chart + table), the
hypervolume history, parallel coordinates, every trial, failed trials with their reasons and the
hardware fingerprint.  plotly.js is inlined once, so the file opens offline.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from autotune._version import __version__
from autotune.core.metrics import Direction
from autotune.core.pareto import GOALS, Record, knee_point, parse_rule
from autotune.errors import SpecError
from autotune.job.spec import Job
from autotune.measure.harness.contention import flag as latency_flag
from autotune.record.study import TrialView, measurement_warnings, open_record
from autotune.review.front import (
    dominates,
    format_value,
    front_table,
    hypervolume_series,
    objective_points,
    percent_metrics,
    study_reference,
    trial_table,
    unstable,
    why_line,
)
from autotune.review.plots import study_figures

#: the page template shipped inside the package (the repository's ``dashboards/``, which
#: ``autotune/dashboards`` links to)
TEMPLATE = Path(str(resources.files("autotune") / "dashboards" / "report.html.tmpl"))


def default_rules(objectives: Sequence[tuple[str, Direction]]) -> list[str]:
    """One rule per objective: the best feasible trial in it (``fastest``, ``max accuracy``...)."""
    named = {v: k for k, v in GOALS.items()}
    return [named.get((m, d), f"{'min' if d == 'minimize' else 'max'} {m}") for m, d in objectives]


@dataclass(frozen=True)
class Winner:
    label: str  # the rule's text, or "knee point"
    trial: TrialView | None
    note: str = ""  # why there is no winner


def _tie_key(r: Any, metrics: Sequence[tuple[str, Direction]]) -> tuple[float, ...]:
    out = []
    for m, d in metrics:
        v = r.value(m)
        out.append(math.inf if not math.isfinite(v) else (-v if d == "maximize" else v))
    return tuple(out)


def winners(views: Sequence[TrialView], job: Job,
            baseline: Mapping[str, float] | None) -> list[Winner]:
    """The winner of each selection rule (the job's ``report.rules``, else :func:`default_rules`),
    then the knee point of the feasible front.

    A rule's winner is its best qualifying trial; ties in the rule's metric go to the trial that
    is best in the job's objectives (in order), then in the other rules' metrics, then the lower
    trial number -- never to a trial another tied one dominates (a "max accuracy" tie between
    a slow and a fast configuration of the same accuracy recommends the fast one)."""
    complete = [v for v in views if v.state == "complete"]
    records = [Record(v.number, v.metrics, v.feasible, v.config) for v in complete]
    by_number = {v.number: v for v in complete}
    rules = []
    for text in job.report.rules or default_rules(job.objective_pairs):
        rules.append(parse_rule(text))
    order = list(job.objective_pairs) + [(r.metric, r.direction) for r in rules
                                         if r.metric not in dict(job.objective_pairs)]
    out: list[Winner] = []
    for rule in rules:
        try:
            cands = [r for r in records if rule.qualifies(r, baseline)]
        except SpecError as exc:
            out.append(Winner(rule.text, None, exc.reason))
            continue
        best = min(cands, key=lambda r: (_tie_key(r, [(rule.metric, rule.direction)])
                                         + _tie_key(r, order) + (r.number,)), default=None)
        out.append(Winner(rule.text, by_number[best.number] if best else None,
                          "" if best else "no feasible trial meets this rule"))
    feas = [v for v in complete if v.feasible]
    pts = objective_points(feas, job.objective_pairs)
    k = knee_point(pts, [d for _, d in job.objective_pairs]) if feas else None
    out.append(Winner("knee point (best trade-off of the front)",
                      feas[k] if k is not None else None,
                      "" if k is not None else "no feasible trial yet"))
    return out


def dominated_recommendations(ws: Sequence[Winner], job: Job) -> dict[int, int]:
    """``{trial: trial that dominates it}`` among the recommended trials, over the job's
    objectives and every rule's metric (empty when every recommendation is worth its place)."""
    space = list(job.objective_pairs)
    for text in job.report.rules or default_rules(job.objective_pairs):
        r = parse_rule(text)
        if r.metric not in dict(space):
            space.append((r.metric, r.direction))
    trials = {w.trial.number: w.trial for w in ws if w.trial is not None}
    return {a: b for a, ta in trials.items() for b, tb in trials.items()
            if a != b and dominates(tb.metrics, ta.metrics, space)}


# ---------------------------------------------------------------------------------- HTML bits
def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
               row_class: Sequence[str] | None = None, percent: set[str] | None = None) -> str:
    """Rows as an HTML table; numbers formatted per column by
    :func:`autotune.review.front.format_value` (``percent``: the columns shown as percentages)."""
    def cell(col: Any, v: Any) -> str:
        return format_value(str(col), v, percent or set()) if _is_num(v) else _fmt(v)

    if not rows:
        return '<p class="muted">none</p>'
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(
            f'<td{" class=num" if _is_num(r.get(c)) else ""}>{html.escape(cell(c, r.get(c)))}</td>'
            for c in cols)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d: Mapping[str, Any]) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b)
        elif isinstance(v, list | tuple):
            v = ", ".join(str(x.get("name", x)) if isinstance(x, Mapping) else str(x) for x in v)
            if len(v) > 300:
                v = v[:300] + " …"
        rows.append({"": k, "value": v})
    return html_table(rows)


def _chart(fig: Any | None, empty: str) -> str:
    if fig is None:
        return f'<p class="muted">{html.escape(empty)}</p>'
    return fig.to_html(full_html=False, include_plotlyjs=False, default_height="460px")


# ---------------------------------------------------------------------------------- the page
def render(job: Job, views: Sequence[TrialView], *, baseline: Mapping[str, float] | None,
           fingerprint: Mapping[str, Any] | None, reference: Sequence[float] | None,
           storage: str = "", template: Path = TEMPLATE, warnings: Sequence[str] = ()) -> str:
    """The report as one HTML string (pure: everything comes from the arguments)."""
    import plotly.offline

    objectives = job.objective_pairs
    names = [m for m, _ in objectives]
    complete = [v for v in views if v.state == "complete"]
    failed = [v for v in views if v.state == "failed"]
    front_rows = front_table(views, job)
    front_numbers = {r["trial"] for r in front_rows}
    by_number = {v.number: v for v in views}
    for r in front_rows:  # a point whose latency is not measured tightly enough says so
        flag = unstable(by_number[r["trial"]], job.measurement.target_ci)
        how = latency_flag(by_number[r["trial"]].user_attrs)  # confirmed / contended
        conf = by_number[r["trial"]].user_attrs.get("confirmed")
        if conf:
            flag = "" if conf.get("stable") else \
                f"confirmation not stable (ratio spread ±{conf.get('spread_rel', 0):.0%})"
        again = (by_number[r["trial"]].user_attrs.get("details") or {}).get("remeasured")
        if how and isinstance(again, Mapping) and how != "contended" and not conf:
            how = f"{how}: {again.get('why')}"  # which figure was re-measured, and why
        if how:
            r["latency"] = how
        if flag:
            r["note"] = f"⚠ {flag}"

    # winners, each with why it is worth deploying and a warning when its measurement is loose
    percent = percent_metrics(job)
    win_rows = []
    ws = winners(views, job, baseline)
    dominated = dominated_recommendations(ws, job)
    for w in ws:
        row: dict[str, Any] = {"rule": w.label}
        if w.trial is None:
            row["trial"] = "—"
            row["why this one"] = w.note
        else:
            row["trial"] = w.trial.number
            qname = job.evaluation.quality_name if job.evaluation is not None else "quality"
            notes = [why_line(w.trial, baseline, qname, percent)]
            flag = unstable(w.trial, job.measurement.target_ci)
            if flag:
                notes.append(f"⚠ {flag}: re-measure before trusting the latency")
            if w.trial.number in dominated:
                notes.append(f"⚠ trial {dominated[w.trial.number]} is better in every objective")
            row["why this one"] = "; ".join(n for n in notes if n)
            row["configuration"] = ", ".join(f"{k}={_fmt(v)}" for k, v in w.trial.config.items())
            for m in names:
                row[m] = w.trial.metrics.get(m)
            for c in job.parsed_constraints:
                row.setdefault(c.metric, w.trial.metrics.get(c.metric))
        win_rows.append(row)

    # charts: the same figures the MLflow parent run carries
    figures = study_figures(views, objectives, reference)
    front_fig = figures.get(f"pareto_front_{len(objectives)}d")
    par_fig = figures.get("parallel_coordinates")
    hv_fig = figures.get("hypervolume")
    series = hypervolume_series(views, objectives, reference) if reference is not None else []
    hv_last = series[-1][1] if series else None

    # all trials
    table = trial_table(views, objectives)
    table = table.drop(columns=["reason"])
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    classes = []
    for r in records:
        if r["state"] != "complete":
            classes.append("failed" if r["state"] == "failed" else "infeasible")
        elif r["trial"] in front_numbers:
            classes.append("front")
        else:
            classes.append("" if r["feasible"] else "infeasible")

    failed_rows = [{"trial": v.number, "configuration": ", ".join(f"{k}={_fmt(x)}"
                                                                  for k, x in v.config.items()),
                    "reason": v.reason} for v in failed]
    failed_html = html_table(failed_rows).replace("<td>", '<td class="reason">') if failed_rows \
        else '<p class="muted">No trial failed.</p>'

    cards = [
        ("trials", str(len([v for v in views if v.state != "invalid"]))),
        ("complete", str(len(complete))),
        ("feasible", str(sum(v.feasible for v in complete))),
        ("failed", str(len(failed))),
        ("on the front", str(len(front_rows))),
        ("hypervolume", _fmt(hv_last) if hv_last is not None else "—"),
    ]
    if baseline:
        cards += [(f"baseline {m}", _fmt(baseline.get(m))) for m in names if m in baseline]
    cards += [("⚠ warning", w) for w in warnings]  # unstable baseline, contended confirmation
    cards_html = "".join(f'<div class="card"><div class="k">{html.escape(k)}</div>'
                         f'<div class="v">{html.escape(v)}</div></div>' for k, v in cards)

    values = {
        "job_name": html.escape(job.name),
        "description": " · ".join(x for x in (html.escape(job.description or ""), "objectives: " + ", ".join(
            html.escape(f"{d} {m}") for m, d in objectives)) if x),
        "plotly_js": plotly.offline.get_plotlyjs().replace("</script", "<\\/script"),
        "cards": cards_html,
        "constraints": html.escape(", ".join(job.constraints) or "none"),
        "winners": html_table(win_rows, percent=percent),
        "front_chart": _chart(front_fig, "The front is drawn for 2 or 3 objectives with at least "
                              "one complete trial."),
        "front_table": html_table(front_rows, percent=percent),
        "hypervolume_chart": _chart(hv_fig, "No hypervolume yet (needs the baseline and a "
                                    "finished trial)."),
        "parallel_chart": _chart(par_fig, "No feasible trial yet."),
        "trial_table": html_table(records, list(table.columns), classes, percent=percent),
        "failed": failed_html,
        "hardware": _kv_table(fingerprint) if fingerprint else
        '<p class="muted">not recorded</p>',
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": __version__,
        "storage": html.escape(storage),
    }
    return Template(template.read_text(encoding="utf-8")).substitute(values)


def build_report(job: Job, out: str | Path | None = None) -> Path:
    """Write the report of ``job``'s study to ``out`` (default ``<out_dir>/report.html``)."""
    record = open_record(job, create=False)
    views = record.trials()
    reference = study_reference(record, job, views)
    text = render(job, views, baseline=record.reported_baseline, fingerprint=record.attr("fingerprint"),
                  reference=reference, storage=job.storage_url,
                  warnings=measurement_warnings(record))
    path = Path(out) if out is not None else job.out_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
