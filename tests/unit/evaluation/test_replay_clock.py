"""The replay's simulated clock, its settings and its scoring of the anomaly table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.config import AppConfig
from ae_anomaly.errors import ConfigError
from ae_anomaly.evaluation.replay import (
    Series,
    Tick,
    evaluate_replay,
    event_mask_from_table,
    resolve_replay,
    schedule,
)


def test_ticks_cover_every_step_once_and_retrain_on_the_cadence():
    ticks = schedule(1000, 100, 60, 300)
    assert ticks[0] == Tick(100, 160, False)
    assert ticks[-1].end == 1000
    covered = np.concatenate([np.arange(t.start, t.end) for t in ticks])
    assert covered.tolist() == list(range(100, 1000))
    # retrains on the first tick reaching 400, 700 (and not 1000: 100 + 900 is the end)
    assert [t.end for t in ticks if t.retrain] == [400, 700, 1000]
    assert all(b.start == a.end for a, b in zip(ticks, ticks[1:], strict=False))


def test_retrain_cadence_not_a_multiple_of_the_tick():
    # every 100 steps with ticks of 60: due at 100, 200, 300 -> ticks ending 120, 240, 300
    ticks = schedule(300, 0 + 1, 60, 100)
    ends = [t.end for t in ticks if t.retrain]
    assert ends == [121, 241]
    # one tick longer than the retrain cadence retrains once, not twice
    assert [t.retrain for t in schedule(500, 100, 250, 100)] == [True, True]


def test_no_retrain_and_bad_history():
    assert not any(t.retrain for t in schedule(500, 100, 7, 0))
    with pytest.raises(ConfigError, match="nothing to replay"):
        schedule(100, 100, 10, 0)


def test_table_events_become_step_flags_and_metrics():
    ts = pd.date_range("2020-01-01", periods=200, freq="1min").to_numpy()
    frame = pd.DataFrame({"timestamp": ts, "entity": "a", "x": 0.0})
    labels = np.zeros(200, dtype=np.int64)
    labels[120:130] = 1  # one anomaly, found 3 steps late
    labels[170:175] = 1  # one missed
    events = pd.DataFrame({"start_ts": [ts[50], ts[123], ts[150]],
                           "end_ts": [ts[52], ts[131], ts[150]]})
    pred, spans = event_mask_from_table(ts, events)
    assert spans == [(50, 52), (123, 131), (150, 150)]
    assert pred.sum() == 3 + 9 + 1
    scores = np.arange(200, dtype=np.float64)
    rec = evaluate_replay(Series(frame, labels, 100), events, scores, AppConfig())
    assert rec["n_events"] == 2  # the one before eval_from does not count
    assert rec["event_precision"] == 0.5 and rec["event_recall"] == 0.5
    assert rec["delay_mean"] == 3.0 and rec["delays"] == [3]
    assert rec["recall"] == pytest.approx(7 / 15)
    assert rec["precision"] == pytest.approx(7 / 10)
    assert rec["days"] == pytest.approx(100 / 1440)
    assert rec["events_per_day"] == pytest.approx(2 / (100 / 1440))
    assert rec["budget_per_day"] == pytest.approx(0.001 * 1440)
    assert rec["far_normal_daily"] == [pytest.approx(3 / 85)]
    assert rec["detections"] == [123, 150]


def test_replay_settings_are_checked(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="unknown variant"):
        resolve_replay("smd", tmp_path, ["pca"], variants=["nope"])
    with pytest.raises(ConfigError, match="replay.score_every"):
        resolve_replay("smd", tmp_path, ["pca"], overrides=["replay.score_every=0"])
    with pytest.raises(ConfigError, match="unknown dataset"):
        resolve_replay("nsl-kdd", tmp_path, ["pca"])
    s = resolve_replay("smd", tmp_path, ["pca"], overrides=["replay.retrain_every=5",
                                                             "calibration.adaptive=aci"])
    assert s.replay.retrain_every == 5 and s.replay.train_window == 20160
    assert s.variants == ["aci"]


def test_nab_series_with_repeated_timestamps_gets_a_regular_clock():
    from ae_anomaly.evaluation.benchmark import EntityData
    from ae_anomaly.evaluation.replay import entity_series

    ts = pd.to_datetime(["2020-01-01 00:00", "2020-01-01 00:05", "2020-01-01 00:05",
                         "2020-01-01 00:10", "2020-01-01 00:15"])
    frame = pd.DataFrame({"timestamp": ts, "entity": "f.csv", "value": np.arange(5.0)})
    s = entity_series("nab", EntityData("f.csv", frame.iloc[:2], frame,
                                        np.array([0, 1, 0]), eval_from=2))
    assert s.frame.timestamp.diff().iloc[1:].eq(pd.Timedelta("5min")).all()
    assert s.frame.value.tolist() == [0, 1, 2, 3, 4] and s.labels.tolist() == [0, 0, 0, 1, 0]
    ok = entity_series("nab", EntityData("f.csv", frame.iloc[:2], frame.iloc[:2], np.array([]),
                                         eval_from=2))
    assert ok.frame.timestamp.tolist() == ts[:2].tolist()
