"""Plotly figures for the dashboard pages, rendered to HTML fragments.

The page loads plotly.js once (served from the installed ``plotly`` package, so nothing
is fetched from the internet) and :data:`DRAW_JS` (served as ``/static/dashboard.js``);
each fragment is a ``<div>`` whose ``data-plotly`` attribute holds the figure as JSON, so
the pages carry no inline script and the Content-Security-Policy can forbid them.

Plotly renders a subset of HTML (``<a href>``, ``<b>``, ``<br>``...) in trace names,
titles, tick labels and hover text. Every label that comes from data (entity, channel and
model names) goes through :func:`label`, so it shows as text, never as markup.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ae_anomaly.data.timeseries import TS

FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12}
EVENT_FILL = "rgba(220, 53, 69, 0.18)"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


# Served as /static/dashboard.js (the CSP forbids inline script): draws every chart
# fragment of the page, runs the auto-refresh chosen in the header (?refresh=SECONDS, carried
# along on the dashboard's own links) and disables from/to while a relative range is chosen.
DRAW_JS = """\
(function () {
  "use strict";
  function drawCharts() {
    document.querySelectorAll("div[data-plotly]").forEach(function (div) {
      var fig = JSON.parse(div.getAttribute("data-plotly"));
      Plotly.newPlot(div, fig.data, fig.layout, fig.config);
    });
  }
  function withRefresh(href, secs) {
    var url = new URL(href, location.href);
    if (url.origin !== location.origin || /\\.csv$/.test(url.pathname)) return null;
    if (secs) url.searchParams.set("refresh", secs); else url.searchParams.delete("refresh");
    return url.pathname + url.search + url.hash;
  }
  function busy() {
    // Never reload under someone's hands: a focused field or a note being typed.
    var el = document.activeElement;
    if (el && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName)) return true;
    return Array.prototype.some.call(document.querySelectorAll("input[name=note]"),
                                     function (i) { return i.value !== ""; });
  }
  function setupRefresh() {
    var select = document.getElementById("auto-refresh");
    if (select) {
      select.addEventListener("change", function () {
        location.assign(withRefresh(location.href, select.value));
      });
    }
    var secs = parseInt(new URLSearchParams(location.search).get("refresh") || "0", 10);
    if (!(secs >= 5 && secs <= 3600)) return;
    document.querySelectorAll("a[href]").forEach(function (a) {
      var href = withRefresh(a.getAttribute("href"), String(secs));
      if (href !== null) a.setAttribute("href", href);
    });
    function tick() {
      if (busy()) { setTimeout(tick, 5000); return; }
      location.reload();
    }
    setTimeout(tick, secs * 1000);
  }
  function setupRange() {
    var range = document.querySelector("select[name=range]");
    if (!range) return;
    function sync() {
      document.querySelectorAll(".custom-range input").forEach(function (i) {
        i.disabled = range.value !== "";
      });
    }
    range.addEventListener("change", sync);
    sync();
  }
  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    setupRefresh();
    setupRange();
  });
})();
"""


def label(text: Any) -> str:
    """A label from data, escaped so that Plotly shows it as text (``<a>`` stays text)."""
    return html.escape(str(text), quote=False)


def to_div(fig: go.Figure, div_id: str, height: int | None = None) -> str:
    """An HTML fragment: ``<div id=div_id>`` holding ``fig`` as JSON, drawn by DRAW_JS."""
    fig.update_layout(font=FONT, margin={"l": 60, "r": 20, "t": 40, "b": 40},
                      template="plotly_white")
    if height:
        fig.update_layout(height=height)
    spec = json.loads(fig.to_json())  # plotly's encoder: numpy, timestamps, NaN
    spec["config"] = {"displaylogo": False, "responsive": True}
    return (f'<div id="{html.escape(div_id)}" data-plotly="'
            f'{html.escape(json.dumps(spec, separators=(",", ":")))}"></div>')


def hourly_heatmap(counts: pd.DataFrame) -> go.Figure:
    """Events per entity (rows) per hour (columns)."""
    fig = go.Figure(go.Heatmap(
        z=counts.to_numpy(), x=list(counts.columns), y=[label(e) for e in counts.index],
        colorscale="Reds", colorbar={"title": "events"},
        hovertemplate="%{y}<br>%{x|%Y-%m-%d %H:00} UTC<br>%{z} events<extra></extra>",
        xgap=1, ygap=1))
    fig.update_layout(title="Events per entity per hour (UTC, start of event)",
                      yaxis={"automargin": True})
    return fig


def event_figure(series: pd.DataFrame, event: dict[str, Any], scores: np.ndarray | None,
                 threshold: float | None) -> go.Figure:
    """The raw series of the event's top channels (one row each), the score row below.

    The event's span is shaded on every row; the threshold is a dashed line on the score row.
    """
    channels = [c for c in series.columns if c != TS]
    rows = len(channels) + (1 if scores is not None else 0)
    titles = [label(c) for c in channels]
    if scores is not None:
        titles.append("anomaly score vs threshold")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=titles)
    x = series[TS]
    for i, ch in enumerate(channels, start=1):
        fig.add_trace(go.Scatter(x=x, y=series[ch], name=label(ch), mode="lines",
                                 line={"width": 1.3, "color": PALETTE[(i - 1) % len(PALETTE)]}),
                      row=i, col=1)
    if scores is not None:
        fig.add_trace(go.Scatter(x=x, y=scores, name="score", mode="lines",
                                 line={"width": 1.3, "color": "#333"}), row=rows, col=1)
        if threshold is not None:
            fig.add_trace(go.Scatter(x=[x.iloc[0], x.iloc[-1]], y=[threshold, threshold],
                                     name="threshold", mode="lines",
                                     line={"dash": "dash", "color": "#dc3545", "width": 1.5}),
                          row=rows, col=1)
    end = pd.Timestamp(event["end_ts"])
    if end == pd.Timestamp(event["start_ts"]):  # a one-step event still gets a visible band
        step = series[TS].diff().median()
        end = end + (step if pd.notna(step) else pd.Timedelta(0))
    for r in range(1, rows + 1):
        fig.add_vrect(x0=event["start_ts"], x1=end, fillcolor=EVENT_FILL, line_width=0,
                      row=r, col=1)
    fig.update_annotations(font={"size": 12})
    fig.update_layout(showlegend=scores is not None, height=170 * rows + 80,
                      legend={"orientation": "h", "y": -0.06},
                      title=f"{label(event['entity'])}: the event (shaded) in context")
    return fig


def channel_shares_bar(shares: dict[str, float]) -> go.Figure:
    """Each top channel's share of the event's reconstruction error."""
    names = list(shares)[::-1]
    values = [shares[n] for n in names]
    fig = go.Figure(go.Bar(x=values, y=[label(n) for n in names], orientation="h",
                           marker_color="#1f77b4", text=[f"{v:.0%}" for v in values],
                           textposition="auto",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_layout(title="Share of the event's error per channel",
                      xaxis={"tickformat": ".0%", "range": [0, max(values + [0.01]) * 1.1]},
                      yaxis={"automargin": True})
    return fig


def alarm_rate_figure(daily: pd.DataFrame, budget: float | None) -> go.Figure:
    """False alarms per entity per day, one bar group per model version, and the budget line.

    Events marked as true anomalies (acknowledged) are left out of the bars: the budget is
    about false alarms.
    """
    fig = go.Figure()
    for i, ((name, version), grp) in enumerate(daily.groupby(["model_name", "model_version"],
                                                             sort=False)):
        rate = grp["false_alarms"] / grp["entities"].clip(lower=1)
        fig.add_trace(go.Bar(x=grp["day"], y=rate, name=label(f"{name} v{version}"),
                             marker_color=PALETTE[i % len(PALETTE)],
                             customdata=np.stack([grp["events"], grp["acknowledged"],
                                                  grp["entities"], grp["false_positives"]],
                                                 axis=1),
                             hovertemplate="%{x|%Y-%m-%d}: %{y:.2f} per entity<br>"
                                           "%{customdata[0]} events, %{customdata[1]} true "
                                           "anomalies left out, %{customdata[2]} entities, "
                                           "%{customdata[3]} resolved as false positives"
                                           "<extra>%{fullData.name}</extra>"))
    if budget is not None:
        fig.add_hline(y=budget, line_dash="dash", line_color="#dc3545",
                      annotation_text=f"budget {budget:.3g} per entity per day",
                      annotation_position="top left")
    fig.update_layout(title="False alarms per entity per day (true anomalies left out), "
                            "by model version",
                      barmode="group", xaxis={"title": "day (UTC)", "type": "date"},
                      yaxis={"title": "false alarms per entity per day"})
    return fig
