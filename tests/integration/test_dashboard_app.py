"""The dashboard's pages and feedback over HTTP (FastAPI TestClient), on SQLite and PostgreSQL.

Events are written through the real SqlSink; PostgreSQL runs when AE_ANOMALY_TEST_PG_URL
points at a server (scripts/run_tests.sh starts one; under CI=true its absence fails). The
browser test (test_dashboard_browser.py) covers the same pages in Chromium after a real
scoring run.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, Table, select

from ae_anomaly.config import AppConfig
from ae_anomaly.dashboard.app import create_app
from ae_anomaly.dashboard.store import DashboardStore, EventFilter
from ae_anomaly.sinks import EventRecord, SqlSink

T0 = datetime(2026, 1, 6, 0, 0)


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


@pytest.fixture
def client(db, tmp_path):
    url, table, feedback = db
    cfg = AppConfig.model_validate({
        "sink": {"url": url, "table": table},
        "data": {"score": str(tmp_path / "missing.csv")},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/no-mlflow.db"},
    })
    with TestClient(create_app(cfg, feedback_table=feedback)) as c:
        yield c


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
    r = client.post("/events/ev0001/feedback",
                    data={"kind": "false_positive", "note": "deploy", "next": "/?status=all"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?status=all"
    assert "ev0001" not in _row_ids(client.get("/").text)  # no longer open
    page = client.get("/?status=false_positive").text
    assert _row_ids(page) == ["ev0001"] and "false positive" in page
    # The event row is unchanged; the feedback table has the action.
    after = SqlSink(url, table).read()
    assert before.equals(after)
    store = DashboardStore(url, table, feedback)
    fb = Table(feedback, MetaData(), autoload_with=store.engine)
    with store.engine.connect() as conn:
        rows = conn.execute(select(fb.c.event_id, fb.c.kind, fb.c.note)).all()
    assert [tuple(r) for r in rows] == [("ev0001", "false_positive", "deploy")]
    # Reopen: latest feedback wins, history kept.
    client.post("/events/ev0001/feedback", data={"kind": "reopen"})
    assert "ev0001" in _row_ids(client.get("/").text)
    assert len(store.feedback_history("ev0001")) == 2


def test_feedback_counts_and_csv_export(client):
    client.post("/events/ev0001/feedback", data={"kind": "false_positive"})
    client.post("/events/ev0004/feedback", data={"kind": "ack"})
    page = client.get("/feedback").text
    assert 'id="feedback-counts"' in page and "false_positive" in page
    r = client.get("/feedback.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {(x["event_id"], x["status"]) for x in rows} == {("ev0001", "false_positive"),
                                                           ("ev0004", "ack")}
    assert rows[0]["peak_score"] and "cpu_util=" in rows[0]["top_channels"]
    everything = list(csv.DictReader(io.StringIO(client.get("/feedback.csv?include=all").text)))
    assert len(everything) == len(EVENTS)


def test_feedback_counts_per_model_version(db):
    url, table, feedback = db
    store = DashboardStore(url, table, feedback)
    store.add_feedback("ev0001", "false_positive")
    store.add_feedback("ev0002", "ack")
    counts = store.feedback_counts().set_index("model_version")
    assert counts.loc["1", ["events", "open", "ack", "false_positive"]].tolist() == [3, 1, 1, 1]
    assert counts.loc["2", ["events", "open", "ack", "false_positive"]].tolist() == [2, 2, 0, 0]
    hourly = store.hourly_counts(EventFilter(status="all"))
    assert int(hourly.to_numpy().sum()) == len(EVENTS)
    assert int(hourly.loc["server-01"].sum()) == 2


def test_feedback_rejects_unknown_kind_and_event(client):
    assert client.post("/events/ev0001/feedback", data={"kind": "delete"}).status_code == 400
    assert client.post("/events/nope/feedback", data={"kind": "ack"}).status_code == 404
    r = client.post("/events/ev0001/feedback", data={"kind": "ack", "next": "https://evil.example/"},
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


def test_empty_database_renders_a_hint(tmp_path):
    cfg = AppConfig.model_validate({"sink": {"url": f"sqlite:///{tmp_path}/empty.db"}})
    with TestClient(create_app(cfg)) as c:
        for path in ("/", "/alarm-rate", "/feedback"):
            r = c.get(path)
            assert r.status_code == 200 and "does not exist in this database" in r.text
        assert c.get("/healthz").json() == {"ok": True, "events_table": False}
        assert c.get("/feedback.csv").status_code == 200


def test_cli_dashboard_command_wires_db_port_and_scores(monkeypatch, tmp_path):
    import ae_anomaly.dashboard.app as app_module
    from ae_anomaly.cli import main

    seen = {}

    def fake_serve(cfg, host, port, compute_scores):
        seen.update(url=cfg.sink.url, host=host, port=port, scores=compute_scores)

    monkeypatch.setattr(app_module, "serve", fake_serve)
    url = f"sqlite:///{tmp_path}/x.db"
    assert main(["dashboard", "--db", url, "--port", "9123", "--no-scores"]) == 0
    assert seen == {"url": url, "host": "127.0.0.1", "port": 9123, "scores": False}
