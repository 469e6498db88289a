"""The dashboard web app: FastAPI routes rendering Jinja2 pages with Plotly charts.

Pages: ``/`` events (filters, counts per entity per hour), ``/events/{id}`` one event in
context, ``/alarm-rate`` alarm rate per day against the budget, ``/feedback`` feedback counts
(``/feedback.csv`` exports them). ``POST /events/{id}/feedback`` records an operator action.
``/metrics``: the pipeline's Prometheus metrics (:mod:`ae_anomaly.alerts.metrics`).
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ae_anomaly.config import AppConfig, expand_path
from ae_anomaly.dashboard import charts
from ae_anomaly.dashboard.context import ContextLoader, steps_per_day
from ae_anomaly.dashboard.store import (
    FEEDBACK_KINDS,
    FEEDBACK_TABLE,
    STATUS_LABELS,
    STATUSES,
    DashboardStore,
    EventFilter,
    model_key,
)

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZE = 100


@cache
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _fmt_ts(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def _fmt_num(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return format(float(value), spec)


def _parse_filter(params: Any) -> tuple[EventFilter, list[str]]:
    """An EventFilter from query parameters; bad values are dropped and reported."""
    errors: list[str] = []
    flt = EventFilter()
    flt.entity = params.get("entity") or None
    flt.model = params.get("model") or None
    status = params.get("status") or "open"
    if status not in STATUSES:
        errors.append(f"unknown status '{status}'")
        status = "open"
    flt.status = status
    for key in ("start", "end"):
        text = (params.get(key) or "").strip()
        if text:
            try:
                ts = pd.Timestamp(text)
                if ts.tzinfo is not None:
                    ts = ts.tz_convert("UTC").tz_localize(None)
                setattr(flt, key, ts.to_pydatetime())
            except (ValueError, TypeError):
                errors.append(f"'{text}' is not a date and time ({key})")
    text = (params.get("min_severity") or "").strip()
    if text:
        try:
            flt.min_severity = float(text)
        except ValueError:
            errors.append(f"minimum severity '{text}' is not a number")
    return flt, errors


def _filter_query(flt: EventFilter) -> dict[str, str]:
    out = {"entity": flt.entity or "", "model": flt.model or "", "status": flt.status,
           "start": flt.start.strftime("%Y-%m-%dT%H:%M") if flt.start else "",
           "end": flt.end.strftime("%Y-%m-%dT%H:%M") if flt.end else "",
           "min_severity": "" if flt.min_severity is None else f"{flt.min_severity:g}"}
    return out


def _safe_next(target: str | None, default: str) -> str:
    """Only redirect within this site (a path, not a URL to somewhere else)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return default


def alarm_budget(cfg: AppConfig, loader: ContextLoader,
                 entity: str | None) -> tuple[float | None, str]:
    """The configured alarm budget per entity per day, and how it was derived."""
    cal = cfg.calibration
    if cal.max_alerts_per_day is not None:
        return float(cal.max_alerts_per_day), "calibration.max_alerts_per_day"
    frame = None
    if entity is not None:
        try:
            frame = loader.entity_series(entity)
        except Exception:  # no raw data: fall back on the configured frequency
            frame = None
    spd, source = steps_per_day(frame, cfg.data.synthetic.freq)
    return cal.alpha * spd, (f"calibration.alpha {cal.alpha:g} x {spd:g} steps per day "
                             f"({source}): the expected false-alarm steps per entity per day "
                             f"(an upper bound on false-alarm events, which merge steps)")


def create_app(cfg: AppConfig, feedback_table: str = FEEDBACK_TABLE,
               compute_scores: bool = True) -> FastAPI:
    """The dashboard app for one configuration.

    Args:
        cfg: the application config: ``sink`` (database and anomaly table), ``data.score``
            (raw series for context plots), ``tracking`` (models, for recomputed scores) and
            ``calibration`` (the alarm budget).
        feedback_table: the name of the table the dashboard stores feedback in.
        compute_scores: recompute anomaly scores on event pages (loads models from MLflow).
    """
    store = DashboardStore(cfg.sink.url, cfg.sink.table, feedback_table)
    loader = ContextLoader(cfg)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["ts"] = _fmt_ts
    templates.env.filters["num"] = _fmt_num
    db_label = expand_path(cfg.sink.url)
    if "@" in db_label:  # never show a password
        scheme, _, rest = db_label.partition("://")
        db_label = f"{scheme}://{rest.rpartition('@')[2]}"

    app = FastAPI(title="ae-anomaly dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store = store
    app.state.loader = loader

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.setdefault("active", name.removesuffix(".html"))
        context.update(db_label=db_label, table=cfg.sink.table,
                       has_table=store.has_events_table())
        return templates.TemplateResponse(request, name, context)

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from ae_anomaly.alerts.metrics import metrics_registry, render

        if not hasattr(app.state, "metrics"):
            def budget(model: str) -> float | None:
                entities = store.entities()
                return alarm_budget(cfg, loader, entities[0] if entities else None)[0]

            app.state.metrics = metrics_registry(cfg, budget)
        return Response(render(app.state.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "events_table": store.has_events_table()})

    @app.get("/static/plotly.min.js")
    def plotly_js() -> Response:
        return Response(_plotly_js(), media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", response_class=HTMLResponse)
    def events_page(request: Request) -> HTMLResponse:
        flt, errors = _parse_filter(request.query_params)
        try:
            page_no = max(1, int(request.query_params.get("page") or 1))
        except ValueError:
            page_no = 1
        rows, total = store.list_events(flt, PAGE_SIZE, (page_no - 1) * PAGE_SIZE)
        counts = store.hourly_counts(flt)
        heatmap = (charts.to_div(charts.hourly_heatmap(counts), "chart-hourly",
                                 height=max(220, 60 + 28 * len(counts)))
                   if not counts.empty else "")
        query = _filter_query(flt)
        here = str(request.url.path) + ("?" + request.url.query if request.url.query else "")
        return page(request, "events.html", rows=rows, total=total, flt=flt, query=query,
                    errors=errors, heatmap=heatmap, page_no=page_no, page_size=PAGE_SIZE,
                    entities=store.entities(),
                    models=[(model_key(n, v), f"{n} v{v}") for n, v in store.model_versions()],
                    statuses=[(s, "all" if s == "all" else STATUS_LABELS[s]) for s in STATUSES],
                    here=here, urlencode=urlencode)

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    def event_page(request: Request, event_id: str) -> HTMLResponse:
        event = store.get_event(event_id)
        if event is None:
            raise HTTPException(404, f"no event {event_id} in {cfg.sink.table}")
        ctx = loader.event_context(event, compute_scores=compute_scores)
        series_div = ""
        if ctx.series is not None:
            fig = charts.event_figure(ctx.series, event, ctx.scores, ctx.threshold)
            series_div = charts.to_div(fig, "chart-series")
        shares = event.get("top_channels") or {}
        shares_div = (charts.to_div(charts.channel_shares_bar(shares), "chart-shares",
                                    height=120 + 34 * len(shares)) if shares else "")
        return page(request, "event.html", event=event, ctx=ctx, series_div=series_div,
                    shares_div=shares_div, history=store.feedback_history(event_id),
                    here=str(request.url.path), active="events")

    @app.post("/events/{event_id}/feedback")
    async def add_feedback(request: Request, event_id: str) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        kind = form.get("kind", "")
        if kind not in FEEDBACK_KINDS:
            raise HTTPException(400, f"unknown feedback '{kind}'; valid: "
                                     f"{', '.join(FEEDBACK_KINDS)}")
        try:
            await run_in_threadpool(store.add_feedback, event_id, kind,
                                    form.get("note", "").strip()[:2000] or None,
                                    form.get("by", "").strip()[:128] or None)
        except KeyError:
            raise HTTPException(404, f"no event {event_id} in {cfg.sink.table}") from None
        return RedirectResponse(_safe_next(form.get("next"), f"/events/{event_id}"),
                                status_code=303)

    @app.get("/alarm-rate", response_class=HTMLResponse)
    def alarm_rate_page(request: Request) -> HTMLResponse:
        daily = store.daily_alarms()
        entities = store.entities()
        budget, budget_source = alarm_budget(cfg, loader, entities[0] if entities else None)
        chart = (charts.to_div(charts.alarm_rate_figure(daily, budget), "chart-alarm-rate",
                               height=420) if len(daily) else "")
        table = daily.assign(rate=daily["events"] / daily["entities"].clip(lower=1))
        return page(request, "alarm_rate.html", chart=chart,
                    rows=table.to_dict("records"), budget=budget, budget_source=budget_source)

    @app.get("/feedback", response_class=HTMLResponse)
    def feedback_page(request: Request) -> HTMLResponse:
        counts = store.feedback_counts()
        return page(request, "feedback.html", counts=counts.to_dict("records"),
                    history=store.feedback_history(limit=50))

    @app.get("/feedback.csv")
    def feedback_csv(request: Request) -> Response:
        include_all = request.query_params.get("include") == "all"
        df = store.feedback_export(include_all=include_all)
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        return Response(buf.getvalue(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="anomaly_feedback-{stamp}.csv"'})

    return app


def serve(cfg: AppConfig, host: str = "127.0.0.1", port: int = 8050,
          compute_scores: bool = True) -> None:
    """Run the dashboard with uvicorn until interrupted."""
    import uvicorn

    app = create_app(cfg, compute_scores=compute_scores)
    uvicorn.run(app, host=host, port=port, log_level="warning")
