"""The pipeline's Prometheus metrics, read from the database at scrape time.

Served as ``/metrics`` by the dashboard app (prometheus-client's text exposition). Every
series is a gauge computed from the tables, so any number of dashboard processes report the
same values and nothing is lost on a restart (docs/alerting.md lists the series):

* ``ae_anomaly_last_success_timestamp_seconds{deployment}`` and
  ``ae_anomaly_last_failure_timestamp_seconds{deployment}``: scheduled runs;
* ``ae_anomaly_scoring_lag_seconds{model, entity}``: now minus the data time scoring has
  reached (the watermark's ``scored_through``);
* ``ae_anomaly_events{model}`` and ``ae_anomaly_open_events{model}``: rows in the table;
* ``ae_anomaly_alert_notifications{channel, status}``: outbox rows per delivery state
  (``sent``, ``parked``, ``suppressed``, ``retry``, ``expired``, ``pending``);
* ``ae_anomaly_quarantined_files``: files in the landing folder's quarantine;
* ``ae_anomaly_alarm_rate{model}`` (events per entity in the newest day of data) and
  ``ae_anomaly_alarm_budget{model}`` (the calibrated budget, per entity per day).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Integer, MetaData, Table, func, inspect, select

from ae_anomaly.alerts.store import AlertStore
from ae_anomaly.config import AppConfig, expand_path
from ae_anomaly.db import utcnow

log = logging.getLogger(__name__)

PREFIX = "ae_anomaly"


def _seconds(ts: datetime) -> float:
    return ts.replace(tzinfo=UTC).timestamp()  # stored as naive UTC


class PipelineCollector(Collector):
    """Collects the pipeline's series from the anomaly database.

    Args:
        cfg: configuration (``sink``, ``source``, ``alerts``).
        budget: the alarm budget (events per entity per day) of a model name, or None.
    """

    def __init__(self, cfg: AppConfig,
                 budget: Callable[[str], float | None] | None = None) -> None:
        self.cfg = cfg
        self.budget = budget
        self.store = AlertStore(cfg.sink.url, cfg.sink.table)
        self.engine = self.store.engine

    def _table(self, name: str) -> Table | None:
        if not inspect(self.engine).has_table(name):
            return None
        return Table(name, MetaData(), autoload_with=self.engine)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Every series, freshly computed."""
        yield from self._runs()
        yield from self._lag()
        yield from self._events()
        yield from self._notifications()
        yield self._quarantined()

    def _runs(self) -> Iterator[GaugeMetricFamily]:
        ok = GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                               "Unix time of the last successful scoring run",
                               labels=["deployment"])
        bad = GaugeMetricFamily(f"{PREFIX}_last_failure_timestamp_seconds",
                                "Unix time of the last failed scoring run",
                                labels=["deployment"])
        for r in self.store.runs():
            if r["last_success_at"] is not None:
                ok.add_metric([r["deployment"]], _seconds(r["last_success_at"]))
            if r["last_failure_at"] is not None:
                bad.add_metric([r["deployment"]], _seconds(r["last_failure_at"]))
        yield ok
        yield bad

    def _lag(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(f"{PREFIX}_scoring_lag_seconds",
                                "Now minus the data time scoring has reached (watermark)",
                                labels=["model", "entity"])
        wm = self._table(f"{self.cfg.sink.table}_watermarks")
        if wm is not None:
            now = utcnow()
            with self.engine.connect() as conn:
                for r in conn.execute(select(wm.c.model_name, wm.c.entity,
                                             wm.c.scored_through_ts)):
                    if r.scored_through_ts is not None:
                        lag.add_metric([r.model_name, r.entity],
                                       (now - r.scored_through_ts).total_seconds())
        yield lag

    def _events(self) -> Iterator[GaugeMetricFamily]:
        total = GaugeMetricFamily(f"{PREFIX}_events", "Events in the anomaly table",
                                  labels=["model"])
        open_ = GaugeMetricFamily(f"{PREFIX}_open_events", "Events that may still grow",
                                  labels=["model"])
        rate = GaugeMetricFamily(f"{PREFIX}_alarm_rate",
                                 "Events per entity in the newest day of scored data",
                                 labels=["model"])
        budget = GaugeMetricFamily(f"{PREFIX}_alarm_budget",
                                   "Calibrated alarm budget: events per entity per day",
                                   labels=["model"])
        t = self._table(self.cfg.sink.table)
        if t is not None:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t.c.model_name, func.count(),
                                           func.sum(t.c.is_open.cast(Integer())),
                                           func.max(t.c.start_ts))
                                    .group_by(t.c.model_name)).all()
                for model, n, n_open, newest in rows:
                    total.add_metric([model], n)
                    open_.add_metric([model], n_open or 0)
                    day = conn.execute(
                        select(func.count(), func.count(t.c.entity.distinct()))
                        .where(t.c.model_name == model,
                               t.c.start_ts > newest - timedelta(days=1))).one()
                    entities = conn.execute(select(func.count(t.c.entity.distinct()))
                                            .where(t.c.model_name == model)).scalar_one()
                    rate.add_metric([model], day[0] / max(entities, 1))
                    b = self._budget(model)
                    if b is not None:
                        budget.add_metric([model], b)
        yield total
        yield open_
        yield rate
        yield budget

    def _budget(self, model: str) -> float | None:
        if self.budget is None:
            return None
        try:
            return self.budget(model)
        except Exception:  # noqa: BLE001 - a missing model must not break the scrape
            log.debug("no alarm budget for %s", model, exc_info=True)
            return None

    def _notifications(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(f"{PREFIX}_alert_notifications",
                                "Alert notifications per channel and delivery state",
                                labels=["channel", "status"])
        counts = self.store.delivery_counts()
        for ch in self.cfg.alerts.channels():
            counts[(ch, "pending")] = self.store.pending_count(ch)
        for (ch, status), n in sorted(counts.items()):
            fam.add_metric([ch, status], n)
        yield fam

    def _quarantined(self) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(f"{PREFIX}_quarantined_files",
                                "Files in the landing folder's quarantine")
        src = self.cfg.source
        n = 0
        if src.kind == "folder" and src.path:
            folder = Path(expand_path(src.path)) / src.quarantine_dir
            if folder.is_dir():
                n = sum(1 for p in folder.iterdir()
                        if p.is_file() and not p.name.endswith(".reason.txt"))
        fam.add_metric([], n)
        return fam


def metrics_registry(cfg: AppConfig, budget: Callable[[str], float | None] | None = None
                     ) -> CollectorRegistry:
    """A registry holding only the pipeline's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(cfg, budget))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of a registry."""
    return generate_latest(registry)
