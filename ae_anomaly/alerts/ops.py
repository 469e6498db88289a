"""Operational alerts about the pipeline itself, and what a scoring run does before it exits.

A scheduled run records its outcome (``t_runs``: the last success per deployment, read by
``/metrics``) and queues operational alerts through the same outbox as the events: a failed
run, a quarantined landing file, an entity whose newest data is older than
``alerts.stale_after_intervals`` scoring intervals. The dispatcher adds a backlog alert.
Then the run sends what it queued (:func:`finish_run`), for at most
``alerts.dispatch_seconds``; the rest stays pending for the standalone dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ae_anomaly.alerts.dispatcher import Dispatcher, DispatchReport
from ae_anomaly.alerts.store import AlertStore
from ae_anomaly.config import AppConfig
from ae_anomaly.db import utcnow
from ae_anomaly.records import Watermark

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 300.0


def score_interval(cfg: AppConfig) -> timedelta:
    """The scheduled scoring interval (``score_interval_seconds``, else five minutes)."""
    return timedelta(seconds=cfg.deployment.score_interval_seconds or DEFAULT_INTERVAL_SECONDS)


def stale_entities(cfg: AppConfig, watermarks: dict[tuple[str, str], Watermark] | None = None,
                   now: datetime | None = None) -> list[tuple[str, str, datetime]]:
    """(model, entity, newest data read) of entities whose data stopped arriving.

    Args:
        cfg: configuration (``alerts.stale_after_intervals``, the scoring interval).
        watermarks: the watermarks (default: read from the sink).
        now: the current time (UTC).
    """
    n = cfg.alerts.stale_after_intervals
    if not n:
        return []
    if watermarks is None:
        from ae_anomaly.sinks import open_sink

        try:
            watermarks = open_sink(cfg).read_watermarks()
        except Exception:  # noqa: BLE001 - a check, not the run's result
            log.exception("alerts: could not read the watermarks for the staleness check")
            return []
    limit = (now or utcnow()) - n * score_interval(cfg)
    return [(m, e, w.read_through) for (m, e), w in sorted(watermarks.items())
            if w.read_through is not None and w.read_through < limit]


def record_run(cfg: AppConfig, deployment: str, *, ok: bool,
               summary: dict[str, Any] | None = None, error: str | None = None,
               run_id: str = "", quarantined: Iterable[tuple[str, str]] = (),
               stale: Iterable[tuple[str, str, datetime]] = ()) -> None:
    """Record a run's outcome and queue its operational alerts (when alerting is on).

    Args:
        cfg: configuration (``sink``, ``alerts``).
        deployment: the deployment (or ``manual`` for a run started by hand).
        ok: whether the run succeeded.
        summary: what it ingested, scored and wrote.
        error: the failure's one-line message.
        run_id: the flow run id (one failure alert per run).
        quarantined: ``(file, reason)`` of files the run quarantined.
        stale: ``(model, entity, newest data)`` of entities without new data.

    A failure to record (the database is down) is logged, never raised: it must not mask
    the run's own outcome.
    """
    try:
        _record_run(cfg, deployment, ok, summary, error, run_id, quarantined, stale)
    except Exception:  # noqa: BLE001 - never mask the run's own outcome or error
        log.exception("alerts: could not record the run of %s", deployment)


def _record_run(cfg: AppConfig, deployment: str, ok: bool, summary: dict[str, Any] | None,
                error: str | None, run_id: str, quarantined: Iterable[tuple[str, str]],
                stale: Iterable[tuple[str, str, datetime]]) -> None:
    store = AlertStore(cfg.sink.url, cfg.sink.table)
    store.record_run(deployment, ok, _json_safe(summary or {}), error)
    if not (cfg.alerts.outbox_enabled and cfg.alerts.ops_alerts):
        return
    if not ok:
        store.enqueue_ops(f"run-failed:{deployment}:{run_id or utcnow().isoformat()}",
                          "AeAnomalyRunFailed", deployment,
                          f"scoring run of {deployment} failed: {error}",
                          {"deployment": deployment, "run_id": run_id, "error": error})
    for name, reason in quarantined:
        store.enqueue_ops(f"quarantine:{name}", "AeAnomalyFileQuarantined", deployment,
                          f"landing file {name} quarantined: {reason}",
                          {"file": name, "reason": reason})
    for model, entity, newest in stale:
        store.enqueue_ops(f"stale:{model}:{entity}:{newest.isoformat()}",
                          "AeAnomalySourceStale", entity,
                          f"no new data for {entity} since {newest:%Y-%m-%d %H:%M} UTC "
                          f"({cfg.alerts.stale_after_intervals} scoring intervals)",
                          {"model": model, "entity": entity, "newest": newest.isoformat()})


def finish_run(cfg: AppConfig) -> DispatchReport | None:
    """Send what the run queued (within ``alerts.dispatch_seconds``); None without
    channels. A failure to send is logged, never raised: the rows stay pending."""
    if not cfg.alerts.channels() or cfg.alerts.dispatch_seconds <= 0:
        return None
    try:
        report = Dispatcher.from_config(cfg).drain(cfg.alerts.dispatch_seconds)
    except Exception:  # noqa: BLE001 - the run's own result must not be lost to this
        log.exception("alerts: dispatch after the run failed; rows stay pending")
        return None
    log.info("alerts: %s", report.summary())
    return report


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
