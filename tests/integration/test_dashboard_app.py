"""The dashboard's pages and feedback over HTTP (FastAPI TestClient), on SQLite and PostgreSQL.

Events are written through the real SqlSink; PostgreSQL runs when AE_ANOMALY_TEST_PG_URL
points at a server (scripts/run_tests.sh starts one; under CI=true its absence fails). The
browser test (test_dashboard_browser.py) covers the same pages in Chromium after a real
scoring run.

Every POST goes through the security layer: the ``_post`` helper sends what a browser on
the page sends (the page's CSRF token and cookie, a same-origin ``Origin`` header).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import re
from datetime import datetime, timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, Table, select

from ae_anomaly.alerts.dispatcher import Dispatcher
from ae_anomaly.alerts.store import AlertStore
from ae_anomaly.config import AlertsConfig, AppConfig
from ae_anomaly.dashboard import charts
from ae_anomaly.dashboard.app import create_app, neutralise_csv
from ae_anomaly.dashboard.security import DashboardSecurity
from ae_anomaly.dashboard.store import DashboardStore, EventFilter
from ae_anomaly.db import utcnow
from ae_anomaly.sinks import EventRecord, SqlSink
from tests.support.alerting import Receiver

T0 = datetime(2026, 1, 6, 0, 0)
# TestClient sends "Host: testserver"; a same-origin browser POST carries this Origin.
SAME_ORIGIN = {"Origin": "http://testserver"}


def _record(i: int, entity: str, version: str, hours: float, severity: float) -> EventRecord:
    start = T0 + timedelta(hours=hours)
    return EventRecord(
        event_id=f"ev{i:04d}", entity=entity, start_ts=start, end_ts=start + timedelta(minutes=5),
        peak_ts=start + timedelta(minutes=2), peak_score=2.0 * severity, threshold=2.0,
        severity=severity, p_value=0.001, n_points=4,
        top_channels={"cpu_util": 0.7, "latency_p95": 0.2, "mem_used": 0.1},
        model_name="m", model_version=version, run_id="r" + version,
        scored_at=datetime(2026, 1, 7),
    )


EVENTS = [
    _record(0, "server-01", "1", 1.0, 1.2),
    _record(1, "server-01", "1", 3.5, 4.0),
    _record(2, "server-02", "1", 3.6, 2.5),
    _record(3, "server-02", "2", 26.0, 1.1),
    _record(4, "server-03", "2", 27.2, 6.0),
]


@pytest.fixture
def db(db_url):
    """(url, events table, feedback table) with EVENTS written through the real sink.

    ``db_url`` (tests/integration/conftest.py): an SQLite file, or a fresh database on the
    test PostgreSQL server.
    """
    table, feedback = "anomaly_events", "anomaly_feedback"
    sink = SqlSink(db_url, table)
    sink.write(EVENTS)
    sink.engine.dispose()
    return db_url, table, feedback


def _app(db, tmp_path, mlflow_url=None, now=None, alerts=None, **security):
    url, table, feedback = db
    cfg = AppConfig.model_validate({
        "sink": {"url": url, "table": table},
        "data": {"score": str(tmp_path / "missing.csv")},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/no-mlflow.db"},
        "alerts": alerts or {},
    })
    sec = DashboardSecurity(trusted_hosts=["testserver"], **security)
    return create_app(cfg, feedback_table=feedback, security=sec, mlflow_url=mlflow_url,
                      **({"now": now} if now else {}))


@pytest.fixture
def client(db, tmp_path):
    with TestClient(_app(db, tmp_path)) as c:
        yield c


def _csrf(client: TestClient) -> str:
    """The CSRF token a page gives this client (the page also sets the cookie)."""
    page = client.get("/feedback").text
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)


def _post(client: TestClient, path: str, data: dict[str, str], **kwargs):
    """A POST as the dashboard's own form sends it: token, cookie and same origin."""
    return client.post(path, data={**data, "csrf_token": _csrf(client)},
                       headers=SAME_ORIGIN, **kwargs)


def _feedback_rows(db) -> list[tuple]:
    url, table, feedback = db
    store = DashboardStore(url, table, feedback)
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(store.feedback.c.event_id, store.feedback.c.kind,
                   store.feedback.c.created_by))]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _row_ids(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('data-event-id="')[1:]]


def test_events_page_lists_open_events_newest_first(client):
    r = client.get("/")
    assert r.status_code == 200
    assert _row_ids(r.text) == ["ev0004", "ev0003", "ev0002", "ev0001", "ev0000"]
    assert 'id="chart-hourly"' in r.text  # counts per entity per hour


@pytest.mark.parametrize(("query", "expected"), [
    ("entity=server-02", ["ev0003", "ev0002"]),
    ("model=m:2", ["ev0004", "ev0003"]),
    ("min_severity=2.5", ["ev0004", "ev0002", "ev0001"]),
    ("start=2026-01-06T03:00&end=2026-01-06T04:00", ["ev0002", "ev0001"]),
    ("start=2026-01-07T00:00", ["ev0004", "ev0003"]),
])
def test_events_page_filters(client, query, expected):
    assert _row_ids(client.get("/?" + query).text) == expected


def test_bad_filter_values_are_reported_not_fatal(client):
    r = client.get("/?min_severity=lots&start=yesterday-ish")
    assert r.status_code == 200
    assert "is not a number" in r.text and "is not a date and time" in r.text
    assert len(_row_ids(r.text)) == len(EVENTS)


def test_false_positive_is_stored_apart_and_changes_the_status(client, db):
    url, table, feedback = db
    before = SqlSink(url, table).read()
    r = _post(client, "/events/ev0001/feedback",
              {"kind": "false_positive", "note": "deploy", "next": "/?status=all"},
              follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?status=all"
    assert "ev0001" not in _row_ids(client.get("/").text)  # no longer open
    page = client.get("/?status=resolved").text
    assert _row_ids(page) == ["ev0001"] and "false positive" in page
    assert 'class="badge status-resolved"' in page
    assert _row_ids(client.get("/?status=false_positive").text) == ["ev0001"]  # old links
    # The event row is unchanged; the feedback table has the action.
    after = SqlSink(url, table).read()
    assert before.equals(after)
    store = DashboardStore(url, table, feedback)
    fb = Table(feedback, MetaData(), autoload_with=store.engine)
    with store.engine.connect() as conn:
        rows = conn.execute(select(fb.c.event_id, fb.c.kind, fb.c.note)).all()
    assert [tuple(r) for r in rows] == [("ev0001", "false_positive", "deploy")]
    # Reopen: latest feedback wins, history kept.
    _post(client, "/events/ev0001/feedback", {"kind": "reopen"})
    assert "ev0001" in _row_ids(client.get("/").text)
    assert len(store.feedback_history("ev0001")) == 2


def test_feedback_counts_and_csv_export(client):
    _post(client, "/events/ev0001/feedback", {"kind": "false_positive"})
    _post(client, "/events/ev0004/feedback", {"kind": "ack"})
    page = client.get("/feedback").text
    assert 'id="feedback-counts"' in page and "resolved (false positive)" in page
    r = client.get("/feedback.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {(x["event_id"], x["status"], x["verdict"]) for x in rows} == {
        ("ev0001", "resolved", "false_positive"), ("ev0004", "acknowledged", "true_anomaly")}
    assert rows[0]["peak_score"] and "cpu_util=" in rows[0]["top_channels"]
    everything = list(csv.DictReader(io.StringIO(client.get("/feedback.csv?include=all").text)))
    assert len(everything) == len(EVENTS)


def test_feedback_counts_per_model_version(db):
    url, table, feedback = db
    store = DashboardStore(url, table, feedback)
    store.add_feedback("ev0001", "false_positive")
    store.add_feedback("ev0002", "ack")
    counts = store.feedback_counts().set_index("model_version")
    cols = ["events", "open", "acknowledged", "resolved"]
    assert counts.loc["1", cols].tolist() == [3, 1, 1, 1]
    assert counts.loc["2", cols].tolist() == [2, 2, 0, 0]
    hourly = store.hourly_counts(EventFilter(status="all"))
    assert int(hourly.to_numpy().sum()) == len(EVENTS)
    assert int(hourly.loc["server-01"].sum()) == 2


def test_feedback_rejects_unknown_kind_and_event(client):
    assert _post(client, "/events/ev0001/feedback", {"kind": "delete"}).status_code == 400
    assert _post(client, "/events/nope/feedback", {"kind": "ack"}).status_code == 404
    r = _post(client, "/events/ev0001/feedback", {"kind": "ack", "next": "https://evil.example/"},
              follow_redirects=False)
    assert r.headers["location"] == "/events/ev0001"


def test_event_page_without_raw_data_says_so(client):
    r = client.get("/events/ev0004")
    assert r.status_code == 200
    assert "Raw series not shown" in r.text
    assert 'id="chart-shares"' in r.text  # per-channel error shares still shown
    assert "v2" in r.text and "0.001" in r.text  # model version and p-value
    assert client.get("/events/nope").status_code == 404


def test_alarm_rate_per_day_per_model_version(client, db):
    url, table, feedback = db
    daily = DashboardStore(url, table, feedback).daily_alarms()
    got = {(r.model_version, r.day.strftime("%Y-%m-%d")): (r.events, r.entities)
           for r in daily.itertuples()}
    assert got == {("1", "2026-01-06"): (3, 2), ("2", "2026-01-07"): (2, 2)}
    page = client.get("/alarm-rate").text
    assert 'id="chart-alarm-rate"' in page and "Budget:" in page


def test_alarm_rate_leaves_true_anomalies_out_of_the_false_alarm_count(client, db):
    url, table, feedback = db
    store = DashboardStore(url, table, feedback)
    store.add_feedback("ev0001", "ack")  # a true anomaly: no false alarm
    store.add_feedback("ev0002", "false_positive")  # a false alarm, reviewed
    day = store.daily_alarms().set_index("model_version").loc["1"]
    assert (day.events, day.acknowledged, day.false_positives, day.false_alarms) == (3, 1, 1, 2)
    page = client.get("/alarm-rate").text
    assert "true anomalies" in page and "left out" in page
    row = re.search(r'<tr data-model="m:1".*?</tr>', page, re.S).group(0)
    assert 'class="num true-anomalies">1<' in row and 'class="num false-alarms">2<' in row
    assert ">1.00<" in row  # 2 false alarms / 2 entities, not 3 / 2


@pytest.mark.parametrize(("rng", "expected"), [
    ("1h", ["ev0004"]), ("6h", ["ev0004", "ev0003"]), ("24h", ["ev0004", "ev0003"]),
    ("7d", ["ev0004", "ev0003", "ev0002", "ev0001", "ev0000"]),
])
def test_relative_time_range_counts_back_from_now(db, tmp_path, rng, expected):
    now = T0 + timedelta(hours=28)  # ev0004 started at 27:12, ev0003 at 26:00
    with TestClient(_app(db, tmp_path, now=lambda: now)) as c:
        page = c.get(f"/?range={rng}&start=2020-01-01T00:00").text  # the range wins
        assert _row_ids(page) == expected
        assert f'<option value="{rng}" selected>' in page and 'id="range-note"' in page
        assert "range=" + rng in page  # paging links keep the range relative
        assert "unknown time range" in c.get("/?range=2w").text


def test_status_words_and_ongoing_events(db, tmp_path, client):
    url, table, _ = db
    ongoing = dataclasses.replace(EVENTS[4], event_id="ev0005", is_open=True)
    SqlSink(url, table).write([ongoing])
    page = client.get("/").text
    row = re.search(r'<tr data-event-id="ev0005">.*?</tr>', page, re.S).group(0)
    assert 'class="badge status-open"' in row and ">ongoing<" in row
    assert ">ongoing<" not in re.search(r'<tr data-event-id="ev0004">.*?</tr>', page,
                                        re.S).group(0)
    options = re.findall(r'<option value="(\w+)"[^>]*>(\w+)</option>',
                         page.split('name="status"')[1].split("</select>")[0])
    assert options == [("open", "open"), ("acknowledged", "acknowledged"),
                       ("resolved", "resolved"), ("all", "all")]
    _post(client, "/events/ev0004/feedback", {"kind": "ack"})
    assert _row_ids(client.get("/?status=acknowledged").text) == ["ev0004"]
    event_page = client.get("/events/ev0004").text
    assert 'class="badge status-acknowledged"' in event_page
    assert "acknowledged (true anomaly)" in event_page  # the history names the action


def test_event_page_links_to_the_mlflow_run_and_model_version(db, tmp_path, client):
    with TestClient(_app(db, tmp_path, mlflow_url="http://mlflow.example:5000/")) as c:
        page = c.get("/events/ev0004").text
    assert 'href="http://mlflow.example:5000/#/runs/r2"' in page
    assert 'href="http://mlflow.example:5000/#/models/m/versions/2"' in page
    plain = client.get("/events/ev0004").text  # no MLflow UI configured: text and a hint
    assert "#/runs/" not in plain and 'id="mlflow-hint"' in plain and "<code>r2</code>" in plain


def test_auto_refresh_choice_is_kept_in_the_url(client):
    page = client.get("/?refresh=60&status=all").text
    assert '<option value="60" selected>1 min</option>' in page
    assert '<input type="hidden" name="refresh" value="60">' in page  # filters keep it
    assert 'refresh=60' in page.split('name="next" value="')[1].split('"')[0]  # feedback too
    assert '<option value="" selected>off</option>' in client.get("/").text
    assert '<option value="" selected>off</option>' in client.get("/?refresh=1").text
    js = client.get("/static/dashboard.js").text
    assert "location.reload()" in js and "auto-refresh" in js


def test_empty_database_renders_a_hint(tmp_path):
    cfg = AppConfig.model_validate({"sink": {"url": f"sqlite:///{tmp_path}/empty.db"}})
    sec = DashboardSecurity(trusted_hosts=["testserver"])
    with TestClient(create_app(cfg, security=sec)) as c:
        for path in ("/", "/alarm-rate", "/feedback"):
            r = c.get(path)
            assert r.status_code == 200 and "does not exist in this database" in r.text
        assert c.get("/healthz").json() == {"ok": True, "events_table": False}
        assert c.get("/feedback.csv").status_code == 200


def test_cli_dashboard_command_wires_db_port_and_scores(monkeypatch, tmp_path):
    import ae_anomaly.dashboard.app as app_module
    from ae_anomaly.cli import main

    seen = {}

    def fake_serve(cfg, host, port, compute_scores, security, mlflow_url):
        seen.update(url=cfg.sink.url, host=host, port=port, scores=compute_scores,
                    mlflow=mlflow_url)

    monkeypatch.setattr(app_module, "serve", fake_serve)
    monkeypatch.delenv("AE_ANOMALY_DASHBOARD_MLFLOW_URL", raising=False)
    url = f"sqlite:///{tmp_path}/x.db"
    assert main(["dashboard", "--db", url, "--port", "9123", "--no-scores"]) == 0
    assert seen == {"url": url, "host": "127.0.0.1", "port": 9123, "scores": False,
                    "mlflow": None}
    assert main(["dashboard", "--db", url, "--mlflow-url", "http://mlflow:5000"]) == 0
    assert seen["mlflow"] == "http://mlflow:5000"
    monkeypatch.setenv("AE_ANOMALY_DASHBOARD_MLFLOW_URL", "https://ml.example")
    assert main(["dashboard", "--db", url]) == 0
    assert seen["mlflow"] == "https://ml.example"


# ---------------------------------------------------------------------- security (issue #13)

def test_cross_origin_post_is_refused_and_adds_no_row(client, db):
    token = _csrf(client)  # even with a valid token and cookie
    for headers in ({"Origin": "https://evil.example"},
                    {"Origin": "http://testserver.evil.example"},
                    {"Origin": "null", "Referer": "https://evil.example/page"},
                    {}):  # neither Origin nor Referer
        r = client.post("/events/ev0001/feedback", headers=headers,
                        data={"kind": "false_positive", "by": "mallory", "csrf_token": token})
        assert r.status_code == 403, headers
        assert r.headers["content-type"].startswith("text/html")
    assert _feedback_rows(db) == []
    # A same-site Referer (no Origin) is accepted.
    r = client.post("/events/ev0001/feedback", headers={"Referer": "http://testserver/"},
                    data={"kind": "ack", "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303


def test_post_without_or_with_a_wrong_csrf_token_is_refused(client, db, tmp_path):
    token = _csrf(client)
    for data in ({"kind": "ack"}, {"kind": "ack", "csrf_token": "0" * 64},
                 {"kind": "ack", "csrf_token": token + "0"}):
        r = client.post("/events/ev0001/feedback", data=data, headers=SAME_ORIGIN)
        assert r.status_code == 403 and "CSRF" in r.text
    # A token is only valid with the cookie it was issued for.
    with TestClient(_app(db, tmp_path)) as other:
        r = other.post("/events/ev0001/feedback", data={"kind": "ack", "csrf_token": token},
                       headers=SAME_ORIGIN)
        assert r.status_code == 403
    # ... and only in the process that issued it (another secret), even with the cookie.
    with TestClient(_app(db, tmp_path), cookies=dict(client.cookies)) as restarted:
        r = restarted.post("/events/ev0001/feedback",
                           data={"kind": "ack", "csrf_token": token}, headers=SAME_ORIGIN)
        assert r.status_code == 403
    assert _feedback_rows(db) == []
    # A script may send the token as a header instead of a form field.
    r = client.post("/events/ev0001/feedback", data={"kind": "ack"},
                    headers={**SAME_ORIGIN, "X-CSRF-Token": _csrf(client)},
                    follow_redirects=False)
    assert r.status_code == 303 and _feedback_rows(db) == [("ev0001", "ack", None)]


def test_author_comes_from_the_login_not_from_the_form(db, tmp_path):
    with TestClient(_app(db, tmp_path, user="alice", password="pw"),
                    headers=_basic("alice", "pw")) as c:
        _post(c, "/events/ev0001/feedback", {"kind": "false_positive", "by": "mallory"})
    assert _feedback_rows(db) == [("ev0001", "false_positive", "alice")]
    # Behind an authenticating proxy: the user header it sets names the author.
    with TestClient(_app(db, tmp_path, user_header="X-Forwarded-User"),
                    headers={"X-Forwarded-User": "bob@corp.example"}) as c:
        _post(c, "/events/ev0002/feedback", {"kind": "ack"})
    assert _feedback_rows(db)[-1] == ("ev0002", "ack", "bob@corp.example")


def test_foreign_host_header_is_refused(client):
    for path in ("/", "/feedback.csv", "/healthz", "/events/ev0001"):
        r = client.get(path, headers={"Host": "attacker.example"})
        assert r.status_code == 400 and "host" in r.text.lower()
        assert "anomaly_events" not in r.text  # nothing about the database on it
    assert client.get("/healthz", headers={"Host": "localhost:8050"}).status_code == 400
    sec = DashboardSecurity.from_env(bind_host="10.0.0.5", trusted_hosts=["*.corp.example"],
                                     environ={})
    assert all(sec.host_allowed(h) for h in ("localhost:8050", "127.0.0.1", "[::1]:80",
                                             "10.0.0.5:8050", "dash.corp.example"))
    assert not any(sec.host_allowed(h) for h in ("corp.example.evil", "evil.example", "",
                                                 "10.0.0.6"))
    # A wildcard bind address is no host name: only localhost is trusted by default.
    assert DashboardSecurity.from_env(bind_host="0.0.0.0", environ={}).trusted_hosts == [
        "localhost", "127.0.0.1", "::1"]


def test_security_headers_on_every_response(client):
    for path, status in (("/", 200), ("/events/ev0001", 200), ("/healthz", 200),
                         ("/static/dashboard.js", 200), ("/events/nope", 404)):
        r = client.get(path)
        assert r.status_code == status, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-eval" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    # The CSP allows no inline script, so the pages have none: every <script> has a src.
    for path in ("/", "/events/ev0004", "/alarm-rate", "/feedback"):
        scripts = re.findall(r"<script[^>]*>", client.get(path).text)
        assert scripts and all(" src=" in s for s in scripts), path
    cookie = client.get("/", headers={"Cookie": ""}).headers.get("set-cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_authentication_when_configured(db, tmp_path, scheme):
    creds = ({"user": "ops", "password": "pa:ss wörd"} if scheme == "basic"
             else {"token": "t0ken-from-env"})
    good = (_basic("ops", "pa:ss wörd") if scheme == "basic"
            else {"Authorization": "Bearer t0ken-from-env"})
    bad = _basic("ops", "wrong") if scheme == "basic" else {"Authorization": "Bearer wrong"}
    app = _app(db, tmp_path, **creds)
    with TestClient(app) as anon:
        for path in ("/", "/events/ev0001", "/feedback.csv", "/static/plotly.min.js"):
            r = anon.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].lower().startswith(scheme)
        assert anon.get("/", headers=bad).status_code == 401
        assert anon.get("/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
        assert anon.post("/events/ev0001/feedback", data={"kind": "ack"},
                         headers=SAME_ORIGIN).status_code == 401
        # health checks (and a future /metrics) need no credentials, but a trusted host
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
    with TestClient(app, headers=good) as c:
        assert c.get("/").status_code == 200
        assert _post(c, "/events/ev0001/feedback", {"kind": "ack"},
                     follow_redirects=False).status_code == 303
    assert len(_feedback_rows(db)) == 1
    assert "t0ken" not in repr(app.state.security) and "wörd" not in repr(app.state.security)


def test_half_configured_basic_auth_fails_loudly(monkeypatch, tmp_path):
    from ae_anomaly.cli import main

    monkeypatch.setenv("AE_ANOMALY_DASHBOARD_USER", "ops")
    monkeypatch.delenv("AE_ANOMALY_DASHBOARD_PASSWORD", raising=False)
    assert main(["dashboard", "--db", f"sqlite:///{tmp_path}/x.db"]) == 2


def test_huge_page_numbers_and_bad_bodies_are_not_server_errors(client):
    last = client.get("/?status=all").text
    for page in ("9" * 40, "99999999999999999999", "-3", "abc", "1" * 5000):
        r = client.get(f"/?status=all&page={page}")
        assert r.status_code == 200, page
        assert _row_ids(r.text) == _row_ids(last)  # one page of 5: clamped to it
    token = _csrf(client)
    form = {"Content-Type": "application/x-www-form-urlencoded", **SAME_ORIGIN}
    r = client.post("/events/ev0001/feedback", headers=form,
                    content=b"kind=ack&note=\xff\xfe&csrf_token=" + token.encode())
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    r = client.post("/events/ev0001/feedback", headers=form,
                    content=b"kind=ack&note=%FF%FE&csrf_token=" + token.encode())
    assert r.status_code == 400 and "UTF-8" in r.text
    r = client.post("/events/ev0001/feedback", headers=form,
                    content=b"kind=ack&note=" + b"x" * 100_000 + b"&csrf_token=" + token.encode())
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")

    def chunks():  # no Content-Length: the limit still holds while reading
        yield b"kind=ack&note="
        for _ in range(100):
            yield b"x" * 1000

    r = client.post("/events/ev0001/feedback", headers=form, content=chunks())
    assert r.status_code == 413


def test_missing_event_is_an_html_404_page(client):
    r = client.get("/events/<b>nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "no event &lt;b&gt;nope" in r.text and "<b>nope" not in r.text


def test_csv_export_neutralises_formula_cells(client):
    _post(client, "/events/ev0001/feedback",
          {"kind": "false_positive", "note": '=HYPERLINK("https://evil.example","click")'})
    rows = list(csv.DictReader(io.StringIO(client.get("/feedback.csv").text)))
    assert rows[0]["feedback_note"] == '\'=HYPERLINK("https://evil.example","click")'
    assert float(rows[0]["peak_score"]) > 0  # numbers stay numbers
    df = neutralise_csv(pd.DataFrame({
        "text": ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "plain", None],
        "number": [-1.5, 1, 2, 3, 4, 5, 6, 7]}))
    assert df["text"].tolist()[:7] == ["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx",
                                       "plain"]
    assert pd.isna(df["text"].iloc[7])
    assert df["number"].tolist()[0] == -1.5


def test_chart_labels_from_data_are_escaped():
    evil = '<a href="https://evil.example/">cpu</a>'
    div = charts.to_div(charts.channel_shares_bar({evil: 0.6, "mem": 0.4}), "chart-shares")
    assert "<a " not in div  # the whole figure is an escaped attribute
    spec = json.loads(html.unescape(div.split('data-plotly="', 1)[1].split('"></div>')[0]))
    assert html.escape(evil, quote=False) in spec["data"][0]["y"]
    assert evil not in json.dumps(spec)


def test_cli_warns_when_binding_beyond_localhost_without_auth(monkeypatch, capsys, tmp_path):
    import ae_anomaly.dashboard.app as app_module
    from ae_anomaly.cli import main

    monkeypatch.setattr(app_module, "serve", lambda *a, **k: None)
    for name in ("AE_ANOMALY_DASHBOARD_TOKEN", "AE_ANOMALY_DASHBOARD_USER",
                 "AE_ANOMALY_DASHBOARD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    db = ["--db", f"sqlite:///{tmp_path}/x.db"]
    assert main(["dashboard", *db, "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "without authentication" in err
    for host in ("127.0.0.1", "localhost", "::1"):
        assert main(["dashboard", *db, "--host", host]) == 0
        assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setenv("AE_ANOMALY_DASHBOARD_TOKEN", "s3cret")
    assert main(["dashboard", *db, "--host", "0.0.0.0"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err and "authentication: bearer" in captured.out
    assert "s3cret" not in captured.out + captured.err


def test_event_page_reads_the_raw_series_from_the_landing_table(db_url, store, ops, tmp_path):
    """Scheduled path: source.kind folder, no data.score; the rows sit in the staging table."""
    ops.drop(tmp_path / "landing", "drop.csv", store.data.score)
    raw = ops.folder_config(store, tmp_path, db_url)
    ops.score_inprocess(raw)
    assert raw["data"].get("score") is None
    events = SqlSink(db_url, "anomaly_events").read()
    assert len(events) > 0
    worst = events.sort_values("severity").iloc[-1]
    sec = DashboardSecurity(trusted_hosts=["testserver"])
    with TestClient(create_app(AppConfig.model_validate(raw), security=sec)) as c:
        page = c.get(f"/events/{worst.event_id}").text
    assert "Raw series not shown" not in page and "data.score" not in page
    assert 'id="chart-series"' in page
    assert f"landing folder {tmp_path / 'landing'}" in html.unescape(page)
    assert "recomputed" in page  # the slice from the table was long enough to score
    spec = json.loads(html.unescape(re.search(r'id="chart-series" data-plotly="([^"]+)"',
                                              page).group(1)))
    assert [t["name"] for t in spec["data"]][-2:] == ["score", "threshold"]


# ---------------------------------------------------------------------- alerts (issue #14)

@pytest.fixture
def alerts_db(db_url):
    """(url, table, feedback, webhook URL) with one notification in each state, made by the
    real sink (outbox) and dispatcher against a local receiver: ``sent1`` sent, ``quiet``
    suppressed by a silence (ended again), ``refused`` parked (the receiver answered 400),
    ``waiting`` pending (written after the last dispatch)."""
    receiver = Receiver().start()
    try:
        sink = SqlSink(db_url, "anomaly_events", outbox=True)
        dispatcher = Dispatcher(AlertsConfig(webhook_url=receiver.url), db_url)
        store = AlertStore(db_url)
        sink.write([_record(10, "web-1", "1", 1.0, 3.0)])
        dispatcher.run_once(seconds=30)
        now = utcnow()
        sid = store.add_silence("db-*", None, now - timedelta(minutes=1),
                                now + timedelta(hours=1), "carol", "db upgrade")
        sink.write([_record(11, "db-1", "1", 2.0, 3.0)])
        dispatcher.run_once(seconds=30)
        store.expire_silence(sid)
        receiver.status = 400
        sink.write([_record(12, "web-2", "1", 3.0, 3.0)])
        dispatcher.run_once(seconds=30)
        sink.write([_record(13, "web-3", "1", 4.0, 3.0)])
        sink.engine.dispose()
        store.engine.dispose()
        yield db_url, "anomaly_events", "anomaly_feedback", receiver.url
    finally:
        receiver.stop()


def _alerts_client(alerts_db, tmp_path, **security) -> TestClient:
    url, table, feedback, hook = alerts_db
    return TestClient(_app((url, table, feedback), tmp_path,
                           alerts={"webhook_url": hook}, **security))


def _outbox_states(text: str) -> dict[str, str]:
    """event id -> the webhook delivery's state, from the notifications table."""
    out = {}
    for row in text.split('data-outbox-id="')[1:]:
        eid = re.search(r'href="/events/([^"]+)"', row).group(1)
        out[eid] = re.search(r'data-status="([^"]+)"', row).group(1)
    return out


def test_alerts_page_lists_notifications_with_their_states(alerts_db, tmp_path):
    with _alerts_client(alerts_db, tmp_path) as c:
        r = c.get("/alerts")
        assert r.status_code == 200
        assert '<a href="/alerts" class="active">Alerts</a>' in r.text  # in the header nav
        states = _outbox_states(r.text)
        assert list(states) == ["ev0013", "ev0012", "ev0011", "ev0010"]  # newest first
        assert states == {"ev0013": "pending", "ev0012": "parked", "ev0011": "suppressed",
                          "ev0010": "sent"}
        # The parked row shows the receiver's answer; the suppressed one the silence.
        body = html.unescape(r.text)
        assert "HTTP 400" in body and "silenced by #1 (carol: db upgrade)" in body
        # Filter by state, and paging.
        assert list(_outbox_states(c.get("/alerts?state=parked").text)) == ["ev0012"]
        assert list(_outbox_states(c.get("/alerts?state=pending").text)) == ["ev0013"]
        assert list(_outbox_states(c.get("/alerts?state=sent").text)) == ["ev0010"]
        r = c.get("/alerts?state=bogus&page=999999999999999999999")
        assert r.status_code == 200 and "unknown state" in r.text
        # The ended silence is among the past ones, and cannot be ended again.
        assert 'id="silences-past"' in r.text and "No active silence" in r.text


def test_alerts_page_pages_newest_first(alerts_db, tmp_path, monkeypatch):
    import ae_anomaly.dashboard.app as app_module

    monkeypatch.setattr(app_module, "PAGE_SIZE", 3)
    with _alerts_client(alerts_db, tmp_path) as c:
        first = c.get("/alerts").text
        assert list(_outbox_states(first)) == ["ev0013", "ev0012", "ev0011"]
        assert "state=&amp;page=2" in first and "older" in first
        assert list(_outbox_states(c.get("/alerts?page=2").text)) == ["ev0010"]


def test_silence_form_records_the_login_as_who_and_ending_it(alerts_db, tmp_path):
    url = alerts_db[0]
    with _alerts_client(alerts_db, tmp_path, user="alice", password="pw",
                        ) as c:
        c.headers.update(_basic("alice", "pw"))
        token = re.search(r'<meta name="csrf-token" content="([^"]+)">',
                          c.get("/alerts").text).group(1)
        r = c.post("/alerts/silences", headers=SAME_ORIGIN, follow_redirects=False,
                   data={"entity": "web-*", "duration": "90m", "comment": "deploy",
                         "who": "mallory", "created_by": "mallory", "csrf_token": token})
        assert r.status_code == 303 and r.headers["location"].startswith("/alerts")
        active = AlertStore(url).silences(active_only=True)
        assert len(active) == 1
        s = active[0]
        assert (s.entity, s.model, s.created_by, s.comment) == ("web-*", None, "alice",
                                                                 "deploy")
        assert timedelta(minutes=89) < s.ends_at - s.starts_at <= timedelta(minutes=91)
        page = c.get("/alerts").text
        assert f'id="silence-{s.id}"' in page and 'id="silences-active"' in page
        # A start and an end instead of a duration; a model pattern alone.
        start = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
        end = (utcnow() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
        r = c.post("/alerts/silences", headers=SAME_ORIGIN, follow_redirects=False,
                   data={"model": "m", "start": start, "end": end, "comment": "later",
                         "csrf_token": token})
        assert r.status_code == 303
        later = AlertStore(url).silences(active_only=False)[0]
        assert (later.model, later.entity, later.starts_at.strftime("%Y-%m-%dT%H:%M")) == (
            "m", None, start)
        assert 'id="silences-upcoming"' in c.get("/alerts").text
        # Bad forms are refused with the reasons, and record nothing.
        for data, why in (({"comment": "x"}, "entity pattern, a model pattern"),
                          ({"entity": "a"}, "say why"),
                          ({"entity": "a", "comment": "x", "duration": "-1h"}, "duration"),
                          ({"entity": "a", "comment": "x", "start": start,
                            "end": start}, "end after it starts")):
            r = c.post("/alerts/silences", headers=SAME_ORIGIN,
                       data={**data, "csrf_token": token})
            assert r.status_code == 400 and why in html.unescape(r.text), data
        assert len(AlertStore(url).silences(active_only=False)) == 3  # 1 from the fixture
        # End the first one early: it leaves the active list.
        r = c.post(f"/alerts/silences/{s.id}/end", headers=SAME_ORIGIN,
                   data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303
        assert AlertStore(url).silences(active_only=True) == []
        r = c.post(f"/alerts/silences/{s.id}/end", headers=SAME_ORIGIN,
                   data={"csrf_token": token})
        assert r.status_code == 404  # already over
    # Behind an authenticating proxy, its user header names who set it.
    with _alerts_client(alerts_db, tmp_path, user_header="X-Forwarded-User") as c:
        c.headers.update({"X-Forwarded-User": "bob@corp.example"})
        _post(c, "/alerts/silences", {"entity": "db-9", "comment": "disk swap"})
    assert AlertStore(url).silences(active_only=False)[0].created_by == "bob@corp.example"


def test_silence_posts_need_the_csrf_token_and_the_same_origin(alerts_db, tmp_path):
    url = alerts_db[0]
    with _alerts_client(alerts_db, tmp_path) as c:
        token = _csrf(c)
        form = {"entity": "web-*", "comment": "evil", "csrf_token": token}
        for headers in ({"Origin": "https://evil.example"},
                        {"Origin": "null", "Referer": "https://evil.example/page"}, {}):
            assert c.post("/alerts/silences", headers=headers, data=form).status_code == 403
        r = c.post("/alerts/silences", headers=SAME_ORIGIN,
                   data={"entity": "web-*", "comment": "no token"})
        assert r.status_code == 403
        assert AlertStore(url).silences(active_only=True) == []
        sid = AlertStore(url).add_silence("web-*", None, utcnow() - timedelta(minutes=1),
                                          utcnow() + timedelta(hours=1), "alice", "ok")
        r = c.post(f"/alerts/silences/{sid}/end", headers={"Origin": "https://evil.example"},
                   data={"csrf_token": token})
        assert r.status_code == 403
        assert [s.id for s in AlertStore(url).silences(active_only=True)] == [sid]
