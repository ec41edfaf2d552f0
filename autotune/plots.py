"""Interactive plots of a study: Pareto front (2-D/3-D), parallel coordinates, hypervolume.

Following optuna.visualization, every plot has two steps: a pure ``_get_*_info()`` function that
turns trials into plain, frozen data (tested without plotly), and a drawing function that turns
that data into a plotly figure.  plotly is imported only by the drawing functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.metrics import Direction
from autotune.pareto import knee_point
from autotune.review import hypervolume_series, objective_points, pareto_ranks
from autotune.study import TrialView

Objectives = Sequence[tuple[str, Direction]]

FRONT_COLOR = "#d62728"
FEASIBLE_COLOR = "#1f77b4"
INFEASIBLE_COLOR = "#b0b0b0"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def hover_text(view: TrialView, objectives: Objectives) -> str:
    """Trial number, state, objectives and the configuration, one item per line (HTML breaks)."""
    state = "feasible" if view.feasible else ("infeasible" if view.state == "complete" else view.state)
    lines = [f"<b>trial {view.number}</b> ({state})"]
    lines += [f"{m} = {_fmt(view.metrics.get(m))}" for m, _ in objectives]
    lines += [f"{k}: {_fmt(v)}" for k, v in view.config.items()]
    return "<br>".join(lines)


# ------------------------------------------------------------------------------- Pareto front
@dataclass(frozen=True)
class ParetoPoint:
    number: int
    values: tuple[float, ...]
    feasible: bool
    on_front: bool
    rank: int | None
    hover: str


@dataclass(frozen=True)
class ParetoFrontInfo:
    objective_names: tuple[str, ...]
    directions: tuple[Direction, ...]
    points: tuple[ParetoPoint, ...]
    knee: int | None  # trial number of the knee of the feasible front

    @property
    def front(self) -> tuple[ParetoPoint, ...]:
        """Front points, sorted by the first objective (best first)."""
        sign = -1.0 if self.directions[0] == "maximize" else 1.0
        return tuple(sorted((p for p in self.points if p.on_front),
                            key=lambda p: (sign * p.values[0], p.number)))


def _get_pareto_front_info(views: Sequence[TrialView], objectives: Objectives) -> ParetoFrontInfo:
    """Complete trials with finite objective values; infeasible ones are kept (drawn grey) but are
    never on the front.  Ranks and the knee are over the feasible trials only."""
    if not objectives:
        raise ValueError("a Pareto plot needs at least one objective")
    done = [v for v in views if v.state == "complete"]
    pts = objective_points(done, objectives)
    keep = [(v, tuple(p)) for v, p in zip(done, pts, strict=True)
            if all(math.isfinite(x) for x in p)]
    ranks = pareto_ranks([v for v, _ in keep], objectives)
    points = tuple(
        ParetoPoint(v.number, p, v.feasible, ranks.get(v.number) == 0, ranks.get(v.number),
                    hover_text(v, objectives))
        for v, p in sorted(keep, key=lambda vp: vp[0].number)
    )
    feas = [p for p in points if p.feasible]
    k = knee_point([p.values for p in feas], [d for _, d in objectives]) if feas else None
    return ParetoFrontInfo(tuple(m for m, _ in objectives), tuple(d for _, d in objectives),
                           points, feas[k].number if k is not None else None)


def plot_pareto_front(info: ParetoFrontInfo) -> Any:
    """2-D scatter (2 objectives) or 3-D scatter (3 objectives) of the trials; the front in red
    (joined in 2-D), other feasible trials in blue, infeasible trials grey; the configuration on
    hover."""
    import plotly.graph_objects as go

    m = len(info.objective_names)
    if m not in (2, 3):
        raise ValueError(f"the Pareto plot draws 2 or 3 objectives, not {m}")
    groups = [
        ("infeasible", [p for p in info.points if not p.feasible], INFEASIBLE_COLOR, 6),
        ("feasible", [p for p in info.points if p.feasible and not p.on_front], FEASIBLE_COLOR, 7),
        ("Pareto front", list(info.front), FRONT_COLOR, 10),
    ]
    fig = go.Figure()
    labels = [f"{n} ({'↓' if d == 'minimize' else '↑'})"
              for n, d in zip(info.objective_names, info.directions, strict=True)]
    for name, pts, color, size in groups:
        if not pts:
            continue
        coords = list(zip(*(p.values for p in pts), strict=True))
        common = dict(name=name, text=[p.hover for p in pts], hovertemplate="%{text}<extra></extra>",
                      customdata=[p.number for p in pts])
        if m == 2:
            mode = "markers+lines" if name == "Pareto front" else "markers"
            fig.add_trace(go.Scatter(x=coords[0], y=coords[1], mode=mode,
                                     line=dict(color=color, shape="hv" if len(pts) > 1 else None),
                                     marker=dict(color=color, size=size), **common))
        else:
            fig.add_trace(go.Scatter3d(x=coords[0], y=coords[1], z=coords[2], mode="markers",
                                       marker=dict(color=color, size=size / 2), **common))
    axis_types = [log_axis([p.values[j] for p in info.points]) for j in range(m)]
    knee = next((p for p in info.points if p.number == info.knee), None)
    title = "Pareto front" + (f" (knee: trial {info.knee})" if knee else "")
    if m == 2:
        if knee is not None:
            ax, ay = (math.log10(v) if t == "log" else v  # annotations use log10 on log axes
                      for v, t in zip(knee.values, axis_types, strict=True))
            fig.add_annotation(x=ax, y=ay, text="knee", showarrow=True)
        fig.update_layout(xaxis=dict(title=labels[0], type=axis_types[0]),
                          yaxis=dict(title=labels[1], type=axis_types[1]))
    else:
        fig.update_layout(scene=dict(
            xaxis=dict(title=labels[0], type=axis_types[0]),
            yaxis=dict(title=labels[1], type=axis_types[1]),
            zaxis=dict(title=labels[2], type=axis_types[2])))
    fig.update_layout(title=title, template="plotly_white", legend=dict(orientation="h"))
    return fig


def log_axis(values: Sequence[float], ratio: float = 50.0) -> str:
    """``"log"`` when every value is positive and they span more than ``ratio``× (latencies at
    different batch sizes do), else ``"linear"``."""
    vals = [v for v in values if math.isfinite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > ratio:
        return "log"
    return "linear"


# ------------------------------------------------------------------------ parallel coordinates
@dataclass(frozen=True)
class Dimension:
    label: str
    values: tuple[float, ...]
    ticktext: tuple[str, ...] | None = None  # categorical: value i is ticktext[i]


@dataclass(frozen=True)
class ParallelCoordinateInfo:
    numbers: tuple[int, ...]
    dimensions: tuple[Dimension, ...]
    color: tuple[float, ...]  # the first objective
    color_label: str
    reverse_scale: bool  # True when lower colour values are better


def _get_parallel_coordinate_info(views: Sequence[TrialView], objectives: Objectives,
                                  params: Sequence[str] | None = None) -> ParallelCoordinateInfo:
    """One line per feasible complete trial with finite objectives: the parameters (categorical
    ones mapped to their choice index, in order of first appearance), then the objectives."""
    done = [v for v in views if v.feasible]
    pts = objective_points(done, objectives)
    rows = sorted(((v, p) for v, p in zip(done, pts, strict=True)
                   if all(math.isfinite(x) for x in p)), key=lambda vp: vp[0].number)
    names = list(params) if params is not None else list(
        dict.fromkeys(k for v, _ in rows for k in v.config))
    dims: list[Dimension] = []
    for name in names:
        raw = [v.config.get(name) for v, _ in rows]
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw):
            if len({float(x) for x in raw}) <= 1 and raw:  # constant: tells nothing
                continue
            dims.append(Dimension(name, tuple(float(x) for x in raw)))
        else:
            cats = list(dict.fromkeys("-" if x is None else str(x) for x in raw))
            if len(cats) <= 1 and raw:
                continue
            dims.append(Dimension(name, tuple(float(cats.index("-" if x is None else str(x)))
                                              for x in raw), tuple(cats)))
    for j, (m, _) in enumerate(objectives):
        dims.append(Dimension(m, tuple(p[j] for _, p in rows)))
    first = objectives[0]
    return ParallelCoordinateInfo(
        tuple(v.number for v, _ in rows), tuple(dims), tuple(p[0] for _, p in rows), first[0],
        first[1] == "minimize",
    )


def plot_parallel_coordinate(info: ParallelCoordinateInfo) -> Any:
    import plotly.graph_objects as go

    dims = []
    for d in info.dimensions:
        spec: dict[str, Any] = dict(label=d.label, values=list(d.values))
        if d.ticktext is not None:
            spec.update(tickvals=list(range(len(d.ticktext))), ticktext=list(d.ticktext),
                        range=[-0.2, max(len(d.ticktext) - 0.8, 0.2)])
        dims.append(spec)
    line = dict(color=list(info.color), colorscale="Viridis", showscale=True,
                reversescale=info.reverse_scale, colorbar=dict(title=info.color_label))
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(title=f"Parallel coordinates ({len(info.numbers)} feasible trials)",
                      template="plotly_white")
    return fig


# ------------------------------------------------------------------------ hypervolume history
@dataclass(frozen=True)
class HypervolumeHistoryInfo:
    numbers: tuple[int, ...]
    values: tuple[float, ...]
    reference: tuple[float, ...]
    objective_names: tuple[str, ...]


def _get_hypervolume_history_info(views: Sequence[TrialView], objectives: Objectives,
                                  reference: Sequence[float]) -> HypervolumeHistoryInfo:
    series = hypervolume_series(views, objectives, reference)
    return HypervolumeHistoryInfo(tuple(n for n, _ in series), tuple(h for _, h in series),
                                  tuple(float(x) for x in reference),
                                  tuple(m for m, _ in objectives))


def plot_hypervolume_history(info: HypervolumeHistoryInfo) -> Any:
    import plotly.graph_objects as go

    ref = ", ".join(f"{n}={_fmt(v)}" for n, v in zip(info.objective_names, info.reference,
                                                      strict=True))
    fig = go.Figure(go.Scatter(x=list(info.numbers), y=list(info.values), mode="lines+markers",
                               line=dict(shape="hv", color=FEASIBLE_COLOR), name="hypervolume"))
    fig.update_layout(title=f"Hypervolume over trials<br><sup>reference point: {ref}</sup>",
                      xaxis_title="trial",
                      yaxis_title="hypervolume", template="plotly_white")
    return fig


# ------------------------------------------------------------------------ all plots of a study
def study_figures(views: Sequence[TrialView], objectives: Objectives,
                  reference: Sequence[float] | None) -> dict[str, Any]:
    """``{file stem: figure}`` for every plot that applies to this study (Pareto front only for 2
    or 3 objectives, hypervolume only with a reference point, nothing without data)."""
    out: dict[str, Any] = {}
    front = _get_pareto_front_info(views, objectives)
    if len(objectives) in (2, 3) and front.points:
        out[f"pareto_front_{len(objectives)}d"] = plot_pareto_front(front)
    par = _get_parallel_coordinate_info(views, objectives)
    if par.numbers:
        out["parallel_coordinates"] = plot_parallel_coordinate(par)
    if reference is not None:
        hv = _get_hypervolume_history_info(views, objectives, reference)
        if hv.numbers:
            out["hypervolume"] = plot_hypervolume_history(hv)
    return out


def figure_html(fig: Any, *, include_plotlyjs: bool | str = True, full_html: bool = True) -> str:
    """The figure as HTML; with ``include_plotlyjs=True`` the file works offline."""
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=full_html)


def write_figures(figures: Mapping[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        p = folder / f"{stem}.html"
        p.write_text(figure_html(fig), encoding="utf-8")
        paths.append(p)
    return paths
