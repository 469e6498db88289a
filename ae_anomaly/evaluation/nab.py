"""The Numenta Anomaly Benchmark (NAB) scorer.

A vectorised re-implementation of the scoring rules of NAB v1.x (Lavin & Ahmad, 2015;
``nab/sweeper.py`` and ``nab/runner.py`` in github.com/numenta/NAB) for *binary* detections.
NAB itself sweeps a threshold over continuous anomaly scores and keeps the best one per
profile; here the caller supplies the detections, so no threshold is optimised.

Per data file, with anomaly windows ``[start, end]`` (inclusive, in row indices ``L..R``,
width ``w = R - L + 1``) and the scaled sigmoid ``S(x) = 2 / (1 + exp(5 x)) - 1``
(``S(x) = -1`` for ``x > 3``):

* Rows before the probationary length ``min(floor(f * n), f * 5000)`` (``f = 0.15``) are
  ignored entirely: detections there count for nothing, and a window lying wholly inside
  the probationary period is not scored at all.
* True positive: the *earliest* scored detection ``i`` in a window earns
  ``tpWeight * S(-(R - i + 1) / w) / S(-1)``, i.e. exactly ``tpWeight`` at the window start,
  decaying to ``tpWeight * S(-1 / w) / S(-1)`` at its end. Further detections in the same
  window add nothing.
* False negative: each scored window without a detection adds ``-fnWeight``.
* False positive: every detection outside all windows adds ``fpWeight * S((i - R') / (w' - 1))``
  where ``R'``/``w'`` belong to the closest preceding window, or ``-fpWeight`` when no window
  precedes it.

The raw scores are summed over files and normalised per profile as
``100 * (raw - null) / (perfect - null)``, where *null* is the detector that never fires and
*perfect* the one that fires exactly at the first row of every window, both scored by the
same code.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PROFILES",
    "load_nab_windows",
    "nab_scores",
    "probationary_length",
    "scaled_sigmoid",
    "score_file",
]

Window = tuple[np.datetime64, np.datetime64]

#: NAB's application profiles (``config/profiles.json``): cost-matrix weights.
PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0},
    "reward_low_fp": {"tpWeight": 1.0, "fpWeight": 0.22, "fnWeight": 1.0, "tnWeight": 1.0},
    "reward_low_fn": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 2.0, "tnWeight": 1.0},
}

#: NAB caps the probationary period at ``fraction * 5000`` rows (``nab.util.getProbationPeriod``).
_PROBATION_CAP_ROWS = 5000


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's ``scaledSigmoid``: ``2 / (1 + exp(5 x)) - 1``, and ``-1`` for ``x > 3``.

    Args:
        position: relative position(s); -1 is a window's left edge, 0 its right edge,
            positive values lie after the window.

    Returns:
        Values in ``(-1, 1)`` (exactly -1 beyond position 3), same shape as ``position``.
    """
    x = np.asarray(position, dtype=float)
    # 2 / (1 + exp(5x)) - 1 == -tanh(2.5 x), which does not overflow for large x
    return np.where(x > 3.0, -1.0, -np.tanh(2.5 * x))


def probationary_length(n_rows: int, probationary_fraction: float = 0.15) -> int:
    """Number of leading rows NAB excludes from scoring (and lets detectors learn on).

    ``min(floor(fraction * n_rows), fraction * 5000)``, rounded up to a row count, as in
    ``nab.util.getProbationPeriod`` (rows with index ``>= `` that value are scored).

    Args:
        n_rows: rows in the data file.
        probationary_fraction: NAB's ``probationaryPercent`` (0.15).

    Returns:
        The index of the first scored row.
    """
    if not 0.0 <= probationary_fraction < 1.0:
        raise ValueError(f"probationary_fraction must be in [0, 1), got {probationary_fraction}")
    limit = min(
        math.floor(probationary_fraction * n_rows),
        probationary_fraction * _PROBATION_CAP_ROWS,
    )
    return int(math.ceil(limit))


def _window_indices(timestamps: np.ndarray, windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(left, right)`` of each window, inclusive, sorted by position.

    Follows NAB's sweeper, which works on row positions: a window is entered at the row whose
    timestamp equals its start and left at the next row whose timestamp equals its end (NAB's
    windows are aligned to data timestamps). When a limit matches no row exactly, the window
    starts at the first row at or after ``start`` and ends at the last row before the
    timestamps first exceed ``end``. Row order is kept as given, so NAB files with repeated
    or backward-stepping timestamps (daylight-saving artefacts) are scored as NAB scores them.
    Windows covering no row are dropped with a warning; overlapping windows are rejected.
    """
    n = timestamps.size
    lefts: list[int] = []
    rights: list[int] = []
    dropped = 0
    for start, end in windows:
        start64, end64 = np.datetime64(start, "ns"), np.datetime64(end, "ns")
        if end64 < start64:
            raise ValueError(f"window ({start}, {end}) ends before it starts")
        exact = np.flatnonzero(timestamps == start64)
        after = np.flatnonzero(timestamps >= start64)
        if exact.size:
            left = int(exact[0])
        elif after.size:
            left = int(after[0])
        else:
            dropped += 1
            continue
        rest = timestamps[left:]
        exact_end = np.flatnonzero(rest == end64)
        beyond = np.flatnonzero(rest > end64)
        if exact_end.size:
            right = left + int(exact_end[0])
        elif beyond.size:
            right = left + int(beyond[0]) - 1
        else:
            right = n - 1
        if right < left:
            dropped += 1
            continue
        lefts.append(left)
        rights.append(right)
    if dropped:
        logger.warning("%d of %d NAB windows contain no row and are ignored", dropped, len(windows))
    left_arr = np.asarray(lefts, dtype=np.int64)
    right_arr = np.asarray(rights, dtype=np.int64)
    order = np.argsort(left_arr, kind="stable")
    left_arr, right_arr = left_arr[order], right_arr[order]
    if np.any(left_arr[1:] <= right_arr[:-1]):
        raise ValueError("NAB windows must not overlap")
    return left_arr, right_arr


def score_file(
    timestamps: np.ndarray,
    detections: np.ndarray,
    windows: list[Window],
    profile: Mapping[str, float],
    probationary_fraction: float = 0.15,
) -> float:
    """Raw NAB score of one data file.

    Args:
        timestamps: ``datetime64`` timestamps of the file's rows, in file order (NAB scores
            by row position; windows are located as described in the module docstring).
        detections: bool (or 0/1) per row, True where the detector fires.
        windows: anomaly windows ``(start, end)``, inclusive, as ``datetime64``.
        profile: cost matrix with keys ``tpWeight``, ``fpWeight`` and ``fnWeight``
            (one of :data:`PROFILES`).
        probationary_fraction: leading share of rows that is not scored.

    Returns:
        The sum of the TP, FP and FN contributions described in the module docstring.

    Raises:
        ValueError: on mismatched lengths or overlapping windows.
    """
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    det = np.asarray(detections)
    if ts.ndim != 1 or det.ndim != 1 or ts.shape != det.shape:
        raise ValueError(
            f"timestamps and detections must be 1-D of equal length, got {ts.shape}, {det.shape}"
        )
    det = det.astype(bool)
    tp_w, fp_w, fn_w = (float(profile[k]) for k in ("tpWeight", "fpWeight", "fnWeight"))

    n = ts.size
    first_scored = probationary_length(n, probationary_fraction)
    left, right = _window_indices(ts, windows)
    width = right - left + 1

    # detections that count: outside the probationary period
    idx = np.flatnonzero(det)
    idx = idx[idx >= first_scored]

    # windows wholly inside the probationary period are not scored (NAB drops their rows)
    scored_window = right >= first_scored

    # --- true positives / false negatives: earliest scored detection in each window.
    # Padding idx with a sentinel past the last row keeps the look-up vectorised.
    padded = np.append(idx, n)
    first_in = padded[np.searchsorted(idx, left, side="left")]
    has_tp = (first_in <= right) & scored_window
    tp_pos = -(right[has_tp] - first_in[has_tp] + 1) / width[has_tp]
    max_tp = float(scaled_sigmoid(-1.0))
    tp_score = float(np.sum(tp_w * scaled_sigmoid(tp_pos) / max_tp))
    n_fn = int(np.count_nonzero(scored_window & ~has_tp))
    fn_score = -fn_w * n_fn

    # --- false positives: detections in no window, scored against the closest preceding one
    k = np.searchsorted(left, idx, side="right") - 1  # last window starting at/before i; -1: none
    k_safe = np.maximum(k, 0)
    if left.size:
        outside = (k < 0) | (idx > right[k_safe])
    else:
        outside = np.ones(idx.shape, dtype=bool)
    fp_idx, k_fp, k_fp_safe = idx[outside], k[outside], k_safe[outside]
    if left.size:
        # NAB divides by (w - 1); one-row windows (which NAB cannot score) use 1 instead
        denom = np.maximum(width[k_fp_safe] - 1, 1).astype(float)
        fp_pos = (fp_idx - right[k_fp_safe]) / denom
        unweighted = np.where(k_fp >= 0, scaled_sigmoid(fp_pos), -1.0)
    else:
        unweighted = np.full(fp_idx.shape, -1.0)
    fp_score = float(np.sum(fp_w * unweighted))

    total = tp_score + fp_score + fn_score
    logger.debug(
        "NAB file score %.4f (tp %.4f over %d windows, fn %d, fp %.4f over %d detections)",
        total,
        tp_score,
        int(has_tp.sum()),
        n_fn,
        fp_score,
        int(fp_idx.size),
    )
    return total


def _perfect_detections(timestamps: np.ndarray, windows: list[Window]) -> np.ndarray:
    """Detections of NAB's perfect detector: one at the first row of every window."""
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    left, _ = _window_indices(ts, windows)
    det = np.zeros(ts.size, dtype=bool)
    det[left] = True
    return det


def nab_scores(
    files: Mapping[str, tuple[np.ndarray, np.ndarray, list[Window]]],
    probationary_fraction: float = 0.15,
) -> dict[str, float]:
    """Normalised NAB score of a detector over a corpus, per profile.

    ``100 * (raw - null) / (perfect - null)`` with raw scores summed over files; 0 is the
    detector that never fires and 100 the one that fires at the start of every window.

    Args:
        files: ``{name: (timestamps, detections, windows)}`` per data file, with the same
            meaning as in :func:`score_file`.
        probationary_fraction: leading share of each file that is not scored.

    Returns:
        ``{profile_name: normalised score}`` for every profile in :data:`PROFILES`;
        ``nan`` for a profile when the corpus has no scored window (perfect == null).
    """
    results: dict[str, float] = {}
    for profile_name, profile in PROFILES.items():
        raw = null = perfect = 0.0
        for timestamps, detections, windows in files.values():
            raw += score_file(timestamps, detections, windows, profile, probationary_fraction)
            null += score_file(
                timestamps,
                np.zeros(len(timestamps), dtype=bool),
                windows,
                profile,
                probationary_fraction,
            )
            perfect += score_file(
                timestamps,
                _perfect_detections(timestamps, windows),
                windows,
                profile,
                probationary_fraction,
            )
        if perfect == null:
            logger.warning("NAB %s score undefined: no scored window in the corpus", profile_name)
            results[profile_name] = float("nan")
        else:
            results[profile_name] = 100.0 * (raw - null) / (perfect - null)
        logger.info(
            "NAB %s: %.2f (raw %.4f, null %.4f, perfect %.4f over %d files)",
            profile_name,
            results[profile_name],
            raw,
            null,
            perfect,
            len(files),
        )
    return results


def load_nab_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's ``labels/combined_windows.json``.

    Args:
        path: the JSON file, mapping ``"<category>/<file>.csv"`` to a list of
            ``["YYYY-mm-dd HH:MM:SS[.ffffff]", "..."]`` windows.

    Returns:
        ``{relative_path: [(start, end), ...]}`` with ``datetime64[ns]`` limits; files
        without anomalies map to an empty list.
    """
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of file -> windows")
    out: dict[str, list[Window]] = {}
    for name, windows in raw.items():
        parsed: list[Window] = []
        for window in windows:
            if len(window) != 2:
                raise ValueError(f"{path}: window {window!r} of {name} is not [start, end]")
            start, end = (np.datetime64(str(t).strip().replace(" ", "T"), "ns") for t in window)
            if end < start:
                raise ValueError(f"{path}: window {window!r} of {name} ends before it starts")
            parsed.append((start, end))
        out[name] = parsed
    logger.debug("loaded NAB windows for %d files from %s", len(out), path)
    return out
