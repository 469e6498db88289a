"""The dashboard's database access: reads the anomaly table, owns the feedback table.

Operator feedback (acknowledge, false positive, reopen) is appended to ``anomaly_feedback``
and never touches the event rows, which stay exactly as scored. An event's review status is
its latest feedback: none (or ``reopen``) means ``open`` (not reviewed), ``ack`` means
``acknowledged`` (a true anomaly), ``false_positive`` means ``resolved`` (a false alarm).
The anomaly table's own ``is_open`` is another thing: the event may still grow; the pages
call it "ongoing". Everything here is SQLAlchemy Core over
the columns that :func:`ae_anomaly.sinks.sql.events_table` defines, so it runs on SQLite
and PostgreSQL alike and ignores columns other tools may add.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    func,
    inspect,
    or_,
    select,
)

from ae_anomaly.db import make_engine, utcnow
from ae_anomaly.sinks.sql import events_table

log = logging.getLogger(__name__)

FEEDBACK_TABLE = "anomaly_feedback"
FEEDBACK_KINDS = ("ack", "false_positive", "reopen")
# Review status <- the latest feedback kind (None or "reopen": open).
STATUS_OF_KIND = {"ack": "acknowledged", "false_positive": "resolved"}
STATUSES = ("open", "acknowledged", "resolved", "all")
STATUS_LABELS = {"open": "open", "acknowledged": "acknowledged", "resolved": "resolved"}
STATUS_HINTS = {"open": "not reviewed yet", "acknowledged": "reviewed: a true anomaly",
                "resolved": "reviewed: a false positive"}
# How the pages name each feedback action.
KIND_LABELS = {"ack": "acknowledged (true anomaly)", "false_positive": "resolved (false positive)",
               "reopen": "reopened"}
# The review verdict of a feedback kind, as exported for recalibration.
VERDICTS = {"ack": "true_anomaly", "false_positive": "false_positive"}
# Links and bookmarks from before the vocabulary was settled.
LEGACY_STATUSES = {"ack": "acknowledged", "false_positive": "resolved"}
EVENT_COLUMNS = ("event_id", "entity", "start_ts", "end_ts", "peak_ts", "peak_score",
                 "threshold", "severity", "p_value", "n_points", "top_channels", "model_name",
                 "model_version", "run_id", "scored_at", "is_open")


def feedback_table(metadata: MetaData, name: str = FEEDBACK_TABLE) -> Table:
    """The feedback table: one row per operator action, append-only.

    No foreign key to the events table on purpose: a retention job may prune old events,
    while their feedback stays useful for recalibration.
    """
    return Table(
        name,
        metadata,
        Column("feedback_id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False),
        Column("kind", String(32), nullable=False),
        Column("note", String(2000)),
        Column("created_by", String(128)),
        Column("created_at", DateTime, nullable=False),
        Index(f"ix_{name}_event", "event_id", "feedback_id"),
    )


def model_key(name: str, version: str) -> str:
    """The ``name:version`` string the filters use for one model version."""
    return f"{name}:{version}"


def parse_model_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`model_key` (the version never contains a colon)."""
    name, _, version = key.rpartition(":")
    return name, version


@dataclass
class EventFilter:
    """What the events page shows.

    Attributes:
        entity: one entity, or None for all.
        start: events ending at or after this time (naive UTC), or None.
        end: events starting at or before this time (naive UTC), or None.
        min_severity: events whose severity (peak score / threshold) is at least this.
        model: ``name:version`` of one model version, or None for all.
        status: ``open`` (no feedback, or reopened), ``acknowledged`` (latest feedback
            ``ack``), ``resolved`` (latest feedback ``false_positive``) or ``all``.
    """

    entity: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    min_severity: float | None = None
    model: str | None = None
    status: str = "open"


class DashboardStore:
    """Queries over the anomaly table and the feedback table.

    Args:
        url: SQLAlchemy URL of the database holding the anomaly table.
        table: the anomaly table's name.
        feedback: the feedback table's name (created when missing).
    """

    def __init__(self, url: str, table: str = "anomaly_events",
                 feedback: str = FEEDBACK_TABLE) -> None:
        self.engine: Engine = make_engine(url)
        self.metadata = MetaData()
        self.events = events_table(self.metadata, table)
        self.feedback = feedback_table(self.metadata, feedback)
        # Only the feedback table is ours to create; the anomaly table belongs to the sink.
        self.feedback.create(self.engine, checkfirst=True)

    def has_events_table(self) -> bool:
        """Whether the anomaly table exists yet (no scoring run has written it otherwise)."""
        return inspect(self.engine).has_table(self.events.name)

    # ------------------------------------------------------------------ events
    def _with_status(self) -> tuple[Select[Any], Any]:
        """Events joined with their latest feedback row; returns (select, feedback alias)."""
        ev, fb = self.events, self.feedback
        latest = (select(fb.c.event_id, func.max(fb.c.feedback_id).label("fid"))
                  .group_by(fb.c.event_id).subquery("latest"))
        lf = fb.alias("lf")
        joined = ev.outerjoin(latest, latest.c.event_id == ev.c.event_id).outerjoin(
            lf, lf.c.feedback_id == latest.c.fid)
        stmt = select(*[ev.c[c] for c in EVENT_COLUMNS], lf.c.kind.label("feedback"),
                      lf.c.note.label("feedback_note"),
                      lf.c.created_at.label("feedback_at")).select_from(joined)
        return stmt, lf

    def _filtered(self, flt: EventFilter) -> Select[Any]:
        ev = self.events
        stmt, lf = self._with_status()
        conds = []
        if flt.entity:
            conds.append(ev.c.entity == flt.entity)
        if flt.start is not None:
            conds.append(ev.c.end_ts >= flt.start)
        if flt.end is not None:
            conds.append(ev.c.start_ts <= flt.end)
        if flt.min_severity is not None:
            conds.append(ev.c.severity >= flt.min_severity)
        if flt.model:
            name, version = parse_model_key(flt.model)
            conds.append(and_(ev.c.model_name == name, ev.c.model_version == version))
        if flt.status == "open":
            conds.append(or_(lf.c.kind.is_(None), lf.c.kind == "reopen"))
        elif flt.status in ("acknowledged", "resolved"):
            kind = next(k for k, v in STATUS_OF_KIND.items() if v == flt.status)
            conds.append(lf.c.kind == kind)
        return stmt.where(*conds) if conds else stmt

    def count_events(self, flt: EventFilter) -> int:
        """How many events match a filter."""
        if not self.has_events_table():
            return 0
        count = select(func.count()).select_from(self._filtered(flt).subquery())
        with self.engine.connect() as conn:
            return int(conn.execute(count).scalar_one())

    def list_events(self, flt: EventFilter, limit: int = 200,
                    offset: int = 0) -> list[dict[str, Any]]:
        """Events matching a filter, newest start first, ``limit`` from ``offset``."""
        if not self.has_events_table():
            return []
        stmt = self._filtered(flt)
        ordered = stmt.order_by(self.events.c.start_ts.desc(), self.events.c.event_id)
        with self.engine.connect() as conn:
            rows = conn.execute(ordered.limit(limit).offset(offset)).mappings().all()
        return [_with_status_label(dict(r)) for r in rows]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        """One event with its latest feedback, or None."""
        if not self.has_events_table():
            return None
        stmt, _ = self._with_status()
        with self.engine.connect() as conn:
            row = conn.execute(stmt.where(self.events.c.event_id == event_id)).mappings().first()
        return None if row is None else _with_status_label(dict(row))

    def entities(self) -> list[str]:
        """Every entity in the anomaly table, sorted."""
        if not self.has_events_table():
            return []
        with self.engine.connect() as conn:
            stmt = select(self.events.c.entity).distinct().order_by(self.events.c.entity)
            return [r[0] for r in conn.execute(stmt)]

    def model_versions(self) -> list[tuple[str, str]]:
        """Every (model name, version) in the anomaly table, newest version last."""
        if not self.has_events_table():
            return []
        ev = self.events
        with self.engine.connect() as conn:
            rows = conn.execute(select(ev.c.model_name, ev.c.model_version).distinct()).all()
        return sorted(((r[0], r[1]) for r in rows), key=lambda r: (r[0], _version_key(r[1])))

    def hourly_counts(self, flt: EventFilter) -> pd.DataFrame:
        """Events per entity per hour of their start, over the filtered events.

        Returns:
            A frame indexed by entity with one column per hour (naive UTC), zeros filled.
        """
        if not self.has_events_table():
            return pd.DataFrame()
        inner = self._filtered(flt).subquery()
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(select(inner.c.entity, inner.c.start_ts)).all(),
                              columns=["entity", "start_ts"])
        if df.empty:
            return pd.DataFrame()
        df["hour"] = pd.to_datetime(df["start_ts"]).dt.floor("h")
        counts = df.groupby(["entity", "hour"]).size().unstack(fill_value=0)
        hours = pd.date_range(counts.columns.min(), counts.columns.max(), freq="h")
        return counts.reindex(columns=hours, fill_value=0).sort_index()

    def daily_alarms(self) -> pd.DataFrame:
        """Events per model version per day of their start, split by review status.

        Returns:
            Columns ``model_name, model_version, day, events, acknowledged,
            false_positives, false_alarms, entities``: ``acknowledged`` events were marked
            true anomalies, ``false_positives`` were resolved as false alarms, and
            ``false_alarms`` = events - acknowledged (the count the alarm budget is about:
            a true anomaly is no false alarm). ``entities``: distinct entities with at least
            one event of that version, over the whole table. Sorted by model and day.
        """
        cols = ["model_name", "model_version", "day", "events", "acknowledged",
                "false_positives", "false_alarms", "entities"]
        if not self.has_events_table():
            return pd.DataFrame(columns=cols)
        inner = self._filtered(EventFilter(status="all")).subquery()
        stmt = select(inner.c.model_name, inner.c.model_version, inner.c.entity,
                      inner.c.start_ts, inner.c.feedback)
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(stmt).all(),
                              columns=["model_name", "model_version", "entity", "start_ts",
                                       "feedback"])
        if df.empty:
            return pd.DataFrame(columns=cols)
        df["day"] = pd.to_datetime(df["start_ts"]).dt.floor("D")
        df["fp"] = df["feedback"] == "false_positive"
        df["tp"] = df["feedback"] == "ack"
        keys = ["model_name", "model_version"]
        ents = df.groupby(keys)["entity"].nunique().rename("entities")
        out = (df.groupby([*keys, "day"])
               .agg(events=("entity", "size"), acknowledged=("tp", "sum"),
                    false_positives=("fp", "sum"))
               .reset_index().join(ents, on=keys))
        out["acknowledged"] = out["acknowledged"].astype(int)
        out["false_positives"] = out["false_positives"].astype(int)
        out["false_alarms"] = out["events"] - out["acknowledged"]
        out["_v"] = out["model_version"].map(_version_key)
        return out.sort_values(["model_name", "_v", "day"]).drop(columns="_v")[cols].reset_index(
            drop=True)

    # ------------------------------------------------------------------ feedback
    def add_feedback(self, event_id: str, kind: str, note: str | None = None,
                     created_by: str | None = None) -> int:
        """Append one feedback row for an existing event; returns its id.

        Raises:
            ValueError: an unknown kind.
            KeyError: no such event.
        """
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback '{kind}'; valid: {', '.join(FEEDBACK_KINDS)}")
        if self.get_event(event_id) is None:
            raise KeyError(event_id)
        row = {"event_id": event_id, "kind": kind, "note": (note or None),
               "created_by": created_by or None,
               "created_at": utcnow().replace(microsecond=0)}
        with self.engine.begin() as conn:
            res = conn.execute(self.feedback.insert().values(row))
            fid = int(res.inserted_primary_key[0])
        log.info("feedback %s on event %s", kind, event_id)
        return fid

    def feedback_history(self, event_id: str | None = None, limit: int = 100
                         ) -> list[dict[str, Any]]:
        """Feedback rows, newest first (of one event, or of all events)."""
        fb = self.feedback
        stmt = select(fb).order_by(fb.c.feedback_id.desc()).limit(limit)
        if event_id is not None:
            stmt = stmt.where(fb.c.event_id == event_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def feedback_counts(self) -> pd.DataFrame:
        """Events per model version by status (from each event's latest feedback).

        Returns:
            Columns ``model_name, model_version, events, open, acknowledged, resolved``.
        """
        review = ["open", "acknowledged", "resolved"]
        cols = ["model_name", "model_version", "events", *review]
        if not self.has_events_table():
            return pd.DataFrame(columns=cols)
        inner = self._filtered(EventFilter(status="all")).subquery()
        stmt = select(inner.c.model_name, inner.c.model_version, inner.c.feedback)
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(stmt).all(),
                              columns=["model_name", "model_version", "feedback"])
        if df.empty:
            return pd.DataFrame(columns=cols)
        df["status"] = [_status(k) for k in df["feedback"]]
        out = (pd.crosstab([df["model_name"], df["model_version"]], df["status"])
               .reindex(columns=review, fill_value=0)
               .reset_index())
        out.insert(2, "events", out[review].sum(axis=1))
        out["_v"] = out["model_version"].map(_version_key)
        return out.sort_values(["model_name", "_v"]).drop(columns="_v")[cols].reset_index(
            drop=True)

    def feedback_export(self, include_all: bool = False) -> pd.DataFrame:
        """Events with their latest feedback, for recalibration (oldest first).

        Args:
            include_all: also export events without feedback (status ``open``).

        Returns:
            The event columns plus ``status`` (``open``, ``acknowledged``, ``resolved``),
            ``verdict`` (``true_anomaly``, ``false_positive`` or empty), ``feedback_note``
            and ``feedback_at``.
        """
        if not self.has_events_table():
            return pd.DataFrame(columns=[*EVENT_COLUMNS, "status", "verdict", "feedback_note",
                                         "feedback_at"])
        stmt, lf = self._with_status()
        if not include_all:
            stmt = stmt.where(lf.c.kind.is_not(None))
        stmt = stmt.order_by(self.events.c.start_ts, self.events.c.event_id)
        with self.engine.connect() as conn:
            rows = [_with_status_label(dict(r)) for r in conn.execute(stmt).mappings()]
        df = pd.DataFrame(rows, columns=[*EVENT_COLUMNS, "feedback", "feedback_note",
                                         "feedback_at", "status", "verdict", "status_label"])
        df["top_channels"] = df["top_channels"].map(
            lambda d: ";".join(f"{k}={v}" for k, v in (d or {}).items()))
        df = df.drop(columns=["feedback", "status_label"])
        return df[[*EVENT_COLUMNS, "status", "verdict", "feedback_note", "feedback_at"]]


def _status(kind: Any) -> str:
    """An event's status from its latest feedback kind (None or NaN: no feedback)."""
    if kind is None or pd.isna(kind):
        return "open"
    return STATUS_OF_KIND.get(str(kind), "open")


def _with_status_label(row: dict[str, Any]) -> dict[str, Any]:
    row["status"] = _status(row.get("feedback"))
    row["status_label"] = STATUS_LABELS[row["status"]]
    row["verdict"] = VERDICTS.get(str(row.get("feedback")), "")
    if "is_open" in row:
        row["is_open"] = bool(row["is_open"]) if row["is_open"] is not None else False
    return row


def _version_key(version: str) -> tuple[int, str]:
    """Sort registry versions numerically ("10" after "9"), anything else by text."""
    return (int(version), "") if str(version).isdigit() else (10**9, str(version))
