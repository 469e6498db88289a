"""The dashboard web app: FastAPI routes rendering Jinja2 pages with Plotly charts.

Pages: ``/`` events (filters, counts per entity per hour), ``/events/{id}`` one event in
context, ``/alarm-rate`` alarm rate per day against the budget, ``/feedback`` feedback counts
(``/feedback.csv`` exports them). ``POST /events/{id}/feedback`` records an operator action.
``/alerts``: alert notifications with their delivery state per channel, and the silences
(``POST /alerts/silences`` adds one, ``POST /alerts/silences/{id}/end`` ends one early),
through :class:`ae_anomaly.alerts.store.AlertStore`.
``/metrics``: the pipeline's Prometheus metrics (:mod:`ae_anomaly.alerts.metrics`).

Every request passes :class:`~ae_anomaly.dashboard.security.SecurityMiddleware` first
(trusted hosts, optional authentication, CSRF and Origin checks on every POST, a body
limit, security headers), so a route added here is covered without doing anything.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ae_anomaly.config import AppConfig, expand_path
from ae_anomaly.dashboard import charts
from ae_anomaly.dashboard.context import ContextLoader, steps_per_day
from ae_anomaly.dashboard.security import DashboardSecurity, SecurityMiddleware, error_page
from ae_anomaly.dashboard.store import (
    FEEDBACK_KINDS,
    FEEDBACK_TABLE,
    KIND_LABELS,
    LEGACY_STATUSES,
    STATUS_HINTS,
    STATUS_LABELS,
    STATUSES,
    DashboardStore,
    EventFilter,
    model_key,
)
from ae_anomaly.db import utcnow

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZE = 100
# Spreadsheets run a cell that starts with one of these as a formula (OWASP CSV injection).
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Relative time ranges of the events page, back from the current time (UTC).
RANGES = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24),
          "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_LABELS = {"": "any time / from-to", **{k: f"last {k[:-1]} {k[-1]}" for k in RANGES}}
# Auto-refresh choices (seconds) offered in the header; ?refresh= takes 5..3600.
REFRESH_CHOICES = {"": "off", "30": "30 s", "60": "1 min", "300": "5 min"}


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


def _parse_filter(params: Any, now: datetime | None = None
                  ) -> tuple[EventFilter, str, list[str]]:
    """An EventFilter from query parameters; bad values are dropped and reported.

    ``range`` (``1h``, ``6h``, ``24h``, ``7d``, ``30d``) selects the events that overlap the
    last so much time before ``now`` (naive UTC) and overrides ``start`` / ``end``.

    Returns:
        (the filter, the relative range or "", errors).
    """
    errors: list[str] = []
    flt = EventFilter()
    flt.entity = params.get("entity") or None
    flt.model = params.get("model") or None
    status = params.get("status") or "open"
    status = LEGACY_STATUSES.get(status, status)
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
    rng = (params.get("range") or "").strip()
    if rng and rng not in RANGES:
        errors.append(f"unknown time range '{rng}'; valid: {', '.join(RANGES)}")
        rng = ""
    if rng:
        flt.start, flt.end = (now or utcnow()) - RANGES[rng], None
    return flt, rng, errors


def _filter_query(flt: EventFilter, rng: str = "", refresh: str = "") -> dict[str, str]:
    """The query parameters that reproduce a filter (a relative range stays relative)."""
    out = {"entity": flt.entity or "", "model": flt.model or "", "status": flt.status,
           "range": rng,
           "start": flt.start.strftime("%Y-%m-%dT%H:%M") if flt.start and not rng else "",
           "end": flt.end.strftime("%Y-%m-%dT%H:%M") if flt.end and not rng else "",
           "min_severity": "" if flt.min_severity is None else f"{flt.min_severity:g}"}
    if refresh:
        out["refresh"] = refresh
    return out


def _refresh_seconds(text: str | None) -> str:
    """The auto-refresh period from ``?refresh=`` (5 to 3600 seconds), or "" (off)."""
    try:
        secs = int(text or 0)
    except ValueError:
        return ""
    return str(secs) if 5 <= secs <= 3600 else ""


def mlflow_links(base: str | None, run_id: str | None, name: str,
                 version: str) -> dict[str, str]:
    """Links into the MLflow UI at ``base`` for an event's run and model version.

    The run link uses the UI's direct run route (``#/runs/<run_id>``), which redirects to
    the run's page in its experiment, so no MLflow lookup is needed. No base: no links.
    """
    if not base:
        return {}
    base = base.rstrip("/")
    links = {"model": f"{base}/#/models/{quote(str(name), safe='')}/versions/"
                      f"{quote(str(version), safe='')}"}
    if run_id:
        links["run"] = f"{base}/#/runs/{quote(str(run_id), safe='')}"
    return links


def default_mlflow_url(cfg: AppConfig) -> str | None:
    """The MLflow UI of the tracking server, when ``tracking.tracking_uri`` is one (http)."""
    uri = cfg.tracking.tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def _page_number(text: str | None) -> int:
    """The requested page, at least 1 (anything unreadable is page 1)."""
    try:
        return max(1, int(text or 1))
    except ValueError:  # also digits beyond int()'s limit
        return 1


def _parse_form(body: bytes) -> dict[str, str]:
    """A url-encoded form body (last value of each field); 400 when it is not UTF-8."""
    try:
        text = body.decode("utf-8", errors="strict")
        return {k: v[-1] for k, v in parse_qs(text, errors="strict").items()}
    except UnicodeDecodeError:
        raise HTTPException(400, "the form is not valid UTF-8") from None


def neutralise_csv(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula, prefixed with a single quote.

    Only text columns are touched: numbers stay numbers (a negative score is no formula).
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(CSV_FORMULA_PREFIXES)
                else v)
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
            frame = loader.recent_series(entity)
        except Exception:  # no raw data: fall back on the configured frequency
            frame = None
    spd, source = steps_per_day(frame, cfg.data.synthetic.freq)
    return cal.alpha * spd, (f"calibration.alpha {cal.alpha:g} x {spd:g} steps per day "
                             f"({source}): the expected false-alarm steps per entity per day "
                             f"(an upper bound on false-alarm events, which merge steps)")


NOTIFICATION_STATES = ("", "pending", "sent", "parked", "suppressed", "retry", "expired")
SILENCE_HOURS = 2.0  # the form's default length


def _parse_utc(text: str) -> datetime:
    """A date and time from a form field (``YYYY-MM-DDTHH:MM``, UTC unless it says)."""
    ts = pd.Timestamp(text.strip())
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


def _parse_duration(text: str) -> timedelta:
    """A length such as ``90m``, ``2h``, ``1d`` or ``1.5`` (hours); positive."""
    text = text.strip()
    try:
        delta = timedelta(hours=float(text))
    except ValueError:
        delta = pd.Timedelta(text).to_pytimedelta()
    if delta <= timedelta(0):
        raise ValueError(f"the duration '{text}' is not positive")
    return delta


def parse_silence_form(form: dict[str, str], now: datetime
                       ) -> tuple[dict[str, Any] | None, list[str]]:
    """The silence the dashboard's form asks for, or the reasons it cannot be set.

    Fields: ``entity`` and / or ``model`` (glob patterns), ``start`` (default now), ``end``
    or ``duration`` (``2h``, ``90m``, ``1d``; a number is hours), ``comment`` (why).
    Who set it is never a form field.

    Returns:
        (``{entity, model, starts_at, ends_at, comment}`` or None, errors).
    """
    errors: list[str] = []
    entity = form.get("entity", "").strip()[:256]
    model = form.get("model", "").strip()[:256]
    comment = form.get("comment", "").strip()[:2000]
    if not entity and not model:
        errors.append("give an entity pattern, a model pattern or both (e.g. db-*)")
    if not comment:
        errors.append("say why (the comment is recorded with the silence)")
    start = now
    if form.get("start", "").strip():
        try:
            start = _parse_utc(form["start"])
        except ValueError:
            errors.append(f"'{form['start']}' is not a date and time (start)")
    end = None
    if form.get("end", "").strip():
        try:
            end = _parse_utc(form["end"])
        except ValueError:
            errors.append(f"'{form['end']}' is not a date and time (end)")
    else:
        try:
            end = start + _parse_duration(form.get("duration", "").strip()
                                          or f"{SILENCE_HOURS:g}")
        except ValueError:
            errors.append(f"'{form.get('duration')}' is not a duration (e.g. 2h, 90m, 1d)")
    if end is not None and not errors:
        if end <= start:
            errors.append("the silence must end after it starts")
        elif end <= now:
            errors.append("that silence would already be over")
    if errors:
        return None, errors
    return {"entity": entity or None, "model": model or None, "starts_at": start,
            "ends_at": end, "comment": comment}, []


def create_app(cfg: AppConfig, feedback_table: str = FEEDBACK_TABLE,
               compute_scores: bool = True,
               security: DashboardSecurity | None = None,
               mlflow_url: str | None = None,
               now: Callable[[], datetime] = utcnow) -> FastAPI:
    """The dashboard app for one configuration.

    Args:
        cfg: the application config: ``sink`` (database and anomaly table), ``data.score``
            (raw series for context plots), ``tracking`` (models, for recomputed scores) and
            ``calibration`` (the alarm budget).
        feedback_table: the name of the table the dashboard stores feedback in.
        compute_scores: recompute anomaly scores on event pages (loads models from MLflow).
        security: trusted hosts, credentials and limits; by default
            :meth:`DashboardSecurity.from_env` (localhost only, credentials from the
            environment).
        mlflow_url: base URL of the MLflow UI, for links to runs and model versions; by
            default the tracking server when ``tracking.tracking_uri`` is http(s), else
            none (run ids are shown as text).
        now: the current time (naive UTC) that relative time ranges count back from.
    """
    security = security or DashboardSecurity.from_env()
    mlflow_url = (mlflow_url or default_mlflow_url(cfg) or "").rstrip("/") or None
    store = DashboardStore(cfg.sink.url, cfg.sink.table, feedback_table)
    loader = ContextLoader(cfg)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["ts"] = _fmt_ts
    templates.env.filters["num"] = _fmt_num
    db_label = expand_path(cfg.sink.url)
    if "@" in db_label:  # never show a password
        scheme, _, rest = db_label.partition("://")
        db_label = f"{scheme}://{rest.rpartition('@')[2]}"

    channels = list(cfg.alerts.channels())

    @cache
    def alert_store() -> Any:
        # The alerts package's own store (it creates its tables on first use), opened when
        # the alerts page is first asked for.
        from ae_anomaly.alerts.store import AlertStore

        return AlertStore(cfg.sink.url, cfg.sink.table)

    app = FastAPI(title="ae-anomaly dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store = store
    app.state.loader = loader
    app.state.security = security
    app.add_middleware(SecurityMiddleware, security=security)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        title = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                 413: "Content Too Large"}.get(exc.status_code, "Error")
        return HTMLResponse(error_page(exc.status_code, title, str(exc.detail)),
                            status_code=exc.status_code, headers=exc.headers)

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.setdefault("active", name.removesuffix(".html"))
        refresh = _refresh_seconds(request.query_params.get("refresh"))
        choices = dict(REFRESH_CHOICES)
        if refresh and refresh not in choices:
            choices[refresh] = f"{refresh} s"
        context.update(refresh=refresh, refresh_choices=choices, kind_labels=KIND_LABELS,
                       db_label=db_label, table=cfg.sink.table,
                       has_table=store.has_events_table(),
                       csrf_token=request.state.csrf_token)
        response = templates.TemplateResponse(request, name, context)
        response.headers["Cache-Control"] = "no-store"
        return response

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

    @app.get("/static/dashboard.js")
    def dashboard_js() -> Response:
        return Response(charts.DRAW_JS, media_type="application/javascript",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    def events_page(request: Request) -> HTMLResponse:
        flt, rng, errors = _parse_filter(request.query_params, now())
        # Clamped to the pages there are: a huge number must not reach the database.
        total = store.count_events(flt)
        last_page = max(1, -(-total // PAGE_SIZE))
        page_no = min(_page_number(request.query_params.get("page")), last_page)
        rows = store.list_events(flt, PAGE_SIZE, (page_no - 1) * PAGE_SIZE)
        counts = store.hourly_counts(flt)
        heatmap = (charts.to_div(charts.hourly_heatmap(counts), "chart-hourly",
                                 height=max(220, 60 + 28 * len(counts)))
                   if not counts.empty else "")
        query = _filter_query(flt, rng, _refresh_seconds(request.query_params.get("refresh")))
        here = str(request.url.path) + ("?" + request.url.query if request.url.query else "")
        return page(request, "events.html", rows=rows, total=total, flt=flt, query=query,
                    errors=errors, heatmap=heatmap, page_no=page_no, page_size=PAGE_SIZE,
                    entities=store.entities(),
                    models=[(model_key(n, v), f"{n} v{v}") for n, v in store.model_versions()],
                    statuses=[(s, "all" if s == "all" else STATUS_LABELS[s]) for s in STATUSES],
                    status_hints=STATUS_HINTS, ranges=RANGE_LABELS,
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
        links = mlflow_links(mlflow_url, event.get("run_id"), event["model_name"],
                             str(event["model_version"]))
        here = str(request.url.path) + ("?" + request.url.query if request.url.query else "")
        return page(request, "event.html", event=event, ctx=ctx, series_div=series_div,
                    shares_div=shares_div, history=store.feedback_history(event_id),
                    here=here, active="events", links=links, status_hints=STATUS_HINTS)

    @app.post("/events/{event_id}/feedback")
    async def add_feedback(request: Request, event_id: str) -> Response:
        form = _parse_form(await request.body())
        kind = form.get("kind", "")
        if kind not in FEEDBACK_KINDS:
            raise HTTPException(400, f"unknown feedback '{kind}'; valid: "
                                     f"{', '.join(FEEDBACK_KINDS)}")
        try:
            await run_in_threadpool(store.add_feedback, event_id, kind,
                                    form.get("note", "").strip()[:2000] or None,
                                    getattr(request.state, "user", None))
        except KeyError:
            raise HTTPException(404, f"no event {event_id} in {cfg.sink.table}") from None
        return RedirectResponse(_safe_next(form.get("next"), f"/events/{event_id}"),
                                status_code=303)

    def alerts_view(request: Request, form: dict[str, str] | None = None,
                    errors: list[str] | None = None, status_code: int = 200) -> HTMLResponse:
        store_ = alert_store()
        state = request.query_params.get("state") or ""
        bad = []
        if state not in NOTIFICATION_STATES:
            bad.append(f"unknown state '{state}'; valid: "
                       f"{', '.join(s for s in NOTIFICATION_STATES if s)}")
            state = ""
        total = store_.count_notifications(channels, state or None)
        last_page = max(1, -(-total // PAGE_SIZE))
        page_no = min(_page_number(request.query_params.get("page")), last_page)
        rows = store_.notifications(channels, state or None, PAGE_SIZE,
                                    (page_no - 1) * PAGE_SIZE)
        current = now()
        silences = store_.silences(active_only=False, limit=200)
        active = [s for s in silences if s.starts_at <= current < s.ends_at]
        upcoming = [s for s in silences if s.starts_at > current and s.ends_at > current]
        past = [s for s in silences if s.ends_at <= current]
        form = form or {"start": current.strftime("%Y-%m-%dT%H:%M"),
                        "duration": f"{SILENCE_HOURS:g}h"}
        response = page(request, "alerts.html", rows=rows, total=total, state=state,
                        states=NOTIFICATION_STATES, page_no=page_no, page_size=PAGE_SIZE,
                        channels=channels, active_silences=active, upcoming=upcoming,
                        past=past, form=form, errors=bad + (errors or []),
                        user=getattr(request.state, "user", None), urlencode=urlencode)
        response.status_code = status_code
        return response

    @app.get("/alerts", response_class=HTMLResponse)
    def alerts_page(request: Request) -> HTMLResponse:
        return alerts_view(request)

    @app.post("/alerts/silences")
    async def add_silence(request: Request) -> Response:
        form = _parse_form(await request.body())
        silence, errors = parse_silence_form(form, now())
        if silence is None:
            return alerts_view(request, form=form, errors=errors, status_code=400)
        # Who: the login (basic user, or the proxy's user header), never the form.
        who = getattr(request.state, "user", None) or "anonymous"
        sid = await run_in_threadpool(alert_store().add_silence, silence["entity"],
                                      silence["model"], silence["starts_at"],
                                      silence["ends_at"], who, silence["comment"])
        log.info("silence #%s set from the dashboard by %s", sid, who)
        return RedirectResponse(f"/alerts#silence-{sid}", status_code=303)

    @app.post("/alerts/silences/{silence_id}/end")
    async def end_silence(request: Request, silence_id: int) -> Response:
        _parse_form(await request.body())
        if not await run_in_threadpool(alert_store().expire_silence, silence_id):
            raise HTTPException(404, f"no active silence #{silence_id}")
        log.info("silence #%s ended from the dashboard by %s", silence_id,
                 getattr(request.state, "user", None) or "anonymous")
        return RedirectResponse(f"/alerts#silence-{silence_id}", status_code=303)

    @app.get("/alarm-rate", response_class=HTMLResponse)
    def alarm_rate_page(request: Request) -> HTMLResponse:
        daily = store.daily_alarms()
        entities = store.entities()
        budget, budget_source = alarm_budget(cfg, loader, entities[0] if entities else None)
        chart = (charts.to_div(charts.alarm_rate_figure(daily, budget), "chart-alarm-rate",
                               height=420) if len(daily) else "")
        table = daily.assign(
            rate=daily["false_alarms"] / daily["entities"].clip(lower=1))
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
        df = neutralise_csv(store.feedback_export(include_all=include_all))
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        return Response(buf.getvalue(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="anomaly_feedback-{stamp}.csv"'})

    return app


def serve(cfg: AppConfig, host: str = "127.0.0.1", port: int = 8050,
          compute_scores: bool = True, security: DashboardSecurity | None = None,
          mlflow_url: str | None = None) -> None:
    """Run the dashboard with uvicorn until interrupted.

    Args:
        security: as for :func:`create_app`; by default from the environment, trusting
            localhost and ``host``.
        mlflow_url: as for :func:`create_app`.
    """
    import uvicorn

    security = security or DashboardSecurity.from_env(bind_host=host)
    app = create_app(cfg, compute_scores=compute_scores, security=security,
                     mlflow_url=mlflow_url)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
