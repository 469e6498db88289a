"""The anomaly database's schema on SQLite and PostgreSQL: created, versioned, migrated,
the dashboards' view, and the example queries of docs/schema.md."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql

from ae_anomaly.sinks import EventRecord, SqlSink
from ae_anomaly.sinks.sql import SCHEMA_VERSION

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def record(eid: str, start: datetime, minutes: int, version: str = "1", scored: int = 0,
           severity: float = 2.0, is_open: bool = False, entity: str = "web-1") -> EventRecord:
    return EventRecord(
        event_id=eid, entity=entity, start_ts=start, end_ts=start + timedelta(minutes=minutes),
        peak_ts=start, peak_score=severity, threshold=1.0, severity=severity, p_value=0.01,
        n_points=minutes + 1, top_channels={"cpu_util": 0.7, "mem_used": 0.3},
        model_name="m", model_version=version, run_id="r",
        scored_at=datetime(2026, 1, 2) + timedelta(minutes=scored), is_open=is_open)


def test_schema_is_created_once_with_version_indexes_and_view(db_url):
    errors: list[BaseException] = []

    def create() -> None:
        try:
            SqlSink(db_url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    engine = create_engine(db_url)
    insp = inspect(engine)
    assert {"anomaly_events", "anomaly_events_watermarks", "schema_version"} <= set(
        insp.get_table_names())
    assert "anomaly_events_latest" in insp.get_view_names()
    cols = {c["name"] for c in insp.get_columns("anomaly_events")}
    assert {"event_id", "entity", "start_ts", "severity", "top_channels", "is_open"} <= cols
    indexes = {ix["name"] for ix in insp.get_indexes("anomaly_events")}
    assert {"ix_anomaly_events_entity_start", "ix_anomaly_events_start",
            "ix_anomaly_events_model", "ix_anomaly_events_model_entity_start"} <= indexes
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, version FROM schema_version")).all()
    assert rows == [("anomaly_events", SCHEMA_VERSION)]
    engine.dispose()


def test_a_version_1_table_is_migrated_in_place(db_url):
    engine = create_engine(db_url)
    md = MetaData()
    v1 = Table(  # the anomaly table as the first release created it
        "anomaly_events", md,
        Column("event_id", String(64), primary_key=True),
        Column("entity", String(256), nullable=False),
        Column("start_ts", DateTime, nullable=False), Column("end_ts", DateTime, nullable=False),
        Column("peak_ts", DateTime, nullable=False),
        Column("peak_score", Float, nullable=False), Column("threshold", Float, nullable=False),
        Column("severity", Float, nullable=False), Column("p_value", Float),
        Column("n_points", Integer, nullable=False),
        Column("top_channels", JSON().with_variant(postgresql.JSONB(), "postgresql"),
               nullable=False),
        Column("model_name", String(256), nullable=False),
        Column("model_version", String(64), nullable=False),
        Column("run_id", String(64), nullable=False),
        Column("scored_at", DateTime, nullable=False),
        Index("ix_anomaly_events_entity_start", "entity", "start_ts"),
    )
    md.create_all(engine)
    old = record("old", datetime(2026, 1, 1), 5).as_row()
    old.pop("is_open")
    with engine.begin() as conn:
        conn.execute(v1.insert().values(old))
    engine.dispose()

    sink = SqlSink(db_url)
    df = sink.read()
    assert list(df.event_id) == ["old"] and not df.is_open.iloc[0]
    assert sink.write([record("new", datetime(2026, 1, 1, 1), 5, is_open=True)]) == 1
    assert len(sink.read_view()) == 2
    with sink.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar() == 2


def test_view_keeps_the_latest_of_overlapping_events(db_url):
    sink = SqlSink(db_url)
    t0 = datetime(2026, 1, 1)
    sink.write([
        record("v1-a", t0, 30, version="1", scored=0),
        record("v2-a", t0 + timedelta(minutes=10), 10, version="2", scored=5),  # overlaps
        record("v1-b", t0 + timedelta(hours=2), 5, version="1", scored=0),  # alone
        record("other", t0, 30, version="1", scored=0, entity="web-2"),  # other entity
    ])
    assert sorted(sink.read_view().event_id) == ["other", "v1-b", "v2-a"]
    assert len(sink.read()) == 4


def _doc_queries(dialect: str) -> list[str]:
    blocks = re.findall(r"<!-- dialect: (\w+) -->\s*```sql\n(.*?)```", DOCS.read_text(),
                        flags=re.S)
    return [sql for d, sql in blocks if d == dialect]


def test_docs_example_queries_run(db_url):
    sink = SqlSink(db_url)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    sink.write([record("hot", now - timedelta(minutes=30), 3, severity=4.5, is_open=True),
                record("cold", now - timedelta(hours=3), 3, severity=1.5)])
    dialect = sink.engine.dialect.name
    queries = _doc_queries(dialect)
    assert len(queries) >= 2
    with sink.engine.connect() as conn:
        per_hour = conn.execute(text(queries[0])).all()
        open_high = conn.execute(text(queries[1])).all()
        for q in queries[2:]:
            conn.execute(text(q)).all()
    assert sum(r.events for r in per_hour) == 2
    assert [r.entity for r in open_high] == ["web-1"] and open_high[0].severity == 4.5
