"""The one sink interface: ``write(records) -> int``, idempotent on ``event_id``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass
class EventRecord:
    """One row of the anomaly table (see docs/schema.md)."""

    event_id: str
    entity: str
    start_ts: datetime
    end_ts: datetime
    peak_ts: datetime
    peak_score: float
    threshold: float
    severity: float
    p_value: float | None
    n_points: int
    top_channels: dict[str, float]
    model_name: str
    model_version: str
    run_id: str
    scored_at: datetime

    def as_row(self) -> dict[str, Any]:
        """The record as a plain mapping of column values."""
        return asdict(self)


class Sink(Protocol):
    """Where flagged events go."""

    def write(self, records: list[EventRecord]) -> int:
        """Write records; re-writing the same records changes nothing.

        Returns:
            The number of rows inserted or changed.
        """
        ...
