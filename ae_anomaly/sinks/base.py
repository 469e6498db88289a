"""The sink interfaces.

Every sink has one method, ``write(records) -> int``, idempotent on ``event_id``. A sink that
also keeps scoring watermarks (the SQL sink) implements :class:`IncrementalSink`: it writes
one entity's events *and* its watermark in one transaction, so a watermark never runs ahead
of the events written for it, and reads its events back. ``ae_anomaly.sinks.open_sink``
picks the configured one by ``sink.kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pandas as pd

from ae_anomaly.records import EventRecord, IncrementWrite, ThresholdState, Watermark


@dataclass(frozen=True)
class EventQuery:
    """Which rows of the anomaly table to read (every field optional).

    Attributes:
        entity: only this entity.
        model: only this model name.
        since: only events that end at or after this time (UTC, naive).
        min_severity: only events whose peak score / threshold is at least this.
        open_only: only events that may still grow (``is_open``).
        limit: at most this many rows, newest start first.
    """

    entity: str | None = None
    model: str | None = None
    since: datetime | None = None
    min_severity: float | None = None
    open_only: bool = False
    limit: int | None = None


class Sink(Protocol):
    """Where flagged events go."""

    def write(self, records: list[EventRecord]) -> int:
        """Write records; re-writing the same records changes nothing.

        Returns:
            The number of rows inserted or changed.
        """
        ...


class IncrementalSink(Sink, Protocol):
    """A sink that also stores per-(model name, entity) watermarks, and reads back."""

    def read(self, query: EventQuery | None = None) -> pd.DataFrame:
        """The events written (those ``query`` selects), one row each, newest first."""
        ...

    def read_watermark(self, model_name: str, entity: str) -> Watermark | None:
        """The stored watermark, or None when the entity was never scored."""
        ...

    def read_threshold_state(self, model_name: str, entity: str) -> ThresholdState | None:
        """The stored adaptive-threshold state, or None."""
        ...

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

        Events of ``model_name`` and ``entity`` starting in ``(replace_after,
        replace_through]`` are replaced by ``records``: new ones are inserted, changed ones
        updated in place (same ``event_id``), ones that no longer exist deleted.

        Args:
            model_name: registered model name.
            entity: the entity.
            records: every event found in the range.
            replace_after: exclusive start of the range (None: from the beginning).
            replace_through: inclusive end of the range (None: no end).
            watermark: the new watermark (None: leave it as it is).
            expected: the watermark the run started from.
            check_expected: when True and another run moved the watermark since (to a
                position at least as far as ``watermark``), write nothing.
            threshold_state: the adaptive threshold rule's new state (None: leave it),
                written in the same transaction.
        """
        ...
