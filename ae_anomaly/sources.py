"""Where scheduled, incremental scoring reads its data: a landing folder or a SQL table.

Both are read through :class:`SqlMetricsSource`, per entity and in time order, with the
ingestion validation of :mod:`ae_anomaly.data.timeseries` (numeric metrics, parseable and
strictly increasing timestamps, the ``nan_policy``):

* ``source.kind: sql``: a raw metrics table in any SQLAlchemy database, wide
  (``timestamp, entity, <metric>...``) or long (``timestamp, entity, metric, value``),
  column names from the ``data`` section.
* ``source.kind: folder``: CSV/Parquet files dropped into a folder, one per delivery.
  :class:`LandingFolder` ingests each complete file into a staging table of the sink
  database (one transaction per file, re-sent rows replace earlier ones) and moves it to
  ``processed/``; a file that fails validation moves to ``quarantine/`` next to a
  ``<name>.reason.txt``. Nothing is skipped silently or deleted. Each ingested file gets a
  sequence number, so data arriving late (older than what was already scored) is found
  and its range re-scored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    distinct,
    func,
    select,
)
from sqlalchemy import exc as sa_exc

from ae_anomaly.config import DataConfig, SourceConfig, expand_path
from ae_anomaly.data.timeseries import (
    DEFAULT_ENTITY,
    ENTITY,
    SUFFIXES,
    TS,
    TimeSeriesReader,
)
from ae_anomaly.db import (
    insert_or_ignore,
    make_engine,
    transaction_lock,
    upsert_statement,
    utcnow,
)
from ae_anomaly.errors import AeAnomalyError, DataError

log = logging.getLogger(__name__)


class FileNotReady(AeAnomalyError):
    """A landing file is still being written (transient: a later attempt takes it)."""


class FeatureSchemaError(DataError):
    """The data's metrics are not the ones the model was trained on."""


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying: the database is unreachable or busy, or a file
    is still being written (also when wrapped, e.g. by MLflow). Data and configuration
    errors are permanent."""
    transient = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                 sa_exc.TimeoutError, ConnectionError, TimeoutError)
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 10:
        if isinstance(cur, FileNotReady):
            return True
        if isinstance(cur, AeAnomalyError):
            return False
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, transient):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def check_feature_schema(expected: list[str], found: list[str], where: str,
                         model: str = "the model") -> None:
    """Refuse data whose metric set differs from the model's feature schema.

    Columns are always selected by name, in the model's order, so the order of columns in
    the data does not matter; a missing or an unexpected metric does.

    Raises:
        FeatureSchemaError: naming the missing and the unexpected metrics.
    """
    missing = [m for m in expected if m not in found]
    extra = [m for m in found if m not in expected]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    raise FeatureSchemaError(
        f"feature schema mismatch: {model} was trained on {len(expected)} metrics "
        f"({', '.join(expected)}); the data has {'; '.join(parts)} (set data.metrics to "
        f"choose columns, or train a model on this schema)", path=where)


def parse_ts(value: str | datetime | pd.Timestamp | None) -> datetime | None:
    """A timestamp as naive UTC (how every table stores them), or None."""
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"'{value}' is not a timestamp (use ISO 8601, e.g. "
                        "2026-01-05T00:00:00)") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


# ------------------------------------------------------------------------- validation
class FrameValidator:
    """Validates consecutive raw frames of one entity like the file reader does.

    Args:
        cfg: column names, format and ``nan_policy``.
        metrics: the metric columns to return, in order.
        name: what error messages name as the source (a table or file).
    """

    def __init__(self, cfg: DataConfig, metrics: list[str], name: str) -> None:
        self.reader = TimeSeriesReader(cfg, list(metrics))
        self.reader._state = {}
        self.cfg = cfg
        self.metrics = list(metrics)
        self.path = Path(name)
        self._row = 1

    def __call__(self, raw: pd.DataFrame) -> pd.DataFrame:
        if raw.empty:
            return pd.DataFrame({TS: pd.Series(dtype="datetime64[ns]"),
                                 ENTITY: pd.Series(dtype=object),
                                 **{m: pd.Series(dtype=np.float64) for m in self.metrics}})
        raw = raw.copy()
        raw["_row"] = np.arange(self._row, self._row + len(raw))
        self._row += len(raw)
        chunks: Iterator[pd.DataFrame] = iter([raw])
        if self.cfg.format in ("auto", "long"):
            # The file reader's long -> wide step (one timestamp group never spans frames).
            chunks = self.reader._maybe_long(chunks, self.path)
        parts = [self.reader._validate_wide(c, self.path) for c in chunks]
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------- SQL source
class SqlMetricsSource:
    """Reads one entity's metrics from a SQL table, in time order, in chunks.

    Args:
        engine: the database.
        table: the table (reflected when given as a name).
        cfg: the ``data`` section (column names, format, ``nan_policy``).
        seq_col: a column numbering ingestion batches (enables late-data detection).
        since: ignore rows before this time.
        name: how messages name the source.
    """

    def __init__(self, engine: Engine, table: Table | str, cfg: DataConfig,
                 seq_col: str | None = None, since: datetime | None = None,
                 name: str | None = None) -> None:
        self.engine = engine
        if isinstance(table, str):
            try:
                table = Table(table, MetaData(), autoload_with=engine)
            except sa_exc.NoSuchTableError:
                raise DataError("no such table in the source database", path=table) from None
        self.table = table
        self.cfg = cfg
        self.name = name or table.name
        cols = table.c
        if cfg.timestamp_col not in cols:
            raise DataError("timestamp column is missing", path=self.name,
                            column=cfg.timestamp_col)
        self.ts = cols[cfg.timestamp_col]
        self.ent = cols[cfg.entity_col] if cfg.entity_col in cols else None
        self.seq = cols[seq_col] if seq_col else None
        self.long = cfg.format == "long" or (
            cfg.format in ("auto",) and cfg.metric_col in cols and cfg.value_col in cols)
        if cfg.format == "long" and not (cfg.metric_col in cols and cfg.value_col in cols):
            raise DataError("long-form table lacks its metric or value column", path=self.name)
        self.since = since

    # ------------------------------------------------------------ helpers
    def _where(self, entity: str) -> list[Any]:
        conds = []
        if self.ent is not None:
            conds.append(self.ent == entity)
        if self.since is not None:
            conds.append(self.ts >= self.since)
        return conds

    def _columns(self, metrics: list[str]) -> list[Any]:
        c = self.table.c
        keys = [self.ts] + ([self.ent] if self.ent is not None else [])
        if self.long:
            return keys + [c[self.cfg.metric_col], c[self.cfg.value_col]]
        return keys + [c[m] for m in metrics if m in c]

    def _metric_filter(self, metrics: list[str]) -> list[Any]:
        return [self.table.c[self.cfg.metric_col].in_(metrics)] if self.long else []

    def _order(self) -> list[Any]:
        return [self.ts] + ([self.table.c[self.cfg.metric_col]] if self.long else [])

    # ------------------------------------------------------------ metadata
    def entities(self) -> list[str]:
        """The entities with data (``default`` when the table has no entity column)."""
        if self.ent is None:
            return [DEFAULT_ENTITY]
        stmt = select(distinct(self.ent)).order_by(self.ent)
        if self.since is not None:
            stmt = stmt.where(self.ts >= self.since)
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(stmt) if r[0] is not None]

    def metrics(self) -> list[str]:
        """The metric names the source holds (long form: the distinct metric values)."""
        if self.long:
            # The metrics of the newest few timestamps: the current schema (a newest one
            # still being written does not hide any), without scanning the whole table.
            col = self.table.c[self.cfg.metric_col]
            with self.engine.connect() as conn:
                recent = conn.execute(select(distinct(self.ts)).order_by(self.ts.desc())
                                      .limit(3)).scalars().all()
                found = [] if not recent else [str(r[0]) for r in conn.execute(
                    select(distinct(col)).where(self.ts >= min(recent)).order_by(col))]
        else:
            keys = {self.cfg.timestamp_col, self.cfg.entity_col}
            if self.seq is not None:
                keys.add(self.seq.name)
            found = [c.name for c in self.table.c if c.name not in keys]
        if self.cfg.metrics is not None:
            wanted = list(self.cfg.metrics)
            missing = [m for m in wanted if m not in found]
            if missing:
                raise FeatureSchemaError("configured metric (data.metrics) is not in the "
                                         "source", path=self.name, column=missing[0])
            return wanted
        return found

    def max_seq(self, entity: str) -> int | None:
        """The highest ingestion sequence number of an entity's rows (None: untracked)."""
        if self.seq is None:
            return None
        stmt = select(func.max(self.seq))
        if self.ent is not None:
            stmt = stmt.where(self.ent == entity)
        with self.engine.connect() as conn:
            v = conn.execute(stmt).scalar()
        return None if v is None else int(v)

    def earliest_since_seq(self, entity: str, seq: int) -> datetime | None:
        """The earliest timestamp among rows ingested after sequence number ``seq``."""
        if self.seq is None:
            return None
        stmt = select(func.min(self.ts)).where(self.seq > seq, *self._where(entity))
        with self.engine.connect() as conn:
            v = conn.execute(stmt).scalar()
        return None if v is None else _naive(v)

    def newest(self, entity: str) -> datetime | None:
        """The newest timestamp of an entity."""
        with self.engine.connect() as conn:
            v = conn.execute(select(func.max(self.ts)).where(*self._where(entity))).scalar()
        return None if v is None else _naive(v)

    # ------------------------------------------------------------ reading
    def validator(self, metrics: list[str], entity: str) -> FrameValidator:
        """A validator for consecutive frames of one entity."""
        return FrameValidator(self._read_cfg(), metrics, f"{self.name} (entity {entity})")

    def _read_cfg(self) -> DataConfig:
        return self.cfg.model_copy(update={"format": "long" if self.long else "wide"})

    def _frame(self, conn: Any, stmt: Any) -> pd.DataFrame:
        df = pd.read_sql(stmt, conn)
        if self.ent is None:
            df[self.cfg.entity_col] = DEFAULT_ENTITY
        return df

    def rows_before(self, entity: str, before: datetime | None, n_steps: int,
                    metrics: list[str], validate: FrameValidator,
                    inclusive: bool = True) -> pd.DataFrame:
        """The last ``n_steps`` steps at or before ``before`` (None: the newest steps)."""
        if n_steps <= 0:
            return validate(pd.DataFrame())
        conds = self._where(entity) + self._metric_filter(metrics)
        if before is not None:
            conds.append(self.ts <= before if inclusive else self.ts < before)
        with self.engine.connect() as conn:
            stamps = conn.execute(select(distinct(self.ts)).where(*conds)
                                  .order_by(self.ts.desc()).limit(n_steps)).scalars().all()
            if not stamps:
                return validate(pd.DataFrame())
            lo = min(stamps)
            stmt = (select(*self._columns(metrics)).where(*conds, self.ts >= lo)
                    .order_by(*self._order()))
            return validate(self._frame(conn, stmt))

    def iter_after(self, entity: str, after: datetime | None, chunk_steps: int,
                   metrics: list[str], validate: FrameValidator,
                   until: datetime | None = None) -> Iterator[pd.DataFrame]:
        """Validated frames of the steps after ``after`` (None: from the start), in order.

        Long form: a newest timestamp that does not yet hold every metric is left for a
        later run (it is still being written).
        """
        cursor = after
        base = self._where(entity) + self._metric_filter(metrics)
        if until is not None:
            base.append(self.ts <= until)
        while True:
            conds = list(base)
            if cursor is not None:
                conds.append(self.ts > cursor)
            with self.engine.connect() as conn:
                stamps = conn.execute(select(distinct(self.ts)).where(*conds)
                                      .order_by(self.ts).limit(chunk_steps)).scalars().all()
                if not stamps:
                    return
                hi = stamps[-1]
                raw = self._frame(conn, select(*self._columns(metrics))
                                  .where(*conds, self.ts <= hi).order_by(*self._order()))
            last = len(stamps) < chunk_steps
            if last and self.long and len(raw):
                newest = raw[self.cfg.timestamp_col] == raw[self.cfg.timestamp_col].max()
                if newest.sum() < len(metrics):
                    raw = raw[~newest]
            yield validate(raw)
            if last:
                return
            cursor = hi


def _naive(v: Any) -> datetime:
    ts = pd.Timestamp(v)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


# ------------------------------------------------------------------------- landing folder
STAGING_CFG = DataConfig(format="long")  # the staging table's column names


def staging_table(metadata: MetaData, name: str = "landing_metrics") -> Table:
    """Ingested landing data in long form; ``seq`` is the ingesting file's ``file_id``."""
    return Table(
        name,
        metadata,
        Column("entity", String(256), primary_key=True),
        Column("timestamp", DateTime, primary_key=True),
        Column("metric", String(256), primary_key=True),
        Column("value", Float),
        Column("seq", BigInteger, nullable=False),
        Index(f"ix_{name}_entity_seq", "entity", "seq"),
    )


def landing_files_table(metadata: MetaData, staging: str = "landing_metrics") -> Table:
    """One row per ingested landing file (its ``file_id`` is the rows' ``seq``)."""
    name = f"{staging}_files"
    return Table(
        name,
        metadata,
        Column("file_id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(512), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("rows", Integer, nullable=False),
        Column("entities", Integer, nullable=False),
        Column("min_ts", DateTime),
        Column("max_ts", DateTime),
        Column("ingested_at", DateTime, nullable=False),
        UniqueConstraint("name", "sha256", name=f"uq_{name}_name_sha"),
    )


@dataclass
class IngestReport:
    """What one pass over the landing folder did."""

    ingested: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    rows: int = 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    if not target.exists() and not (folder / f"{name}.reason.txt").exists():
        return target
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return folder / f"{Path(name).stem}.{stamp}{Path(name).suffix}"


class LandingFolder:
    """Ingests the files of a landing folder into the staging table.

    Args:
        src: the ``source`` section (folder, settle time, sub-folders, staging table).
        data: the ``data`` section (how to read and validate files).
        engine: the sink database's engine (staging lives next to the anomaly table).
        metrics: the metrics a file must hold (the champion's features); None: any.
    """

    def __init__(self, src: SourceConfig, data: DataConfig, engine: Engine,
                 metrics: list[str] | None = None) -> None:
        assert src.path is not None
        self.src = src
        self.data = data
        self.engine = engine
        self.metrics = list(metrics) if metrics is not None else None
        self.folder = Path(expand_path(src.path))
        self.processed = self.folder / src.processed_dir
        self.quarantine = self.folder / src.quarantine_dir
        self.folder.mkdir(parents=True, exist_ok=True)
        md = MetaData()
        self.staging = staging_table(md, src.staging_table)
        self.files = landing_files_table(md, src.staging_table)
        with engine.begin() as conn:  # concurrent runs: one creates, the others wait
            transaction_lock(conn, "staging", src.staging_table)
            md.create_all(conn)

    def source(self, since: datetime | None = None) -> SqlMetricsSource:
        """The staging table as a source for scoring."""
        cfg = STAGING_CFG.model_copy(update={"nan_policy": self.data.nan_policy,
                                             "max_nan_fill": self.data.max_nan_fill})
        return SqlMetricsSource(self.engine, self.staging, cfg, seq_col="seq", since=since,
                                name=f"landing folder {self.folder}")

    def _is_temporary(self, p: Path) -> bool:
        name = p.name.lower()
        return (name.startswith((".", "~"))
                or any(name.endswith(s.lower()) for s in self.src.temp_suffixes))

    def pending(self, now: float | None = None) -> tuple[list[Path], list[Path], list[Path]]:
        """(complete files, files still being written, temporary names) in drop order."""
        if not self.folder.is_dir():
            raise DataError("landing folder does not exist", path=str(self.folder))
        now = time.time() if now is None else now
        ready, busy, temp = [], [], []
        files = []
        for p in self.folder.iterdir():
            try:
                if p.is_file():
                    files.append((p.stat().st_mtime, p.name, p))
            except FileNotFoundError:  # moved by a concurrent run
                continue
        for mtime, _, p in sorted(files):
            if self._is_temporary(p):
                temp.append(p)
            elif now - mtime < self.src.settle_seconds:
                busy.append(p)
            else:
                ready.append(p)
        return ready, busy, temp

    def ingest(self, now: float | None = None) -> IngestReport:
        """Ingest every complete file; quarantine invalid ones.

        Returns:
            What was ingested, quarantined, and what waits (still being written).
        """
        report = IngestReport()
        ready, busy, temp = self.pending(now)
        report.not_ready = [p.name for p in busy]
        report.temporary = [p.name for p in temp]
        for p in temp:
            log.info("%s: temporary name, still being written: left for a later run", p)
        for p in ready:
            self._ingest_one(p, report)
        return report

    def _read(self, path: Path) -> pd.DataFrame:
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"not a data file: expected one of {', '.join(SUFFIXES)}",
                            path=str(path))
        reader = TimeSeriesReader(self.data, None)
        chunks = list(reader.iter_file(path))
        if not chunks:
            raise DataError("file holds no data rows", path=str(path))
        frame = pd.concat(chunks, ignore_index=True)
        found = list(reader.metrics or [])
        if self.metrics is not None:
            check_feature_schema(self.metrics, found, str(path), "the champion model")
        return frame

    def _ingest_one(self, path: Path, report: IngestReport) -> None:
        try:
            self._ingest_file(path, report)
        except FileNotFoundError:
            # A concurrent run took the file (it is ingested or quarantined there).
            log.info("%s: taken by a concurrent run", path.name)

    def _ingest_file(self, path: Path, report: IngestReport) -> None:
        digest = _sha256(path)
        try:
            frame = self._read(path)
        except DataError as exc:
            self._quarantine(path, str(exc))
            report.quarantined.append((path.name, str(exc)))
            return
        metrics = [c for c in frame.columns if c not in (TS, ENTITY)]
        long = frame.melt(id_vars=[TS, ENTITY], value_vars=metrics, var_name="metric",
                          value_name="value")
        ents = frame[ENTITY].nunique()
        with self.engine.begin() as conn:
            f = self.files
            ins = insert_or_ignore(self.engine, f, [{
                "name": path.name, "sha256": digest, "size": path.stat().st_size,
                "rows": len(frame), "entities": int(ents),
                "min_ts": frame[TS].min().to_pydatetime(),
                "max_ts": frame[TS].max().to_pydatetime(),
                "ingested_at": utcnow()}], ["name", "sha256"])
            fresh = conn.execute(ins.returning(f.c.file_id)).first() is not None
            file_id = conn.execute(select(f.c.file_id).where(
                f.c.name == path.name, f.c.sha256 == digest)).scalar_one()
            if fresh:
                rows = [{"entity": str(e), "timestamp": pd.Timestamp(t).to_pydatetime(),
                         "metric": str(m), "value": float(v), "seq": file_id}
                        for t, e, m, v in long[[TS, ENTITY, "metric", "value"]]
                        .itertuples(index=False, name=None)]
                s = self.staging
                for i in range(0, len(rows), 1000):
                    conn.execute(upsert_statement(
                        self.engine, s, rows[i:i + 1000], ["entity", "timestamp", "metric"],
                        ["value", "seq"],
                        where=lambda ex: s.c.value.is_distinct_from(ex.value)))
        if fresh:
            report.ingested.append(path.name)
            report.rows += len(frame)
            log.info("ingested %s: %d rows, %d entities (seq %d)", path.name, len(frame), ents,
                     file_id)
        else:
            report.already.append(path.name)
            log.info("%s was ingested before (same content): moving it to %s", path.name,
                     self.processed)
        self._move(path, self.processed)

    def _move(self, path: Path, folder: Path) -> Path | None:
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, path.name)
        try:
            shutil.move(str(path), str(target))
        except FileNotFoundError:  # another run moved it first
            return None
        return target

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = _free_name(self.quarantine, path.name)
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reason_file = target.with_name(target.name + ".reason.txt")
        reason_file.write_text(
            f"{reason}\n\nfile: {path}\nsize: {path.stat().st_size} bytes\n"
            f"quarantined: {when}\nFix the file and drop it into {self.folder} again.\n")
        try:
            shutil.move(str(path), str(target))
        except FileNotFoundError:  # a concurrent run quarantined it first
            reason_file.unlink(missing_ok=True)
            return
        log.warning("quarantined %s: %s", path.name, reason)


# ------------------------------------------------------------------------- factory
def open_sql_source(src: SourceConfig, data: DataConfig) -> SqlMetricsSource:
    """The raw metrics table of ``source.kind: sql``."""
    assert src.url is not None
    return SqlMetricsSource(make_engine(src.url), src.table, data, since=parse_ts(src.since),
                            name=f"table {src.table}")


def pid_tag() -> str:
    """A label for runs started outside Prefect."""
    return f"pid-{os.getpid()}"
