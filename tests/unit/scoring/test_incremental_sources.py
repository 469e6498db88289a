"""The incremental scorer reads any :class:`~ae_anomaly.sources.Source`.

The same data scored through three sources (frames in memory, a SQL table, a landing
folder whose staging table is in another database than the anomaly table) gives the same
events.
"""

import os
import time
from collections.abc import Iterator
from datetime import datetime

import pandas as pd
import pytest
from sqlalchemy import inspect

from ae_anomaly.config import AppConfig, DataConfig
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.data.timeseries import ENTITY, TS
from ae_anomaly.db import make_engine
from ae_anomaly.detectors import BaseDetector, build_detector
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementalScorer
from ae_anomaly.sinks import open_sink
from ae_anomaly.sources import FrameValidator, Source, Validate, open_landing, open_source

MODEL = ModelRef("m", "1", "run-1")
TINY = {
    "data": {"synthetic": {"n_entities": 2, "n_metrics": 4, "train_days": 1,
                           "score_days": 0.5, "anomalies_per_entity": 3, "seed": 3}},
    "window": {"length": 16, "train_stride": 4},
    "model": {"name": "conv_ae", "channels": [8], "latent_dim": 4},
    "training": {"epochs": 2, "batch_size": 128, "progress": False, "seed": 0},
    "events": {"merge_gap": 3},
    "scoring": {"chunk_steps": 200},
}


class FrameSource:
    """A :class:`Source` over one in-memory wide frame (no database, no sequence numbers)."""

    def __init__(self, frame: pd.DataFrame, name: str = "memory") -> None:
        self.frame = frame.sort_values([ENTITY, TS], ignore_index=True)
        self.cfg = DataConfig(format="wide")
        self.name = name

    def entities(self) -> list[str]:
        return sorted(self.frame[ENTITY].unique())

    def metrics(self) -> list[str]:
        return [c for c in self.frame.columns if c not in (TS, ENTITY)]

    def max_seq(self, entity: str) -> int | None:
        return None

    def earliest_since_seq(self, entity: str, seq: int) -> datetime | None:
        return None

    def validator(self, metrics: list[str], entity: str) -> Validate:
        return FrameValidator(self.cfg, metrics, f"{self.name} (entity {entity})")

    def _rows(self, entity: str, metrics: list[str]) -> pd.DataFrame:
        return self.frame.loc[self.frame[ENTITY] == entity, [TS, ENTITY, *metrics]]

    def rows_before(self, entity: str, before: datetime | None, n_steps: int,
                    metrics: list[str], validate: Validate,
                    inclusive: bool = True) -> pd.DataFrame:
        rows = self._rows(entity, metrics)
        if before is not None:
            rows = rows[rows[TS] <= before] if inclusive else rows[rows[TS] < before]
        return validate(rows.tail(n_steps) if n_steps > 0 else rows.iloc[:0])

    def iter_after(self, entity: str, after: datetime | None, chunk_steps: int,
                   metrics: list[str], validate: Validate,
                   until: datetime | None = None) -> Iterator[pd.DataFrame]:
        rows = self._rows(entity, metrics)
        if after is not None:
            rows = rows[rows[TS] > after]
        if until is not None:
            rows = rows[rows[TS] <= until]
        for i in range(0, len(rows), chunk_steps):
            yield validate(rows.iloc[i:i + chunk_steps])


@pytest.fixture(scope="module")
def fitted():
    cfg = AppConfig.model_validate(TINY)
    data = generate_server_metrics(cfg.data.synthetic)
    return build_detector(cfg).fit(data.train), data.score


def _config(tmp_path, **sections) -> AppConfig:
    raw = {**TINY, "sink": {"url": f"sqlite:///{tmp_path}/events.db"}, **sections}
    return AppConfig.model_validate(raw)


def _score(cfg: AppConfig, det: BaseDetector, source: Source) -> pd.DataFrame:
    sink = open_sink(cfg)
    scorer = IncrementalScorer(det, MODEL, source, sink, cfg.events, cfg.scoring, job_id="t")
    first = scorer.run()
    assert sum(e.steps for e in first.entities) > 0
    # From the watermarks: nothing new, nothing written.
    again = scorer.run()
    assert sum(e.write.inserted + e.write.updated + e.write.deleted
               for e in again.entities) == 0
    return sink.read().drop(columns=["scored_at"]).sort_values("event_id", ignore_index=True)


def test_scorer_reads_any_source_and_sources_agree(fitted, tmp_path):
    det, frame = fitted
    frame = frame[[TS, ENTITY, *det.feature_names_]]
    source: Source = FrameSource(frame)
    want = _score(_config(tmp_path / "memory"), det, source)
    assert len(want) > 0

    # A SQL table holding the same rows.
    url = f"sqlite:///{tmp_path}/raw.db"
    frame.to_sql("metrics", make_engine(url), index=False)
    cfg = _config(tmp_path / "sql", source={"kind": "sql", "url": url, "table": "metrics"})
    pd.testing.assert_frame_equal(_score(cfg, det, open_source(cfg)), want,
                                  check_exact=False, rtol=1e-5)

    # A landing folder whose staging table lives in its own database.
    landing = tmp_path / "landing"
    landing.mkdir()
    frame.to_csv(landing / "d0.csv", index=False)
    old = time.time() - 60
    os.utime(landing / "d0.csv", (old, old))
    staging = f"sqlite:///{tmp_path}/staging.db"
    cfg = _config(tmp_path / "folder", source={"kind": "folder", "path": str(landing),
                                               "staging_url": staging})
    report = open_landing(cfg, list(det.feature_names_)).ingest()
    assert report.ingested == ["d0.csv"]
    got = _score(cfg, det, open_source(cfg))
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5)
    events_db = inspect(make_engine(cfg.sink.url)).get_table_names()
    staging_db = inspect(make_engine(staging)).get_table_names()
    assert "anomaly_events" in events_db and "landing_metrics" not in events_db
    assert "landing_metrics" in staging_db and "anomaly_events" not in staging_db
