"""Point-wise and event-level anomaly-detection metrics.

All functions take 1-D numpy arrays of equal length: ``labels`` (ground truth, 1 = anomalous),
``scores`` (continuous anomaly scores, higher = more anomalous) and ``pred`` (binary
detections). Binary inputs may be ``bool`` or numeric arrays holding only 0 and 1.

Conventions:

* Ratios whose denominator is zero are ``0.0`` for precision/recall/F1 (the scikit-learn
  ``zero_division=0`` convention) and ``nan`` for quantities that are genuinely undefined
  (AUCs with a single label class, event recall without true events, rates without normal
  points).
* ``best_f1`` is an *oracle*: it picks the threshold with the test labels and is therefore
  an optimistic upper bound, not a deployable result.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

logger = logging.getLogger(__name__)

__all__ = [
    "auc_pr",
    "auc_roc",
    "best_f1",
    "evaluate",
    "event_recall",
    "false_alarm_rate",
    "false_events_per_1000",
    "point_adjust",
    "precision_recall_f1",
    "segments",
]


# --------------------------------------------------------------------------- validation


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D bool array, rejecting anything but 0/1 entries."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be bool or numeric 0/1, got dtype {arr.dtype}")
    is_binary = (arr == 0) | (arr == 1)
    if not np.all(is_binary):
        bad = int(np.flatnonzero(~is_binary)[0])
        raise ValueError(f"{name} must contain only 0 and 1; found {arr[bad]!r} at index {bad}")
    return arr.astype(bool)


def _as_scores(values: np.ndarray, name: str = "scores") -> np.ndarray:
    """Return ``values`` as a 1-D float array, rejecting NaN and infinite entries."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    finite = np.isfinite(arr)
    if not np.all(finite):
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name} must be finite; found {arr[bad]!r} at index {bad}")
    return arr


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def _single_class(labels: np.ndarray) -> bool:
    return labels.size == 0 or bool(labels.all()) or not bool(labels.any())


# --------------------------------------------------------------------------- ranking metrics


def auc_roc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve.

    Args:
        labels: ground truth, 0/1.
        scores: anomaly scores, higher = more anomalous; must be finite.

    Returns:
        ROC AUC, or ``nan`` when ``labels`` hold only one class.

    Raises:
        ValueError: on NaN/infinite scores, non-binary labels or mismatched lengths.
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores)
    _check_same_length(labels=y, scores=s)
    if _single_class(y):
        logger.debug("auc_roc undefined: labels hold a single class")
        return float("nan")
    return float(roc_auc_score(y, s))


def auc_pr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, as average precision (scikit-learn).

    ``AP = sum_n (R_n - R_{n-1}) * P_n`` over the descending score thresholds (no
    interpolation).

    Args:
        labels: ground truth, 0/1.
        scores: anomaly scores, higher = more anomalous; must be finite.

    Returns:
        Average precision, or ``nan`` when ``labels`` hold only one class.

    Raises:
        ValueError: on NaN/infinite scores, non-binary labels or mismatched lengths.
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores)
    _check_same_length(labels=y, scores=s)
    if _single_class(y):
        logger.debug("auc_pr undefined: labels hold a single class")
        return float("nan")
    return float(average_precision_score(y, s))


# --------------------------------------------------------------------------- point-wise metrics


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def precision_recall_f1(labels: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1, without any adjustment.

    Args:
        labels: ground truth, 0/1.
        pred: binary detections, 0/1.

    Returns:
        ``(precision, recall, f1)``; each is ``0.0`` where its denominator is zero.
    """
    y = _as_binary(labels, "labels")
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, pred=p)
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    return _prf(tp, fp, fn)


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of 1s.

    Args:
        labels: 0/1 array.

    Returns:
        ``[(start, end_inclusive), ...]`` in increasing order.
    """
    starts, ends = _segment_bounds(_as_binary(labels, "labels"))
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _segment_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and inclusive end indices of the runs of True in a bool array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def point_adjust(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Point-adjust detections (Xu et al., 2018).

    For every contiguous true-anomaly segment, if any of its points is predicted, all of
    its points count as predicted. Predictions outside true segments are unchanged.

    Args:
        labels: ground truth, 0/1.
        pred: binary detections, 0/1.

    Returns:
        Adjusted detections as an ``int64`` 0/1 array of the same length.
    """
    y = _as_binary(labels, "labels")
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, pred=p)
    # segment id: 1..K inside true segments, 0 outside
    starts = y & ~np.concatenate(([False], y[:-1]))
    seg_id = np.cumsum(starts) * y
    hit = np.bincount(seg_id, weights=(p & y).astype(float), minlength=1) > 0
    hit[0] = False
    return (p | hit[seg_id]).astype(np.int64)


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Oracle F1: the best point-wise F1 over all thresholds ``pred = scores >= t``.

    This picks the threshold *using the test labels*, so it is an optimistic upper bound
    on what any threshold chosen without labels can reach; report it as such.

    Args:
        labels: ground truth, 0/1.
        scores: anomaly scores, higher = more anomalous; must be finite.

    Returns:
        ``(f1, threshold)``; ``(nan, nan)`` when there are no positive labels.
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores)
    _check_same_length(labels=y, scores=s)
    if not y.any():
        logger.debug("best_f1 undefined: no positive labels")
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # the last (precision=1, recall=0) point has no threshold
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------- event metrics


def event_recall(labels: np.ndarray, pred: np.ndarray, tolerance: int = 0) -> float:
    """Share of true anomaly segments that are detected.

    A segment ``[start, end]`` counts as detected when some predicted point lies in
    ``[start - tolerance, end + tolerance]``.

    Args:
        labels: ground truth, 0/1.
        pred: binary detections, 0/1.
        tolerance: slack in points on both sides of each segment (>= 0).

    Returns:
        Detected segments / true segments, or ``nan`` when there are no true segments.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    y = _as_binary(labels, "labels")
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, pred=p)
    starts, ends = _segment_bounds(y)
    if starts.size == 0:
        return float("nan")
    lo = np.maximum(starts - tolerance, 0)
    hi = np.minimum(ends + tolerance, y.size - 1)
    cum = np.concatenate(([0], np.cumsum(p)))
    detected = (cum[hi + 1] - cum[lo]) > 0
    return float(np.mean(detected))


def false_alarm_rate(labels: np.ndarray, pred: np.ndarray) -> float:
    """Share of normal (label-0) points that are predicted anomalous.

    Args:
        labels: ground truth, 0/1.
        pred: binary detections, 0/1.

    Returns:
        False positives / normal points, or ``nan`` when there are no normal points.
    """
    y = _as_binary(labels, "labels")
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, pred=p)
    n_normal = int(np.count_nonzero(~y))
    if n_normal == 0:
        return float("nan")
    return float(np.count_nonzero(p & ~y) / n_normal)


def false_events_per_1000(labels: np.ndarray, pred: np.ndarray) -> float:
    """False alarm events per 1,000 normal points.

    A false event is a contiguous run of predicted points that overlaps no true segment.

    Args:
        labels: ground truth, 0/1.
        pred: binary detections, 0/1.

    Returns:
        ``1000 * false_events / normal_points``, or ``nan`` when there are no normal points.
    """
    y = _as_binary(labels, "labels")
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, pred=p)
    n_normal = int(np.count_nonzero(~y))
    if n_normal == 0:
        return float("nan")
    starts, ends = _segment_bounds(p)
    cum = np.concatenate(([0], np.cumsum(y)))
    false_events = int(np.count_nonzero((cum[ends + 1] - cum[starts]) == 0))
    return float(1000.0 * false_events / n_normal)


# --------------------------------------------------------------------------- summary


def evaluate(labels: np.ndarray, scores: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All headline metrics for one detector on one series.

    Args:
        labels: ground truth, 0/1.
        scores: anomaly scores, higher = more anomalous; must be finite.
        pred: binary detections at the deployed threshold, 0/1.

    Returns:
        Dict with exactly the keys ``auc_roc``, ``auc_pr``, ``precision``, ``recall``,
        ``f1``, ``f1_pa`` (F1 after point adjustment), ``best_f1`` (oracle upper bound),
        ``event_recall`` (tolerance 0) and ``far_normal`` (false-alarm rate on normal points).
    """
    y = _as_binary(labels, "labels")
    s = _as_scores(scores)
    p = _as_binary(pred, "pred")
    _check_same_length(labels=y, scores=s, pred=p)
    precision, recall, f1 = precision_recall_f1(y, p)
    _, _, f1_pa = precision_recall_f1(y, point_adjust(y, p))
    return {
        "auc_roc": auc_roc(y, s),
        "auc_pr": auc_pr(y, s),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "f1_pa": f1_pa,
        "best_f1": best_f1(y, s)[0],
        "event_recall": event_recall(y, p),
        "far_normal": false_alarm_rate(y, p),
    }


def event_overlap(events: pd.DataFrame, truth: pd.DataFrame,
                  slack: pd.Timedelta | None = None) -> dict[str, Any]:
    """Detected events against known anomalies, matched by entity and time overlap.

    An anomaly is *found* when an event of its entity overlaps its span widened by
    ``slack`` on both sides; an event is *true* when it overlaps some anomaly's widened span.

    Args:
        events: one row per event with ``entity``, ``start_ts``, ``end_ts``.
        truth: one row per anomaly with ``entity``, ``kind`` and its span as ``start_ts``,
            ``end_ts`` (or ``start``, ``end``).
        slack: widen each anomaly by this much (default 0).

    Returns:
        ``found``, ``n_truth``, ``true_events``, ``n_events``, ``recall`` and
        ``precision`` (``nan`` when undefined), and ``recall_by_kind``.
    """
    slack = pd.Timedelta(0) if slack is None else slack
    t0 = "start_ts" if "start_ts" in truth.columns else "start"
    t1 = "end_ts" if "end_ts" in truth.columns else "end"
    spans: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for r in truth.itertuples(index=False):
        spans.setdefault(str(r.entity), []).append(
            (pd.Timestamp(getattr(r, t0)) - slack, pd.Timestamp(getattr(r, t1)) + slack))
    ev: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for r in events.itertuples(index=False):
        ev.setdefault(str(r.entity), []).append((pd.Timestamp(r.start_ts),
                                                 pd.Timestamp(r.end_ts)))

    def overlaps(a: tuple[pd.Timestamp, pd.Timestamp],
                 others: list[tuple[pd.Timestamp, pd.Timestamp]]) -> bool:
        return any(s <= a[1] and e >= a[0] for s, e in others)

    found_by_kind: dict[str, list[bool]] = {}
    for r in truth.itertuples(index=False):
        span = (pd.Timestamp(getattr(r, t0)) - slack, pd.Timestamp(getattr(r, t1)) + slack)
        found_by_kind.setdefault(str(getattr(r, "kind", "anomaly")), []).append(
            overlaps(span, ev.get(str(r.entity), [])))
    found = sum(sum(v) for v in found_by_kind.values())
    true_events = sum(overlaps(e, spans.get(ent, [])) for ent, es in ev.items() for e in es)
    n_truth, n_events = len(truth), len(events)
    return {"found": int(found), "n_truth": n_truth, "true_events": int(true_events),
            "n_events": n_events,
            "recall": found / n_truth if n_truth else float("nan"),
            "precision": true_events / n_events if n_events else float("nan"),
            "recall_by_kind": {k: float(np.mean(v)) for k, v in found_by_kind.items()}}
