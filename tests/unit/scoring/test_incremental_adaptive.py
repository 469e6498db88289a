"""Adaptive thresholds through the incremental scorer on SQLite: the rule's state lives in
``<table>_threshold_state``, moves with the watermark in one transaction, and neither the
cut into increments nor a crash and re-run changes what is written."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.calibration import AciState
from ae_anomaly.config import AppConfig
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.data.timeseries import ENTITY, TS
from ae_anomaly.db import make_engine
from ae_anomaly.detectors import build_detector
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementalScorer
from ae_anomaly.sinks import SqlSink, open_sink
from ae_anomaly.sources import open_source

MODEL = ModelRef("m", "1", "run-1")
RAW = {
    "data": {"synthetic": {"n_entities": 2, "n_metrics": 3, "train_days": 1.5,
                           "score_days": 1.5, "anomalies_per_entity": 2, "seed": 4}},
    "model": {"name": "pca", "window": 4},
    "calibration": {"alpha": 0.01, "adaptive": "aci", "aci_gamma": 0.002,
                    "aci_window": 400},
    "events": {"merge_gap": 3},
    "scoring": {"chunk_steps": 300},
}


@pytest.fixture(scope="module")
def fitted():
    cfg = AppConfig.model_validate(RAW)
    data = generate_server_metrics(cfg.data.synthetic)
    det = build_detector(cfg).fit(data.train)
    frame = data.score[[TS, ENTITY, *det.feature_names_]].copy()
    # A regime change a quarter into the scoring period: one metric moves up for good.
    frame = frame.reset_index(drop=True)
    later = frame[TS] >= frame[TS].min() + (frame[TS].max() - frame[TS].min()) / 4
    first = det.feature_names_[0]
    frame.loc[later, first] += 3 * frame[first].std()
    return cfg, det, frame


def _scorer(cfg: AppConfig, det, tmp_path, frame: pd.DataFrame, upto: datetime | None):
    """A scorer over a SQL source holding the rows up to ``upto`` (appending the rest)."""
    url = f"sqlite:///{tmp_path}/raw.db"
    eng = make_engine(url)
    rows = frame if upto is None else frame[frame[TS] <= upto]
    rows.to_sql("metrics", eng, index=False, if_exists="replace")
    eng.dispose()
    run_cfg = AppConfig.model_validate(
        {**RAW, "sink": {"url": f"sqlite:///{tmp_path}/events.db"},
         "source": {"kind": "sql", "url": url, "table": "metrics"}})
    sink = open_sink(run_cfg)
    return IncrementalScorer(det, MODEL, open_source(run_cfg), sink, cfg.events, cfg.scoring,
                             job_id="t"), sink


def _result(sink: SqlSink) -> tuple[pd.DataFrame, dict, dict]:
    events = sink.read().drop(columns=["scored_at"]).sort_values("event_id",
                                                                 ignore_index=True)
    states = {e: sink.read_threshold_state("m", e) for e in events[ENTITY].unique()}
    marks = {e: sink.read_watermark("m", e).position() for e in states}
    return events, {e: (s.through, s.state) for e, s in states.items()}, marks


def _cuts(frame: pd.DataFrame, n: int) -> list[datetime]:
    stamps = np.sort(frame[TS].unique())
    return [pd.Timestamp(stamps[i]).to_pydatetime()
            for i in np.linspace(0, len(stamps) - 1, n + 1)[1:-1].astype(int)]


def _one_pass(cfg, det, frame, tmp_path):
    scorer, sink = _scorer(cfg, det, tmp_path / "once", frame, None)
    scorer.run()
    return _result(sink)


def test_increments_give_one_pass_and_keep_the_rate(fitted, tmp_path):
    cfg, det, frame = fitted
    want_events, want_states, want_marks = _one_pass(cfg, det, frame, tmp_path)
    assert len(want_events) > 0 and set(want_events["threshold"]) != {det.threshold_}
    for upto in [*_cuts(frame, 5), None]:
        scorer, sink = _scorer(cfg, det, tmp_path / "inc", frame, upto)
        scorer.run()
    got_events, got_states, got_marks = _result(sink)
    pd.testing.assert_frame_equal(got_events, want_events, check_exact=False, rtol=1e-9)
    assert got_states == want_states and got_marks == want_marks
    # A run with no new data changes nothing: the state is not advanced twice.
    again = scorer.run()
    assert sum(e.write.changed for e in again.entities) == 0
    assert _result(sink)[1] == want_states
    # The state counts each step once, up to the watermark's resume point, and keeps the
    # stated bound on the alarm count.
    aci = det.adaptive_rule_for(None)
    for ent, (through, raw) in got_states.items():
        state = AciState.from_dict(raw)
        n_through = int(((frame[ENTITY] == ent) & (frame[TS] <= through)).sum())
        assert state.steps == n_through
        assert state.alarms <= aci.max_alarms(state.steps)


def test_a_crash_before_commit_leaves_the_state_and_a_rerun_matches(fitted, tmp_path,
                                                                   monkeypatch):
    cfg, det, frame = fitted
    want = _one_pass(cfg, det, frame, tmp_path)
    cut = _cuts(frame, 2)[0]
    scorer, sink = _scorer(cfg, det, tmp_path / "crash", frame, cut)
    scorer.run()
    before = _result(sink)

    # The next increment fails after its events, watermark and state rows are staged.
    real = SqlSink._put_threshold_state
    calls = []

    def boom(self, conn, model_name, entity, st):
        real(self, conn, model_name, entity, st)
        calls.append(entity)
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(SqlSink, "_put_threshold_state", boom)
    scorer, sink = _scorer(cfg, det, tmp_path / "crash", frame, None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        scorer.run()
    assert calls
    assert _frames_equal(_result(sink), before)
    monkeypatch.setattr(SqlSink, "_put_threshold_state", real)

    # The re-run starts from the stored (unchanged) state: the same as one clean pass.
    scorer.run()
    got = _result(sink)
    pd.testing.assert_frame_equal(got[0], want[0], check_exact=False, rtol=1e-9)
    assert got[1:] == want[1:]


def _frames_equal(a, b) -> bool:
    pd.testing.assert_frame_equal(a[0], b[0])
    return a[1:] == b[1:]
