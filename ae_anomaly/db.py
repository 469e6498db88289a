"""The one database module: engines, upserts, advisory locks and the schema-version table.

Sources, sinks and the dashboard all reach their databases through these helpers, so that
SQLite and PostgreSQL are handled the same way everywhere: ``{home}`` expansion, the SQLite
write lock taken up front, PostgreSQL sessions in UTC, ``ON CONFLICT`` statements for both,
and per-key advisory locks that serialise concurrent processes on PostgreSQL.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ae_anomaly.config import expand_path
from ae_anomaly.errors import ConfigError

VERSION_TABLE = "schema_version"


# ------------------------------------------------------------------------- engines
def make_engine(url: str, immediate: bool = False) -> Engine:
    """An engine for a configured URL (``{home}`` expanded; SQLite folders created).

    Args:
        url: SQLAlchemy URL.
        immediate: SQLite only: start every transaction with ``BEGIN IMMEDIATE`` (take the
            write lock up front), so concurrent writers queue instead of failing on a lock
            upgrade. PostgreSQL sessions always use UTC.
    """
    url = expand_path(url) if url.startswith("sqlite") else url
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database URL '{url}' is not a valid SQLAlchemy URL (e.g. "
                          "sqlite:///path/to/file.db or postgresql+psycopg://user@host/db)"
                          ) from None
    try:
        parsed.get_dialect()
    except ArgumentError as exc:  # NoSuchModuleError: an unknown scheme or driver
        raise ConfigError(f"database URL '{parsed.render_as_string(hide_password=True)}': "
                          f"{str(exc).strip().splitlines()[0]}") from None
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"database URL '{url}': cannot create the folder {folder} "
                              f"({exc.strerror})") from None
        engine = create_engine(url, connect_args={"timeout": 60})
        if immediate:
            @event.listens_for(engine, "connect")
            def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True,
                             connect_args={"options": "-c timezone=UTC", "connect_timeout": 10})
    return create_engine(url, pool_pre_ping=True)


def utcnow() -> datetime:
    """The current time as naive UTC (how every table stores timestamps)."""
    return datetime.now(UTC).replace(tzinfo=None)


# ------------------------------------------------------------------------- statements
def _dialect_module(engine: Engine | Connection, what: str) -> Any:
    name = engine.dialect.name
    mod = {"sqlite": sqlite, "postgresql": postgresql}.get(name)
    if mod is None:
        raise NotImplementedError(f"{what} is not implemented for {name}")
    return mod


def upsert_statement(engine: Engine | Connection, table: Table, rows: list[dict[str, Any]],
                     keys: list[str], update: list[str], where: Any = None) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` for SQLite and PostgreSQL.

    Args:
        engine: the engine (or connection) whose dialect the statement is for.
        table: the table.
        rows: the rows to insert.
        keys: the conflict target (a primary key or unique constraint).
        update: the columns a conflicting row takes from the new one.
        where: optional ``excluded -> condition``: update only rows where it holds.
    """
    stmt = _dialect_module(engine, "upsert").insert(table).values(rows)
    ex = stmt.excluded
    return stmt.on_conflict_do_update(index_elements=keys, set_={c: ex[c] for c in update},
                                      where=where(ex) if where is not None else None)


def insert_or_ignore(engine: Engine | Connection, table: Table, rows: list[dict[str, Any]],
                     keys: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for SQLite and PostgreSQL."""
    mod = _dialect_module(engine, "insert-or-ignore")
    return mod.insert(table).values(rows).on_conflict_do_nothing(index_elements=keys)


# ------------------------------------------------------------------------- locks
def lock_key(*parts: str) -> int:
    """A signed 64-bit key for PostgreSQL advisory locks."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def transaction_lock(conn: Connection, *parts: str) -> None:
    """Serialise transactions on a key across processes, until this transaction ends.

    PostgreSQL: a transaction-scoped advisory lock on :func:`lock_key` of ``parts``.
    SQLite needs none: its writers hold the database's write lock (``BEGIN IMMEDIATE``, or
    from their first write on).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(*parts)})


# ------------------------------------------------------------------------- schema version
def version_table(metadata: MetaData) -> Table:
    """One row per versioned table: the schema version its tables are at."""
    return Table(
        VERSION_TABLE,
        metadata,
        Column("name", String(256), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("applied_at", DateTime, nullable=False),
    )


def read_schema_version(conn: Connection, versions: Table, name: str) -> int | None:
    """The recorded schema version of ``name`` (None: never recorded)."""
    return conn.execute(select(versions.c.version).where(versions.c.name == name)).scalar()


def record_schema_version(conn: Connection, versions: Table, name: str, version: int) -> None:
    """Record that ``name``'s tables are at ``version`` (in the caller's transaction)."""
    conn.execute(delete(versions).where(versions.c.name == name))
    conn.execute(versions.insert().values(name=name, version=version, applied_at=utcnow()))
