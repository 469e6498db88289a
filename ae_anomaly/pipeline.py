"""The pipeline's steps as plain functions; the Prefect flows wrap each as a task.

Order of a training run: ``load_training_frame`` -> ``fit_detector`` -> ``log_and_register``.
Order of a scoring run: ``load_champion`` -> ``score_inputs`` -> ``write_events``.
Order of a scheduled (incremental) run: ``load_champion`` -> ``ingest_landing`` (landing
folder only) -> ``score_increment``; promotion: ``promote``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ae_anomaly.config import AppConfig, expand_path, state_home
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.data.timeseries import list_data_files, read_smd, read_timeseries, smd_machines
from ae_anomaly.detectors import BaseDetector, build_detector
from ae_anomaly.errors import ConfigError, ModelNotFoundError
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementalScorer, IncrementResult
from ae_anomaly.scoring.job import ScoreResult, score_files, to_records
from ae_anomaly.sinks import open_sink
from ae_anomaly.sources import (
    FileNotReady,
    IngestReport,
    open_landing,
    open_source,
    parse_ts,
    pid_tag,
)
from ae_anomaly.tracking import Tracker
from ae_anomaly.tracking.promotion import (
    CHALLENGER,
    PromotionDecision,
    load_version,
    run_promotion,
)

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
    if cfg.data.netflow:  # network flows: per-entity series (aggregate) or flow rows
        from ae_anomaly.data.netflow import read_netflow_input

        return read_netflow_input(cfg, [cfg.data.train], training=True)[0]
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
                 run_id: str | None = None) -> BaseDetector:
    """Fit the configured detector (:func:`~ae_anomaly.detectors.build_detector`); per-epoch
    losses go to the MLflow run when one is given."""
    on_epoch = tracker.epoch_logger(run_id) if tracker and run_id else None
    return build_detector(cfg).fit(frame, on_epoch=on_epoch)


@dataclass
class Registration:
    """The outcome of logging and registering a trained detector."""

    model: ModelRef
    champion_set: bool
    calibration: dict[str, Any]


def log_and_register(cfg: AppConfig, det: BaseDetector, frame: pd.DataFrame, tracker: Tracker,
                     run_id: str) -> Registration:
    """Log calibration statistics and the model, register it as ``challenger``; the first
    version of a model also becomes ``champion``."""
    report = tracker.log_training(run_id, det)
    ref = tracker.log_detector(run_id, det, frame)
    tracker.set_alias(CHALLENGER, ref.version)
    champion_set = tracker.ensure_alias(ref.version)
    tracker.end_run(run_id)
    return Registration(ref, champion_set, report)


# ------------------------------------------------------------------------- scoring
def score_inputs(cfg: AppConfig, det: BaseDetector, paths: list[str] | None = None,
                 model: ModelRef | None = None) -> ScoreResult:
    """Score the configured (or given) files and folders with a detector and find events.

    Metric files are streamed chunk by chunk (bounded memory); network flows
    (``data.netflow``) are read, turned into the detector's input (per-host series or
    rows) and scored in memory. ``model`` is accepted for the flows' signature and unused.
    """
    targets = paths or ([cfg.data.score] if cfg.data.score else [])
    if not targets:
        raise ConfigError("data.score is not set: give a file or folder (--set data.score=PATH)")
    if cfg.data.netflow:
        from ae_anomaly.data.netflow import read_netflow_input

        frame, files = read_netflow_input(cfg, targets)
        found = det.find_events(frame, cfg.events, cfg.scoring.batch_size)
        return ScoreResult(events=found.events, steps=found.steps, flagged=found.flagged,
                           unscored=found.unscored, files=[str(f) for f in files])
    return score_files(det, [expand_path(p) for p in targets], cfg.data, cfg.events,
                       cfg.scoring, progress=cfg.training.progress)


def write_events(cfg: AppConfig, det: BaseDetector, model: ModelRef, result: ScoreResult) -> int:
    """Write a scoring pass's events to the configured sink; returns rows inserted/changed."""
    sink = open_sink(cfg)
    return sink.write(to_records(result.events, det, model))


def score_counts(result: ScoreResult) -> dict[str, Any]:
    """Events, scored and flagged steps (or rows), and files of a batch scoring pass."""
    return {"events": len(result.events), "steps": sum(result.steps.values()),
            "flagged_steps": sum(result.flagged.values()), "files": result.files}


def read_events(cfg: AppConfig) -> pd.DataFrame:
    """The anomaly table as a frame."""
    return open_sink(cfg).read()


# ------------------------------------------------------------------------- scheduled scoring
def is_incremental(cfg: AppConfig) -> bool:
    """Whether scoring reads a watermarked source (``source.kind`` folder or sql)."""
    return cfg.source.kind in ("folder", "sql")


def ingest_landing(cfg: AppConfig, metrics: list[str] | None) -> IngestReport:
    """Ingest the complete files of the landing folder; quarantine invalid ones.

    Raises:
        FileNotReady: some files are still being written (after the others were ingested);
            a retry a little later takes them.
    """
    report = open_landing(cfg, metrics).ingest()
    if report.not_ready:
        raise FileNotReady(f"{len(report.not_ready)} landing file(s) still being written: "
                           f"{', '.join(report.not_ready[:5])}")
    return report


def score_increment(cfg: AppConfig, det: BaseDetector, model: ModelRef, job_id: str = "",
                    backfill: tuple[str | None, str | None] | None = None,
                    entities: list[str] | None = None) -> IncrementResult:
    """Score every entity of the source from its watermark (or re-score a range).

    Args:
        cfg: configuration (source, sink, events, scoring).
        det: the champion's detector, resolved at run start.
        model: its registered name and version (recorded on every event).
        job_id: a label of the run (stored with the watermarks).
        backfill: ``(from, to)`` timestamps (either None for open-ended) to re-score a range
            instead; watermarks are left as they are.
        entities: only these entities (default: all of the source).
    """
    sink = open_sink(cfg)
    source = open_source(cfg)
    scorer = IncrementalScorer(det, model, source, sink, cfg.events, cfg.scoring,
                               job_id=job_id or pid_tag())
    if backfill is None:
        return scorer.run(entities)
    start, end = (parse_ts(b) for b in backfill)
    if start is not None and end is not None and end < start:
        raise ConfigError(f"backfill: --to ({end}) is before --from ({start})")
    return scorer.backfill(start, end, entities)


# ------------------------------------------------------------------------- promotion
def load_eval_frame(cfg: AppConfig, features: list[str]) -> tuple[pd.DataFrame,
                                                                  np.ndarray | None]:
    """The evaluation window for promotion, with labels when the data has them.

    ``promotion.eval_data`` when set, else the newest ``promotion.eval_steps`` steps per
    entity of the incremental source, else ``data.score``.
    """
    pc = cfg.promotion
    path = pc.eval_data or (None if is_incremental(cfg) else cfg.data.score)
    if path:
        path = expand_path(path)
        label = pc.label_col if _has_column(path, pc.label_col) else None
        frame = read_timeseries(path, cfg.data, features + ([label] if label else []))
        labels = None
        if label:
            labels = frame.pop(label).to_numpy() != 0
        return frame, labels
    if not is_incremental(cfg):
        raise ConfigError("no evaluation data: set promotion.eval_data (or data.score, or an "
                          "incremental source)")
    source = open_source(cfg)
    frames = []
    for ent in source.entities():
        rows = source.rows_before(ent, None, pc.eval_steps, features,
                                  source.validator(features, ent))
        if len(rows):
            frames.append(rows)
    if not frames:
        raise ConfigError(f"no evaluation data: {source.name} holds no rows")
    return pd.concat(frames, ignore_index=True), None


def _has_column(path: str, column: str) -> bool:
    files = list_data_files(path)
    f = files[0]
    if f.suffix.lower() == ".csv":
        return column in pd.read_csv(f, nrows=0).columns
    return column in pq.ParquetFile(f).schema_arrow.names


def promote(cfg: AppConfig, tracker: Tracker, name: str | None = None,
            challenger: str | None = None) -> PromotionDecision:
    """Evaluate the challenger against the champion and move ``champion`` if the gates pass."""
    name = name or cfg.tracking.registered_model
    version = challenger or tracker.alias_version(CHALLENGER, name)
    if version is None:
        raise ModelNotFoundError(f"model '{name}' has no '{CHALLENGER}' alias: train one "
                                 f"(ae-anomaly train) or pass --challenger VERSION")
    det = load_version(tracker, name, str(version))[0]
    frame, labels = load_eval_frame(cfg, list(det.feature_names_))
    return run_promotion(tracker, cfg, name, str(version), frame, labels)
