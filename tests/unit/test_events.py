"""Event rules: k of n, merge gap, min duration, cooldown, aggregates and chunk invariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.calibration import ConformalThreshold
from ae_anomaly.config import EventsConfig
from ae_anomaly.events import Event, EventBuilder, event_mask, find_events

THR = 1.0


def _series(n_steps: int, flagged: list[int], n_channels: int = 2):
    """Scores of 0 with 2 + idx at the flagged steps; channel errors follow the score."""
    scores = np.zeros(n_steps)
    scores[flagged] = 2.0 + np.asarray(flagged, dtype=float)
    ts = np.datetime64("2024-01-01T00:00") + np.arange(n_steps) * np.timedelta64(1, "m")
    errs = np.outer(scores, np.arange(1, n_channels + 1, dtype=float))
    return ts, scores, errs


def _spans(n_steps: int, flagged: list[int], **rules) -> list[tuple[int, int]]:
    ts, scores, errs = _series(n_steps, flagged)
    events = find_events("e", ts, scores, errs, THR, EventsConfig(**rules))
    return [(e.start_idx, e.end_idx) for e in events]


# --------------------------------------------------------------------------- each rule
def test_every_flagged_point_alarms_with_k_n_1() -> None:
    assert _spans(20, [2, 3, 5, 12], merge_gap=0) == [(2, 3), (5, 5), (12, 12)]


def test_merge_gap() -> None:
    # 1 non-alarm step between 3 and 5, 6 between 5 and 12
    assert _spans(20, [2, 3, 5, 12], merge_gap=1) == [(2, 5), (12, 12)]
    assert _spans(20, [2, 3, 5, 12], merge_gap=5) == [(2, 5), (12, 12)]
    assert _spans(20, [2, 3, 5, 12], merge_gap=6) == [(2, 12)]


def test_k_of_n() -> None:
    # k=2 of n=3: step 1 (0, 1 flagged), step 2 (0, 2 flagged in 0..2) alarm; isolated 6
    # does not; 10 and 12 do at 12 (10 and 12 in 10..12)
    spans = _spans(20, [0, 1, 6, 10, 12], k=2, n=3, merge_gap=0)
    assert spans == [(1, 1), (12, 12)]
    assert _spans(20, [0, 2], k=2, n=3, merge_gap=0) == [(2, 2)]
    assert _spans(20, [0, 3], k=2, n=3, merge_gap=0) == []
    # a run of 5 flagged points alarms from its 3rd point on with k=3, n=5
    assert _spans(20, [4, 5, 6, 7, 8], k=3, n=5, merge_gap=0) == [(6, 8)]


def test_min_duration() -> None:
    flagged = [2, 3, 4, 10, 15, 16]
    assert _spans(30, flagged, merge_gap=0, min_duration=2) == [(2, 4), (15, 16)]
    assert _spans(30, flagged, merge_gap=0, min_duration=3) == [(2, 4)]


def test_cooldown_suppresses_not_merges() -> None:
    # event [2, 2] closes; alarms at steps <= 2 + 5 = 7 are suppressed; 8 starts a new one
    assert _spans(20, [2, 5, 7, 8, 9], merge_gap=0, cooldown=5) == [(2, 2), (8, 9)]
    # a suppressed alarm does not extend the cooldown
    assert _spans(20, [2, 7, 8], merge_gap=0, cooldown=5) == [(2, 2), (8, 8)]
    # without cooldown they are separate events
    assert _spans(20, [2, 5, 8], merge_gap=0) == [(2, 2), (5, 5), (8, 8)]


def test_dropped_events_start_no_cooldown() -> None:
    assert _spans(20, [2, 4, 5], merge_gap=0, min_duration=2, cooldown=10) == [(4, 5)]


# --------------------------------------------------------------------------- aggregates
def test_event_aggregates_and_timestamps() -> None:
    n = 30
    scores = np.zeros(n)
    scores[[5, 6, 8]] = [2.0, 9.0, 3.0]
    errs = np.zeros((n, 3))
    errs[5] = [1.0, 0.0, 0.0]
    errs[6] = [6.0, 2.0, 1.0]
    errs[8] = [1.0, 0.0, 0.0]
    errs[20] = [100.0, 100.0, 100.0]  # unflagged: not counted
    ts = pd.date_range("2024-01-01", periods=n, freq="min")
    [ev] = find_events("srv-1", ts, scores, errs, THR, EventsConfig(merge_gap=2))
    assert (ev.start_idx, ev.end_idx, ev.peak_idx) == (5, 8, 6)
    assert ev.start_ts == ts[5] and ev.end_ts == ts[8] and ev.peak_ts == ts[6]
    assert isinstance(ev.start_ts, pd.Timestamp)
    assert ev.peak_score == 9.0 and ev.n_flagged == 3 and ev.length == 4
    np.testing.assert_array_equal(ev.channel_error, [8.0, 2.0, 1.0])
    assert ev.min_p_value is None
    assert ev.channel_shares(["a", "b", "c"]) == {"a": 0.7273, "b": 0.1818, "c": 0.0909}
    assert list(ev.channel_shares(["a", "b", "c"], top=2)) == ["a", "b"]
    with pytest.raises(ValueError, match="channel names"):
        ev.channel_shares(["a"])
    # a Series is read positionally, whatever its index
    series = pd.Series(ts, index=np.arange(n) + 1000)
    [ev2] = find_events("srv-1", series, scores, errs, THR, EventsConfig(merge_gap=2))
    assert ev2 == ev


def test_flagged_non_alarm_points_inside_event_are_counted() -> None:
    # k=2 of n=2: alarms at 1 and 6; 3 and 5 are flagged but do not alarm; 0 precedes start
    ts, scores, errs = _series(20, [0, 1, 3, 5, 6])
    [ev] = find_events("e", ts, scores, errs, THR, EventsConfig(k=2, n=2, merge_gap=4))
    assert (ev.start_idx, ev.end_idx) == (1, 6)
    assert ev.n_flagged == 4
    np.testing.assert_allclose(ev.channel_error, errs[[1, 3, 5, 6]].sum(axis=0))
    # with a smaller gap, 1 and 6 are separate; flagged 3 and 5 are then in no event
    evs = find_events("e", ts, scores, errs, THR, EventsConfig(k=2, n=2, merge_gap=3))
    assert [(e.start_idx, e.end_idx, e.n_flagged) for e in evs] == [(1, 1, 1), (6, 6, 1)]


def test_min_p_value() -> None:
    rule = ConformalThreshold(alpha=0.01).fit(np.random.default_rng(0).normal(size=999))
    ts, scores, errs = _series(40, [10, 11, 30])
    scores = scores / 10 + 2.0  # 2.0 everywhere, above 2 at the flagged steps
    evs = find_events("e", ts, scores, errs, 2.0, EventsConfig(merge_gap=0), rule.p_values)
    assert [e.min_p_value for e in evs] == [
        pytest.approx(float(rule.p_values(scores[[10, 11]]).min())),
        pytest.approx(float(rule.p_values(scores[[30]])[0])),
    ]
    assert all(e.min_p_value == pytest.approx(1 / 1000) for e in evs)


def test_push_returns_events_once_closed() -> None:
    ts, scores, errs = _series(30, [3, 4])
    b = EventBuilder("e", EventsConfig(merge_gap=5), THR)
    assert b.push(ts[:5], scores[:5], errs[:5]) == []
    assert b.push(ts[5:10], scores[5:10], errs[5:10]) == []  # step 9 = 4 + 5: still open
    [ev] = b.push(ts[10:11], scores[10:11], errs[10:11])  # 6 quiet steps > merge_gap
    assert (ev.start_idx, ev.end_idx) == (3, 4)
    assert b.flush() == []
    # the open event is returned by flush at the end of data
    b2 = EventBuilder("e", EventsConfig(merge_gap=5), THR)
    assert b2.push(ts[:8], scores[:8], errs[:8]) == []
    assert [(e.start_idx, e.end_idx) for e in b2.flush()] == [(3, 4)]


def test_push_validates_shapes() -> None:
    ts, scores, errs = _series(10, [3])
    b = EventBuilder("e", EventsConfig(), THR)
    with pytest.raises(ValueError, match="channel_errors"):
        b.push(ts, scores, errs[:5])
    with pytest.raises(ValueError, match="timestamps"):
        b.push(ts[:5], scores, errs)
    b.push(ts, scores, errs)
    with pytest.raises(ValueError, match="channels"):
        b.push(ts, scores, np.zeros((10, 5)))
    assert b.push(ts[:0], scores[:0], errs[:0]) == []


def test_event_mask() -> None:
    ts, scores, errs = _series(20, [2, 3, 5, 12])
    evs = find_events("e", ts, scores, errs, THR, EventsConfig(merge_gap=1))
    mask = event_mask(20, evs)
    assert np.flatnonzero(mask).tolist() == [2, 3, 4, 5, 12]
    assert not event_mask(5, []).any()
    # overlapping or out-of-range events are handled
    evs2 = [evs[0], evs[0], evs[1]]
    assert np.flatnonzero(event_mask(13, evs2)).tolist() == [2, 3, 4, 5, 12]
    assert np.flatnonzero(event_mask(4, evs2)).tolist() == [2, 3]


# --------------------------------------------------------------------------- chunk invariance
def _reference(scores, errs, threshold, rules: EventsConfig, p_fn=None):
    """Straightforward whole-series implementation, step by step, for comparison."""
    flags = scores > threshold
    counts = np.array([flags[max(0, t - rules.n + 1) : t + 1].sum() for t in range(len(flags))])
    alarms = np.flatnonzero(flags & (counts >= rules.k))
    spans: list[tuple[int, int]] = []
    blocked, cur = -1, None
    for t in alarms:
        if cur is not None and t - cur[1] - 1 <= rules.merge_gap:
            cur[1] = t
            continue
        if cur is not None and cur[1] - cur[0] + 1 >= rules.min_duration:
            spans.append(tuple(cur))
            blocked = cur[1] + rules.cooldown
        cur = None if t <= blocked else [t, t]
    if cur is not None and cur[1] - cur[0] + 1 >= rules.min_duration:
        spans.append(tuple(cur))
    out = []
    for s, e in spans:
        idx = s + np.flatnonzero(flags[s : e + 1])
        peak = s + int(np.argmax(scores[s : e + 1]))
        p = float(p_fn(scores[idx]).min()) if p_fn is not None else None
        out.append((s, e, peak, len(idx), errs[idx].sum(axis=0), p))
    return out


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    n_steps = int(rng.integers(300, 1500))
    scores = rng.exponential(size=n_steps)
    # a few anomalous bursts on top of isolated exceedances
    for start in rng.integers(0, n_steps, size=rng.integers(1, 8)):
        scores[start : start + rng.integers(1, 40)] += rng.exponential(4.0)
    errs = rng.uniform(size=(n_steps, 4)) * scores[:, None]
    n = int(rng.integers(1, 6))
    rules = EventsConfig(
        k=int(rng.integers(1, n + 1)),
        n=n,
        merge_gap=int(rng.integers(0, 8)),
        min_duration=int(rng.integers(1, 5)),
        cooldown=int(rng.integers(0, 30)),
    )
    ts = pd.date_range("2024-01-01", periods=n_steps, freq="30s")
    return rng, ts, scores, errs, rules


def _chunked(ts, scores, errs, threshold, rules, sizes, p_fn=None) -> list[Event]:
    b = EventBuilder("x", rules, threshold, p_fn)
    out: list[Event] = []
    pos, i = 0, 0
    while pos < len(scores):
        size = sizes[i % len(sizes)]
        out += b.push(ts[pos : pos + size], scores[pos : pos + size], errs[pos : pos + size])
        pos, i = pos + size, i + 1
    return out + b.flush()


@pytest.mark.parametrize("seed", range(12))
def test_chunking_does_not_change_events(seed: int) -> None:
    rng, ts, scores, errs, rules = _random_case(seed)
    threshold = float(np.quantile(scores, 0.9))
    p_fn = ConformalThreshold(alpha=0.01).fit(rng.exponential(size=2_000)).p_values
    whole = find_events("x", ts, scores, errs, threshold, rules, p_fn)
    random_sizes = rng.integers(1, 60, size=50).tolist()
    for sizes in ([1], [7], [100], [3, 1, 250, 2], random_sizes):
        assert _chunked(ts, scores, errs, threshold, rules, sizes, p_fn) == whole

    ref = _reference(scores, errs, threshold, rules, p_fn)
    got = [
        (e.start_idx, e.end_idx, e.peak_idx, e.n_flagged, e.channel_error, e.min_p_value)
        for e in whole
    ]
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g[:4] == r[:4]
        np.testing.assert_allclose(g[4], r[4])
        assert g[5] == r[5]
    for e in whole:
        assert e.start_ts == ts[e.start_idx] and e.end_ts == ts[e.end_idx]
        assert e.peak_score == scores[e.peak_idx]


def test_random_cases_exercise_the_rules() -> None:
    # the chunk-invariance cases above are not vacuous: together they hold many events
    total = 0
    for seed in range(12):
        _, ts, scores, errs, rules = _random_case(seed)
        total += len(find_events("x", ts, scores, errs, np.quantile(scores, 0.9), rules))
    assert total >= 50


def test_reused_input_buffers_do_not_leak_into_open_events() -> None:
    # a caller may refill the same arrays for every chunk
    _, ts, scores, errs, _ = _random_case(3)
    rules = EventsConfig(k=2, n=3, merge_gap=6)
    threshold = float(np.quantile(scores, 0.95))
    whole = find_events("x", ts, scores, errs, threshold, rules)
    b = EventBuilder("x", rules, threshold)
    buf_s, buf_e = np.empty(10), np.empty((10, errs.shape[1]))
    got: list[Event] = []
    for pos in range(0, len(scores), 10):
        m = len(scores[pos : pos + 10])
        buf_s[:m], buf_e[:m] = scores[pos : pos + 10], errs[pos : pos + 10]
        got += b.push(ts[pos : pos + m], buf_s[:m], buf_e[:m])
    assert got + b.flush() == whole
