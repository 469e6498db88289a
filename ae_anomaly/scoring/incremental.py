"""Incremental scoring from per-(model name, entity) watermarks, and range backfills.

Why a run can start in the middle of a series and still write what one pass over the whole
series would have written:

* A step's score is *final* once the rows it depends on exist: ``A`` later rows
  (:attr:`~ae_anomaly.detectors.BaseDetector.context_after`: ``L - 1`` for the windows covering
  it, ``L`` = ``window.length``, plus the smoothing ahead). Scoring the steps after a point
  needs the ``B`` rows before it as context
  (:attr:`~ae_anomaly.detectors.BaseDetector.context_before`); their own scores are dropped. The
  newest ``A`` steps wait for the next run.
* Event detection restarts cleanly after a step ``t`` when no step in ``[t - M, t]`` is
  flagged, ``M = max(merge_gap, n - 1, cooldown)``: then no event is open, the k-of-n
  counts see no earlier flag, and no cooldown is running. The watermark's
  ``resume_after`` is the latest such step, so a restart finds the same events.
* An event still open at the end of a run is written with ``is_open`` and found again by
  the next run with the same start, hence the same ``event_id``: its row is updated in
  place. Events of the re-scored range that no longer exist (late data changed them) are
  deleted, in the same transaction that moves the watermark.
* Late data (rows ingested after the watermark, at or before the newest step read) and
  ``backfill`` move the start back to a clean step before the earliest changed score,
  found by re-scoring backwards from there.
* Adaptive thresholds (``calibration.adaptive``) carry one more state from step to step:
  the rule's state *at* ``resume_after`` is stored with the watermark, in the same
  transaction, so the next run (or a re-run of a failed one) applies the rule to the steps
  after it from exactly there and nothing is counted twice. Late data and backfills re-score
  such an entity from its first step, the one earlier point whose state is known.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from ae_anomaly.calibration import AciState, AdaptiveConformal
from ae_anomaly.config import EventsConfig, ScoringConfig
from ae_anomaly.data.timeseries import TS
from ae_anomaly.detectors import BaseDetector
from ae_anomaly.events import Event, EventBuilder
from ae_anomaly.records import (
    EventRecord,
    IncrementWrite,
    ModelRef,
    ThresholdState,
    Watermark,
)
from ae_anomaly.scoring.job import to_records
from ae_anomaly.scoring.stream import StreamingScorer
from ae_anomaly.sinks.base import IncrementalSink
from ae_anomaly.sources import Source, check_feature_schema

log = logging.getLogger(__name__)


@dataclass
class EntityOutcome:
    """What one entity's part of a run did."""

    entity: str
    start_after: datetime | None
    steps: int = 0
    flagged: int = 0
    events: int = 0
    open_events: int = 0
    late_from: datetime | None = None
    watermark: Watermark | None = None
    write: IncrementWrite = field(default_factory=IncrementWrite)


@dataclass
class IncrementResult:
    """What an incremental run (or a backfill) did, per entity."""

    model: ModelRef
    entities: list[EntityOutcome] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.entities)

    @property
    def events(self) -> int:
        return sum(e.events for e in self.entities)

    @property
    def flagged(self) -> int:
        return sum(e.flagged for e in self.entities)

    @property
    def rows_changed(self) -> int:
        return sum(e.write.changed for e in self.entities)

    def summary(self) -> dict[str, object]:
        """Totals as a plain mapping (for flow results and the CLI)."""
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "entities": len(self.entities),
            "steps": self.steps,
            "flagged_steps": self.flagged,
            "events": self.events,
            "open_events": sum(e.open_events for e in self.entities),
            "inserted": sum(e.write.inserted for e in self.entities),
            "updated": sum(e.write.updated for e in self.entities),
            "deleted": sum(e.write.deleted for e in self.entities),
            "rows_written": self.rows_changed,
            "skipped": [e.entity for e in self.entities if e.write.skipped],
            "late": {e.entity: str(e.late_from) for e in self.entities if e.late_from},
        }


@dataclass
class _Scan:
    steps: int = 0
    flagged: list[int] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    closed: list[Event] = field(default_factory=list)
    open: list[Event] = field(default_factory=list)
    range_end: datetime | None = None
    read_through: datetime | None = None  # the newest step read
    clean_ts: datetime | None = None  # latest clean step of the scan (None: none found)
    scores: list[np.ndarray] = field(default_factory=list)  # kept for adaptive thresholds
    aci_state: AciState | None = None  # the adaptive rule's state at clean_ts

    def ts_at(self, i: int) -> datetime:
        for block in self.stamps:
            if i < len(block):
                return pd.Timestamp(block[i]).to_pydatetime()
            i -= len(block)
        raise IndexError(i)


def latest_clean(flags: list[int] | np.ndarray, last: int, reach: int) -> int:
    """The latest step ``t <= last`` with no flagged step in ``[t - reach, t]``.

    Args:
        flags: indices of flagged steps, ascending (steps before index 0 are unflagged).
        last: the last step to consider.
        reach: ``M``, how far back a flag affects event detection.

    Returns:
        The step, or -1 when only the start (before step 0) is clean.
    """
    t = last
    for f in reversed(list(flags)):
        if f > t:
            continue
        if f < t - reach:
            break
        t = f - 1
    return t


class IncrementalScorer:
    """Scores a source incrementally into an incremental sink with one model version.

    Args:
        detector: the fitted detector (the champion resolved at run start).
        model: which registered version it is.
        source: where the metrics are read (any :class:`~ae_anomaly.sources.Source`).
        sink: where events and watermarks are written.
        events_cfg: event rules.
        scoring_cfg: chunk and batch sizes.
        job_id: a label of this run stored with the watermarks.
    """

    def __init__(self, detector: BaseDetector, model: ModelRef, source: Source,
                 sink: IncrementalSink, events_cfg: EventsConfig, scoring_cfg: ScoringConfig,
                 job_id: str = "") -> None:
        self.det = detector
        self.model = model
        self.source = source
        self.sink = sink
        self.events_cfg = events_cfg
        self.scoring_cfg = scoring_cfg
        self.job_id = job_id
        self.before = detector.context_before
        self.after = detector.context_after
        self.reach = max(events_cfg.merge_gap, events_cfg.n - 1, events_cfg.cooldown)
        self.metrics = list(detector.feature_names_)

    # ------------------------------------------------------------------ public
    def check_schema(self) -> None:
        """Refuse a source whose metrics differ from the model's feature schema."""
        check_feature_schema(self.metrics, self.source.metrics(), self.source.name,
                             f"model {self.model.name} v{self.model.version}")

    def run(self, entities: list[str] | None = None) -> IncrementResult:
        """Score every entity from its watermark to the newest complete data."""
        result = IncrementResult(self.model)
        entities = entities or self.source.entities()
        if not entities:
            log.info("%s holds no data yet: nothing to score", self.source.name)
            return result
        self.check_schema()
        for ent in entities:
            result.entities.append(self._incremental(ent))
        return result

    def backfill(self, start: datetime | None, end: datetime | None,
                 entities: list[str] | None = None) -> IncrementResult:
        """Re-score ``[start, end]`` of every entity idempotently (watermarks untouched).

        The range is widened to clean steps on both sides, so events crossing its ends are
        found whole; events of the model name starting in the widened range are replaced.
        """
        result = IncrementResult(self.model)
        entities = entities or self.source.entities()
        if not entities:
            return result
        self.check_schema()
        for ent in entities:
            result.entities.append(self._backfill(ent, start, end))
        return result

    # ------------------------------------------------------------------ per entity
    def _incremental(self, entity: str) -> EntityOutcome:
        wm0 = self.sink.read_watermark(self.model.name, entity)
        seq_now = self.source.max_seq(entity)  # before reading: later rows are newer
        resume = wm0.resume_after if wm0 is not None else None
        out = EntityOutcome(entity, resume)
        aci = self.det.adaptive_rule_for(entity)
        # Rows ingested since the last run at or before the newest step it read change
        # scores it already treated as final: re-score from a clean step before them.
        reach = (wm0.read_through or wm0.scored_through) if wm0 is not None else None
        if (wm0 is not None and wm0.source_seq is not None and seq_now is not None
                and seq_now > wm0.source_seq and reach is not None):
            earliest = self.source.earliest_since_seq(entity, wm0.source_seq)
            if earliest is not None and earliest <= reach:
                out.late_from = earliest
                # Adaptive thresholds: the rule's state is known only at the watermark and
                # at the start, so the entity is re-scored from its first step.
                clean = None if aci is not None else self.clean_point_before(entity, earliest)
                if clean is None or (resume is not None and clean < resume):
                    resume = clean
                out.start_after = resume
                log.info("%s: late data from %s: re-scoring after %s", entity, earliest,
                         resume)
        state0 = self._aci_start(entity, aci, resume) if aci is not None else None
        scan = self._scan(entity, resume, stop_after=None, aci_state=state0)
        out.steps, out.flagged = scan.steps, len(scan.flagged)
        if scan.steps == 0:
            return out
        records = self._records(scan, out)
        seq = seq_now if seq_now is not None else (wm0.source_seq if wm0 else None)
        out.watermark = Watermark(
            resume_after=scan.clean_ts if scan.clean_ts is not None else resume,
            scored_through=scan.range_end, read_through=scan.read_through, source_seq=seq,
            model_version=str(self.model.version), job_id=self.job_id)
        threshold_state = None
        if aci is not None:
            assert scan.aci_state is not None
            threshold_state = ThresholdState(
                state={"params": aci.params(), **scan.aci_state.to_dict()},
                through=out.watermark.resume_after, model_version=str(self.model.version))
        out.write = self.sink.write_increment(
            self.model.name, entity, records, replace_after=resume,
            replace_through=scan.range_end, watermark=out.watermark, expected=wm0,
            check_expected=True, threshold_state=threshold_state)
        if out.write.skipped:
            log.info("%s: %s; nothing written", entity, out.write.reason)
        return out

    def _aci_start(self, entity: str, aci: AdaptiveConformal,
                   resume: datetime | None) -> AciState:
        """The adaptive rule's state at ``resume``: the stored one when it was written for
        that step by the same model version and settings, else the initial state."""
        stored = self.sink.read_threshold_state(self.model.name, entity)
        if stored is None:
            if resume is not None:
                log.info("%s: no adaptive threshold state yet: starting it after %s",
                         entity, resume)
            return aci.initial_state()
        if stored.through != resume:
            log.info("%s: adaptive threshold state is for the step %s, scoring restarts "
                     "after %s: starting it afresh", entity, stored.through, resume)
            return aci.initial_state()
        if (stored.model_version != str(self.model.version)
                or stored.state.get("params") != aci.params()):
            log.info("%s: model version or adaptive settings changed: starting the "
                     "adaptive threshold afresh", entity)
            return aci.initial_state()
        return AciState.from_dict(stored.state)

    def _records(self, scan: _Scan, out: EntityOutcome) -> list[EventRecord]:
        """The scan's closed and open events as records; counts them into ``out``."""
        records = (to_records(scan.closed, self.det, self.model)
                   + to_records(scan.open, self.det, self.model, is_open=True))
        out.events, out.open_events = len(records), len(scan.open)
        return records

    def _backfill(self, entity: str, start: datetime | None,
                  end: datetime | None) -> EntityOutcome:
        # Adaptive thresholds: from the first step with the initial state (the stored state
        # belongs to the watermark, which a backfill leaves alone).
        begin = (self.clean_point_before(entity, start)
                 if start is not None and self.det.adaptive_rule_for(entity) is None else None)
        out = EntityOutcome(entity, begin)
        scan = self._scan(entity, begin, stop_after=end)
        out.steps, out.flagged = scan.steps, len(scan.flagged)
        if scan.steps == 0:
            return out
        records = self._records(scan, out)
        out.write = self.sink.write_increment(
            self.model.name, entity, records, replace_after=begin,
            replace_through=scan.range_end, watermark=None)
        return out

    # ------------------------------------------------------------------ scanning
    def _scan(self, entity: str, after: datetime | None,
              stop_after: datetime | None, aci_state: AciState | None = None) -> _Scan:
        """Score the steps after ``after`` and find their events.

        Without ``stop_after`` the scan reads to the newest data and the event still open
        at its end is returned in ``open``. With it, the scan stops at the first clean step
        at or after ``stop_after``; events starting later are left out. With adaptive
        thresholds the rule runs from ``aci_state`` (None: its initial state) and
        ``scan.aci_state`` is its state at the scan's clean step.
        """
        det = self.det
        validate = self.source.validator(self.metrics, entity)
        thr = det.threshold_for(entity)
        aci = det.adaptive_rule_for(entity)
        state0 = aci_state if aci is not None and aci_state is not None else (
            aci.initial_state() if aci is not None else None)
        state = state0
        scorer = StreamingScorer(det, self.scoring_cfg.batch_size, entity)
        builder = EventBuilder(entity, self.events_cfg, thr, det.rule_for(entity).p_values)
        scan = _Scan()
        skip = 0

        def consume(out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            nonlocal skip, state
            ts, scores, ch = out
            if skip:
                d = min(skip, len(ts))
                ts, scores, ch = ts[d:], scores[d:], ch[d:]
                skip -= d
            if not len(ts):
                return
            steps_thr = None
            if aci is not None:
                steps_thr, state = aci.thresholds(scores, state)
                scan.scores.append(scores)
            flags = np.flatnonzero(scores > (thr if steps_thr is None else steps_thr))
            scan.flagged.extend((flags + scan.steps).tolist())
            scan.stamps.append(ts)
            scan.steps += len(ts)
            scan.closed.extend(builder.push(ts, scores, ch, thresholds=steps_thr))

        if after is not None:
            ctx = self.source.rows_before(entity, after, self.before, self.metrics, validate)
            skip = len(ctx)
            if len(ctx):
                consume(scorer.push(ctx[TS].to_numpy(), ctx[self.metrics].to_numpy(np.float64)))
        stop_at = -2
        for frame in self.source.iter_after(entity, after, self.scoring_cfg.chunk_steps,
                                            self.metrics, validate):
            if not len(frame):
                continue
            consume(scorer.push(frame[TS].to_numpy(), frame[self.metrics].to_numpy(np.float64)))
            scan.read_through = pd.Timestamp(frame[TS].iloc[-1]).to_pydatetime()
            if stop_after is not None and scan.steps:
                t = latest_clean(scan.flagged, scan.steps - 1, self.reach)
                if t >= 0 and scan.ts_at(t) >= stop_after:
                    stop_at = t
                    break
        if not scan.steps:
            return scan
        if stop_at >= 0:
            # Bounded: everything up to the clean step; later events belong to later runs.
            end = scan.ts_at(stop_at)
            scan.closed = [e for e in scan.closed if pd.Timestamp(e.start_ts) <= end]
            scan.range_end = scan.clean_ts = end
            return scan
        scan.open = builder.flush()
        scan.range_end = scan.ts_at(scan.steps - 1)
        t = latest_clean(scan.flagged, scan.steps - 1, self.reach)
        scan.clean_ts = scan.ts_at(t) if t >= 0 else None
        if aci is not None:
            # The state after the clean step (where the next run resumes): replay the prefix.
            scan.aci_state = (aci.thresholds(np.concatenate(scan.scores)[:t + 1], state0)[1]
                              if t >= 0 else state0)
        return scan

    def clean_point_before(self, entity: str, first: datetime) -> datetime | None:
        """A clean step to restart from so that every score from ``first`` on is redone.

        The ``A`` steps before ``first`` (``context_after``) have scores that depend on it,
        so the restart must lie before them; it is the latest step there with no flag
        within the rules' reach, found by re-scoring backwards in growing blocks. None: the
        start of the series.
        """
        det, reach = self.det, self.reach
        k = max(4 * (reach + self.before + self.after), 512)
        while True:
            validate = self.source.validator(self.metrics, entity)
            rows = self.source.rows_before(entity, first, k, self.metrics, validate,
                                           inclusive=False)
            n = len(rows)
            at_start = n < k
            hi = n - self.after - 1  # the last A rows may change with the re-scored data
            if hi < 0:
                if at_start:
                    return None
                k *= 4
                continue
            values = det.transform(rows[self.metrics].to_numpy(np.float64))
            if n < det.min_samples:
                return None  # at_start here: the whole series is shorter than one window
            scores = det.score_values(values, self.scoring_cfg.batch_size,
                                      timestamps=rows[TS].to_numpy(), entity=entity)[0]
            known = 0 if at_start else self.before  # final steps (or the series start)
            flags = np.flatnonzero(scores[known:hi + 1] > det.threshold_for(entity)) + known
            t = latest_clean(flags, hi, reach)
            if at_start:
                return None if t < 0 else pd.Timestamp(rows[TS].iloc[t]).to_pydatetime()
            if t - reach >= known:
                return pd.Timestamp(rows[TS].iloc[t]).to_pydatetime()
            k *= 4
