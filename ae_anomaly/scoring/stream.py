"""Chunk-invariant streaming scoring of one entity's series.

Scoring a step needs every window that covers it, so a chunk's last ``L - 1`` steps wait for
the next chunk; ``L - 1`` earlier steps are kept as context. The scores of a series are the
same however it is cut into chunks (tested), and memory is bounded by the chunk size.
"""

from __future__ import annotations

import numpy as np

from ae_anomaly.detector import Detector


class StreamingScorer:
    """Feed consecutive raw rows of one entity; get scores for steps whose windows are complete.

    Args:
        detector: a fitted detector.
        batch_size: windows per forward pass.
        entity: the entity's name (context for conditional models).
    """

    def __init__(self, detector: Detector, batch_size: int = 1024,
                 entity: str | None = None) -> None:
        self.det = detector
        self.batch_size = batch_size
        self.entity = entity
        self.length = detector.window.length
        self._ts: np.ndarray | None = None
        self._x: np.ndarray | None = None
        self._pending = 0  # index in the buffer of the first step not yet emitted
        self.n_seen = 0
        self.n_emitted = 0

    def _emit(self, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._x is not None and self._ts is not None
        start = max(0, self._pending - self.length + 1)
        stop = min(len(self._x), end + self.length - 1)
        ch = self.det.block_errors(self._x[start:stop], self.batch_size,
                                   timestamps=self._ts[start:stop], entity=self.entity)
        ch = ch[self._pending - start:end - start]
        ts = self._ts[self._pending:end]
        keep = max(0, end - (self.length - 1))
        self._ts, self._x = self._ts[keep:], self._x[keep:]
        self._pending = end - keep
        self.n_emitted += len(ts)
        return ts, ch.mean(axis=1), ch

    def push(self, ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """Add rows (raw values, (T, C)); returns (timestamps, scores, channel errors)."""
        scaled = self.det.scaler_.transform(values)
        self.n_seen += len(ts)
        if self._x is None:
            self._ts, self._x = np.asarray(ts), scaled
        else:
            self._ts = np.concatenate([self._ts, ts])
            self._x = np.concatenate([self._x, scaled])
        end = len(self._x) - self.length + 1
        if end <= self._pending:
            return _empty(values.shape[1])
        return self._emit(end)

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score the remaining steps (the series has ended)."""
        if self._x is None or self._pending >= len(self._x):
            return _empty(len(self.det.feature_names_))
        if len(self._x) < self.length:
            # Only possible when the whole series is shorter than one window.
            return _empty(len(self.det.feature_names_))
        return self._emit(len(self._x))


def _empty(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty(0, dtype="datetime64[ns]"), np.empty(0), np.empty((0, c)))
