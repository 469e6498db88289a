"""Record types shared across layers: which model produced an event, the anomaly-table row,
and the incremental-scoring watermark. Nothing here imports from the rest of the package, so
scoring, sinks, tracking and the dashboard can all use them without reaching "up"."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass
class ModelRef:
    """Which model produced an event."""

    name: str
    version: str
    run_id: str


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
    is_open: bool = False

    def as_row(self) -> dict[str, Any]:
        """The record as a plain mapping of column values."""
        return asdict(self)


@dataclass(frozen=True)
class Watermark:
    """How far incremental scoring of one (model name, entity) has come.

    Attributes:
        resume_after: the last step after which event detection can restart from scratch
            (no event open, no flagged step within the event rules' reach); the next run
            scores the steps after it, with ``window.length - 1`` earlier steps as context.
            None: from the start of the series.
        scored_through: the last step whose score was final (every window covering it was
            complete) in the run that wrote this watermark.
        source_seq: the highest source sequence number the run saw (landing-folder
            ingestion batches); newer data at or before ``read_through`` is late data.
        read_through: the newest step the run read (the final scores up to
            ``scored_through`` depend on the steps up to here).
        model_version: the model version that scored.
        job_id: the scoring run that wrote it (a Prefect flow run id or a label).
        updated_at: when it was written (UTC).
    """

    resume_after: datetime | None
    scored_through: datetime | None
    source_seq: int | None = None
    read_through: datetime | None = None
    model_version: str = ""
    job_id: str = ""
    updated_at: datetime | None = None

    def position(self) -> tuple[Any, ...]:
        """The fields that say where scoring stands (for change detection)."""
        return (self.resume_after, self.scored_through, self.read_through, self.source_seq)


@dataclass(frozen=True)
class ThresholdState:
    """An adaptive threshold rule's state for one (model name, entity).

    Attributes:
        state: the rule's JSON-serialisable state (with its frozen settings).
        through: the step the state has advanced through (the watermark's
            ``resume_after``: the next run applies it to the steps after); None: the start.
        model_version: the model version whose scores the state was built on.
        updated_at: when it was written (UTC).
    """

    state: dict[str, Any]
    through: datetime | None
    model_version: str = ""
    updated_at: datetime | None = None


@dataclass
class IncrementWrite:
    """What writing one entity's increment did."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: bool = False
    reason: str = ""

    @property
    def changed(self) -> int:
        """Rows inserted, updated or deleted."""
        return self.inserted + self.updated + self.deleted
