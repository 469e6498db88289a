"""Score files with a fitted detector and turn flagged steps into event records."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ae_anomaly.config import DataConfig, EventsConfig, ScoringConfig
from ae_anomaly.data.timeseries import (
    ENTITY,
    TS,
    TimeSeriesReader,
    file_columns,
    list_data_files,
)
from ae_anomaly.detectors import BaseDetector
from ae_anomaly.errors import DataError
from ae_anomaly.events import Event, EventBuilder
from ae_anomaly.records import EventRecord, ModelRef
from ae_anomaly.scoring.stream import StreamingScorer
from ae_anomaly.sources import check_feature_schema

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """What a scoring pass produced."""

    events: list[Event] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def score_files(
    detector: BaseDetector,
    paths: Iterable[str | Path],
    data_cfg: DataConfig,
    events_cfg: EventsConfig,
    scoring_cfg: ScoringConfig,
    progress: bool = True,
) -> ScoreResult:
    """Score files (each a complete series per entity) chunk by chunk and find events.

    Args:
        detector: fitted detector; its feature names are the expected metric columns.
        paths: files or folders, scored in order; each file's series is independent.
        data_cfg: how to read the files.
        events_cfg: rules from flagged steps to events.
        scoring_cfg: chunk and batch sizes.
        progress: show a progress bar over rows read.

    Returns:
        Events, and per-entity counts of scored and flagged steps.
    """
    result = ScoreResult()
    files = [f for p in paths for f in list_data_files(p)]
    bar = tqdm(total=None, desc="score", unit="row", disable=not progress, leave=False)
    cfg = data_cfg.model_copy(update={"read_chunk_rows": scoring_cfg.chunk_steps})
    for f in files:
        result.files.append(str(f))
        check_file_schema(f, list(detector.feature_names_), data_cfg)
        reader = TimeSeriesReader(cfg, list(detector.feature_names_))
        state: dict[str, tuple[StreamingScorer, EventBuilder]] = {}

        def _consume(ent: str, out: tuple[np.ndarray, np.ndarray, np.ndarray],
                     state: dict[str, tuple[StreamingScorer, EventBuilder]] = state) -> None:
            ts, scores, ch = out
            result.steps[ent] = result.steps.get(ent, 0) + len(ts)
            result.flagged[ent] = result.flagged.get(ent, 0) + int(
                (scores > detector.threshold_for(ent)).sum())
            result.events.extend(state[ent][1].push(ts, scores, ch))

        for chunk in reader.iter_file(f):
            bar.update(len(chunk))
            for ent, grp in chunk.groupby(ENTITY, sort=False):
                ent = str(ent)
                if ent not in state:
                    state[ent] = (
                        StreamingScorer(detector, scoring_cfg.batch_size, ent),
                        EventBuilder(ent, events_cfg, detector.threshold_for(ent),
                                    detector.rule_for(ent).p_values),
                    )
                values = grp[detector.feature_names_].to_numpy(np.float64)
                _consume(ent, state[ent][0].push(grp[TS].to_numpy(), values))
        short = {}
        for ent, (scorer, builder) in state.items():
            _consume(ent, scorer.flush())
            result.events.extend(builder.flush())
            if scorer.n_emitted < scorer.n_seen:
                result.unscored[ent] = scorer.n_seen - scorer.n_emitted
                short[ent] = scorer.n_seen
        if short and not any(result.steps.get(e) for e in state):
            # Nothing of this file could be scored: an error, not an empty success.
            ent, n = next(iter(short.items()))
            raise DataError(f"too short to score: entity '{ent}' has {n} steps, fewer than "
                            f"the model needs ({detector.min_samples})"
                            + (f"; {len(short) - 1} more entities too" if len(short) > 1
                               else ""), path=str(f))
        for ent, n in short.items():
            log.warning("%s: entity '%s' has %d steps, fewer than one window (%d): not "
                        "scored", f, ent, n, detector.min_samples)
    bar.close()
    return result


LABEL_COLUMNS = ("is_anomaly", "label")


def check_file_schema(path: Path, features: list[str], data_cfg: DataConfig) -> None:
    """Refuse a wide file whose metric columns are not the model's features.

    Long-form files are checked as they are read (a missing metric fails there). Label
    columns (``is_anomaly``, ``label``) are not metrics.

    Raises:
        FeatureSchemaError: missing or unexpected metric columns.
    """
    if data_cfg.format in ("long", "smd"):
        return
    cols = file_columns(path, data_cfg)
    if data_cfg.metric_col in cols and data_cfg.value_col in cols:
        return
    keys = {data_cfg.timestamp_col, data_cfg.entity_col, *LABEL_COLUMNS}
    found = [str(c) for c in cols if c not in keys]
    if data_cfg.metrics is not None:
        found = [m for m in found if m in data_cfg.metrics]
    check_feature_schema(features, found, str(path))


def event_id(model: ModelRef, entity: str, start_ts: pd.Timestamp,
             key: str | None = None) -> str:
    """Deterministic id: the same model version, entity and start (and key, for events of
    one entity that may share a start, such as flagged flows) give the same id."""
    raw = f"{model.name}|{model.version}|{entity}|{pd.Timestamp(start_ts).isoformat()}"
    if key is not None:
        raw += f"|{key}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def to_records(events: list[Event], detector: BaseDetector, model: ModelRef,
               scored_at: datetime | None = None, is_open: bool = False) -> list[EventRecord]:
    """Event records for the sink, one per event (``is_open``: the events may still grow)."""
    scored_at = scored_at or datetime.now(UTC).replace(tzinfo=None)
    out = []
    for ev in events:
        start = pd.Timestamp(ev.start_ts).to_pydatetime()
        # An adaptive rule's threshold at the peak; the frozen one where none (or none finite).
        threshold = (ev.threshold if ev.threshold is not None and math.isfinite(ev.threshold)
                     else detector.threshold_for(ev.entity))
        out.append(EventRecord(
            event_id=event_id(model, ev.entity, ev.start_ts, ev.key),
            entity=ev.entity,
            start_ts=start,
            end_ts=pd.Timestamp(ev.end_ts).to_pydatetime(),
            peak_ts=pd.Timestamp(ev.peak_ts).to_pydatetime(),
            peak_score=float(ev.peak_score),
            threshold=threshold,
            severity=float(ev.peak_score / threshold) if threshold > 0 else float("inf"),
            p_value=None if ev.min_p_value is None else float(ev.min_p_value),
            n_points=int(ev.n_flagged),
            top_channels=ev.channel_shares(detector.channel_names),
            model_name=model.name,
            model_version=str(model.version),
            run_id=model.run_id,
            scored_at=scored_at,
            is_open=is_open,
        ))
    return out
