"""The pipeline's steps as plain functions; the Prefect flows wrap each as a task.

Order of a training run: ``load_training_frame`` -> ``fit_detector`` -> ``log_and_register``.
Order of a scoring run: ``load_champion`` -> ``score_inputs`` -> ``write_events``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, expand_path, state_home
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.data.timeseries import read_smd, read_timeseries, smd_machines
from ae_anomaly.detector import Detector
from ae_anomaly.errors import ConfigError
from ae_anomaly.scoring.job import ModelRef, ScoreResult, score_files, to_records
from ae_anomaly.sinks import SqlSink
from ae_anomaly.tracking import Tracker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- demo data
@dataclass
class DemoData:
    """Where the demo's generated files are."""

    train: Path
    score: Path
    anomalies: Path
    labels: np.ndarray = field(repr=False)


def write_demo_data(cfg: AppConfig, folder: Path | None = None) -> DemoData:
    """Generate the synthetic server metrics and write them as CSV files.

    Writes ``train.csv`` (normal history), ``fresh.csv`` (the following period with injected
    anomalies) and ``injected_anomalies.csv`` into ``folder`` (default ``<home>/demo``).
    The generator is seeded, so re-running writes the same files.
    """
    folder = folder or state_home() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    data = generate_server_metrics(cfg.data.synthetic)
    paths = DemoData(folder / "train.csv", folder / "fresh.csv",
                     folder / "injected_anomalies.csv", data.labels)
    data.train.to_csv(paths.train, index=False)
    data.score.to_csv(paths.score, index=False)
    data.anomalies.to_csv(paths.anomalies, index=False)
    return paths


def demo_overrides(paths: DemoData) -> list[str]:
    """Config overrides pointing training and scoring at the demo files."""
    return [f"data.train={paths.train}", f"data.score={paths.score}"]


# ------------------------------------------------------------------------- training
def load_training_frame(cfg: AppConfig) -> pd.DataFrame:
    """Read the configured training data (file, folder, or an SMD folder)."""
    if not cfg.data.train:
        raise ConfigError("data.train is not set: give a file or folder (--set data.train=PATH)")
    path = expand_path(cfg.data.train)
    if cfg.data.format == "smd":
        frames = [read_smd(path, m, "train")[0] for m in smd_machines(path)]
        return pd.concat(frames, ignore_index=True)
    return read_timeseries(path, cfg.data)


def start_run(cfg: AppConfig, tracker: Tracker) -> str:
    """Open an MLflow run for a training job and log the resolved configuration."""
    run_id = tracker.start_run(f"train-{cfg.model.name}", tags={"ae_anomaly.job": "train"})
    tracker.log_config(run_id, cfg)
    return run_id


def fit_detector(cfg: AppConfig, frame: pd.DataFrame, tracker: Tracker | None = None,
                 run_id: str | None = None) -> Detector:
    """Fit a detector; per-epoch losses go to the MLflow run when one is given."""
    on_epoch = tracker.epoch_logger(run_id) if tracker and run_id else None
    return Detector.from_config(cfg).fit(frame, on_epoch=on_epoch)


@dataclass
class Registration:
    """The outcome of logging and registering a trained detector."""

    model: ModelRef
    champion_set: bool
    calibration: dict[str, Any]


def log_and_register(cfg: AppConfig, det: Detector, frame: pd.DataFrame, tracker: Tracker,
                     run_id: str) -> Registration:
    """Log calibration statistics and the model, register it, alias it ``champion`` if first."""
    report = tracker.log_training(run_id, det)
    ref = tracker.log_detector(run_id, det, frame)
    champion_set = tracker.ensure_alias(ref.version)
    tracker.end_run(run_id)
    return Registration(ref, champion_set, report)


# ------------------------------------------------------------------------- scoring
def score_inputs(cfg: AppConfig, det: Detector, paths: list[str] | None = None) -> ScoreResult:
    """Score the configured (or given) files and folders with a detector."""
    targets = paths or ([cfg.data.score] if cfg.data.score else [])
    if not targets:
        raise ConfigError("data.score is not set: give a file or folder (--set data.score=PATH)")
    return score_files(det, [expand_path(p) for p in targets], cfg.data, cfg.events,
                       cfg.scoring, progress=cfg.training.progress)


def write_events(cfg: AppConfig, det: Detector, model: ModelRef, result: ScoreResult) -> int:
    """Write a scoring pass's events to the configured sink; returns rows inserted/changed."""
    sink = SqlSink(cfg.sink.url, cfg.sink.table)
    return sink.write(to_records(result.events, det, model))


def read_events(cfg: AppConfig) -> pd.DataFrame:
    """The anomaly table as a frame."""
    return SqlSink(cfg.sink.url, cfg.sink.table).read()
