"""What every incremental source provides, and what all of them share.

A source is read per entity and in time order, from a watermark: :class:`Source` is the
protocol the incremental scorer (:mod:`ae_anomaly.scoring.incremental`) uses, so any object
with these methods can be scored (a SQL table, a landing folder's staging table, a test's
in-memory frames). Frames it yields are validated like the file reader validates them
(:class:`FrameValidator`: numeric metrics, parseable and strictly increasing timestamps, the
``nan_policy``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from sqlalchemy import exc as sa_exc

from ae_anomaly.config import DataConfig
from ae_anomaly.data.timeseries import ENTITY, TS, TimeSeriesReader
from ae_anomaly.errors import AeAnomalyError, DataError, shorten

Validate = Callable[[pd.DataFrame], pd.DataFrame]
"""Validates one raw frame of an entity (consecutive frames in order) into ``TS, ENTITY,
<metrics>`` with the metrics as float columns."""


class Source(Protocol):
    """Where incremental scoring reads an entity's metrics from a watermark.

    Timestamps are naive UTC. A source that numbers its ingestion batches (``max_seq``
    not None) lets the scorer find data that arrived late, and re-score its range.
    """

    name: str
    """How messages name the source (a table, a landing folder)."""

    def entities(self) -> list[str]:
        """The entities with data, in order."""
        ...

    def metrics(self) -> list[str]:
        """The metric names the source holds (``data.metrics`` when configured).

        Raises:
            FeatureSchemaError: a configured metric is not in the source.
        """
        ...

    def max_seq(self, entity: str) -> int | None:
        """The highest ingestion sequence number of an entity's rows (None: untracked)."""
        ...

    def earliest_since_seq(self, entity: str, seq: int) -> datetime | None:
        """The earliest timestamp among rows ingested after sequence number ``seq``."""
        ...

    def validator(self, metrics: list[str], entity: str) -> Validate:
        """A validator for consecutive frames of one entity."""
        ...

    def rows_before(self, entity: str, before: datetime | None, n_steps: int,
                    metrics: list[str], validate: Validate,
                    inclusive: bool = True) -> pd.DataFrame:
        """The last ``n_steps`` steps at (``inclusive``) or before ``before`` (None: the
        newest steps), validated."""
        ...

    def iter_after(self, entity: str, after: datetime | None, chunk_steps: int,
                   metrics: list[str], validate: Validate,
                   until: datetime | None = None) -> Iterator[pd.DataFrame]:
        """Validated frames of about ``chunk_steps`` steps each after ``after`` (None: from
        the start) up to ``until`` (None: the newest complete step), in time order."""
        ...


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
        if isinstance(cur, AeAnomalyError | BrokenPipeError):
            # A broken pipe is the reader of our output going away (``| head``): retrying
            # cannot help. A database driver reports its own socket errors as its own types.
            return False
        if _is_sqlite_path_error(cur):
            return False
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, transient):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _is_sqlite_path_error(exc: BaseException) -> bool:
    """SQLite's "unable to open database file": a missing or unwritable folder, not an
    outage (the file is local; waiting does not create the folder)."""
    return (isinstance(exc, sa_exc.OperationalError)
            and "unable to open database file" in str(exc.orig if exc.orig else exc))


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
        parts.append(f"missing {shorten(missing)}")
    if extra:
        parts.append(f"unexpected {shorten(extra)}")
    raise FeatureSchemaError(
        f"feature schema mismatch: {model} was trained on {len(expected)} metrics "
        f"({shorten(expected)}); the data has {'; '.join(parts)} (set data.metrics to "
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

def pid_tag() -> str:
    """A label for runs started outside Prefect."""
    return f"pid-{os.getpid()}"
