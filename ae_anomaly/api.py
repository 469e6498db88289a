"""The pipeline as two library calls, for a notebook or a script (no Prefect).

:func:`train_and_register` and :func:`score_into_sink` compose the steps of
:mod:`ae_anomaly.pipeline` in the order the ``train`` and ``score`` flows run them, without
orchestration: no retries, no task runs, nothing to start. Both read and write what the
flows do (the MLflow store and registry of ``cfg.tracking``, the anomaly table of
``cfg.sink``), so a model trained here is the CLI's champion and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ae_anomaly.config import AppConfig
from ae_anomaly.records import ModelRef

if TYPE_CHECKING:
    import pandas as pd

    from ae_anomaly.tracking.promotion import PromotionDecision


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_and_register` did.

    Attributes:
        model: the registered model version (name, version, MLflow run id).
        champion_set: whether this version became ``champion`` (the model's first version).
        threshold: the calibrated alarm threshold.
        calibration: the calibration report logged with the run.
        detector: the fitted detector.
        promotion: the promotion decision when ``promotion.auto`` evaluated this version.
    """

    model: ModelRef
    champion_set: bool
    threshold: float
    calibration: dict[str, Any]
    detector: Any
    promotion: PromotionDecision | None = None


@dataclass(frozen=True)
class ScoreSummary:
    """What :func:`score_into_sink` did.

    Attributes:
        model: the registered model version that scored.
        events: events found.
        steps: steps (or flow rows) scored.
        flagged_steps: steps above the threshold.
        files: the files scored.
        rows_written: anomaly-table rows inserted or changed (0 when re-scoring the same
            data: the write is idempotent).
    """

    model: ModelRef
    events: int
    steps: int
    flagged_steps: int
    files: list[str]
    rows_written: int


def train_and_register(cfg: AppConfig, frame: pd.DataFrame | None = None) -> TrainResult:
    """Fit a detector, log the run to MLflow and register a new model version.

    The version gets the alias ``challenger``; the model's first version also ``champion``.
    With ``promotion.auto`` a later version is evaluated against the champion and promoted
    if the gates pass, as the ``train`` flow does.

    Args:
        cfg: the configuration (``load_config``).
        frame: the training data; default: read ``data.train``.

    Returns:
        The registered version, its threshold and calibration report, the fitted detector.

    Raises:
        AeAnomalyError: invalid configuration or data (the MLflow run is marked failed).
    """
    from ae_anomaly import pipeline
    from ae_anomaly.tracking import Tracker

    tracker = Tracker(cfg.tracking)
    if frame is None:
        frame = pipeline.load_training_frame(cfg)
    run_id = pipeline.start_run(cfg, tracker)
    try:
        det = pipeline.fit_detector(cfg, frame, tracker, run_id)
        reg = pipeline.log_and_register(cfg, det, frame, tracker, run_id)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    promotion = None
    if cfg.promotion.auto and not reg.champion_set:
        promotion = pipeline.promote(cfg, tracker, challenger=reg.model.version)
    return TrainResult(reg.model, reg.champion_set, float(det.threshold_), reg.calibration,
                       det, promotion)


def score_into_sink(cfg: AppConfig, paths: str | Path | Sequence[str | Path] | None = None,
                    alias: str = "champion") -> ScoreSummary:
    """Score files with a registered model and upsert the flagged events.

    A batch pass over whole files, like ``ae-anomaly score --input``; the scheduled,
    watermarked mode (``source.kind`` folder or sql) is the ``score`` flow's.

    Args:
        cfg: the configuration: the registry (``tracking``), the reading of the files
            (``data``), the event rules and the anomaly table (``sink``).
        paths: files or folders to score; default ``data.score``.
        alias: the registry alias of the model to use.

    Returns:
        The model that scored and the counts of what was scored and written.

    Raises:
        ModelNotFoundError: no model version has the alias.
        AeAnomalyError: invalid configuration or data.
    """
    from ae_anomaly import pipeline
    from ae_anomaly.tracking import Tracker

    if isinstance(paths, str | Path):
        paths = [paths]
    targets = [str(p) for p in paths] if paths is not None else None
    det, model = Tracker(cfg.tracking).load(alias)
    result = pipeline.score_inputs(cfg, det, targets, model)
    written = pipeline.write_events(cfg, det, model, result)
    counts = pipeline.score_counts(result)
    return ScoreSummary(model, counts["events"], counts["steps"], counts["flagged_steps"],
                        list(counts["files"]), written)
