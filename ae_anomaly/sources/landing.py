"""``source.kind: folder``: CSV/Parquet files dropped into a folder, one per delivery.

:class:`LandingFolder` ingests each complete file into a staging table (one transaction per
file, re-sent rows replace earlier ones) and moves it to ``processed/``; a file that fails
validation moves to ``quarantine/`` next to a ``<name>.reason.txt``. Nothing is skipped
silently or deleted. Each ingested file gets a sequence number, so data arriving late
(older than what was already scored) is found and its range re-scored.

The staging table lives in the database of ``source.staging_url`` (by default the sink's
database, ``sink.url``), through an engine of its own: the source never borrows the sink's.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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
    select,
)

from ae_anomaly.config import AppConfig, DataConfig, SourceConfig, expand_path
from ae_anomaly.data.timeseries import ENTITY, SUFFIXES, TS, TimeSeriesReader
from ae_anomaly.db import insert_or_ignore, make_engine, transaction_lock, upsert_statement, utcnow
from ae_anomaly.errors import DataError
from ae_anomaly.sources.base import check_feature_schema, parse_ts
from ae_anomaly.sources.sql import SqlMetricsSource

log = logging.getLogger(__name__)

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
        engine: the staging database's engine (see :func:`open_landing`).
        metrics: the metrics a file must hold (the champion's features); None: any.
    """

    def __init__(self, src: SourceConfig, data: DataConfig, engine: Engine,
                 metrics: list[str] | None = None, create: bool = True) -> None:
        assert src.path is not None
        self.src = src
        self.data = data
        self.engine = engine
        self.metrics = list(metrics) if metrics is not None else None
        self.folder = Path(expand_path(src.path))
        self.processed = self.folder / src.processed_dir
        self.quarantine = self.folder / src.quarantine_dir
        md = MetaData()
        self.staging = staging_table(md, src.staging_table)
        self.files = landing_files_table(md, src.staging_table)
        if not create:  # a reader (the dashboard): no folder, no tables, no write lock
            return
        self.folder.mkdir(parents=True, exist_ok=True)
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

def staging_url(cfg: AppConfig) -> str:
    """The database of the landing folder's staging table (default: the sink's)."""
    return cfg.source.staging_url or cfg.sink.url


def open_landing(cfg: AppConfig, metrics: list[str] | None = None,
                 read_only: bool = False) -> LandingFolder:
    """The configured landing folder, on an engine of its own (:func:`staging_url`).

    Args:
        cfg: configuration (``source``, ``data``, ``sink.url`` as the default database).
        metrics: the metrics a file must hold (the champion's features); None: any.
        read_only: only read the staging table (creates nothing, takes no write lock).
    """
    # BEGIN IMMEDIATE on SQLite: concurrent ingests queue for the write lock.
    engine = make_engine(staging_url(cfg), immediate=not read_only)
    return LandingFolder(cfg.source, cfg.data, engine, metrics, create=not read_only)


def open_landing_source(cfg: AppConfig, read_only: bool = False) -> SqlMetricsSource:
    """The landing folder's staging table as the source of ``source.kind: folder``."""
    return open_landing(cfg, read_only=read_only).source(since=parse_ts(cfg.source.since))
