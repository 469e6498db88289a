"""What an event looked like: the raw series around it and, when the model loads, its scores.

The raw data comes from wherever the deployment scores from: with ``source.kind`` ``folder``
or ``sql`` (scheduled, incremental scoring) it is the landing folder's staging table or the
raw metrics table, read through the :class:`~ae_anomaly.sources.Source` protocol around the
event only; with ``files`` it is the configured ``data.score`` file or folder, read (and
validated) with :class:`~ae_anomaly.data.timeseries.TimeSeriesReader`, keeping one entity's
rows. Scores are
recomputed with the event's own model version, loaded from the MLflow registry through
:class:`~ae_anomaly.tracking.Tracker` by an alias that points at that version (the tracker
loads by alias). The slice is scored with one window length of margin on both sides, so
every shown step is covered by exactly the windows that covered it in the scoring run.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, expand_path
from ae_anomaly.data.timeseries import ENTITY, TS, TimeSeriesReader, list_data_files
from ae_anomaly.sources.base import Source

log = logging.getLogger(__name__)


@dataclass
class EventContext:
    """The data behind an event's detail charts.

    Attributes:
        series: ``timestamp`` plus one column per shown channel, around the event; None
            when the raw data could not be read.
        scores: recomputed anomaly scores aligned with ``series``; None when not computed.
        threshold: the model's threshold (from the event row).
        notes: one line per thing the page should say (what is shown, what is not, why).
    """

    series: pd.DataFrame | None = None
    scores: np.ndarray | None = None
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)


class ContextLoader:
    """Reads raw series and recomputes scores for event detail pages, with small caches.

    Args:
        cfg: the application config (``data`` for the raw source, ``tracking`` for models).
        max_entities: how many entities' raw series to keep in memory.
    """

    def __init__(self, cfg: AppConfig, max_entities: int = 8) -> None:
        self.cfg = cfg
        self.max_entities = max_entities
        self._series: OrderedDict[tuple[Any, ...], pd.DataFrame] = OrderedDict()
        self._models: dict[tuple[str, str], Any] = {}
        self._model_notes: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._source: Source | None = None

    # ------------------------------------------------------------------ raw data
    def uses_source(self) -> bool:
        """Whether raw series come from the incremental source (``source.kind`` not files)."""
        return self.cfg.source.kind != "files"

    def source(self) -> str | None:
        """Where raw series come from, for messages: the source's name or ``data.score``."""
        if self.uses_source():
            return self._source.name if self._source is not None else (
                f"the {self.cfg.source.kind} source")
        return expand_path(self.cfg.data.score) if self.cfg.data.score else None

    def incremental_source(self) -> Source:
        """The configured incremental source, opened once (``open_source``).

        Raises:
            DataError: the source's table does not exist (yet).
        """
        with self._lock:
            if self._source is None:
                from ae_anomaly.sources import open_source

                self._source = open_source(self.cfg, read_only=True)
            return self._source

    def recent_series(self, entity: str, n_steps: int = 500) -> pd.DataFrame:
        """The newest ``n_steps`` steps of an entity, to learn the sampling step."""
        if not self.uses_source():
            return self.entity_series(entity)
        src = self.incremental_source()
        metrics = src.metrics()
        return src.rows_before(entity, None, n_steps, metrics, src.validator(metrics, entity))

    def series_around(self, entity: str, start: Any, end: Any, metrics: list[str] | None,
                      before: int, after: int) -> pd.DataFrame:
        """An entity's raw rows from ``before`` steps before ``start`` to ``after`` steps
        after ``end`` (fewer where the data ends), in time order.

        With the incremental source only those rows are read; with ``data.score`` the
        entity's whole (cached) series is returned.

        Raises:
            DataError: the source is missing or invalid.
        """
        if not self.uses_source():
            return self.entity_series(entity, metrics)
        src = self.incremental_source()
        cols = list(metrics) if metrics else src.metrics()
        validate = src.validator(cols, entity)
        t0 = pd.Timestamp(start).to_pydatetime()
        t1 = pd.Timestamp(end)
        head = src.rows_before(entity, t0, before, cols, validate, inclusive=False)
        parts = [head]
        after_end = 0
        cursor = head[TS].iloc[-1].to_pydatetime() if len(head) else None
        for chunk in src.iter_after(entity, cursor, 1000, cols, validate):
            parts.append(chunk)
            after_end += int((chunk[TS] > t1).sum())
            if after_end >= after:
                break
        frame = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(
            len(p) for p in parts) else pd.DataFrame()
        if frame.empty:
            return frame
        return frame[(frame[TS] > t1).cumsum() <= after].reset_index(drop=True)

    def entity_series(self, entity: str, metrics: list[str] | None = None) -> pd.DataFrame:
        """One entity's whole raw series from the configured source, in time order.

        Raises:
            DataError: the source is missing or invalid.
        """
        src = self.source()
        if src is None:
            raise FileNotFoundError("data.score is not set in the config (and source.kind is "
                                    "files, so there is no landing or SQL table to read)")
        files = list_data_files(src)
        key = (tuple((str(f), f.stat().st_mtime_ns) for f in files), entity,
               tuple(metrics or ()))
        with self._lock:
            if key in self._series:
                self._series.move_to_end(key)
                return self._series[key]
        parts = []
        reader = TimeSeriesReader(self.cfg.data, list(metrics) if metrics else None)
        for f in files:
            for chunk in reader.iter_file(Path(f)):
                rows = chunk[chunk[ENTITY] == entity]
                if len(rows):
                    parts.append(rows)
        frame = (pd.concat(parts, ignore_index=True).sort_values(TS, kind="stable")
                 .drop_duplicates(TS, keep="last").reset_index(drop=True)
                 if parts else pd.DataFrame())
        with self._lock:
            self._series[key] = frame
            while len(self._series) > self.max_entities:
                self._series.popitem(last=False)
        return frame

    # ------------------------------------------------------------------ models
    def detector(self, name: str, version: str) -> tuple[Any | None, str]:
        """The detector of one registered model version, or (None, why not)."""
        key = (name, version)
        with self._lock:
            if key in self._models:
                return self._models[key], ""
            if key in self._model_notes:
                return None, self._model_notes[key]
        det, note = self._load_detector(name, version)
        with self._lock:
            if det is not None:
                self._models[key] = det
            else:
                self._model_notes[key] = note
        return det, note

    def _load_detector(self, name: str, version: str) -> tuple[Any | None, str]:
        uri = self.cfg.tracking.tracking_uri
        if uri.startswith("sqlite:///"):
            path = Path(expand_path(uri).removeprefix("sqlite:///"))
            if not path.is_file():
                return None, f"the MLflow store {path} does not exist"
        try:
            from ae_anomaly.tracking import Tracker  # MLflow is slow to import: only here

            tracker = Tracker(self.cfg.tracking)
            mv = tracker.client.get_model_version(name, version)
            aliases = list(getattr(mv, "aliases", []) or [])
            if not aliases:
                return None, (f"{name} v{version} has no registry alias any more, and models "
                              f"are loaded by alias")
            det, ref = tracker.load(alias=aliases[0], name=name)
            if str(ref.version) != str(version):  # the alias moved meanwhile
                return None, f"alias '{aliases[0]}' moved away from v{version}"
            return det, ""
        except Exception as exc:  # a dashboard page must render whatever MLflow says
            log.warning("could not load %s v%s: %s", name, version, exc)
            return None, f"could not load {name} v{version} from MLflow ({exc})"

    # ------------------------------------------------------------------ the event
    def event_context(self, event: dict[str, Any], channels: int = 4,
                      compute_scores: bool = True) -> EventContext:
        """Raw series (and scores) around one event row of the anomaly table.

        Args:
            event: the event row (``entity``, ``start_ts``, ``end_ts``, ``top_channels``,
                ``model_name``, ``model_version``, ``threshold``).
            channels: how many of the event's top channels to show.
            compute_scores: recompute scores with the event's model when it loads.
        """
        ctx = EventContext(threshold=float(event["threshold"]))
        det, why = (None, "scores were not requested")
        if compute_scores:
            det, why = self.detector(event["model_name"], str(event["model_version"]))
        metrics = list(det.feature_names_) if det is not None else None
        # Enough rows for the widest view (2,000 steps) plus the scoring margin.
        margin = 2000 + (int(det.context_before) + int(det.context_after) if det else 0)
        try:
            full = self.series_around(event["entity"], event["start_ts"], event["end_ts"],
                                      metrics, margin, margin)
        except Exception as exc:  # missing file, invalid data: say so on the page
            ctx.notes.append(f"Raw series not shown: {exc}")
            return ctx
        if full.empty:
            ctx.notes.append(f"Raw series not shown: {self.source()} has no rows of entity "
                             f"'{event['entity']}' around the event")
            return ctx
        ts = full[TS].to_numpy()
        start, end = np.datetime64(event["start_ts"]), np.datetime64(event["end_ts"])
        i0, i1 = int(np.searchsorted(ts, start)), int(np.searchsorted(ts, end, "right")) - 1
        if i0 >= len(ts) or i1 < 0 or i1 < i0:
            ctx.notes.append(f"Raw series not shown: {self.source()} has no rows of "
                             f"'{event['entity']}' between the event's start and end")
            return ctx
        pad = int(min(max(3 * (i1 - i0 + 1), 120), 2000))
        lo, hi = max(0, i0 - pad), min(len(ts), i1 + pad + 1)
        top = [c for c in (event.get("top_channels") or {}) if c in full.columns][:channels]
        if not top:
            top = [c for c in full.columns if c not in (TS, ENTITY)][:channels]
        ctx.series = full.iloc[lo:hi][[TS, *top]].reset_index(drop=True)
        ctx.notes.append(f"Raw series of the top {len(top)} channels from {self.source()}, "
                         f"{pad} steps either side of the event (shaded).")
        if det is None:
            ctx.notes.append(f"Anomaly score not shown ({why}); raw series only.")
            return ctx
        # the rows the scores of [lo, hi) depend on (window, smoothing, baseline)
        s_lo = max(0, lo - int(det.context_before))
        s_hi = min(len(ts), hi + int(det.context_after))
        part = full.iloc[s_lo:s_hi]
        if len(part) < det.min_samples:
            ctx.notes.append("Anomaly score not shown: fewer steps than one window.")
            return ctx
        try:
            scores = det.score(part)
        except Exception as exc:
            ctx.notes.append(f"Anomaly score not shown: scoring failed ({exc}).")
            return ctx
        ctx.scores = scores[lo - s_lo: lo - s_lo + (hi - lo)]
        ctx.threshold = det.threshold_for(event["entity"])
        ctx.notes.append(f"Anomaly score recomputed with {event['model_name']} "
                         f"v{event['model_version']} from the MLflow registry, against its "
                         f"threshold {ctx.threshold:.4g}.")
        return ctx


def steps_per_day(frame: pd.DataFrame | None, freq: str) -> tuple[float, str]:
    """Sampling rate of the raw data (median step of a series) or, failing that, ``freq``.

    Returns:
        (steps per day, where the number came from).
    """
    if frame is not None and len(frame) > 2:
        step = pd.Series(frame[TS]).diff().median()
        if pd.notna(step) and step > pd.Timedelta(0):
            return pd.Timedelta("1D") / step, f"median step {_human(step)} of the raw data"
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
        return pd.Timedelta("1D") / step, f"data.synthetic.freq {freq}"
    except (ValueError, TypeError):
        return 1440.0, "one-minute sampling assumed"


def _human(step: pd.Timedelta) -> str:
    secs = step.total_seconds()
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)} {unit}"
    return str(step)
