"""The alert tables: the outbox, per-channel deliveries, silences, run records and leases.

Beside an anomaly table ``t`` (docs/alerting.md, docs/schema.md):

* ``t_outbox``: one row per notification, in order (``id``). Event rows are written by the
  sink in the transaction that writes the event (:func:`enqueue_event_changes`); operational
  rows (a failed run, a quarantined file, ...) by :func:`enqueue_ops`. ``dedup_key`` is
  unique, so a re-run adds nothing twice.
* ``t_deliveries``: per (outbox row, channel): ``sent``, ``parked`` (the receiver refused
  it, with the reason), ``suppressed`` (a rule or silence held it back, with the reason),
  ``expired``, or ``retry`` (a transient failure; ``next_attempt_at``). A row without a
  delivery for a channel is pending there.
* ``t_silences``: maintenance windows (entity / model glob patterns, start, end, who, why).
* ``t_runs``: the last success and failure of each scheduled deployment (for ``/metrics``
  and the failed-run alert).
* ``t_leases``: one dispatcher at a time per database (a lease with an expiry).

The tables have their own schema version row (``t_alerts``) and are created on first use,
by the sink when the outbox is enabled and by :class:`AlertStore`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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
    Text,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    true,
    update,
)

from ae_anomaly.db import (
    insert_or_ignore,
    make_engine,
    read_schema_version,
    record_schema_version,
    transaction_lock,
    upsert_statement,
    utcnow,
    version_table,
)

log = logging.getLogger(__name__)

ALERTS_SCHEMA_VERSION = 1
STATUSES = ("pending", "retry", "sent", "parked", "suppressed", "expired")
_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys


@dataclass(frozen=True)
class AlertTables:
    """The alert tables that belong to one anomaly table."""

    outbox: Table
    deliveries: Table
    silences: Table
    runs: Table
    leases: Table

    @property
    def all(self) -> list[Table]:
        """Every table, in creation order."""
        return [self.outbox, self.deliveries, self.silences, self.runs, self.leases]


def alert_tables(metadata: MetaData, table: str = "anomaly_events") -> AlertTables:
    """The alert tables' definitions for anomaly table ``table``."""
    outbox = Table(
        f"{table}_outbox", metadata,
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("dedup_key", String(256), nullable=False, unique=True),
        Column("kind", String(16), nullable=False),  # event | ops | test
        Column("action", String(16), nullable=False),  # firing | resolved
        Column("change", String(32), nullable=False),  # new | grew | closed | deleted | ...
        Column("event_id", String(64)),
        Column("revision", Integer, nullable=False),
        Column("entity", String(256), nullable=False),
        Column("model_name", String(256), nullable=False),
        Column("severity", Float),
        Column("payload", JSON, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Index(f"ix_{table}_outbox_event", "event_id"),
        Index(f"ix_{table}_outbox_created", "created_at"),
    )
    deliveries = Table(
        f"{table}_deliveries", metadata,
        Column("outbox_id", _ID, primary_key=True),
        Column("channel", String(32), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", DateTime),
        Column("reason", Text),
        Column("severity_label", String(32)),
        Column("sent_at", DateTime),
        Column("updated_at", DateTime, nullable=False),
        Index(f"ix_{table}_deliveries_status", "channel", "status"),
    )
    silences = Table(
        f"{table}_silences", metadata,
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("entity", String(256)),
        Column("model", String(256)),
        Column("starts_at", DateTime, nullable=False),
        Column("ends_at", DateTime, nullable=False),
        Column("created_by", String(128), nullable=False),
        Column("comment", Text, nullable=False),
        Column("created_at", DateTime, nullable=False),
    )
    runs = Table(
        f"{table}_runs", metadata,
        Column("deployment", String(128), primary_key=True),
        Column("last_success_at", DateTime),
        Column("last_failure_at", DateTime),
        Column("last_error", Text),
        Column("last_summary", JSON),
        Column("updated_at", DateTime, nullable=False),
    )
    leases = Table(
        f"{table}_leases", metadata,
        Column("name", String(64), primary_key=True),
        Column("owner", String(128), nullable=False),
        Column("until", DateTime, nullable=False),
    )
    return AlertTables(outbox, deliveries, silences, runs, leases)


def ensure_alert_schema(conn: Connection, tables: AlertTables, table: str) -> None:
    """Create the alert tables in the caller's transaction when they are missing."""
    md = tables.outbox.metadata
    versions = md.tables.get("schema_version") or version_table(md)
    name = f"{table}_alerts"
    transaction_lock(conn, "schema", name)
    versions.create(conn, checkfirst=True)
    if (read_schema_version(conn, versions, name) or 0) >= ALERTS_SCHEMA_VERSION:
        return
    for t in tables.all:
        t.create(conn, checkfirst=True)
    record_schema_version(conn, versions, name, ALERTS_SCHEMA_VERSION)


# ------------------------------------------------------------------------- enqueueing
def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def event_snapshot(row: dict[str, Any]) -> dict[str, Any]:
    """An event row as JSON-safe values (the outbox payload of an event notification)."""
    out = {k: _iso(v) for k, v in row.items()}
    chans = out.get("top_channels") or {}
    out["top_channels"] = json.loads(chans) if isinstance(chans, str) else dict(chans)
    out["is_open"] = bool(out.get("is_open"))
    return out


def notification_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """How an event changed as far as a notification goes, or None.

    ``new`` (first seen), ``closed``, ``reopened``, ``grew`` (end, peak or severity
    changed), ``deleted`` (re-scoring dropped it); a change of only the run that wrote it,
    or float noise, is none.
    """
    if old is None:
        return None if new is None else "new"
    if new is None:
        return "deleted"
    if bool(old["is_open"]) and not bool(new["is_open"]):
        return "closed"
    if not bool(old["is_open"]) and bool(new["is_open"]):
        return "reopened"
    if old["end_ts"] != new["end_ts"] or not math.isclose(
            float(old["severity"]), float(new["severity"]), rel_tol=1e-5):
        return "grew"
    return None


def enqueue_event_changes(conn: Connection, tables: AlertTables,
                          changes: Iterable[tuple[dict[str, Any] | None,
                                                  dict[str, Any] | None]]) -> int:
    """Write outbox rows for changed events, in the caller's (the event write's) transaction.

    Args:
        conn: the connection of the transaction that writes the events.
        tables: the alert tables.
        changes: ``(old row or None, new row or None)`` per event written.

    Returns:
        Outbox rows added.
    """
    todo: list[tuple[str, dict[str, Any]]] = []
    for old, new in changes:
        change = notification_change(old, new)
        if change is not None:
            todo.append((change, new if new is not None else old))  # type: ignore[arg-type]
    if not todo:
        return 0
    ob = tables.outbox
    ids = sorted({row["event_id"] for _, row in todo})
    revisions: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        stmt = (select(ob.c.event_id, func.max(ob.c.revision))
                .where(ob.c.event_id.in_(ids[i:i + 500])).group_by(ob.c.event_id))
        revisions.update({eid: rev for eid, rev in conn.execute(stmt)})
    now = utcnow()
    rows = []
    # Oldest events first, so a receiver sees them in data order.
    for change, row in sorted(todo, key=lambda t: (t[1]["start_ts"], t[1]["event_id"])):
        eid = row["event_id"]
        revisions[eid] = rev = revisions.get(eid, 0) + 1
        rows.append({
            "dedup_key": f"event:{eid}#{rev}", "kind": "event",
            "action": "resolved" if change in ("closed", "deleted") else "firing",
            "change": change, "event_id": eid, "revision": rev, "entity": row["entity"],
            "model_name": row["model_name"], "severity": float(row["severity"]),
            "payload": event_snapshot(row), "created_at": now})
    for i in range(0, len(rows), 500):
        conn.execute(insert_or_ignore(conn, ob, rows[i:i + 500], ["dedup_key"]))
    return len(rows)


def enqueue_ops(conn: Connection, tables: AlertTables, dedup_key: str, alertname: str,
                entity: str, summary: str, details: dict[str, Any] | None = None,
                severity: str = "warning") -> bool:
    """Queue an operational alert (once per ``dedup_key``); True when it is new."""
    row = {"dedup_key": f"ops:{dedup_key}"[:256], "kind": "ops", "action": "firing",
           "change": alertname, "event_id": None, "revision": 1, "entity": entity,
           "model_name": "", "severity": None,
           "payload": {"alertname": alertname, "summary": summary, "severity": severity,
                       "details": details or {}},
           "created_at": utcnow()}
    res = conn.execute(insert_or_ignore(conn, tables.outbox, [row], ["dedup_key"])
                       .returning(tables.outbox.c.id))
    return res.first() is not None


# ------------------------------------------------------------------------- the store
@dataclass
class Silence:
    """A maintenance window: matching events are recorded but not sent."""

    id: int
    entity: str | None
    model: str | None
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str


class AlertStore:
    """Reads and writes the alert tables of one anomaly table.

    Args:
        url: SQLAlchemy URL of the anomaly database (``sink.url``).
        table: the anomaly table (``sink.table``).
        engine: an engine to reuse instead of opening one.
    """

    def __init__(self, url: str, table: str = "anomaly_events",
                 engine: Engine | None = None) -> None:
        self.engine = engine or make_engine(url, immediate=True)
        self.metadata = MetaData()
        self.tables = alert_tables(self.metadata, table)
        self.table = table
        with self.engine.begin() as conn:
            ensure_alert_schema(conn, self.tables, table)

    # ------------------------------------------------------------- ops and test rows
    def enqueue_ops(self, dedup_key: str, alertname: str, entity: str, summary: str,
                    details: dict[str, Any] | None = None, severity: str = "warning") -> bool:
        """Queue an operational alert once per ``dedup_key``; True when it is new."""
        with self.engine.begin() as conn:
            return enqueue_ops(conn, self.tables, dedup_key, alertname, entity, summary,
                               details, severity)

    def enqueue_test(self, note: str = "") -> int:
        """Queue a test alert (sent to every channel, whatever the rules); its outbox id."""
        now = utcnow()
        row = {"dedup_key": f"test:{now.isoformat()}:{id(now)}", "kind": "test",
               "action": "firing", "change": "test", "event_id": None, "revision": 1,
               "entity": "ae-anomaly", "model_name": "", "severity": None,
               "payload": {"alertname": "AeAnomalyTest", "summary": note or
                           "Test alert from ae-anomaly: delivery works.",
                           "severity": "info", "details": {}},
               "created_at": now}
        with self.engine.begin() as conn:
            return int(conn.execute(self.tables.outbox.insert().values(row)
                                    .returning(self.tables.outbox.c.id)).scalar_one())

    # ------------------------------------------------------------- silences
    def add_silence(self, entity: str | None, model: str | None, starts_at: datetime,
                    ends_at: datetime, created_by: str, comment: str) -> int:
        """Record a silence; returns its id.

        Raises:
            ValueError: neither entity nor model given, or the window ends before it starts.
        """
        if not entity and not model:
            raise ValueError("a silence needs an entity or a model (glob patterns allowed)")
        if ends_at <= starts_at:
            raise ValueError(f"a silence must end after it starts ({starts_at} .. {ends_at})")
        row = {"entity": entity or None, "model": model or None, "starts_at": starts_at,
               "ends_at": ends_at, "created_by": created_by[:128] or "unknown",
               "comment": comment, "created_at": utcnow()}
        with self.engine.begin() as conn:
            return int(conn.execute(self.tables.silences.insert().values(row)
                                    .returning(self.tables.silences.c.id)).scalar_one())

    def expire_silence(self, silence_id: int) -> bool:
        """End a silence now; False when there is no such active silence."""
        s, now = self.tables.silences, utcnow()
        with self.engine.begin() as conn:
            n = conn.execute(update(s).where(s.c.id == silence_id, s.c.ends_at > now)
                             .values(ends_at=now)).rowcount
        return bool(n)

    def silences(self, active_only: bool = True, limit: int | None = None) -> list[Silence]:
        """The silences (active now, or all: past, active and future), newest first."""
        s = self.tables.silences
        stmt = select(s).order_by(s.c.id.desc()).limit(limit)
        if active_only:
            now = utcnow()
            stmt = stmt.where(s.c.starts_at <= now, s.c.ends_at > now)
        with self.engine.connect() as conn:
            return [Silence(r.id, r.entity, r.model, r.starts_at, r.ends_at, r.created_by,
                            r.comment) for r in conn.execute(stmt)]

    # ------------------------------------------------------------- runs
    def record_run(self, deployment: str, ok: bool, summary: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        """Record the outcome of a scheduled run (its last success or failure)."""
        now = utcnow()
        row: dict[str, Any] = {"deployment": deployment, "updated_at": now,
                               "last_summary": summary or {}}
        if ok:
            row["last_success_at"] = now
        else:
            row["last_failure_at"] = now
            row["last_error"] = (error or "")[:2000]
        with self.engine.begin() as conn:
            conn.execute(upsert_statement(conn, self.tables.runs, [row], ["deployment"],
                                          [c for c in row if c != "deployment"]))

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded deployment with its last success and failure."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.tables.runs))]

    # ------------------------------------------------------------- listing
    def _status_clause(self, channels: list[str], status: str | None) -> Any:
        """Outbox rows with ``status`` on some channel (None: every row).

        ``pending``: waiting on a configured channel, never tried there or retrying.
        """
        ob, d = self.tables.outbox, self.tables.deliveries
        if status is None:
            return true()
        if status not in STATUSES:
            raise ValueError(f"unknown status '{status}'; valid: {', '.join(STATUSES)}")
        wanted = ("retry",) if status in ("retry", "pending") else (status,)
        clause = ob.c.id.in_(select(d.c.outbox_id).where(d.c.status.in_(wanted)))
        if status == "pending":
            never_tried = [~exists().where(d.c.outbox_id == ob.c.id, d.c.channel == ch)
                           for ch in channels]
            clause = or_(clause, *never_tried)
        return clause

    def count_notifications(self, channels: list[str], status: str | None = None) -> int:
        """How many outbox rows :meth:`notifications` would page through."""
        ob = self.tables.outbox
        stmt = select(func.count()).select_from(ob).where(self._status_clause(channels, status))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def notifications(self, channels: list[str], status: str | None = None,
                      limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Outbox rows with their delivery state per channel, newest first.

        Args:
            channels: the configured channels (a row without a delivery is pending there).
            status: only rows with this status on some channel (see ``STATUSES``;
                ``pending`` includes rows waiting for a retry).
            limit: rows to return.
            offset: rows to skip (paging, newest first).

        Returns:
            One dict per outbox row (its columns) with ``deliveries``: channel -> the
            delivery's columns (``status``, ``reason``, ``attempts``, ...), ``{"status":
            "pending"}`` for a configured channel not tried yet.
        """
        ob, d = self.tables.outbox, self.tables.deliveries
        stmt = (select(ob).where(self._status_clause(channels, status))
                .order_by(ob.c.id.desc()).limit(limit).offset(max(0, offset)))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            ids = [r["id"] for r in rows]
            dels: dict[int, dict[str, dict[str, Any]]] = {}
            for i in range(0, len(ids), 500):
                for r in conn.execute(select(d).where(d.c.outbox_id.in_(ids[i:i + 500]))):
                    dels.setdefault(r.outbox_id, {})[r.channel] = dict(r._mapping)
        for r in rows:
            r["deliveries"] = {ch: dels.get(r["id"], {}).get(ch, {"status": "pending"})
                               for ch in channels}
            for ch, dl in dels.get(r["id"], {}).items():
                r["deliveries"].setdefault(ch, dl)
        return rows

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """Deliveries per (channel, status)."""
        d = self.tables.deliveries
        with self.engine.connect() as conn:
            return {(ch, st): n for ch, st, n in conn.execute(
                select(d.c.channel, d.c.status, func.count()).group_by(d.c.channel,
                                                                      d.c.status))}

    def pending_count(self, channel: str, max_age: timedelta | None = None) -> int:
        """Outbox rows not yet delivered (or waiting for a retry) on ``channel``."""
        ob, d = self.tables.outbox, self.tables.deliveries
        stmt = (select(func.count()).select_from(ob.outerjoin(
            d, and_(d.c.outbox_id == ob.c.id, d.c.channel == channel)))
            .where((d.c.status.is_(None)) | (d.c.status == "retry")))
        if max_age is not None:
            stmt = stmt.where(ob.c.created_at >= utcnow() - max_age)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def prune(self, older_than: timedelta) -> int:
        """Delete finished outbox rows (delivered, parked, suppressed or expired on every
        channel that has them, none pending) older than ``older_than``."""
        ob, d = self.tables.outbox, self.tables.deliveries
        cutoff = utcnow() - older_than
        with self.engine.begin() as conn:
            old = select(ob.c.id).where(ob.c.created_at < cutoff)
            waiting = select(d.c.outbox_id).where(d.c.status == "retry")
            ids = [r[0] for r in conn.execute(old.where(ob.c.id.not_in(waiting)))]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                conn.execute(delete(d).where(d.c.outbox_id.in_(chunk)))
                conn.execute(delete(ob).where(ob.c.id.in_(chunk)))
        return len(ids)
