"""Interactive plots of a study: Pareto front (2-D/3-D), parallel coordinates, hypervolume.

Following optuna.visualization, every plot has two steps: a pure ``_get_*_info()`` function that
turns trials into plain, frozen data (tested without plotly), and a drawing function that turns
that data into a plotly figure.  plotly is imported only by the drawing functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from autotune.core.metrics import Direction
from autotune.core.pareto import knee_point
from autotune.record.study import TrialView
from autotune.review.front import hypervolume_series, objective_points, pareto_ranks

Objectives = Sequence[tuple[str, Direction]]

FRONT_COLOR = "#d62728"
FEASIBLE_COLOR = "#1f77b4"
INFEASIBLE_COLOR = "#b0b0b0"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.4g}"
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
    tickvals: tuple[float, ...] | None = None  # log axis: where ticktext goes (log10 values)

    @property
    def categorical(self) -> bool:
        return self.ticktext is not None and self.tickvals is None


def _log_dimension(label: str, values: Sequence[float]) -> Dimension:
    """``values`` on a log10 axis labelled in their own unit (1-2-5 ticks), so that one outlier
    (an unstable measurement 100x the others) does not squash every other line together."""
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    steps = (1, 2, 5) if hi - lo <= 2 else (1, 3) if hi - lo <= 4 else (1,)  # ~8 labels at most
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in steps
             if min(values) / 1.01 <= m * 10.0 ** e <= max(values) * 1.01]
    span = math.log10(max(values)) - math.log10(min(values))
    for end in (min(values), max(values)):  # label both ends, unless a tick is already close
        if all(abs(math.log10(end) - math.log10(t)) > 0.08 * span for t in ticks):
            ticks.append(end)
    ticks.sort()
    return Dimension(label + " (log)", tuple(math.log10(v) for v in values),
                     tuple(_fmt(float(t)) for t in ticks), tuple(math.log10(t) for t in ticks))


@dataclass(frozen=True)
class ParallelCoordinateInfo:
    numbers: tuple[int, ...]
    dimensions: tuple[Dimension, ...]
    color: tuple[float, ...]  # the first objective
    color_label: str
    reverse_scale: bool  # True when lower colour values are better


def _get_parallel_coordinate_info(views: Sequence[TrialView], objectives: Objectives,
                                  params: Sequence[str] | None = None) -> ParallelCoordinateInfo:
    """One line per feasible complete trial with finite objectives: the parameters, then the
    objectives.  Text parameters map to their choice index (in order of first appearance) and
    integer ones (``threads``, ``batch_size``) to the index of their value in ascending order, so
    both draw as categorical axes with only the values tried; float parameters stay continuous.
    An objective whose positive values span more than 20x is drawn on a log axis."""
    done = [v for v in views if v.feasible]
    pts = objective_points(done, objectives)
    rows = sorted(((v, p) for v, p in zip(done, pts, strict=True)
                   if all(math.isfinite(x) for x in p)), key=lambda vp: vp[0].number)
    names = list(params) if params is not None else list(
        dict.fromkeys(k for v, _ in rows for k in v.config))
    dims: list[Dimension] = []
    for name in names:
        raw = [v.config.get(name) for v, _ in rows]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            levels = sorted(set(raw))
            if len(levels) <= 1 and raw:  # constant: tells nothing
                continue
            dims.append(Dimension(name, tuple(float(levels.index(x)) for x in raw),
                                  tuple(str(x) for x in levels)))
        elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw):
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
        vals = [p[j] for _, p in rows]
        dims.append(_log_dimension(m, vals) if log_axis(vals, ratio=20.0) == "log"
                    else Dimension(m, tuple(vals)))
    first = objectives[0]
    color_dim = dims[-len(objectives)]  # the first objective, log10 when its axis is
    return ParallelCoordinateInfo(
        tuple(v.number for v, _ in rows), tuple(dims), color_dim.values, color_dim.label,
        first[1] == "minimize",
    )


def plot_parallel_coordinate(info: ParallelCoordinateInfo) -> Any:
    import plotly.graph_objects as go

    dims = []
    for d in info.dimensions:
        spec: dict[str, Any] = dict(label=d.label, values=list(d.values))
        if d.categorical:
            spec.update(tickvals=list(range(len(d.ticktext or ()))), ticktext=list(d.ticktext or ()),
                        range=[-0.2, max(len(d.ticktext or ()) - 0.8, 0.2)])
        elif d.ticktext is not None:
            spec.update(tickvals=list(d.tickvals or ()), ticktext=list(d.ticktext))
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


# ----------------------------------------------------------- one page, plotly.js compressed once
# plotly.js is 4.8 MB; a page per plot with its own copy made a quickstart's MLflow artifacts
# 14 MB.  The MLflow UI shows an HTML artifact from a blob: URL in a sandboxed iframe, where no
# relative or server path resolves (and the server sends .js as text/plain + nosniff), so a shared
# plotly.min.js artifact would not load there; a CDN would not load offline.  So every plot goes
# on one page that carries plotly.js once, gzip-compressed (1.5 MB) and written as text 7 bits
# per character (below); the browser decompresses it with its own DecompressionStream.
_ILLEGAL = (0, 13, 60)  # NUL and CR are rewritten by the HTML parser, "<" could end the script


def encode_7bit(data: bytes) -> str:
    """``data`` as text for an HTML raw-text element: 7 bits per character; the three 7-bit values
    the parser would alter (NUL, CR, ``<``) are folded with the next 7 bits into one character of
    U+0080..U+01FF (U+0200.. for the last one).  :data:`_DECODER_JS` reverses it."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    bits = np.concatenate([bits, np.zeros((-len(bits)) % 7, dtype=np.uint8)])
    groups = (bits.reshape(-1, 7) * (1 << np.arange(6, -1, -1, dtype=np.uint8))).sum(axis=1)
    vals = groups.astype(np.int64).tolist()
    out: list[str] = []
    i, n = 0, len(vals)
    illegal = {v: k for k, v in enumerate(_ILLEGAL)}
    while i < n:
        v = vals[i]
        k = illegal.get(v)
        if k is None:
            out.append(chr(v))
            i += 1
        elif i + 1 < n:
            out.append(chr(0x80 + (k << 7 | vals[i + 1])))
            i += 2
        else:
            out.append(chr(0x80 + (3 << 7 | k)))
            i += 1
    return "".join(out)


def decode_7bit(text: str, n_bytes: int) -> bytes:
    """The inverse of :func:`encode_7bit` (what the page's script does, for tests)."""
    vals: list[int] = []
    for ch in text:
        c = ord(ch)
        if c < 0x80:
            vals.append(c)
        else:
            hi, lo = divmod(c - 0x80, 128)
            vals += [_ILLEGAL[hi], lo] if hi < 3 else [_ILLEGAL[lo]]
    acc, nbits, out = 0, 0, bytearray()
    for v in vals:
        acc, nbits = (acc << 7) | v, nbits + 7
        if nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
            acc &= (1 << nbits) - 1
    return bytes(out[:n_bytes])


_DECODER_JS = """
async function autotunePlotly() {
  const el = document.getElementById("plotly-gz"), n = +el.dataset.bytes, t = el.textContent;
  const ill = [0, 13, 60], out = new Uint8Array(n);
  let acc = 0, nb = 0, o = 0;
  const push = (v) => { acc = (acc << 7) | v; nb += 7;
    if (nb >= 8) { nb -= 8; if (o < n) out[o++] = (acc >> nb) & 255; acc &= (1 << nb) - 1; } };
  for (let k = 0; k < t.length; k++) {
    const c = t.charCodeAt(k);
    if (c < 128) push(c);
    else { const hi = (c - 128) >> 7, lo = (c - 128) & 127;
           if (hi < 3) { push(ill[hi]); push(lo); } else push(ill[lo]); }
  }
  const js = await new Response(new Blob([out]).stream()
    .pipeThrough(new DecompressionStream("gzip"))).text();
  const s = document.createElement("script"); s.textContent = js; document.head.appendChild(s);
}
autotunePlotly().then(() => {
  for (const el of document.querySelectorAll("script.figure")) {
    const f = JSON.parse(el.textContent), div = document.getElementById(el.dataset.div);
    Plotly.newPlot(div, f.data, f.layout, {responsive: true});
  }
}).catch((e) => { document.getElementById("error").textContent =
  "This browser cannot draw the charts (" + e + "); the tables next to this file hold the data."; });
"""


@lru_cache(maxsize=1)
def _plotly_payload() -> tuple[str, int]:
    import gzip

    import plotly.offline

    raw = gzip.compress(plotly.offline.get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)
    return encode_7bit(raw), len(raw)


def plots_page(figures: Mapping[str, Any], title: str = "autotune plots") -> str:
    """Every figure on one self-contained HTML page (works offline and inside the MLflow UI);
    plotly.js once, compressed (about 1.7 MB whatever the number of plots)."""
    import html as _html

    payload, n = _plotly_payload()
    divs, specs = [], []
    for stem, fig in figures.items():
        divs.append(f'<div id="{stem}" class="chart"></div>')
        spec = fig.to_json().replace("</", "<\\/")
        specs.append(f'<script type="application/json" class="figure" data-div="{stem}">'
                     f"{spec}</script>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{_html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:16px}"
        ".chart{height:520px;margin-bottom:24px}</style></head><body>"
        f"<h2>{_html.escape(title)}</h2><p id=\"error\"></p>{''.join(divs)}{''.join(specs)}"
        f'<script type="text/plain" id="plotly-gz" data-bytes="{n}">{payload}</script>'
        f"<script>{_DECODER_JS}</script></body></html>"
    )


def write_figures(figures: Mapping[str, Any], folder: Path,
                  title: str = "autotune plots") -> list[Path]:
    """``plots.html`` in ``folder``: every figure on one page (see :func:`plots_page`)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not figures:
        return []
    p = folder / "plots.html"
    p.write_text(plots_page(figures, title), encoding="utf-8")
    return [p]
