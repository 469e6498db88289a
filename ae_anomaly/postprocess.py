"""From per-step, per-channel errors to the step score: one implementation for every path.

The threshold's calibration (:meth:`ae_anomaly.detectors.BaseDetector.fit`), every production
scoring path (batch, streaming, incremental, the pyfunc model, the dashboard) and the
benchmark turn errors into scores here, configured by the ``postprocess`` section and
frozen with the model, so the benchmark measures what production writes.

Steps, per entity, on a contiguous block of per-step errors ``(T, C)``:

1. smoothing: a moving average of ``smooth`` steps along time, per channel (``trailing``:
   steps ``t - k + 1 .. t``; ``center``: ``t - k // 2 .. t + (k - 1) // 2``); at the block's
   ends it averages over the steps that exist;
2. per-channel thresholds (``calibration.per_channel``): each channel is divided by its own
   calibration quantile (:func:`channel_quantiles`);
3. the step score: the channels' ``mean``, ``max`` or the mean of the ``topk`` largest;
4. a trailing baseline (``baseline_window`` W > 0): the score divided by the median score of
   the W steps before it. Where fewer than W // 4 earlier steps exist (a series' start), the
   median of the calibration scores, fitted once, stands in.

A step depends on the errors of :attr:`Postprocessor.behind` earlier and
:attr:`Postprocessor.ahead` later steps; streaming scorers keep that much context so a
series scores the same however it is cut into chunks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ae_anomaly.calibration.thresholds import conformal_rank
from ae_anomaly.config import PostprocessConfig

__all__ = ["Postprocessor", "channel_quantiles", "reduce_channels", "smooth_scores"]

# A channel whose calibration errors are all (near) zero gets at least this share of the
# median channel quantile as its scale, so a ratio never divides by zero.
_SCALE_FLOOR = 1e-3


def smooth_scores(scores: np.ndarray, k: int, mode: str = "trailing") -> np.ndarray:
    """Moving average of ``k`` steps along axis 0; the ends average over the steps that exist.

    Args:
        scores: (T,) or (T, C) values.
        k: window of the average (1: unchanged).
        mode: ``center`` averages steps ``t - k//2 .. t + (k - 1)//2``; ``trailing`` averages
            ``t - k + 1 .. t`` (causal).

    Returns:
        An array of the same shape, float64.
    """
    s = np.asarray(scores, dtype=np.float64)
    if k <= 1 or len(s) == 0:
        return s
    n = len(s)
    zero = np.zeros((1, *s.shape[1:]))
    csum = np.concatenate((zero, np.cumsum(s, axis=0)))
    t = np.arange(n)
    if mode == "center":
        lo, hi = t - k // 2, t + (k - 1) // 2
    else:
        lo, hi = t - k + 1, t
    lo, hi = np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1)
    width = (hi - lo + 1).reshape(-1, *([1] * (s.ndim - 1)))
    return (csum[hi + 1] - csum[lo]) / width


def reduce_channels(ch: np.ndarray, how: str, topk: int = 3) -> np.ndarray:
    """Per-step score from per-channel values (T, C): ``mean``, ``max`` or ``topk`` mean."""
    ch = np.asarray(ch, dtype=np.float64)
    if ch.ndim == 1 or ch.shape[1] == 1:
        return ch.reshape(len(ch))
    if how == "mean":
        return ch.mean(axis=1)
    if how == "max":
        return ch.max(axis=1)
    k = min(topk, ch.shape[1])
    return np.sort(ch, axis=1)[:, -k:].mean(axis=1)


def channel_quantiles(cal_channels: np.ndarray, alpha: float) -> np.ndarray:
    """Each channel's split-conformal ``(1 - alpha)`` order statistic, floored above zero.

    These are the per-channel thresholds' scales: dividing a channel's error by its value
    makes a ratio of 1 the point where that channel alone would alarm at rate ``alpha``.

    Args:
        cal_channels: (n, C) post-processed calibration errors.
        alpha: the target false-alarm rate.

    Returns:
        (C,) positive scales.
    """
    x = np.asarray(cal_channels, dtype=np.float64)
    n = len(x)
    k = min(conformal_rank(n, alpha), n)
    q = np.partition(x, k - 1, axis=0)[k - 1]
    positive = q[q > 0]
    floor = _SCALE_FLOOR * float(np.median(positive)) if positive.size else 1.0
    return np.maximum(q, floor)


class Postprocessor:
    """Errors (T, C) -> step scores (T,), as configured; see the module docstring.

    Args:
        cfg: the ``postprocess`` section.
        channel_scale: per-channel threshold scales (``calibration.per_channel``), or None.
    """

    def __init__(self, cfg: PostprocessConfig, channel_scale: np.ndarray | None = None,
                 baseline: float | None = None) -> None:
        self.cfg = cfg
        self.channel_scale = (None if channel_scale is None
                              else np.asarray(channel_scale, dtype=np.float64))
        self.baseline = baseline

    @property
    def behind(self) -> int:
        """Earlier steps whose errors a step's value uses (smoothing, then the baseline)."""
        k = self.cfg.smooth
        smooth = k - 1 if self.cfg.smooth_mode == "trailing" else k // 2
        return smooth + self.cfg.baseline_window

    @property
    def ahead(self) -> int:
        """Later steps whose errors a step's smoothed value uses."""
        return 0 if self.cfg.smooth_mode == "trailing" else (self.cfg.smooth - 1) // 2

    def fit(self, cal_errors: list[np.ndarray], alpha: float | None = None) -> list[np.ndarray]:
        """Fit on calibration errors (one contiguous block per entity): the per-channel
        scales when ``alpha`` is given (``calibration.per_channel``), and the trailing
        baseline's stand-in (the median calibration score) when ``baseline_window`` is set.

        Returns:
            The calibration scores of each block, as :meth:`__call__` now gives them.
        """
        self.channel_scale, self.baseline = None, None
        ch = [smooth_scores(e, self.cfg.smooth, self.cfg.smooth_mode) for e in cal_errors]
        if alpha is not None:
            self.channel_scale = channel_quantiles(np.concatenate(ch), alpha)
            ch = [c / self.channel_scale for c in ch]
        scores = [self.reduce(c) for c in ch]
        if self.cfg.baseline_window:
            self.baseline = float(np.median(np.concatenate(scores)))
            scores = [self.relative(s) for s in scores]
        return scores

    def channels(self, errors: np.ndarray) -> np.ndarray:
        """Smoothed (and, with per-channel thresholds, scaled) channel values (T, C)."""
        ch = smooth_scores(errors, self.cfg.smooth, self.cfg.smooth_mode)
        if self.channel_scale is not None:
            ch = ch / self.channel_scale
        return ch

    def reduce(self, channels: np.ndarray) -> np.ndarray:
        """The step score of post-processed channel values (per-channel thresholds: max)."""
        how = "max" if self.channel_scale is not None else self.cfg.channel_reduce
        return reduce_channels(channels, how, self.cfg.channel_topk)

    def relative(self, scores: np.ndarray) -> np.ndarray:
        """Scores divided by their trailing baseline (unchanged with ``baseline_window`` 0)."""
        w = self.cfg.baseline_window
        if not w:
            return scores
        if self.baseline is None:
            raise RuntimeError("postprocess.baseline_window needs the calibration median; "
                               "fit the detector first")
        med = (pd.Series(scores).rolling(w, min_periods=max(1, w // 4)).median()
               .shift(1).to_numpy())
        med = np.where(np.isnan(med), self.baseline, med)
        return scores / np.maximum(med, self._floor)

    @property
    def _floor(self) -> float:
        return _SCALE_FLOOR * self.baseline if self.baseline else np.finfo(np.float64).tiny

    def __call__(self, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (T,), channels (T, C))`` of a contiguous block of errors."""
        ch = self.channels(errors)
        return self.relative(self.reduce(ch)), ch
