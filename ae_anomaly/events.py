"""From flagged points to events; shared by production scoring and the benchmarks.

Rules (the fields of :class:`~ae_anomaly.config.EventsConfig`), applied per entity:

* A point is *flagged* when ``score > threshold`` (NaN scores are never flagged).
* A flagged point at step ``t`` is an *alarm point* when at least ``k`` of the last ``n``
  steps (``t`` included; fewer at the start of the series) are flagged. With ``k = n = 1``
  every flagged point alarms. An unflagged step never alarms, so events start and end on
  points that exceed the threshold.
* Alarm points separated by at most ``merge_gap`` non-alarm steps belong to the same event,
  which spans ``[first alarm point, last alarm point]``. An event is closed once more than
  ``merge_gap`` steps have passed since its last alarm point.
* Events shorter than ``min_duration`` steps (``end - start + 1``) are dropped.
* ``cooldown``: after an event is emitted with end ``e``, alarm points at steps
  ``<= e + cooldown`` do not start a new event (they are suppressed, not merged). Dropped
  (too short) events start no cooldown.

An event's ``n_flagged``, ``channel_error``, ``min_p_value`` and peak cover every flagged
point inside its span (its alarm points plus any flagged, non-alarm points between them).

:class:`EventBuilder` applies these rules to a stream pushed in chunks of any size; the
result does not depend on the chunking. Work per chunk is vectorised over steps and loops
only over the flagged points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ae_anomaly.config import EventsConfig

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Event:
    """One event of one entity.

    Attributes:
        entity: the entity the event belongs to.
        start_idx: global step index (within the entity's series) of the first alarm point.
        end_idx: global step index of the last alarm point (inclusive).
        peak_idx: global step index of the maximum score inside the event.
        start_ts: timestamp at ``start_idx`` (whatever type was pushed).
        end_ts: timestamp at ``end_idx``.
        peak_ts: timestamp at ``peak_idx``.
        peak_score: the maximum score inside the event.
        n_flagged: flagged points inside the event.
        channel_error: per-channel errors summed over the event's flagged points, shape (C,).
        min_p_value: minimum p-value over the event's flagged points, when a p-value function
            was given.
        key: what tells apart events of one entity that start at the same time (a flow
            record's content hash for per-row events); None for series events.
        threshold: the threshold at the peak step when thresholds vary per step (an
            adaptive rule); None when one threshold applies to the whole series.
    """

    entity: str
    start_idx: int
    end_idx: int
    peak_idx: int
    start_ts: Any
    end_ts: Any
    peak_ts: Any
    peak_score: float
    n_flagged: int
    channel_error: np.ndarray = field(repr=False)
    min_p_value: float | None = None
    key: str | None = None
    threshold: float | None = None

    @property
    def length(self) -> int:
        """Number of steps the event spans (``end_idx - start_idx + 1``)."""
        return self.end_idx - self.start_idx + 1

    def channel_shares(self, names: Sequence[str], top: int = 5) -> dict[str, float]:
        """Share of the event's error carried by each channel, largest first.

        Args:
            names: channel names, one per entry of ``channel_error``.
            top: how many channels to return.

        Returns:
            ``{name: share}`` for the ``top`` largest shares, rounded to 4 decimals; empty when
            the event carries no error.

        Raises:
            ValueError: ``names`` does not match the number of channels.
        """
        err = np.asarray(self.channel_error, dtype=np.float64)
        if len(names) != err.size:
            raise ValueError(f"got {len(names)} channel names for {err.size} channels")
        total = float(err.sum())
        if not np.isfinite(total) or total <= 0.0:
            return {}
        shares = err / total
        order = np.argsort(-shares, kind="stable")[: max(int(top), 0)]
        return {str(names[i]): round(float(shares[i]), 4) for i in order}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.entity == other.entity
            and self.start_idx == other.start_idx
            and self.end_idx == other.end_idx
            and self.peak_idx == other.peak_idx
            and bool(self.start_ts == other.start_ts)
            and bool(self.end_ts == other.end_ts)
            and bool(self.peak_ts == other.peak_ts)
            and self.peak_score == other.peak_score
            and self.n_flagged == other.n_flagged
            and np.array_equal(self.channel_error, other.channel_error)
            and self.min_p_value == other.min_p_value
            and self.threshold == other.threshold
        )

    __hash__ = None  # type: ignore[assignment]


class _OpenEvent:
    """Mutable accumulator for the event being built."""

    __slots__ = (
        "start_idx",
        "start_ts",
        "last_idx",
        "last_ts",
        "peak_idx",
        "peak_ts",
        "peak_score",
        "n_flagged",
        "channel_error",
        "min_p",
        "peak_thr",
    )

    def __init__(self, idx: int, ts: Any, n_channels: int) -> None:
        self.start_idx = idx
        self.start_ts = ts
        self.last_idx = idx
        self.last_ts = ts
        self.peak_idx = idx
        self.peak_ts = ts
        self.peak_score = -np.inf
        self.n_flagged = 0
        self.channel_error = np.zeros(n_channels, dtype=np.float64)
        self.min_p: float | None = None
        self.peak_thr: float | None = None

    def add(self, idx: int, ts: Any, score: float, err: np.ndarray, p: float | None,
            thr: float | None = None) -> None:
        """Add one flagged point (in step order)."""
        self.n_flagged += 1
        self.channel_error += err
        if score > self.peak_score:
            self.peak_score, self.peak_idx, self.peak_ts = score, idx, ts
            self.peak_thr = thr
        if p is not None and (self.min_p is None or p < self.min_p):
            self.min_p = p


class EventBuilder:
    """Streaming event detection for one entity.

    Push consecutive steps in order, in chunks of any size; each :meth:`push` returns the
    events closed by then, and :meth:`flush` closes the last one at the end of the data.

    Args:
        entity: the entity name stored on the events.
        rules: the event rules.
        threshold: a point is flagged when its score is above this.
        p_value_fn: maps scores to p-values (e.g. ``ThresholdRule.p_values``); when given,
            events carry ``min_p_value``.
    """

    def __init__(
        self,
        entity: str,
        rules: EventsConfig,
        threshold: float,
        p_value_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.entity = entity
        self.rules = rules
        self.threshold = float(threshold)
        self.p_value_fn = p_value_fn
        self._pos = 0  # steps seen so far (global index of the next step)
        self._tail = np.zeros(0, dtype=bool)  # flags of the last n - 1 steps
        self._open: _OpenEvent | None = None
        # flagged non-alarm points after the open event's last alarm point
        self._pending: list[tuple[int, Any, float, np.ndarray, float | None,
                                  float | None]] = []
        self._blocked_until = -1  # alarm points at steps <= this are suppressed (cooldown)
        self._n_channels: int | None = None

    @property
    def steps_seen(self) -> int:
        """Number of steps pushed so far."""
        return self._pos

    def push(
        self, timestamps: Sequence[Any], scores: np.ndarray, channel_errors: np.ndarray,
        thresholds: np.ndarray | None = None,
    ) -> list[Event]:
        """Add the next steps of the entity's series.

        Args:
            timestamps: one timestamp per step (array, list, DatetimeIndex or Series; read
                positionally).
            scores: anomaly scores, shape (T,).
            channel_errors: per-channel errors, shape (T, C) (or (T,) for one channel).
            thresholds: per-step thresholds, shape (T,) (an adaptive rule), used instead
                of the builder's threshold; events then carry the one at their peak.

        Returns:
            The events closed by the end of this chunk, in order.

        Raises:
            ValueError: mismatched lengths or channel counts.
        """
        s = np.asarray(scores, dtype=np.float64).ravel()
        n_steps = s.size
        errs = np.asarray(channel_errors, dtype=np.float64)
        if errs.ndim == 1:
            errs = errs.reshape(-1, 1)
        if errs.ndim != 2 or errs.shape[0] != n_steps:
            raise ValueError(
                f"channel_errors must have shape ({n_steps}, C), got {np.shape(channel_errors)}"
            )
        if len(timestamps) != n_steps:
            raise ValueError(f"got {len(timestamps)} timestamps for {n_steps} scores")
        thr: np.ndarray | float = self.threshold
        if thresholds is not None:
            thr = np.asarray(thresholds, dtype=np.float64).ravel()
            if thr.size != n_steps:
                raise ValueError(f"got {thr.size} thresholds for {n_steps} scores")
        if self._n_channels is None:
            self._n_channels = errs.shape[1]
        elif errs.shape[1] != self._n_channels:
            raise ValueError(
                f"channel_errors has {errs.shape[1]} channels, earlier chunks had "
                f"{self._n_channels}"
            )
        if n_steps == 0:
            return []
        ts_at = getattr(timestamps, "iloc", timestamps).__getitem__

        base = self._pos
        flags = s > thr
        alarm = flags & (self._window_counts(flags) >= self.rules.k)
        self._pos += n_steps

        local = np.flatnonzero(flags)
        p_vals: list[float | None]
        if self.p_value_fn is not None and local.size:
            p_vals = np.asarray(self.p_value_fn(s[local]), dtype=np.float64).tolist()
        else:
            p_vals = [None] * local.size

        closed: list[Event] = []
        gap = self.rules.merge_gap
        for j, (i, is_alarm) in enumerate(zip(local.tolist(), alarm[local].tolist(), strict=True)):
            g = base + i
            if self._open is not None and g > self._open.last_idx + gap + 1:
                self._close(closed)
            point = (g, ts_at(i), float(s[i]), errs[i], p_vals[j],
                     None if thresholds is None else float(thr[i]))  # type: ignore[index]
            if is_alarm:
                if self._open is not None:
                    for pending in self._pending:
                        self._open.add(*pending)
                    self._pending.clear()
                elif g <= self._blocked_until:
                    continue  # cooldown: suppressed
                else:
                    self._open = _OpenEvent(g, point[1], errs.shape[1])
                self._open.add(*point)
                self._open.last_idx, self._open.last_ts = g, point[1]
            elif self._open is not None:
                self._pending.append((*point[:3], point[3].copy(), *point[4:]))
        if self._open is not None and self._pos > self._open.last_idx + gap + 1:
            self._close(closed)
        return closed

    def flush(self) -> list[Event]:
        """End of data: close the open event and return it if it is long enough."""
        closed: list[Event] = []
        if self._open is not None:
            self._close(closed)
        return closed

    def _window_counts(self, flags: np.ndarray) -> np.ndarray:
        """Flagged steps among the last n steps (each step included), across chunks."""
        n = self.rules.n
        ext = np.concatenate([self._tail, flags])
        csum = np.concatenate([[0], np.cumsum(ext, dtype=np.int64)])
        end = np.arange(self._tail.size, ext.size) + 1
        counts = csum[end] - csum[np.maximum(end - n, 0)]
        self._tail = ext[max(ext.size - (n - 1), 0) :] if n > 1 else ext[:0]
        return counts

    def _close(self, out: list[Event]) -> None:
        ev = self._open
        assert ev is not None
        self._open = None
        self._pending.clear()
        length = ev.last_idx - ev.start_idx + 1
        if length < self.rules.min_duration:
            logger.debug(
                "%s: dropped event at steps %d-%d (shorter than %d)",
                self.entity,
                ev.start_idx,
                ev.last_idx,
                self.rules.min_duration,
            )
            return
        self._blocked_until = ev.last_idx + self.rules.cooldown
        out.append(
            Event(
                entity=self.entity,
                start_idx=ev.start_idx,
                end_idx=ev.last_idx,
                peak_idx=ev.peak_idx,
                start_ts=ev.start_ts,
                end_ts=ev.last_ts,
                peak_ts=ev.peak_ts,
                peak_score=ev.peak_score,
                n_flagged=ev.n_flagged,
                channel_error=ev.channel_error,
                min_p_value=ev.min_p,
                threshold=ev.peak_thr,
            )
        )


def find_events(
    entity: str,
    timestamps: Sequence[Any],
    scores: np.ndarray,
    channel_errors: np.ndarray,
    threshold: float,
    rules: EventsConfig,
    p_value_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Event]:
    """All events of one entity's whole series (one :meth:`EventBuilder.push` + flush).

    Args:
        entity: the entity name.
        timestamps: one timestamp per step.
        scores: anomaly scores, shape (T,).
        channel_errors: per-channel errors, shape (T, C).
        threshold: a point is flagged when its score is above this.
        rules: the event rules.
        p_value_fn: optional scores -> p-values function.

    Returns:
        The events, in order.
    """
    builder = EventBuilder(entity, rules, threshold, p_value_fn)
    return builder.push(timestamps, scores, channel_errors) + builder.flush()


def event_mask(n_steps: int, events: Sequence[Event]) -> np.ndarray:
    """Boolean mask of the steps covered by events (``start_idx..end_idx`` inclusive).

    Args:
        n_steps: length of the series.
        events: events of that series; parts beyond ``n_steps`` are ignored.

    Returns:
        Array of shape (n_steps,).
    """
    mask = np.zeros(n_steps, dtype=bool)
    if not events:
        return mask
    # difference array: +1 at each start, -1 after each end
    diff = np.zeros(n_steps + 1, dtype=np.int64)
    starts = np.clip([e.start_idx for e in events], 0, n_steps)
    ends = np.clip([e.end_idx + 1 for e in events], 0, n_steps)
    np.add.at(diff, starts, 1)
    np.add.at(diff, ends, -1)
    mask[:] = np.cumsum(diff[:-1]) > 0
    return mask
