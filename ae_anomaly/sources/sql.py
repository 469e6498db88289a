"""``source.kind: sql``: a raw metrics table in any SQLAlchemy database.

Wide (``timestamp, entity, <metric>...``) or long (``timestamp, entity, metric, value``),
column names from the ``data`` section. :class:`SqlMetricsSource` also reads the landing
folder's staging table (:mod:`ae_anomaly.sources.landing`), whose ``seq`` column numbers
the ingested files.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, MetaData, Table, distinct, func, select
from sqlalchemy import exc as sa_exc

from ae_anomaly.config import AppConfig, DataConfig
from ae_anomaly.data.timeseries import DEFAULT_ENTITY
from ae_anomaly.db import make_engine
from ae_anomaly.errors import DataError
from ae_anomaly.sources.base import FeatureSchemaError, FrameValidator, Validate, parse_ts


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
        return parse_ts(v)

    def newest(self, entity: str) -> datetime | None:
        """The newest timestamp of an entity."""
        with self.engine.connect() as conn:
            v = conn.execute(select(func.max(self.ts)).where(*self._where(entity))).scalar()
        return parse_ts(v)

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
                    metrics: list[str], validate: Validate,
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
                   metrics: list[str], validate: Validate,
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


def open_sql_source(cfg: AppConfig, read_only: bool = False) -> SqlMetricsSource:
    """The raw metrics table of ``source.kind: sql`` (``source.url``, ``source.table``);
    scoring only reads it, so ``read_only`` changes nothing."""
    src = cfg.source
    assert src.url is not None
    return SqlMetricsSource(make_engine(src.url), src.table, cfg.data,
                            since=parse_ts(src.since), name=f"table {src.table}")
