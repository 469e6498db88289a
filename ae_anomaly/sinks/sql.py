"""The anomaly table in any SQLAlchemy database (SQLite embedded, PostgreSQL for real use).

The project creates and migrates its own tables (docs/schema.md): the anomaly table, its
watermarks (``<table>_watermarks``), the adaptive thresholds' state
(``<table>_threshold_state``), the dashboards' view ``<table>_latest`` and a
``schema_version`` row per anomaly table.

``write(records)`` upserts on ``event_id`` in one transaction: a re-run of the same job
inserts nothing, and an event whose content changed (it grew, a later chunk raised its peak)
is updated in place. ``scored_at`` changes only when the content does, so re-scoring the
same data leaves the table byte-for-byte the same.

``write_increment`` is the incremental scorer's write: one entity's re-scored range, its
watermark and (adaptive thresholds) its threshold state, in one transaction, serialised per
(model name, entity) across processes.

With ``outbox=True`` both writes also add a notification row to ``<table>_outbox`` for
every event that is new or changed as far as an alert goes (grew, closed, reopened,
deleted), in the same transaction (docs/alerting.md); the alert dispatcher sends them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    false,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql

from ae_anomaly.alerts.store import alert_tables, enqueue_event_changes, ensure_alert_schema
from ae_anomaly.db import (
    make_engine,
    read_schema_version,
    record_schema_version,
    transaction_lock,
    upsert_statement,
    utcnow,
    version_table,
)
from ae_anomaly.records import EventRecord, IncrementWrite, ThresholdState, Watermark
from ae_anomaly.sinks.base import EventQuery

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
CONTENT_COLUMNS = ("end_ts", "peak_ts", "peak_score", "threshold", "severity", "p_value",
                   "n_points", "top_channels", "run_id", "is_open")
# Scores come from float32 networks: a re-computation over differently batched windows may
# differ in the last digits. Such a difference is not a change of the event.
_FLOAT_COLUMNS = ("peak_score", "threshold", "severity", "p_value")
_EXACT_COLUMNS = ("entity", "start_ts", "end_ts", "peak_ts", "n_points", "run_id", "is_open",
                  "model_name", "model_version")
_REL_TOL = 1e-5
_SHARE_TOL = 2e-3

# ------------------------------------------------------------------------- tables
def events_table(metadata: MetaData, name: str = "anomaly_events") -> Table:
    """The anomaly table's definition (the latest schema version)."""
    return Table(
        name,
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("entity", String(256), nullable=False),
        Column("start_ts", DateTime, nullable=False),
        Column("end_ts", DateTime, nullable=False),
        Column("peak_ts", DateTime, nullable=False),
        Column("peak_score", Float, nullable=False),
        Column("threshold", Float, nullable=False),
        Column("severity", Float, nullable=False),
        Column("p_value", Float),
        Column("n_points", Integer, nullable=False),
        # JSONB on PostgreSQL: comparable (for the upsert's change test) and indexable.
        Column("top_channels", JSON().with_variant(postgresql.JSONB(), "postgresql"),
               nullable=False),
        Column("model_name", String(256), nullable=False),
        Column("model_version", String(64), nullable=False),
        Column("run_id", String(64), nullable=False),
        Column("scored_at", DateTime, nullable=False),
        # Schema version 2: the event may still grow (the data ended within its merge gap).
        Column("is_open", Boolean, nullable=False, server_default=false()),
        Index(f"ix_{name}_entity_start", "entity", "start_ts"),
        Index(f"ix_{name}_start", "start_ts"),
        Index(f"ix_{name}_model", "model_name", "model_version"),
        Index(f"ix_{name}_model_entity_start", "model_name", "entity", "start_ts"),
    )


def watermarks_name(table: str) -> str:
    """Name of the watermark table that belongs to an anomaly table."""
    return f"{table}_watermarks"


def view_name(table: str) -> str:
    """Name of the dashboards' view over an anomaly table."""
    return f"{table}_latest"


def watermarks_table(metadata: MetaData, table: str = "anomaly_events") -> Table:
    """Per (model name, entity): how far incremental scoring has come (docs/schema.md)."""
    return Table(
        watermarks_name(table),
        metadata,
        Column("model_name", String(256), primary_key=True),
        Column("entity", String(256), primary_key=True),
        Column("resume_after_ts", DateTime),
        Column("scored_through_ts", DateTime),
        Column("read_through_ts", DateTime),
        Column("source_seq", BigInteger),
        Column("model_version", String(64), nullable=False),
        Column("job_id", String(128), nullable=False),
        Column("updated_at", DateTime, nullable=False),
    )


def threshold_state_name(table: str) -> str:
    """Name of the adaptive-threshold state table that belongs to an anomaly table."""
    return f"{table}_threshold_state"


def threshold_state_table(metadata: MetaData, table: str = "anomaly_events") -> Table:
    """Per (model name, entity): the adaptive threshold rule's state (docs/thresholds.md)."""
    return Table(
        threshold_state_name(table),
        metadata,
        Column("model_name", String(256), primary_key=True),
        Column("entity", String(256), primary_key=True),
        Column("model_version", String(64), nullable=False),
        Column("through_ts", DateTime),
        Column("state", JSON, nullable=False),
        Column("updated_at", DateTime, nullable=False),
    )


def _view_sql(conn: Connection, table: str) -> str:
    q = conn.dialect.identifier_preparer.quote
    t, v = q(table), q(view_name(table))
    # One row per anomaly: where events of the same model name and entity overlap in time
    # (e.g. a file scored by two model versions), the most recently scored one wins.
    return f"""CREATE VIEW {v} AS
SELECT e.* FROM {t} e
WHERE NOT EXISTS (
    SELECT 1 FROM {t} n
    WHERE n.model_name = e.model_name AND n.entity = e.entity
      AND n.event_id <> e.event_id
      AND n.start_ts <= e.end_ts AND n.end_ts >= e.start_ts
      AND (n.scored_at > e.scored_at
           OR (n.scored_at = e.scored_at AND n.event_id > e.event_id)))"""


def _migrate_to_2(conn: Connection, table: str, md: MetaData) -> None:
    q = conn.dialect.identifier_preparer.quote
    conn.execute(text(f"ALTER TABLE {q(table)} ADD COLUMN is_open BOOLEAN NOT NULL "
                      "DEFAULT false"))
    for ix in md.tables[table].indexes:
        if ix.name == f"ix_{table}_model_entity_start":
            ix.create(conn, checkfirst=True)
    md.tables[watermarks_name(table)].create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection, str, MetaData], None]] = {2: _migrate_to_2}


def ensure_schema(engine: Engine, table: str = "anomaly_events") -> None:
    """Create or migrate the anomaly table, its watermarks, the view and the version row.

    Safe to call from several processes at once (serialised by an advisory lock on
    PostgreSQL, by the write lock on SQLite).
    """
    md = MetaData()
    events_table(md, table)
    watermarks_table(md, table)
    state = threshold_state_table(md, table)
    versions = version_table(md)
    with engine.begin() as conn:
        transaction_lock(conn, "schema", table)
        versions.create(conn, checkfirst=True)
        # A table of its own, read only by scheduled scoring: created when missing at any
        # schema version (no migration of existing tables involved).
        state.create(conn, checkfirst=True)
        current = read_schema_version(conn, versions, table)
        if current is None:
            current = 1 if inspect(conn).has_table(table) else 0
        if current >= SCHEMA_VERSION:
            return
        if current == 0:
            md.create_all(conn, tables=[md.tables[table], md.tables[watermarks_name(table)]])
        else:
            for v in range(current + 1, SCHEMA_VERSION + 1):
                log.info("migrating %s to schema version %d", table, v)
                MIGRATIONS[v](conn, table, md)
        conn.execute(text(f"DROP VIEW IF EXISTS "
                          f"{conn.dialect.identifier_preparer.quote(view_name(table))}"))
        conn.execute(text(_view_sql(conn, table)))
        record_schema_version(conn, versions, table, SCHEMA_VERSION)


def _materially_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    for c in _EXACT_COLUMNS:
        if old[c] != new[c]:
            return True
    for c in _FLOAT_COLUMNS:
        a, b = old[c], new[c]
        if (a is None) != (b is None):
            return True
        if a is not None and not math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12):
            return True
    a, b = old["top_channels"] or {}, new["top_channels"] or {}
    if isinstance(a, str):
        a = json.loads(a)
    if set(a) != set(b):
        return True
    return any(abs(float(a[k]) - float(b[k])) > _SHARE_TOL for k in b)


# ------------------------------------------------------------------------- the sink
class SqlSink:
    """Writes event records to a SQL table, creating (or migrating) it when needed.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///{home}/anomalies.db`` or
            ``postgresql+psycopg://user@host:5432/db``.
        table: table name.
        outbox: also write alert notifications to the outbox, in each write's transaction.
    """

    def __init__(self, url: str, table: str = "anomaly_events", outbox: bool = False) -> None:
        self.engine = make_engine(url, immediate=True)
        self.metadata = MetaData()
        self.table = events_table(self.metadata, table)
        self.watermarks = watermarks_table(self.metadata, table)
        self.threshold_states = threshold_state_table(self.metadata, table)
        ensure_schema(self.engine, table)
        self.alert_tables = alert_tables(self.metadata, table) if outbox else None
        if self.alert_tables is not None:
            with self.engine.begin() as conn:
                ensure_alert_schema(conn, self.alert_tables, table)

    def _existing(self, conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
        t, out = self.table, {}
        for i in range(0, len(ids), 500):
            out.update({r.event_id: dict(r._mapping) for r in conn.execute(
                select(t).where(t.c.event_id.in_(ids[i:i + 500])))})
        return out

    def _upsert(self, rows: list[dict[str, Any]]) -> Any:
        t = self.table
        return upsert_statement(
            self.engine, t, rows, ["event_id"], [*CONTENT_COLUMNS, "scored_at"],
            where=lambda ex: or_(*[t.c[c].is_distinct_from(ex[c]) for c in CONTENT_COLUMNS]))

    def _execute_upserts(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        # RETURNING counts the rows inserted or updated on every backend (psycopg reports
        # no rowcount for a multi-row upsert).
        n = 0
        for i in range(0, len(rows), 500):
            stmt = self._upsert(rows[i:i + 500]).returning(self.table.c.event_id)
            n += len(conn.execute(stmt).all())
        return n

    def write(self, records: list[EventRecord]) -> int:
        """Upsert records in one transaction; returns rows inserted or changed."""
        if not records:
            return 0
        rows = [r.as_row() for r in records]
        with self.engine.begin() as conn:
            if self.alert_tables is not None:
                old = self._existing(conn, [r["event_id"] for r in rows])
            n = self._execute_upserts(conn, rows)
            if self.alert_tables is not None:
                queued = enqueue_event_changes(
                    conn, self.alert_tables, [(old.get(r["event_id"]), r) for r in rows])
                if queued:
                    log.info("queued %d alert notifications", queued)
        log.info("wrote %d of %d event rows to %s", n, len(rows), self.table.name)
        return n

    # --------------------------------------------------------------- watermarks
    def _watermark(self, conn: Connection, model_name: str, entity: str) -> Watermark | None:
        w = self.watermarks
        row = conn.execute(select(w).where(w.c.model_name == model_name,
                                           w.c.entity == entity)).first()
        return None if row is None else _to_watermark(row._mapping)

    def read_watermark(self, model_name: str, entity: str) -> Watermark | None:
        """The stored watermark of (model name, entity), or None."""
        with self.engine.connect() as conn:
            return self._watermark(conn, model_name, entity)

    def read_watermarks(self, model_name: str | None = None) -> dict[tuple[str, str], Watermark]:
        """All stored watermarks (of one model name), keyed by (model name, entity)."""
        w = self.watermarks
        stmt = select(w) if model_name is None else select(w).where(w.c.model_name == model_name)
        with self.engine.connect() as conn:
            return {(r.model_name, r.entity): _to_watermark(r._mapping)
                    for r in conn.execute(stmt)}

    def write_increment(
        self,
        model_name: str,
        entity: str,
        records: list[EventRecord],
        replace_after: datetime | None,
        replace_through: datetime | None,
        watermark: Watermark | None,
        expected: Watermark | None = None,
        check_expected: bool = False,
        threshold_state: ThresholdState | None = None,
    ) -> IncrementWrite:
        """Write one entity's re-scored range and its watermark in one transaction.

        See :meth:`ae_anomaly.sinks.base.IncrementalSink.write_increment`. Rows whose
        content did not change beyond float noise are left untouched (``scored_at`` kept).
        ``threshold_state`` (adaptive thresholds) is written in the same transaction.
        """
        t, out = self.table, IncrementWrite()
        for r in records:
            if r.model_name != model_name or r.entity != entity:
                raise ValueError(f"record {r.event_id} is not of {model_name}/{entity}")
        with self.engine.begin() as conn:
            transaction_lock(conn, self.table.name, model_name, entity)
            current = self._watermark(conn, model_name, entity)
            if check_expected and _position(current) != _position(expected):
                ahead = (current is not None and watermark is not None
                         and current.scored_through is not None
                         and watermark.scored_through is not None
                         and current.scored_through >= watermark.scored_through)
                if ahead:
                    out.skipped = True
                    out.reason = (f"another run moved the watermark to "
                                  f"{current.scored_through} meanwhile")
                    return out
            cond = [t.c.model_name == model_name, t.c.entity == entity]
            if replace_after is not None:
                cond.append(t.c.start_ts > replace_after)
            if replace_through is not None:
                cond.append(t.c.start_ts <= replace_through)
            existing = {r.event_id: dict(r._mapping) for r in conn.execute(select(t).where(*cond))}
            new = {r.event_id: r.as_row() for r in records}
            stale = [eid for eid in existing if eid not in new]
            for i in range(0, len(stale), 500):
                conn.execute(delete(t).where(t.c.event_id.in_(stale[i:i + 500])))
            out.deleted = len(stale)
            rows = []
            for eid, row in new.items():
                if eid not in existing:
                    out.inserted += 1
                    rows.append(row)
                elif _materially_changed(existing[eid], row):
                    out.updated += 1
                    rows.append(row)
            self._execute_upserts(conn, rows)
            if self.alert_tables is not None:
                enqueue_event_changes(conn, self.alert_tables,
                                      [*[(existing.get(r["event_id"]), r) for r in rows],
                                       *[(existing[eid], None) for eid in stale]])
            if watermark is not None:
                self._put_watermark(conn, model_name, entity, watermark)
            if threshold_state is not None:
                self._put_threshold_state(conn, model_name, entity, threshold_state)
        return out

    def _put_threshold_state(self, conn: Connection, model_name: str, entity: str,
                             st: ThresholdState) -> None:
        row = {"model_name": model_name, "entity": entity, "model_version": st.model_version,
               "through_ts": st.through, "state": st.state,
               "updated_at": st.updated_at or utcnow()}
        cols = [c for c in row if c not in ("model_name", "entity")]
        conn.execute(upsert_statement(self.engine, self.threshold_states, [row],
                                      ["model_name", "entity"], cols))

    def read_threshold_state(self, model_name: str, entity: str) -> ThresholdState | None:
        """The stored adaptive-threshold state of (model name, entity), or None."""
        s = self.threshold_states
        with self.engine.connect() as conn:
            row = conn.execute(select(s).where(s.c.model_name == model_name,
                                               s.c.entity == entity)).first()
        if row is None:
            return None
        m = row._mapping
        state = json.loads(m["state"]) if isinstance(m["state"], str) else m["state"]
        return ThresholdState(state=state, through=m["through_ts"],
                              model_version=m["model_version"], updated_at=m["updated_at"])

    def _put_watermark(self, conn: Connection, model_name: str, entity: str,
                       wm: Watermark) -> None:
        row = {"model_name": model_name, "entity": entity,
               "resume_after_ts": wm.resume_after, "scored_through_ts": wm.scored_through,
               "read_through_ts": wm.read_through, "source_seq": wm.source_seq,
               "model_version": wm.model_version,
               "job_id": wm.job_id[:128], "updated_at": wm.updated_at or utcnow()}
        cols = [c for c in row if c not in ("model_name", "entity")]
        conn.execute(upsert_statement(self.engine, self.watermarks, [row],
                                      ["model_name", "entity"], cols))

    # --------------------------------------------------------------- reading
    def read(self, query: EventQuery | None = None) -> pd.DataFrame:
        """The table (or the rows ``query`` selects) as a frame, newest start first."""
        c = self.table.c
        stmt = select(self.table).order_by(c.start_ts.desc(), c.event_id)
        q = query or EventQuery()
        if q.entity is not None:
            stmt = stmt.where(c.entity == q.entity)
        if q.model is not None:
            stmt = stmt.where(c.model_name == q.model)
        if q.since is not None:
            stmt = stmt.where(c.end_ts >= q.since)
        if q.min_severity is not None:
            stmt = stmt.where(c.severity >= q.min_severity)
        if q.open_only:
            stmt = stmt.where(c.is_open.is_(True))
        if q.limit is not None:
            stmt = stmt.limit(q.limit)
        with self.engine.connect() as conn:
            df = pd.read_sql(stmt, conn)
        if len(df) and isinstance(df["top_channels"].iloc[0], str):
            df["top_channels"] = df["top_channels"].map(json.loads)
        if len(df):
            df["is_open"] = df["is_open"].astype(bool)
        return df

    def read_view(self) -> pd.DataFrame:
        """The dashboards' view ``<table>_latest`` as a frame."""
        q = self.engine.dialect.identifier_preparer.quote(view_name(self.table.name))
        with self.engine.connect() as conn:
            return pd.read_sql(text(f"SELECT * FROM {q} ORDER BY start_ts DESC, event_id"),
                               conn)


def _position(wm: Watermark | None) -> tuple[Any, ...] | None:
    return None if wm is None else wm.position()


def _to_watermark(m: Any) -> Watermark:
    return Watermark(resume_after=m["resume_after_ts"], scored_through=m["scored_through_ts"],
                     source_seq=m["source_seq"], read_through=m["read_through_ts"],
                     model_version=m["model_version"],
                     job_id=m["job_id"], updated_at=m["updated_at"])
