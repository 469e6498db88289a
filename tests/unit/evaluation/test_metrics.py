"""Hand-computed checks of the point-wise and event metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ae_anomaly.evaluation.metrics import (
    auc_pr,
    auc_roc,
    best_f1,
    evaluate,
    event_recall,
    false_alarm_rate,
    false_events_per_1000,
    point_adjust,
    precision_recall_f1,
    segments,
)

# index:             0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
PRED = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 1])
# true segments: [1, 3] and [6, 7]; predicted points: 2 (inside [1, 3]) and 9 (normal)


def test_segments() -> None:
    assert segments(LABELS) == [(1, 3), (6, 7)]
    assert segments(np.array([1, 1, 0, 1])) == [(0, 1), (3, 3)]
    assert segments(np.zeros(4, dtype=int)) == []
    assert segments(np.ones(3, dtype=bool)) == [(0, 2)]
    assert segments(np.array([], dtype=int)) == []


def test_precision_recall_f1_hand_computed() -> None:
    # TP = {2} = 1, FP = {9} = 1, FN = {1, 3, 6, 7} = 4
    # precision = 1 / (1 + 1) = 0.5
    # recall    = 1 / (1 + 4) = 0.2
    # F1        = 2 * 0.5 * 0.2 / (0.5 + 0.2) = 0.2 / 0.7 = 2/7
    p, r, f1 = precision_recall_f1(LABELS, PRED)
    assert p == pytest.approx(0.5)
    assert r == pytest.approx(0.2)
    assert f1 == pytest.approx(2 / 7)


def test_precision_recall_f1_undefined_is_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # no predictions: precision 0/0 -> 0, recall 0/5 = 0, F1 -> 0
        assert precision_recall_f1(LABELS, np.zeros(10, dtype=int)) == (0.0, 0.0, 0.0)
        # no positives at all: recall 0/0 -> 0; precision 0/1 = 0
        assert precision_recall_f1(np.zeros(3), np.array([0, 1, 0])) == (0.0, 0.0, 0.0)


def test_point_adjust_hand_computed() -> None:
    # segment [1, 3] contains the detection at 2 -> 1, 2, 3 all count as detected;
    # segment [6, 7] has no detection -> unchanged; the FP at 9 stays.
    adjusted = point_adjust(LABELS, PRED)
    np.testing.assert_array_equal(adjusted, [0, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    # adjusted: TP = {1, 2, 3} = 3, FP = {9} = 1, FN = {6, 7} = 2
    # precision = 3/4, recall = 3/5, F1 = 2 * 0.75 * 0.6 / (0.75 + 0.6) = 0.9 / 1.35 = 2/3
    p, r, f1 = precision_recall_f1(LABELS, adjusted)
    assert (p, r) == pytest.approx((0.75, 0.6))
    assert f1 == pytest.approx(2 / 3)


def test_point_adjust_edges() -> None:
    # a segment touching both array ends, detected at its last point
    np.testing.assert_array_equal(point_adjust(np.ones(4), np.array([0, 0, 0, 1])), [1, 1, 1, 1])
    # no true anomalies: predictions unchanged
    np.testing.assert_array_equal(point_adjust(np.zeros(3), np.array([1, 0, 1])), [1, 0, 1])
    # adjacent segments separated by one normal point are adjusted independently
    labels = np.array([1, 1, 0, 1, 1])
    np.testing.assert_array_equal(point_adjust(labels, np.array([0, 1, 0, 0, 0])), [1, 1, 0, 0, 0])


def test_event_recall_hand_computed() -> None:
    # tolerance 0: [1, 3] detected (point 2), [6, 7] not -> 1/2
    assert event_recall(LABELS, PRED) == pytest.approx(0.5)
    # tolerance 1: [6, 7] widens to [5, 8], still no detection -> 1/2
    assert event_recall(LABELS, PRED, tolerance=1) == pytest.approx(0.5)
    # tolerance 2: [6, 7] widens to [4, 9], which holds the detection at 9 -> 2/2
    assert event_recall(LABELS, PRED, tolerance=2) == pytest.approx(1.0)
    # no true segments -> nan
    assert math.isnan(event_recall(np.zeros(5), np.ones(5)))
    with pytest.raises(ValueError):
        event_recall(LABELS, PRED, tolerance=-1)


def test_false_alarm_rate_and_false_events() -> None:
    # normal points: 0, 4, 5, 8, 9 (5 of them); predicted among them: 9 -> 1/5 = 0.2
    assert false_alarm_rate(LABELS, PRED) == pytest.approx(0.2)
    # predicted segments: [2, 2] (overlaps [1, 3]) and [9, 9] (overlaps nothing)
    # -> 1 false event per 5 normal points = 1000 * 1 / 5 = 200 per 1,000
    assert false_events_per_1000(LABELS, PRED) == pytest.approx(200.0)
    # a predicted run that merely touches a true segment is not a false event:
    # labels [0,0,1,1,0,0], pred [0,1,1,0,0,1]: runs [1,2] (overlaps) and [5,5] (false);
    # normal points 0,1,4,5 -> 1000 * 1 / 4 = 250
    labels = np.array([0, 0, 1, 1, 0, 0])
    pred = np.array([0, 1, 1, 0, 0, 1])
    assert false_events_per_1000(labels, pred) == pytest.approx(250.0)
    # all-anomalous labels: no normal points -> nan
    assert math.isnan(false_alarm_rate(np.ones(3), np.ones(3)))
    assert math.isnan(false_events_per_1000(np.ones(3), np.ones(3)))


# a 5-point ranking example
L5 = np.array([0, 1, 0, 1, 1])
S5 = np.array([0.1, 0.9, 0.8, 0.3, 0.7])
# descending scores: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.3 (pos), 0.1 (neg)


def test_auc_pr_hand_computed_average_precision() -> None:
    # AP = sum over positives of (recall step) * precision at that rank:
    #   rank 1 (0.9): P = 1/1, recall 0 -> 1/3
    #   rank 3 (0.7): P = 2/3, recall 1/3 -> 2/3
    #   rank 4 (0.3): P = 3/4, recall 2/3 -> 1
    # AP = 1/3 * (1 + 2/3 + 3/4) = 1/3 * 29/12 = 29/36
    assert auc_pr(L5, S5) == pytest.approx(29 / 36)


def test_auc_roc_hand_computed() -> None:
    # positive scores {0.9, 0.7, 0.3} vs negative scores {0.8, 0.1}: 6 pairs
    # correctly ordered: 0.9>0.8, 0.9>0.1, 0.7>0.1, 0.3>0.1 -> 4 of 6 = 2/3
    assert auc_roc(L5, S5) == pytest.approx(2 / 3)


def test_best_f1_hand_computed() -> None:
    # threshold (pred = score >= t): precision, recall -> F1
    #   0.9: 1/1, 1/3 -> 0.5
    #   0.8: 1/2, 1/3 -> 0.4
    #   0.7: 2/3, 2/3 -> 2/3
    #   0.3: 3/4, 3/3 -> 2 * 0.75 / 1.75 = 6/7   <- best
    #   0.1: 3/5, 3/3 -> 0.75
    f1, threshold = best_f1(L5, S5)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.3)


def test_best_f1_is_an_upper_bound_over_thresholds() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.1).astype(int)
    scores = rng.normal(size=500) + 1.5 * labels
    best, threshold = best_f1(labels, scores)
    assert precision_recall_f1(labels, scores >= threshold)[2] == pytest.approx(best)
    for t in np.quantile(scores, np.linspace(0, 1, 41)):
        assert best >= precision_recall_f1(labels, scores >= t)[2] - 1e-12


@pytest.mark.parametrize("labels", [np.zeros(5), np.ones(5)])
def test_single_class_gives_nan(labels: np.ndarray) -> None:
    assert math.isnan(auc_roc(labels, S5))
    assert math.isnan(auc_pr(labels, S5))


def test_best_f1_without_positives_is_nan() -> None:
    f1, threshold = best_f1(np.zeros(5), S5)
    assert math.isnan(f1) and math.isnan(threshold)


@pytest.mark.parametrize("func", [auc_roc, auc_pr, best_f1])
def test_nan_scores_rejected(func) -> None:
    scores = S5.copy()
    scores[2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        func(L5, scores)


def test_invalid_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        precision_recall_f1(np.array([0, 2, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="same length"):
        precision_recall_f1(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="1-D"):
        point_adjust(np.zeros((2, 2)), np.zeros((2, 2)))


def test_evaluate_keys_and_values() -> None:
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.1, 0.2, 0.4, 0.5, 0.1, 0.8])
    result = evaluate(LABELS, scores, PRED)
    assert list(result) == [
        "auc_roc",
        "auc_pr",
        "precision",
        "recall",
        "f1",
        "f1_pa",
        "best_f1",
        "event_recall",
        "far_normal",
    ]
    assert all(isinstance(v, float) for v in result.values())
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(0.2)
    assert result["f1"] == pytest.approx(2 / 7)
    assert result["f1_pa"] == pytest.approx(2 / 3)
    assert result["event_recall"] == pytest.approx(0.5)
    assert result["far_normal"] == pytest.approx(0.2)
    assert result["best_f1"] >= result["f1"]
    assert result["auc_roc"] == pytest.approx(auc_roc(LABELS, scores))
