"""Scoring flow: resolve ``@champion`` -> score new data -> write events to the table."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ae_anomaly import pipeline
from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.detector import Detector
from ae_anomaly.scoring.job import ModelRef, ScoreResult
from ae_anomaly.tracking import Tracker


@task(name="load-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_champion(cfg: AppConfig) -> tuple[Detector, ModelRef]:
    return Tracker(cfg.tracking).load()


@task(name="score-inputs", cache_policy=NO_CACHE)
def score_inputs(cfg: AppConfig, det: Detector, paths: list[str] | None) -> ScoreResult:
    return pipeline.score_inputs(cfg, det, paths)


@task(name="write-events", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 10])
def write_events(cfg: AppConfig, det: Detector, model: ModelRef, result: ScoreResult) -> int:
    return pipeline.write_events(cfg, det, model, result)


@flow(name="ae-anomaly-score")
def score_flow(config: str | None = None, overrides: list[str] | None = None,
               paths: list[str] | None = None) -> dict[str, Any]:
    """Score data with the registered champion and upsert flagged events.

    Args:
        config: YAML config path (None for built-in defaults).
        overrides: ``key=value`` overrides.
        paths: files or folders to score (default: ``data.score``).
    """
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    det, model = load_champion(cfg)
    result = score_inputs(cfg, det, paths)
    written = write_events(cfg, det, model, result)
    logger.info("%s v%s: %d events, %d rows written", model.name, model.version,
                len(result.events), written)
    return {
        "model_name": model.name,
        "model_version": model.version,
        "events": len(result.events),
        "rows_written": written,
        "steps": sum(result.steps.values()),
        "flagged_steps": sum(result.flagged.values()),
        "files": result.files,
    }
