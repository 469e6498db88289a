"""The SQL sink's upsert is idempotent on event_id (SQLite; PostgreSQL in integration)."""

from datetime import datetime

import pandas as pd

from ae_anomaly.sinks import EventRecord, SqlSink


def record(i: int, end_minute: int = 5, scored: int = 0) -> EventRecord:
    return EventRecord(
        event_id=f"e{i}", entity=f"host-{i}", start_ts=datetime(2026, 1, 1, 0, 0),
        end_ts=datetime(2026, 1, 1, 0, end_minute), peak_ts=datetime(2026, 1, 1, 0, 1),
        peak_score=2.5, threshold=1.0, severity=2.5, p_value=0.001, n_points=3,
        top_channels={"cpu": 0.75, "mem": 0.25}, model_name="m", model_version="1",
        run_id="r", scored_at=datetime(2026, 1, 2, 0, scored),
    )


def test_rewrite_changes_nothing(tmp_path):
    sink = SqlSink(f"sqlite:///{tmp_path}/a.db")
    assert sink.write([record(1), record(2)]) == 2
    before = sink.read()
    # Same content scored again later: no row inserted, nothing changed, scored_at kept.
    assert sink.write([record(1, scored=9), record(2, scored=9)]) == 0
    pd.testing.assert_frame_equal(sink.read(), before)
    assert before.top_channels.iloc[0] == {"cpu": 0.75, "mem": 0.25}


def test_changed_event_is_updated_in_place(tmp_path):
    sink = SqlSink(f"sqlite:///{tmp_path}/a.db")
    sink.write([record(1)])
    assert sink.write([record(1, end_minute=9, scored=7)]) == 1
    df = sink.read()
    assert len(df) == 1
    assert df.end_ts.iloc[0] == pd.Timestamp("2026-01-01 00:09")
    assert df.scored_at.iloc[0] == pd.Timestamp("2026-01-02 00:07")


def test_empty_write(tmp_path):
    assert SqlSink(f"sqlite:///{tmp_path}/a.db").write([]) == 0


def test_threshold_state_is_written_with_the_increment(tmp_path):
    from ae_anomaly.records import ThresholdState, Watermark

    sink = SqlSink(f"sqlite:///{tmp_path}/a.db")
    assert sink.read_threshold_state("m", "host-1") is None
    through = datetime(2026, 1, 1, 0, 3)
    st = ThresholdState(state={"alpha_t": 0.01, "steps": 4, "window": [0.5, 1.25]},
                        through=through, model_version="1")
    wm = Watermark(resume_after=through, scored_through=datetime(2026, 1, 1, 0, 9))
    sink.write_increment("m", "host-1", [record(1)], None, None, wm, threshold_state=st)
    got = sink.read_threshold_state("m", "host-1")
    assert (got.state, got.through, got.model_version) == (st.state, through, "1")
    # Without a state the stored one is left alone.
    sink.write_increment("m", "host-1", [record(1)], None, None, wm)
    assert sink.read_threshold_state("m", "host-1").state == st.state
