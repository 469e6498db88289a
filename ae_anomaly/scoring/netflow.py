"""Scoring network flows into the anomaly table, per entity series or per flow row.

``data.netflow`` names a flow data set description (``configs/datasets/*.yaml``) and
``data.netflow_mode`` picks how its records are detected:

* ``aggregate`` (default): flows become per-entity series (the description's ``aggregate``
  section: flows, bytes, distinct destinations and ports, failed share... per host per
  interval, :func:`~ae_anomaly.data.netflow.aggregate_netflow`), trained and scored by the
  time-series :class:`~ae_anomaly.detector.Detector` exactly like server metrics; an event
  names the host and its intervals, ``top_channels`` the aggregate features (as the
  detector sees them: ``log1p_flows``, ``log1p_failed_flows``..., see :func:`netflow_series`).
* ``rows``: every flow is scored by a :class:`~ae_anomaly.tabular.TabularDetector`; every
  flagged flow is one event whose entity is the description's entity key columns joined with
  ``|`` (the data set name when it has none), whose time is the flow's timestamp (the
  scoring time when the data set has none), and whose ``top_channels`` are the flow features
  (one-hot features as ``column=value``).

Both write :class:`~ae_anomaly.sinks.EventRecord` rows to the same ``anomaly_events`` table.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, DataConfig, EventsConfig, ScoringConfig, expand_path
from ae_anomaly.data.netflow import (
    ENTITY,
    IS_ANOMALY,
    TS,
    NetflowDatasetConfig,
    aggregate_netflow,
    load_netflow_dataset_config,
    read_netflow,
)
from ae_anomaly.data.timeseries import list_data_files
from ae_anomaly.detector import Detector
from ae_anomaly.errors import ConfigError, DataError
from ae_anomaly.events import Event, EventBuilder
from ae_anomaly.records import EventRecord, ModelRef
from ae_anomaly.scoring.job import ScoreResult, to_records
from ae_anomaly.sinks import open_sink
from ae_anomaly.tabular import TabularDetector

log = logging.getLogger(__name__)

NetflowDetector = Detector | TabularDetector
ENTITY_SEPARATOR = "|"
_GLOB_CHARS = set("*?[")
LOG_PREFIX = "log1p_"
FAILED_FLOWS = "failed_flows"


# --------------------------------------------------------------------------- reading
def load_netflow_dataset(data_cfg: DataConfig) -> NetflowDatasetConfig:
    """The flow data set description that ``data.netflow`` names.

    Raises:
        ConfigError: ``data.netflow`` is not set, or the description is missing or invalid.
    """
    if not data_cfg.netflow:
        raise ConfigError(
            "data.netflow is not set: name a flow data set description "
            "(e.g. --set data.netflow=configs/datasets/netflow.yaml)"
        )
    return load_netflow_dataset_config(expand_path(data_cfg.netflow))


def netflow_paths(path: str | Path, ds: NetflowDatasetConfig) -> list[Path]:
    """The flow files at ``path``: a file, a folder (its ``.csv`` / ``.parquet`` files) or a glob.

    Raises:
        DataError: nothing matches.
    """
    text = str(path)
    if _GLOB_CHARS & set(text) and not Path(text).exists():
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
        if not files:
            raise DataError("no flow file matches the pattern", path=text)
        return files
    files = list_data_files(path)
    if Path(path).is_dir():
        suffixes = (".csv",) if ds.format == "csv" else (".parquet", ".pq")
        files = [f for f in files if f.suffix.lower() in suffixes]
        if not files:
            raise DataError(f"folder holds no {ds.format} flow file", path=text)
    return files


def read_netflow_paths(paths: Iterable[str | Path], ds: NetflowDatasetConfig) -> pd.DataFrame:
    """Read and validate every flow file of ``paths`` (files, folders or globs) into one frame.

    Raises:
        DataError: see :func:`~ae_anomaly.data.netflow.read_netflow`; no path given.
    """
    files = [f for p in paths for f in netflow_paths(p, ds)]
    if not files:
        raise DataError("no flow file to read")
    frames = [read_netflow(f, ds) for f in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def netflow_series(frame: pd.DataFrame, ds: NetflowDatasetConfig) -> pd.DataFrame:
    """Per-entity series of flows for the time-series detector (``timestamp, entity, ...``).

    The aggregate features are counts and volumes with heavy tails (a DoS minute has
    hundreds of flows, a normal one a few; one large transfer dwarfs a day's traffic), so
    every one enters the detector as ``log1p_<feature>`` and the scaler measures orders of
    magnitude. ``failed_share`` becomes the count of failed flows first
    (``log1p_failed_flows``): a share is noise in a quiet interval (one reset flow out of one
    is 100%), and with it the conformal threshold on the synthetic NetFlow fell from about
    10 to 4 while DoS minutes scored 60. A series without the prefix (raw
    :func:`~ae_anomaly.data.netflow.aggregate_netflow` output) fails loudly at scoring instead of
    being scored on the wrong scale. Use ``preprocess.scaler: standard``: empty intervals make
    a median/IQR scale degenerate.

    Raises:
        ConfigError: the description has no ``aggregate`` section or no timestamp.
    """
    if ds.aggregate is None:
        raise ConfigError(
            f"dataset '{ds.name}' has no 'aggregate' section: it is needed for "
            "data.netflow_mode 'aggregate' (or use data.netflow_mode=rows)"
        )
    features = list(ds.aggregate.features)
    agg = ds.aggregate
    if "failed_share" in features and "flows" not in features:
        agg = agg.model_copy(update={"features": [*features, "flows"]})
    series = aggregate_netflow(frame, ds, agg)
    if "failed_share" in features:
        failed = series["failed_share"].to_numpy(np.float64) * series["flows"].to_numpy()
        series["failed_share"] = np.round(failed)
        if "flows" not in features:
            series = series.drop(columns="flows")
    names = {f: f"{LOG_PREFIX}{FAILED_FLOWS if f == 'failed_share' else f}" for f in features}
    for feat in features:
        series[feat] = np.log1p(series[feat].to_numpy(np.float64))
    return series.rename(columns=names)


def load_netflow_training_frame(cfg: AppConfig) -> pd.DataFrame:
    """The training frame of a flow configuration.

    ``aggregate``: the wide per-entity series of ``data.train``'s flows; ``rows``: the flow
    rows themselves (the detector keeps only the normal ones when they are labelled).

    Raises:
        ConfigError: ``data.train`` or ``data.netflow`` is not set, or the description is bad.
        DataError: the flow files are missing or invalid.
    """
    if not cfg.data.train:
        raise ConfigError(
            "data.train is not set: give a flow file, folder or glob (--set data.train=PATH)"
        )
    ds = load_netflow_dataset(cfg.data)
    frame = read_netflow_paths([expand_path(cfg.data.train)], ds)
    if cfg.data.netflow_mode == "rows":
        return frame
    series = netflow_series(frame, ds)
    if IS_ANOMALY in series.columns and series[IS_ANOMALY].any():
        log.warning(
            "%d of %d training intervals contain flows labelled anomalous; the "
            "time-series detector trains on them as if normal",
            int(series[IS_ANOMALY].sum()),
            len(series),
        )
    return series


def build_netflow_detector(cfg: AppConfig) -> NetflowDetector:
    """An unfitted detector for the configured flow mode."""
    if cfg.data.netflow_mode == "rows":
        return TabularDetector(
            cfg.model,
            cfg.training,
            cfg.calibration,
            load_netflow_dataset(cfg.data),
            cfg.data.netflow_max_categories,
            clip=cfg.preprocess.clip,
        )
    return Detector.from_config(cfg)


def fit_netflow_detector(
    cfg: AppConfig,
    frame: pd.DataFrame,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> NetflowDetector:
    """Fit the configured flow detector on :func:`load_netflow_training_frame`'s frame."""
    det = build_netflow_detector(cfg)
    if isinstance(det, TabularDetector):
        return det.fit(frame)
    return det.fit(frame, on_epoch=on_epoch)


# --------------------------------------------------------------------------- aggregate mode
def score_series(
    detector: Detector,
    series: pd.DataFrame,
    events_cfg: EventsConfig,
    scoring_cfg: ScoringConfig,
) -> ScoreResult:
    """Score a wide per-entity frame (e.g. :func:`netflow_series`) in memory and find events.

    Each entity's rows are one series in time order; an entity with fewer steps than the
    window is counted in ``unscored``.

    Raises:
        DataError: a feature column the detector was trained on is missing.
    """
    missing = [f for f in detector.feature_names_ if f not in series.columns]
    if missing:
        raise DataError(
            "aggregate feature the model was trained on is missing; the model "
            f"expects {', '.join(detector.feature_names_)}",
            column=missing[0],
        )
    result = ScoreResult()
    length = detector.window.length
    values = series[detector.feature_names_].to_numpy(np.float64)
    stamps = series[TS].to_numpy()
    for ent, idx in series.groupby(ENTITY, sort=True).indices.items():
        ent = str(ent)
        if len(idx) < length:
            result.unscored[ent] = len(idx)
            log.warning(
                "entity '%s' has %d intervals, fewer than one window (%d): not scored",
                ent,
                len(idx),
                length,
            )
            continue
        scores, ch = detector.score_values(
            detector.scaler_.transform(values[idx]),
            scoring_cfg.batch_size,
            timestamps=stamps[idx],
            entity=ent,
        )
        builder = EventBuilder(ent, events_cfg, detector.threshold_for(ent),
                               detector.rule_for(ent).p_values)
        result.events.extend(builder.push(stamps[idx], scores, ch) + builder.flush())
        result.steps[ent] = len(idx)
        result.flagged[ent] = int((scores > detector.threshold_for(ent)).sum())
    return result


# --------------------------------------------------------------------------- rows mode
@dataclasses.dataclass
class RowScores:
    """What scoring flow rows produced: per-row scores and the flagged rows' events."""

    scores: np.ndarray
    flagged: np.ndarray
    entities: np.ndarray
    events: list[Event]
    row_keys: list[str]


def row_entities(frame: pd.DataFrame, ds: NetflowDatasetConfig) -> np.ndarray:
    """Each row's entity: its entity key columns joined with ``|`` (the data set name if none)."""
    if not ds.entity:
        return np.full(len(frame), ds.name, dtype=object)
    parts = [frame[c].astype(str).to_numpy(dtype=object) for c in ds.entity]
    out = parts[0]
    for p in parts[1:]:
        out = out + ENTITY_SEPARATOR + p
    return out


def _row_keys(frame: pd.DataFrame, ds: NetflowDatasetConfig, rows: np.ndarray) -> list[str]:
    """Deterministic keys of rows: content hash plus the occurrence of identical rows."""
    cols = [c for c in ds.used_columns(include_label=False) if c in frame.columns]
    hashes = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    nth = pd.Series(hashes).groupby(hashes).cumcount().to_numpy()
    return [f"{hashes[i]:016x}.{nth[i]}" for i in rows]


def score_netflow_rows(
    detector: TabularDetector,
    frame: pd.DataFrame,
    scored_at: datetime | None = None,
    batch_size: int = 4096,
) -> RowScores:
    """Score flow rows and make one event per flagged row.

    Args:
        detector: a fitted row detector (its description names timestamp and entity keys).
        frame: flow rows as :func:`~ae_anomaly.data.netflow.read_netflow` returns them.
        scored_at: the time given to events of a data set without timestamps.
        batch_size: rows per forward pass.

    Raises:
        DataError: a feature column is missing or a numeric value is not a number.
    """
    ds = detector.dataset
    ch = detector.channel_errors(frame, batch_size)
    scores = ch.mean(axis=1)
    flagged = scores > detector.threshold_
    entities = row_entities(frame, ds)
    rows = np.flatnonzero(flagged)
    if ds.timestamp is not None and ds.timestamp in frame.columns:
        # the anomaly table keeps microseconds
        stamps = pd.to_datetime(frame[ds.timestamp]).to_numpy().astype("datetime64[us]")
    else:
        at = scored_at or datetime.now(UTC).replace(tzinfo=None)
        stamps = np.full(len(frame), np.datetime64(at, "us"))
    p = detector.p_values(scores[rows]) if len(rows) else np.empty(0)
    events = [
        Event(
            entity=str(entities[i]),
            start_idx=int(i),
            end_idx=int(i),
            peak_idx=int(i),
            start_ts=stamps[i],
            end_ts=stamps[i],
            peak_ts=stamps[i],
            peak_score=float(scores[i]),
            n_flagged=1,
            channel_error=ch[i],
            min_p_value=float(p[j]),
        )
        for j, i in enumerate(rows.tolist())
    ]
    keys = _row_keys(frame, ds, rows) if len(rows) else []
    log.info("scored %d flows: %d flagged", len(frame), len(rows))
    return RowScores(scores, flagged, entities, events, keys)


def row_records(
    result: RowScores,
    detector: TabularDetector,
    model: ModelRef,
    scored_at: datetime | None = None,
) -> list[EventRecord]:
    """Event records of flagged flow rows; ids are unique per flow (content hash) and stable."""
    records = to_records(result.events, detector, model, scored_at)  # type: ignore[arg-type]
    out = []
    for rec, key in zip(records, result.row_keys, strict=True):
        raw = f"{model.name}|{model.version}|{rec.entity}|{rec.start_ts.isoformat()}|{key}"
        out.append(dataclasses.replace(rec, event_id=hashlib.sha256(raw.encode()).hexdigest()[:32]))
    return out


# --------------------------------------------------------------------------- both modes
@dataclasses.dataclass
class NetflowScoreResult:
    """A flow scoring pass: its event records and counts."""

    records: list[EventRecord]
    mode: str
    n_flows: int
    steps: int
    flagged: int
    unscored: dict[str, int] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list, repr=False)
    files: list[str] = dataclasses.field(default_factory=list)


def score_netflow_frame(
    cfg: AppConfig,
    detector: NetflowDetector,
    frame: pd.DataFrame,
    model: ModelRef,
    ds: NetflowDatasetConfig | None = None,
    scored_at: datetime | None = None,
) -> NetflowScoreResult:
    """Score flow rows already read (either mode) into event records.

    Raises:
        ConfigError: the detector does not match ``data.netflow_mode``.
        DataError: the flows do not fit the description or the model.
    """
    if isinstance(detector, TabularDetector):
        rows = score_netflow_rows(detector, frame, scored_at, cfg.scoring.batch_size)
        return NetflowScoreResult(
            row_records(rows, detector, model, scored_at),
            "rows",
            len(frame),
            len(frame),
            int(rows.flagged.sum()),
            events=rows.events,
        )
    if cfg.data.netflow_mode == "rows":
        raise ConfigError("data.netflow_mode is 'rows' but the model is a time-series detector")
    ds = ds or load_netflow_dataset(cfg.data)
    res = score_series(detector, netflow_series(frame, ds), cfg.events, cfg.scoring)
    return NetflowScoreResult(
        to_records(res.events, detector, model, scored_at),
        "aggregate",
        len(frame),
        sum(res.steps.values()),
        sum(res.flagged.values()),
        res.unscored,
        res.events,
    )


def score_netflow_inputs(
    cfg: AppConfig,
    detector: NetflowDetector,
    model: ModelRef,
    paths: list[str] | None = None,
    scored_at: datetime | None = None,
) -> NetflowScoreResult:
    """Read the configured (or given) flow files and score them (either mode).

    Raises:
        ConfigError: no input configured, or no flow description.
        DataError: the flows are missing or invalid (never a traceback from the CLI).
    """
    targets = paths or ([cfg.data.score] if cfg.data.score else [])
    if not targets:
        raise ConfigError(
            "data.score is not set: give a flow file, folder or glob (--set data.score=PATH)"
        )
    ds = load_netflow_dataset(cfg.data)
    files = [f for t in targets for f in netflow_paths(expand_path(t), ds)]
    frame = read_netflow_paths(files, ds)
    out = score_netflow_frame(cfg, detector, frame, model, ds, scored_at)
    out.files = [str(f) for f in files]
    return out


def write_netflow_events(cfg: AppConfig, result: NetflowScoreResult) -> int:
    """Upsert a flow scoring pass's records into the configured anomaly table."""
    return open_sink(cfg).write(result.records)
