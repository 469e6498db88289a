"""The anomaly table in any SQLAlchemy database (SQLite embedded, PostgreSQL for real use).

Writes are upserts on ``event_id`` in one transaction: a re-run of the same job inserts
nothing, and an event whose content changed (it grew, a later chunk raised its peak) is
updated in place. ``scored_at`` changes only when the content does, so re-scoring the
same data leaves the table byte-for-byte the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from ae_anomaly.config import expand_path
from ae_anomaly.sinks.base import EventRecord

log = logging.getLogger(__name__)

CONTENT_COLUMNS = ("end_ts", "peak_ts", "peak_score", "threshold", "severity", "p_value",
                   "n_points", "top_channels", "run_id")


def events_table(metadata: MetaData, name: str = "anomaly_events") -> Table:
    """The anomaly table's definition."""
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
        Index(f"ix_{name}_entity_start", "entity", "start_ts"),
        Index(f"ix_{name}_start", "start_ts"),
        Index(f"ix_{name}_model", "model_name", "model_version"),
    )


def make_engine(url: str) -> Engine:
    """An engine for a configured URL (``{home}`` expanded; SQLite folders created)."""
    url = expand_path(url) if url.startswith("sqlite") else url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True)


class SqlSink:
    """Writes event records to a SQL table, creating it when missing.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///{home}/anomalies.db`` or
            ``postgresql+psycopg://user@host:5432/db``.
        table: table name.
    """

    def __init__(self, url: str, table: str = "anomaly_events") -> None:
        self.engine = make_engine(url)
        self.metadata = MetaData()
        self.table = events_table(self.metadata, table)
        self.metadata.create_all(self.engine)

    def _upsert(self, rows: list[dict[str, Any]]) -> Any:
        dialect = self.engine.dialect.name
        mod = {"sqlite": sqlite, "postgresql": postgresql}.get(dialect)
        if mod is None:
            raise NotImplementedError(f"upsert is not implemented for {dialect}")
        stmt = mod.insert(self.table).values(rows)
        ex = stmt.excluded
        changed = or_(*[self.table.c[c].is_distinct_from(ex[c]) for c in CONTENT_COLUMNS])
        update = {c: ex[c] for c in (*CONTENT_COLUMNS, "scored_at")}
        return stmt.on_conflict_do_update(index_elements=["event_id"], set_=update,
                                          where=changed)

    def write(self, records: list[EventRecord]) -> int:
        """Upsert records in one transaction; returns rows inserted or changed."""
        if not records:
            return 0
        rows = [r.as_row() for r in records]
        n = 0
        with self.engine.begin() as conn:
            for i in range(0, len(rows), 500):
                n += conn.execute(self._upsert(rows[i:i + 500])).rowcount
        log.info("wrote %d of %d event rows to %s", n, len(rows), self.table.name)
        return n

    def read(self) -> pd.DataFrame:
        """The whole table as a frame (for summaries and tests), newest start first."""
        with self.engine.connect() as conn:
            df = pd.read_sql(select(self.table).order_by(self.table.c.start_ts.desc()), conn)
        if len(df) and isinstance(df["top_channels"].iloc[0], str):
            df["top_channels"] = df["top_channels"].map(json.loads)
        return df

