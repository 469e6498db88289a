"""Chunk-invariant streaming scoring of one entity's series.

A step's score is final once the rows it depends on have arrived: ``context_after`` later
rows (the windows that cover it, then the smoothing ahead; see
:attr:`ae_anomaly.detectors.BaseDetector.context_after`), so a chunk's newest steps wait for the
next chunk, and ``context_before`` earlier rows are kept as context. The scores of a series
are the same however it is cut into chunks (tested), and memory is bounded by the chunk size.
"""

from __future__ import annotations

import numpy as np

from ae_anomaly.detectors import BaseDetector


class StreamingScorer:
    """Feed consecutive raw rows of one entity; get scores for steps whose context is complete.

    Args:
        detector: a fitted detector.
        batch_size: windows per forward pass.
        entity: the entity's name (context for conditional models).
    """

    def __init__(self, detector: BaseDetector, batch_size: int = 1024,
                 entity: str | None = None) -> None:
        self.det = detector
        self.batch_size = batch_size
        self.entity = entity
        self.length = detector.min_samples
        self.before = detector.context_before
        self.after = detector.context_after
        self._ts: np.ndarray | None = None
        self._x: np.ndarray | None = None
        self._pending = 0  # index in the buffer of the first step not yet emitted
        self.n_seen = 0
        self.n_emitted = 0

    def _emit(self, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._x is not None and self._ts is not None
        start = max(0, self._pending - self.before)
        stop = min(len(self._x), end + self.after)
        scores, ch = self.det.score_values(self._x[start:stop], self.batch_size,
                                           timestamps=self._ts[start:stop],
                                           entity=self.entity)
        scores = scores[self._pending - start:end - start]
        ch = ch[self._pending - start:end - start]
        ts = self._ts[self._pending:end]
        keep = max(0, end - self.before)
        self._ts, self._x = self._ts[keep:], self._x[keep:]
        self._pending = end - keep
        self.n_emitted += len(ts)
        return ts, scores, ch

    def push(self, ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """Add rows (raw values, (T, C)); returns (timestamps, scores, channel values)."""
        scaled = self.det.transform(values)
        self.n_seen += len(ts)
        if self._x is None:
            self._ts, self._x = np.asarray(ts), scaled
        else:
            self._ts = np.concatenate([self._ts, ts])
            self._x = np.concatenate([self._x, scaled])
        end = len(self._x) - self.after
        block = len(self._x) - max(0, self._pending - self.before)
        if end <= self._pending or block < self.length:  # a block holds at least one window
            return _empty(len(self.det.channel_names))
        return self._emit(end)

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score the remaining steps (the series has ended)."""
        if self._x is None or self._pending >= len(self._x):
            return _empty(len(self.det.channel_names))
        if len(self._x) < self.length:
            # Only possible when the whole series is shorter than one window.
            return _empty(len(self.det.channel_names))
        return self._emit(len(self._x))


def _empty(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty(0, dtype="datetime64[ns]"), np.empty(0), np.empty((0, c)))
