"""Scoring flow: resolve ``@champion`` -> score new data -> write events to the table.

Two modes, by configuration:

* batch (``source.kind: files``, or explicit ``paths``): score whole files, upsert events;
* scheduled / incremental (``source.kind: folder`` or ``sql``): ingest the landing folder,
  then score every entity from its watermark (or re-score ``backfill_from`` ..
  ``backfill_to``). Events and watermarks are written per entity in one transaction.

Transient errors (database unreachable or busy, landing file still being written) are
retried with exponential back-off (``source.retries``, ``source.retry_delay_seconds``);
permanent ones (invalid data, feature schema mismatch) fail the run at once with the
error's one-line message.

Every run records its outcome and queues operational alerts (failed run, quarantined
files, stale entities; docs/alerting.md), logs a one-line summary at INFO, and sends the
alert notifications it queued before it exits.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from ae_anomaly import pipeline
from ae_anomaly.alerts import ops
from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.detectors import BaseDetector
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementResult
from ae_anomaly.scoring.job import ScoreResult
from ae_anomaly.sources import FileNotReady, IngestReport, is_transient
from ae_anomaly.tracking import Tracker


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only transient errors."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as err:  # noqa: BLE001 - classify whatever the task raised
            exc = err
    return exc is not None and is_transient(exc)


def retry_options(cfg: AppConfig) -> dict[str, Any]:
    """Task options: ``source.retries`` retries, doubling the delay each time."""
    n, d = cfg.source.retries, cfg.source.retry_delay_seconds
    return {"retries": n, "retry_delay_seconds": [d * 2**i for i in range(n)] or 0,
            "retry_condition_fn": retry_transient}


@task(name="load-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def load_champion(cfg: AppConfig) -> tuple[BaseDetector, ModelRef]:
    return Tracker(cfg.tracking).load()


@task(name="score-inputs", cache_policy=NO_CACHE)
def score_inputs(cfg: AppConfig, det: BaseDetector, paths: list[str] | None,
                 model: ModelRef) -> ScoreResult:
    return pipeline.score_inputs(cfg, det, paths, model)


@task(name="write-events", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 10],
      retry_condition_fn=retry_transient)
def write_events(cfg: AppConfig, det: BaseDetector, model: ModelRef, result: ScoreResult) -> int:
    return pipeline.write_events(cfg, det, model, result)


@task(name="ingest-landing", cache_policy=NO_CACHE)
def ingest_landing(cfg: AppConfig, metrics: list[str]) -> IngestReport:
    return pipeline.ingest_landing(cfg, metrics)


@task(name="score-increment", cache_policy=NO_CACHE)
def score_increment(cfg: AppConfig, det: BaseDetector, model: ModelRef, job_id: str,
                    backfill: tuple[str | None, str | None] | None) -> IncrementResult:
    return pipeline.score_increment(cfg, det, model, job_id, backfill)


@flow(name="ae-anomaly-score")
def score_flow(config: str | None = None, overrides: list[str] | None = None,
               paths: list[str] | None = None, backfill_from: str | None = None,
               backfill_to: str | None = None) -> dict[str, Any]:
    """Score data with the registered champion and upsert flagged events.

    Args:
        config: YAML config path (None for built-in defaults).
        overrides: ``key=value`` overrides.
        paths: files or folders to score as a batch (default: ``data.score``, or the
            incremental source when ``source.kind`` is ``folder`` or ``sql``).
        backfill_from: re-score the incremental source from this time (ISO 8601; "" for
            the start of the data) instead of scoring from the watermarks.
        backfill_to: ... up to this time ("" for the newest data).
    """
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    name = deployment.name or "manual"
    run_id = str(flow_run.get_id() or "")
    try:
        out = _score(cfg, logger, paths, backfill_from, backfill_to, config, overrides)
    except Exception as exc:
        error = (str(exc).splitlines() or [type(exc).__name__])[0]
        ops.record_run(cfg, name, ok=False, error=f"{type(exc).__name__}: {error}",
                       run_id=run_id)
        ops.finish_run(cfg)
        raise
    stale = ops.stale_entities(cfg) if out["mode"] == "incremental" else []
    ops.record_run(cfg, name, ok=True, summary=out, run_id=run_id,
                   quarantined=out.get("quarantined", []), stale=stale)
    report = ops.finish_run(cfg)
    if report is not None:
        out["alerts"] = {"sent": report.sent, "pending": report.pending}
    return out


def _score(cfg: AppConfig, logger: Any, paths: list[str] | None, backfill_from: str | None,
           backfill_to: str | None, config: str | None,
           overrides: list[str] | None) -> dict[str, Any]:
    backfill = (None if backfill_from is None and backfill_to is None
                else (backfill_from or None, backfill_to or None))
    det, model = load_champion(cfg)
    if paths or (not pipeline.is_incremental(cfg) and backfill is None):
        result = score_inputs(cfg, det, paths, model)
        written = write_events(cfg, det, model, result)
        logger.info("%s v%s (batch): %d files, %d steps scored, %d flagged, %d events, "
                    "%d rows written", model.name, model.version, len(result.files),
                    sum(result.steps.values()), sum(result.flagged.values()),
                    len(result.events), written)
        return {"mode": "batch", "model_name": model.name, "model_version": model.version,
                "rows_written": written, **pipeline.score_counts(result)}

    opts = retry_options(cfg)
    ingested: dict[str, Any] = {}
    if cfg.source.kind == "folder" and backfill is None:
        try:
            report = ingest_landing.with_options(**opts)(cfg, list(det.feature_names_))
            ingested = {"ingested": report.ingested, "quarantined": report.quarantined,
                        "waiting": report.temporary}
        except FileNotReady as exc:
            # The complete files were ingested on each attempt; the rest waits for the next
            # scheduled run.
            logger.warning("%s; scoring what is complete", exc)
            ingested = {"waiting": str(exc)}
        for name, reason in ingested.get("quarantined", []):
            logger.warning("quarantined %s: %s", name, reason)
    job_id = str(flow_run.get_id() or "")
    if cfg.execution.backend == "dask":  # shards of entities on Dask workers
        from .execution import run_score_shards

        inc = run_score_shards(cfg, config, overrides, model, job_id, backfill)
    else:
        inc = score_increment.with_options(**opts)(cfg, det, model, job_id, backfill)
    out = inc.summary()
    out.update(mode="backfill" if backfill else "incremental", **ingested)
    logger.info("%s v%s (%s): ingested %d files (%d quarantined), %d entities, %d steps "
                "scored, %d events, %d rows changed", model.name, model.version, out["mode"],
                len(out.get("ingested", [])), len(out.get("quarantined", [])),
                out.get("entities", 0), out["steps"], out["events"], out["rows_written"])
    return out
