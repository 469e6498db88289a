"""Training flow: load data -> fit (MLflow-tracked) -> log, register as ``challenger``
(the first version also ``champion``) -> optionally promote (``promotion.auto``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ae_anomaly import pipeline
from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.detectors import BaseDetector
from ae_anomaly.tracking import Tracker
from ae_anomaly.tracking.promotion import PromotionDecision


@task(name="load-training-data", cache_policy=NO_CACHE)
def load_training_data(cfg: AppConfig) -> pd.DataFrame:
    return pipeline.load_training_frame(cfg)


@task(name="fit-detector", cache_policy=NO_CACHE)
def fit_detector(cfg: AppConfig, frame: pd.DataFrame, run_id: str) -> BaseDetector:
    return pipeline.fit_detector(cfg, frame, Tracker(cfg.tracking), run_id)


@task(name="log-and-register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log_and_register(cfg: AppConfig, det: BaseDetector, frame: pd.DataFrame,
                     run_id: str) -> pipeline.Registration:
    return pipeline.log_and_register(cfg, det, frame, Tracker(cfg.tracking), run_id)


@task(name="promote-challenger", cache_policy=NO_CACHE)
def promote_challenger(cfg: AppConfig, version: str) -> PromotionDecision:
    return pipeline.promote(cfg, Tracker(cfg.tracking), challenger=version)


@flow(name="ae-anomaly-train")
def train_flow(config: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train, calibrate, log to MLflow and register a detector.

    Args:
        config: YAML config path (None for built-in defaults).
        overrides: ``key=value`` overrides.
    """
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    if cfg.execution.backend == "dask":  # the whole job in one task on a Dask worker
        from .execution import run_training

        done = run_training(cfg, config, overrides)
        reg = pipeline.Registration(done.model, done.champion_set, done.calibration)
        fitted = {"threshold": done.threshold, "epochs": done.epochs,
                  "train_seconds": done.train_seconds}
    else:
        tracker = Tracker(cfg.tracking)
        frame = load_training_data(cfg)
        run_id = pipeline.start_run(cfg, tracker)
        try:
            det = fit_detector(cfg, frame, run_id)
            reg = log_and_register(cfg, det, frame, run_id)
        except BaseException:
            tracker.end_run(run_id, "FAILED")
            raise
        fitted = {"threshold": det.threshold_, "epochs": len(det.history_.train_loss),
                  "train_seconds": det.history_.seconds}
    logger.info("registered %s v%s as challenger (threshold %.4g)", reg.model.name,
                reg.model.version, fitted["threshold"])
    promotion = None
    if cfg.promotion.auto and not reg.champion_set:
        decision = promote_challenger(cfg, reg.model.version)
        logger.info("%s", decision.table())
        promotion = {"promoted": decision.promoted, "table": decision.table(),
                     "run_id": decision.run_id}
    return {
        "model_name": reg.model.name,
        "model_version": reg.model.version,
        "run_id": reg.model.run_id,
        "champion_set": reg.champion_set,
        **fitted,
        "calibration": reg.calibration,
        "promotion": promotion,
    }
