"""The transactional outbox and the dispatcher on SQLite and PostgreSQL: rows written with
the events, a receiver that is down then up, 4xx parking, rules and silences."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from ae_anomaly.alerts.dispatcher import Dispatcher
from ae_anomaly.alerts.store import AlertStore
from ae_anomaly.config import AlertsConfig
from ae_anomaly.db import utcnow
from ae_anomaly.records import Watermark
from ae_anomaly.sinks import SqlSink
from tests.support.alerting import Receiver, record

T0 = datetime(2026, 3, 1, 12)


def outbox(sink: SqlSink) -> list[tuple[str, str, str]]:
    ob = sink.alert_tables.outbox
    with sink.engine.connect() as conn:
        return [(r.event_id, r.change, r.action)
                for r in conn.execute(select(ob).order_by(ob.c.id))]


def test_outbox_rows_follow_event_changes_once(db_url):
    sink = SqlSink(db_url, outbox=True)
    sink.write([record("a", T0, is_open=True), record("b", T0 + timedelta(hours=1))])
    sink.write([record("a", T0, is_open=True), record("b", T0 + timedelta(hours=1))])  # re-run
    assert outbox(sink) == [("a", "new", "firing"), ("b", "new", "firing")]
    sink.write([record("a", T0, minutes=9, is_open=True)])  # grew
    sink.write([record("a", T0, minutes=9)])  # closed
    assert outbox(sink)[2:] == [("a", "grew", "firing"), ("a", "closed", "resolved")]
    # The incremental write: a dropped event is resolved, in the same transaction.
    wm = Watermark(resume_after=T0, scored_through=T0 + timedelta(hours=2))
    out = sink.write_increment("m", "web-1", [record("c", T0 + timedelta(hours=3))],
                               None, None, wm)
    assert out.deleted == 2
    assert outbox(sink)[4:] == [("a", "deleted", "resolved"), ("b", "deleted", "resolved"),
                                ("c", "new", "firing")]
    # Without alert channels the sink writes no outbox.
    assert SqlSink(db_url).alert_tables is None


def test_receiver_down_then_up_gets_every_event_once_in_order(db_url):
    receiver = Receiver()  # not started yet: connection refused
    cfg = AlertsConfig(webhook_url=receiver.url, min_firing_seconds=0, retry_base_seconds=0.2)
    sink = SqlSink(db_url, outbox=True)
    ids = [f"e{i}" for i in range(6)]
    for i, eid in enumerate(ids):
        sink.write([record(eid, T0 + timedelta(hours=i), entity=f"web-{i % 2}")])
    dispatcher = Dispatcher(cfg, db_url)
    report = dispatcher.run_once(seconds=30)
    assert report.sent == 0 and report.channels["webhook"].retrying
    assert report.pending == 6
    receiver.start()
    try:
        report = dispatcher.run_once(seconds=60, respect_backoff=False)
        assert report.sent == 6 and report.pending == 0, report.summary()
        got = [b["alerts"][0]["labels"]["event_id"] for b in receiver.bodies()]
        assert got == ids
        body = receiver.bodies()[0]
        assert body["version"] == "4" and body["status"] == "firing"
        assert body["alerts"][0]["labels"]["alertname"] == "AeAnomalyEvent"
        assert "/events/e0" in body["alerts"][0]["annotations"]["dashboard"]
        # Nothing more to send: a second pass sends nothing again.
        assert dispatcher.run_once(seconds=30).sent == 0
        assert len(receiver.bodies()) == 6
    finally:
        receiver.stop()


def test_refused_rows_are_parked_with_the_reason(db_url):
    receiver = Receiver().start()
    receiver.status = 400
    try:
        cfg = AlertsConfig(webhook_url=receiver.url)
        sink = SqlSink(db_url, outbox=True)
        sink.write([record("x", T0), record("y", T0 + timedelta(hours=1))])
        report = Dispatcher(cfg, db_url).run_once(seconds=30)
        assert report.channels["webhook"].parked == 2 and report.pending == 0
        parked = AlertStore(db_url).notifications(["webhook"], status="parked")
        assert len(parked) == 2
        assert "HTTP 400" in parked[0]["deliveries"]["webhook"]["reason"]
    finally:
        receiver.stop()


def test_rules_severity_escalation_budget_and_silences(db_url):
    receiver = Receiver().start()
    try:
        cfg = AlertsConfig(webhook_url=receiver.url, min_severity=2.0,
                           max_per_entity_per_day=2, exclude_entities=["lab-*"],
                           severity_levels={"warning": 0, "critical": 5})
        sink = SqlSink(db_url, outbox=True)
        store = AlertStore(db_url)
        d = Dispatcher(cfg, db_url)
        sink.write([record("low", T0, severity=1.5),  # below min_severity
                    record("lab", T0, entity="lab-1"),  # filtered out
                    record("esc", T0 + timedelta(hours=1), severity=3, is_open=True)])
        d.run_once()
        assert [b["alerts"][0]["labels"]["event_id"] for b in receiver.bodies()] == ["esc"]
        # Grows without a new level: not re-sent; then escalates to critical: re-sent.
        sink.write([record("esc", T0 + timedelta(hours=1), minutes=8, severity=4,
                           is_open=True)])
        d.run_once()
        assert len(receiver.bodies()) == 1
        sink.write([record("esc", T0 + timedelta(hours=1), minutes=9, severity=7,
                           is_open=True)])
        d.run_once()
        esc = receiver.bodies()[1]["alerts"][0]
        assert esc["labels"]["severity"] == "critical"
        assert esc["annotations"]["change"] == "escalated"
        # Budget: two new alerts per entity per day; the third is recorded, not sent.
        sink.write([record(f"n{i}", T0 + timedelta(hours=2 + i)) for i in range(2)])
        d.run_once()
        assert len(receiver.bodies()) == 3
        rows = store.notifications(["webhook"], status="suppressed")
        reasons = {r["event_id"]: r["deliveries"]["webhook"]["reason"] for r in rows}
        assert "alarm budget" in reasons["n1"]
        assert "below alerts.min_severity" in reasons["low"]
        assert "exclude_entities" in reasons["lab"]
        # A silence on web-2 suppresses its next send, and still records the event.
        now = utcnow()
        sid = store.add_silence("web-2", None, now - timedelta(minutes=1),
                                now + timedelta(hours=1), "alice", "maintenance")
        sink.write([record("s", T0 + timedelta(hours=5), entity="web-2")])
        d.run_once()
        assert len(receiver.bodies()) == 3
        assert "silenced by" in store.notifications(["webhook"], limit=1)[0][
            "deliveries"]["webhook"]["reason"]
        assert [r.event_id for r in sink.read().itertuples() if r.entity == "web-2"] == ["s"]
        assert store.expire_silence(sid)
        sink.write([record("s2", T0 + timedelta(hours=6), entity="web-2")])
        d.run_once()
        assert receiver.bodies()[-1]["alerts"][0]["labels"]["event_id"] == "s2"
        # Closing the escalated event resolves it under the label it was last sent with.
        sink.write([record("esc", T0 + timedelta(hours=1), minutes=9, severity=7)])
        d.run_once()
        last = receiver.bodies()[-1]
        assert last["status"] == "resolved"
        assert last["alerts"][0]["labels"]["severity"] == "critical"
    finally:
        receiver.stop()
