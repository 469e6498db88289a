"""Incremental scoring from watermarks: the same events as one pass over all the data.

Real SQLite and PostgreSQL (``db_url``), a real MLflow store with a tiny champion, the
landing folder and SQL sources, no mocks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import DateTime, Float, String, create_engine

from ae_anomaly.scoring.job import check_file_schema
from ae_anomaly.sources import FeatureSchemaError


def _reference(ops, store, tmp_path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """All the data in one drop, one run, into its own SQLite file."""
    root = tmp_path / "reference"
    url = f"sqlite:///{root}/ref.db"
    ops.drop(root / "landing", "all.csv", frame)
    ops.score_inprocess(ops.folder_config(store, root, url))
    return ops.read_events(url)


def test_incremental_runs_match_one_pass_with_late_data(db_url, store, ops, tmp_path):
    got = _incremental_matches_one_pass(db_url, store, ops, tmp_path)
    assert not got.is_open.any()


def test_incremental_with_smoothing_and_per_channel_thresholds(smoothed_store, ops, tmp_path):
    """Centred smoothing needs context on both sides of a chunk, per-channel thresholds
    change the score: runs with late data still write what one pass writes."""
    det = smoothed_store.detector
    assert det.context_after == det.window.length - 1 + 2  # smoothing 5, centred
    assert det.postprocessor_.channel_scale is not None
    _incremental_matches_one_pass(f"sqlite:///{tmp_path}/inc.db", smoothed_store, ops,
                                  tmp_path)


def _incremental_matches_one_pass(db_url, store, ops, tmp_path):
    score = store.data.score
    want = _reference(ops, store, tmp_path, score)
    assert len(want) >= 3
    raw = ops.folder_config(store, tmp_path, db_url)
    parts = ops.slices(score, 6)
    order = [0, 1, 3, 2, 4, 5]  # part 2 arrives after part 3: late data
    assert ops.score_inprocess(raw)["entities"] == 0  # nothing landed yet: not an error
    late = {}
    for i in order:
        ops.drop(tmp_path / "landing", f"drop{i}.csv", parts[i])
        out = ops.score_inprocess(raw, job=f"run{i}")
        late.update(out["late"])
    got = ops.read_events(db_url)
    ops.assert_same_events(got, want)
    assert late, "the late drop was not re-scored as late data"
    # An event still running where the data ends is open in both, and only there.
    open_got = got.set_index("event_id").is_open.sort_index()
    assert open_got.equals(want.set_index("event_id").is_open.sort_index())
    # Every drop was moved to processed/, the landing folder is empty.
    assert sorted(p.name for p in (tmp_path / "landing" / "processed").iterdir()) == sorted(
        f"drop{i}.csv" for i in range(6))
    return got


def test_event_open_at_run_end_is_updated_not_duplicated(db_url, store, ops, tmp_path):
    score = store.data.score
    want = _reference(ops, store, tmp_path, score)
    long = want[want.n_points >= 3].sort_values("start_ts").iloc[0]
    length = store.detector.window.length
    # Data ends so that the last final score falls one step after the event's start.
    cut = long.start_ts + pd.Timedelta(minutes=length)
    raw = ops.folder_config(store, tmp_path, db_url)
    landing = tmp_path / "landing"
    ops.drop(landing, "a.csv", score[score.timestamp <= cut])
    ops.score_inprocess(raw)
    first = ops.read_events(db_url).set_index("event_id")
    assert long.event_id in first.index
    assert bool(first.loc[long.event_id, "is_open"])
    assert first.loc[long.event_id, "end_ts"] < long.end_ts

    ops.drop(landing, "b.csv", score[score.timestamp > cut])
    out = ops.score_inprocess(raw)
    assert out["updated"] >= 1
    got = ops.read_events(db_url)
    ops.assert_same_events(got, want)
    row = got.set_index("event_id").loc[long.event_id]
    assert not row.is_open and row.end_ts == long.end_ts


def test_rerun_and_backfill_are_idempotent_and_repair(db_url, store, ops, tmp_path):
    score = store.data.score
    want = _reference(ops, store, tmp_path, score)
    raw = ops.folder_config(store, tmp_path, db_url)
    for i, part in enumerate(ops.slices(score, 2)):
        ops.drop(tmp_path / "landing", f"d{i}.csv", part)
        ops.score_inprocess(raw)
    before = ops.read_events(db_url)
    marks = ops.read_watermarks(db_url, store.name)
    # Same data again: nothing changes, not even scored_at.
    again = ops.score_inprocess(raw)
    assert again["rows_written"] == 0
    pd.testing.assert_frame_equal(ops.read_events(db_url), before)
    assert ops.read_watermarks(db_url, store.name) == marks

    # Damage the table, then backfill the whole range: repaired, watermarks untouched.
    from ae_anomaly.sinks import SqlSink

    sink = SqlSink(db_url)
    victim = before.iloc[0].event_id
    with sink.engine.begin() as conn:
        conn.execute(sink.table.delete().where(sink.table.c.event_id == victim))
        conn.execute(sink.table.insert().values(
            {**before.iloc[1].to_dict(), "event_id": "bogus", "start_ts":
             before.iloc[1].start_ts + pd.Timedelta(seconds=30)}))
    first, last = str(score.timestamp.min()), str(score.timestamp.max())
    fixed = ops.score_inprocess(raw, backfill=(first, last))
    assert fixed["inserted"] == 1 and fixed["deleted"] == 1
    ops.assert_same_events(ops.read_events(db_url), want)
    assert ops.read_watermarks(db_url, store.name) == marks
    assert ops.score_inprocess(raw, backfill=(first, last))["rows_written"] == 0
    # A backfill of a range inside the data changes nothing either.
    mid = score.timestamp.min() + (score.timestamp.max() - score.timestamp.min()) / 2
    part = ops.score_inprocess(raw, backfill=(str(mid - pd.Timedelta("1h")), str(mid)))
    assert part["rows_written"] == 0 and part["steps"] > 0


@pytest.mark.parametrize("form", ["wide", "long"])
def test_sql_source_scores_incrementally(db_url, store, ops, tmp_path, form):
    score = store.data.score
    want = _reference(ops, store, tmp_path, score)
    engine = create_engine(db_url)
    frame = score if form == "wide" else score.melt(
        id_vars=["timestamp", "entity"], var_name="metric", value_name="value")
    dtypes = {"timestamp": DateTime(), "entity": String(64)}
    if form == "long":
        dtypes.update(metric=String(64), value=Float())
    half = score.timestamp.min() + (score.timestamp.max() - score.timestamp.min()) / 2
    raw = store.config(source={"kind": "sql", "url": db_url, "table": "raw_metrics",
                               "retries": 0},
                       sink={"url": db_url, "table": "anomaly_events"})
    for part in (frame[frame.timestamp <= half], frame[frame.timestamp > half]):
        part.to_sql("raw_metrics", engine, if_exists="append", index=False, dtype=dtypes)
        ops.score_inprocess(raw)
    engine.dispose()
    ops.assert_same_events(ops.read_events(db_url), want)


def test_feature_schema_mismatch_is_refused(store, ops, tmp_path):
    url = f"sqlite:///{tmp_path}/raw.db"
    engine = create_engine(url)
    score = store.data.score.head(200)
    metrics = list(store.detector.feature_names_)
    raw = store.config(source={"kind": "sql", "url": url, "table": "raw_metrics",
                               "retries": 0},
                       sink={"url": f"sqlite:///{tmp_path}/a.db"})
    score.assign(extra_metric=1.0).to_sql("raw_metrics", engine, index=False)
    with pytest.raises(FeatureSchemaError, match="unexpected extra_metric"):
        ops.score_inprocess(raw)
    score.drop(columns=metrics[1]).to_sql("raw_metrics", engine, index=False,
                                          if_exists="replace")
    with pytest.raises(FeatureSchemaError, match=f"missing {metrics[1]}"):
        ops.score_inprocess(raw)
    engine.dispose()
    # The batch path refuses a file with a metric the model does not know, too.
    from ae_anomaly.config import DataConfig

    f = tmp_path / "x.csv"
    score.rename(columns={metrics[0]: "renamed"}).to_csv(f, index=False)
    with pytest.raises(FeatureSchemaError, match="feature schema mismatch"):
        check_file_schema(f, metrics, DataConfig())
