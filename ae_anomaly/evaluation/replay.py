"""``ae-anomaly replay``: a simulated deployment over a labelled data set.

One *cell* is one (model, entity, seed, variant). Its series (SMD: the machine's train
file followed by its test file on one minute clock; NAB: the whole file) is fed, on a
simulated clock, through the production code paths, in a temporary state folder of its own
(an MLflow SQLite store and registry, a SQLite anomaly table, a SQLite source table):

1. the first ``replay.initial_steps`` steps (default: the data set's training part, as in
   the benchmark) are appended to the source table (``source.kind: sql``) and a model is
   trained on them (:func:`ae_anomaly.pipeline.fit_detector`, then
   :func:`~ae_anomaly.pipeline.log_and_register`: the first version is ``champion``);
2. every ``replay.score_every`` steps (the tick) the next rows are appended and the
   champion scores from its watermarks (:func:`ae_anomaly.pipeline.score_increment`:
   watermarks, event rules, adaptive threshold state, upserts into the anomaly table);
3. every ``replay.retrain_every`` steps (0: never) a challenger is trained on the trailing
   ``replay.train_window`` steps (no labels: production has none), registered, and judged
   by the promotion gates (:func:`ae_anomaly.pipeline.promote`; the evaluation window is the
   newest ``promotion.eval_steps`` steps of the source) or promoted unconditionally
   (``replay.promotion: always``); the champion is then resolved again through the
   registry (:meth:`ae_anomaly.tracking.Tracker.load`).

The Prefect flows are not called (their per-run overhead would dominate a replay of
thousands of ticks); they are thin wrappers over these same functions.

When the series is exhausted the anomaly table *is* the result: the predicted steps are the
steps inside its events (as in the benchmark). Metrics use the steps after the training
part only (``eval_from``); labels are read only there, after the replay. AUC-PR needs
scores, which the table does not hold: each step is scored afterwards by the version that
was champion when the step arrived (the same detector and post-processing; the threshold,
static or adaptive, does not enter AUC).

Variants (``--variants static,aci``) run the same cells with ``calibration.adaptive`` set
to ``none`` / ``aci``; their records are named ``<model>/<variant>`` so one report shows
them side by side.

The results file uses the benchmark's format (:mod:`ae_anomaly.evaluation.benchmark.run`:
``records`` with ``model``, ``entity``, ``alpha``, ``f1``, ``auc_pr``, ``far_normal``, ...)
plus the replay's fields (``events_per_day``, ``budget_per_day``, ``event_precision``,
``delay_mean``, ``far_normal_daily``, ``decisions``); it is rewritten after every cell and a
rerun with the same settings skips the cells it holds.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ae_anomaly.config import AppConfig, apply_overrides
from ae_anomaly.data.timeseries import ENTITY, SMD_ORIGIN, TS
from ae_anomaly.errors import ConfigError
from ae_anomaly.evaluation.benchmark.datasets import Dataset, EntityData
from ae_anomaly.evaluation.benchmark.run import (
    FORMAT,
    FORMAT_VERSION,
    _comparable,
    _machine,
    _mean,
    _nab_summary,
    _versions,
    _write_json,
    load_results,
    summarize,
)
from ae_anomaly.evaluation.benchmark.settings import (
    _MODEL_ADAPTER,
    BenchSettings,
    _jsonable,
    resolve_settings,
)
from ae_anomaly.evaluation.metrics import evaluate, segments

log = logging.getLogger(__name__)

REPLAY_DATASETS = ("smd", "nab")
#: ``--variants``: the config overrides each variant adds to the cell's configuration.
VARIANTS: dict[str, list[str]] = {
    "static": ["calibration.adaptive=none"],
    "aci": ["calibration.adaptive=aci"],
}
#: Per-dataset replay defaults (below ``--set replay.*``).
REPLAY_DEFAULTS: dict[str, list[str]] = {
    # SMD: one step a minute; retrain weekly on the last two weeks.
    "smd": ["retrain_every=10080", "train_window=20160"],
    # NAB: files of ~4,000 steps (mostly 5 minutes): retrain every 1,000 steps on the
    # last 2,000 (about a week).
    "nab": ["retrain_every=1000", "train_window=2000"],
}
_SUMMARY_KEYS = ("events_per_day", "budget_per_day", "event_precision", "delay_mean",
                 "delay_median", "n_retrains", "n_promotions", "wall_s")


class ReplayConfig(BaseModel):
    """Replay settings (``--set replay.KEY=VALUE``); see the module docstring.

    Attributes:
        initial_steps: steps of history before the clock starts (None: the data set's
            training part: SMD's train file, NAB's probationary period).
        score_every: steps between scoring runs (the tick).
        retrain_every: steps between retrains (0: never retrain).
        train_window: trailing steps a retrain trains on (None: all history so far).
        promotion: ``gates``: the promotion gates decide; ``always``: every retrained
            model becomes champion.
        keep_state: keep each cell's state folder (MLflow store, tables) beside the
            results file instead of a temporary folder.
    """

    model_config = ConfigDict(extra="forbid")

    initial_steps: int | None = Field(None, ge=16)
    score_every: int = Field(60, ge=1)
    retrain_every: int = Field(0, ge=0)
    train_window: int | None = Field(None, ge=16)
    promotion: Literal["gates", "always"] = "gates"
    keep_state: bool = False


# --------------------------------------------------------------------------- the clock
@dataclass(frozen=True)
class Tick:
    """One step of the simulated clock: rows ``[start, end)`` arrive, then (``retrain``)
    a challenger is trained on the history up to ``end``, then the champion scores."""

    start: int
    end: int
    retrain: bool


def schedule(n_steps: int, initial: int, score_every: int, retrain_every: int) -> list[Tick]:
    """The ticks of a replay of ``n_steps`` steps after ``initial`` steps of history.

    A retrain falls on the first tick whose end reaches each multiple of ``retrain_every``
    steps after the start of the clock (``initial``); 0 never retrains.
    """
    if not 0 < initial < n_steps:
        raise ConfigError(f"replay: initial history of {initial} steps leaves nothing to "
                          f"replay in {n_steps} steps")
    ticks, start, next_retrain = [], initial, initial + retrain_every
    while start < n_steps:
        end = min(start + score_every, n_steps)
        retrain = retrain_every > 0 and end >= next_retrain
        if retrain:
            while next_retrain <= end:
                next_retrain += retrain_every
        ticks.append(Tick(start, end, retrain))
        start = end
    return ticks


# --------------------------------------------------------------------------- settings
@dataclass
class ReplaySettings:
    """A replay run's settings: the benchmark's (dataset, config, models) plus the clock."""

    bench: BenchSettings
    replay: ReplayConfig
    variants: list[str]

    def fingerprint(self) -> dict[str, Any]:
        """The settings a results file must share with this run to be resumed."""
        fp = self.bench.fingerprint()
        fp["replay"] = self.replay.model_dump()
        return fp


def resolve_replay(dataset: str, data_dir: str | Path, models: Sequence[str],
                   config_path: str | None = None, overrides: Sequence[str] = (),
                   variants: Sequence[str] = ()) -> ReplaySettings:
    """Resolve a replay's settings: ``replay.*`` overrides go to :class:`ReplayConfig`, the
    rest to :func:`~ae_anomaly.evaluation.benchmark.resolve_settings` (the benchmark's
    dataset defaults, ``models.<name>.*``, config keys).

    Raises:
        ConfigError: an unknown dataset, variant, model, key or value.
    """
    if dataset not in REPLAY_DATASETS:
        raise ConfigError(f"replay: unknown dataset '{dataset}'; datasets: "
                          f"{', '.join(REPLAY_DATASETS)}")
    user = [o.split("=", 1)[0].strip()[len("replay."):] + "=" + o.split("=", 1)[1]
            for o in overrides if o.strip().startswith("replay.") and "=" in o]
    rest = [o for o in overrides if not o.strip().startswith("replay.")]
    keys = {u.split("=", 1)[0] for u in user}
    defaults = [d for d in REPLAY_DEFAULTS[dataset] if d.split("=", 1)[0] not in keys]
    try:
        replay = ReplayConfig.model_validate(apply_overrides({}, defaults + user))
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"replay.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant '{unknown[0]}'; variants: {', '.join(VARIANTS)}")
    bench = resolve_settings(dataset, data_dir, models, config_path, rest)
    if not variants:  # the configuration's own rule
        variants = ["aci" if bench.cfg.calibration.adaptive == "aci" else "static"]
    return ReplaySettings(bench, replay, list(dict.fromkeys(variants)))


def record_name(model: str, variant: str) -> str:
    """A record's ``model``: the model and the variant (``conv_ae/aci``)."""
    return f"{model}/{variant}"


# --------------------------------------------------------------------------- one cell
@dataclass
class Series:
    """One entity's whole series on one clock, with labels where they are evaluated."""

    frame: pd.DataFrame
    labels: np.ndarray  # 0/1 per row of frame (0 before eval_from: not evaluated)
    eval_from: int


def entity_series(kind: str, ent: EntityData) -> Series:
    """SMD: train then test on one minute clock; NAB: the file (train is its start)."""
    if kind == "nab":
        labels = np.concatenate([np.zeros(ent.eval_from, dtype=np.int64), ent.labels])
        frame = ent.test.reset_index(drop=True)
        ts = pd.to_datetime(frame[TS])
        if not (ts.diff().iloc[1:] > pd.Timedelta(0)).all():
            # A few NAB files repeat (or reorder) timestamps; a source table needs a
            # strictly increasing clock: one row per median step, rows kept in file order
            # (the NAB scorer maps detections by row index to the file's own timestamps).
            step = ts.diff()[ts.diff() > pd.Timedelta(0)].median()
            frame[TS] = ts.iloc[0] + step * np.arange(len(frame))
            log.info("%s: timestamps not strictly increasing; replayed on a regular clock "
                     "of %s", ent.name, step)
        return Series(frame, labels, ent.eval_from)
    frame = pd.concat([ent.train, ent.test], ignore_index=True)
    frame[TS] = SMD_ORIGIN + pd.to_timedelta(np.arange(len(frame)), unit="min")
    labels = np.concatenate([np.zeros(len(ent.train), dtype=np.int64), ent.labels])
    return Series(frame, labels, len(ent.train))


def _cell_config(s: ReplaySettings, model: str, seed: int, variant: str, state: Path,
                 metrics: list[str]) -> AppConfig:
    """The run's configuration with the cell's model, seed, variant and state folder."""
    cfg = s.bench.cfg
    raw = cfg.model_dump(mode="json")
    raw["model"] = _MODEL_ADAPTER.validate_python(s.bench.model_params[model]).model_dump(
        mode="json")
    raw["training"]["seed"] = seed
    raw["data"]["metrics"] = list(metrics)
    raw["tracking"] = {"tracking_uri": f"sqlite:///{state}/mlflow.db",
                       "artifact_location": str(state / "mlartifacts"),
                       "experiment": "replay", "registered_model": f"replay-{model}",
                       "alias": cfg.tracking.alias}
    raw["sink"] = {"kind": "sql", "url": f"sqlite:///{state}/anomalies.db",
                   "table": cfg.sink.table}
    raw["source"] = {**raw["source"], "kind": "sql", "url": f"sqlite:///{state}/source.db",
                     "table": "metrics", "since": None}
    raw = apply_overrides(raw, VARIANTS[variant])
    return AppConfig.model_validate(raw)


class _SourceTable:
    """The replay's raw metrics table, appended to on the simulated clock."""

    def __init__(self, url: str, metrics: list[str]) -> None:
        from sqlalchemy import Column, DateTime, Float, MetaData, String, Table

        from ae_anomaly.db import make_engine

        self.engine = make_engine(url)
        self.table = Table("metrics", MetaData(), Column(TS, DateTime, index=True),
                           Column(ENTITY, String(200), index=True),
                           *[Column(m, Float) for m in metrics])
        self.table.create(self.engine)
        self.metrics = metrics

    def append(self, rows: pd.DataFrame) -> None:
        frame = rows[[TS, ENTITY, *self.metrics]].copy()
        frame[TS] = pd.to_datetime(frame[TS]).dt.to_pydatetime()
        recs = frame.astype(object).where(frame.notna(), None).to_dict("records")
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), recs)

    def close(self) -> None:
        self.engine.dispose()


def tracking_template(folder: Path) -> Path:
    """An empty MLflow SQLite store (schema migrated) to copy into each cell's state
    folder: creating one from scratch costs seconds per cell, a copy milliseconds."""
    from ae_anomaly.config import TrackingConfig
    from ae_anomaly.tracking import Tracker

    folder.mkdir(parents=True, exist_ok=True)
    Tracker(TrackingConfig(tracking_uri=f"sqlite:///{folder}/mlflow.db",
                           artifact_location=str(folder / "mlartifacts"),
                           experiment="template"))
    return folder / "mlflow.db"


def replay_cell(s: ReplaySettings, model: str, seed: int, variant: str, entity: str,
                series: Series, state: Path, mlflow_template: Path | None = None,
                on_tick: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Replay one entity with one model, seed and variant; returns its record.

    ``mlflow_template``: an empty store from :func:`tracking_template` to start from;
    ``on_tick(i, n)`` is called after each tick's scoring (progress).
    """
    from ae_anomaly import pipeline
    from ae_anomaly.sinks import EventQuery, open_sink
    from ae_anomaly.tracking import Tracker
    from ae_anomaly.tracking.promotion import load_version

    rc = s.replay
    frame = series.frame
    metrics = [c for c in frame.columns if c not in (TS, ENTITY)]
    cfg = _cell_config(s, model, seed, variant, state, metrics)
    n = len(frame)
    initial = rc.initial_steps if rc.initial_steps is not None else series.eval_from
    ticks = schedule(n, initial, rc.score_every, rc.retrain_every)
    t_cell = time.perf_counter()
    source = _SourceTable(cfg.source.url or "", metrics)
    if mlflow_template is not None:
        shutil.copyfile(mlflow_template, state / "mlflow.db")
    tracker = Tracker(cfg.tracking)
    train_s = score_s = 0.0
    decisions: list[dict[str, Any]] = []
    name = cfg.tracking.registered_model

    def train(end: int) -> str:
        nonlocal train_s
        lo = 0 if rc.train_window is None else max(0, end - rc.train_window)
        part = frame.iloc[lo:end].reset_index(drop=True)
        t0 = time.perf_counter()
        run_id = pipeline.start_run(cfg, tracker)
        det = pipeline.fit_detector(cfg, part, tracker, run_id)
        reg = pipeline.log_and_register(cfg, det, part, tracker, run_id)
        train_s += time.perf_counter() - t0
        return reg.model.version

    try:
        source.append(frame.iloc[:initial])
        train(initial)
        det, ref = tracker.load()
        version_at = np.full(n, -1, dtype=np.int64)  # the champion when each step arrived
        for i, tick in enumerate(ticks):
            source.append(frame.iloc[tick.start:tick.end])
            if tick.retrain:
                before = ref.version
                version = train(tick.end)
                row: dict[str, Any] = {"step": tick.end,
                                       "ts": str(pd.Timestamp(frame[TS].iloc[tick.end - 1])),
                                       "challenger": version, "champion_before": before}
                if rc.promotion == "always":
                    tracker.set_alias(cfg.tracking.alias, version)
                    row.update(promoted=True, gates={})
                else:
                    d = pipeline.promote(cfg, tracker)
                    row.update(promoted=d.promoted,
                               gates={g.name: g.passed for g in d.gates})
                if tracker.alias_version(cfg.tracking.alias) != ref.version:
                    det, ref = tracker.load()  # resolved through the registry, as a run would
                row["champion_after"] = ref.version
                decisions.append(row)
            version_at[tick.start:tick.end] = int(ref.version)
            t0 = time.perf_counter()
            pipeline.score_increment(cfg, det, ref, job_id=f"replay-{i}")
            score_s += time.perf_counter() - t0
            if on_tick is not None:
                on_tick(i + 1, len(ticks))
        events = open_sink(cfg).read(EventQuery(model=name, limit=None))
        version_at[:initial] = version_at[initial]
        # Scores for AUC: each step scored by the version that was champion when it came.
        scores = np.full(n, np.nan)
        for v in np.unique(version_at[series.eval_from:]):
            dv = det if str(v) == ref.version else load_version(tracker, name, str(v))[0]
            mask = version_at == v
            scores[mask] = np.asarray(dv.score(frame), dtype=np.float64)[mask]
    finally:
        source.close()
    rec = evaluate_replay(series, events, scores, cfg)
    rec.update({
        "model": record_name(model, variant), "base_model": model, "variant": variant,
        "entity": entity, "seed": seed, "calibration": cfg.calibration.method,
        "alpha": cfg.calibration.alpha, "threshold": float(det.threshold_),
        "decisions": decisions, "n_retrains": len(decisions),
        "n_promotions": sum(bool(d["promoted"]) for d in decisions),
        "train_s": round(train_s, 3), "score_s": round(score_s, 3),
        "wall_s": round(time.perf_counter() - t_cell, 3), "n_ticks": len(ticks),
        "initial_steps": initial, "n_test": int(n - series.eval_from),
        "model_config": _jsonable(s.bench.model_params.get(model, {})),
    })
    return rec


# --------------------------------------------------------------------------- evaluation
def event_mask_from_table(ts: np.ndarray, events: pd.DataFrame) -> tuple[np.ndarray,
                                                                           list[tuple[int, int]]]:
    """Steps inside the anomaly table's events, and each event's ``(start, end)`` step
    indices (events matched to the series by their timestamps)."""
    pred = np.zeros(len(ts), dtype=bool)
    spans = []
    stamps = pd.to_datetime(pd.Series(ts)).to_numpy("datetime64[ns]")
    for r in events.itertuples(index=False):
        lo = int(np.searchsorted(stamps, np.datetime64(pd.Timestamp(r.start_ts)), "left"))
        hi = int(np.searchsorted(stamps, np.datetime64(pd.Timestamp(r.end_ts)), "right")) - 1
        if hi >= lo:
            pred[lo:hi + 1] = True
            spans.append((lo, hi))
    return pred, sorted(spans)


def evaluate_replay(series: Series, events: pd.DataFrame, scores: np.ndarray,
                    cfg: AppConfig) -> dict[str, Any]:
    """A cell's metrics on the evaluated steps (``eval_from`` on), no point adjustment."""
    ts = series.frame[TS].to_numpy()
    pred_all, spans = event_mask_from_table(ts, events)
    e0 = series.eval_from
    y = series.labels[e0:].astype(bool)
    pred = pred_all[e0:]
    s = scores[e0:]
    finite = np.isfinite(s)
    s = np.where(finite, s, np.nanmin(s) if finite.any() else 0.0)
    m = evaluate(y.astype(np.int64), s, pred.astype(np.int64))
    # events starting in the evaluated part
    ev = [(lo - e0, hi - e0) for lo, hi in spans if lo >= e0]
    cum = np.concatenate(([0], np.cumsum(y)))
    true_ev = sum(int(cum[hi + 1] - cum[lo] > 0) for lo, hi in ev)
    stamps = pd.to_datetime(pd.Series(ts[e0:]))
    step = stamps.diff().median() if len(stamps) > 1 else pd.Timedelta("1min")
    days = ((stamps.iloc[-1] - stamps.iloc[0]) + step) / pd.Timedelta("1D")
    steps_per_day = pd.Timedelta("1D") / step
    cal = cfg.calibration
    budget = (cal.max_alerts_per_day if cal.max_alerts_per_day is not None
              else cal.alpha * steps_per_day)
    delays = []
    for lo, hi in segments(y.astype(np.int64)):
        hit = np.flatnonzero(pred[lo:hi + 1])
        if hit.size:
            delays.append(int(hit[0]))
    day = ((stamps - stamps.iloc[0]) // pd.Timedelta("1D")).to_numpy()
    daily = []
    for d in range(int(day.max()) + 1 if len(day) else 0):
        normal = (day == d) & ~y
        daily.append(float(pred[normal].mean()) if normal.any() else None)
    rec: dict[str, Any] = dict(m)
    rec.update({
        "n_events": len(ev), "events_per_day": len(ev) / days if days > 0 else None,
        "budget_per_day": float(budget), "days": float(days),
        "event_precision": true_ev / len(ev) if ev else None,
        "delay_mean": float(np.mean(delays)) if delays else None,
        "delay_median": float(np.median(delays)) if delays else None,
        "delays": delays, "far_normal_daily": daily,
        "flag_rate_normal": None, "far_check": None, "flag_rate_check": None,
        "anomaly_rate": float(y.mean()) if len(y) else None,
        "detections": [lo + e0 for lo, _ in ev],
    })
    return rec


# --------------------------------------------------------------------------- the run
def run_replay(settings: ReplaySettings, output: str | Path, models: Sequence[str],
               seeds: Sequence[int], entities: Sequence[str] | None = None,
               progress: bool = True,
               on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a replay and write the results JSON after every cell.

    Args:
        settings: from :func:`resolve_replay`.
        output: results file; when it exists with the same settings, its finished
            (model, entity, seed, variant) cells are kept and not recomputed.
        models: model names (autoencoders and baselines).
        seeds: seeds; every model replays once per entity, seed and variant.
        entities: entities to replay (default: all found).
        progress: show a progress bar over cells.
        on_cell: called with each new record.

    Raises:
        ConfigError: the output file holds results of other settings.
    """
    import torch
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    bench = settings.bench
    if bench.cfg.training.num_threads:
        torch.set_num_threads(bench.cfg.training.num_threads)
    out_path = Path(output)
    dataset = Dataset(bench)
    names = dataset.select(entities)
    fp = settings.fingerprint()
    if out_path.is_file():
        data = load_results(out_path)
        old = data["meta"]["settings"]
        if data["meta"].get("kind") != "replay" or (
                _comparable(old) != _comparable(fp) or old.get("replay") != _jsonable(
                    fp["replay"])):
            raise ConfigError(f"{out_path} holds results of other settings (or is not a "
                              "replay); use another --output or delete the file to start over")
    else:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "meta": {"kind": "replay", "settings": fp, "machine": _machine(),
                         "versions": _versions(), "runs": []},
                "records": [], "summary": {}}
    run_info: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "cells_computed": 0, "wall_s": 0.0,
        "models": list(models), "seeds": list(seeds), "variants": settings.variants,
        "entities": names}
    data["meta"]["runs"].append(run_info)
    t_run = time.perf_counter()
    done = {(r["base_model"], r["entity"], r["seed"], r["variant"]) for r in data["records"]}
    for rec in data["records"]:
        want = bench.model_params.get(rec["base_model"])
        if want is not None and rec.get("model_config") != _jsonable(want):
            raise ConfigError(
                f"{out_path}: the finished cells of '{rec['base_model']}' used other model "
                "settings; use another --output or delete the file to start over")

    def flush(final: bool = False) -> None:
        run_info["wall_s"] = round(time.perf_counter() - t_run, 2)
        run_info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        nab = (_nab_summary(data["records"], dataset)
               if bench.dataset == "nab" and final and data["records"] else None)
        data["summary"] = summarize_replay(data["records"], nab)
        _write_json(out_path, data)

    cells = [(e, m, sd, v) for e in names for m in models for sd in seeds
             for v in settings.variants]
    bar = tqdm(total=len(cells), desc=f"replay {bench.dataset}", unit="cell",
               disable=not progress, dynamic_ncols=True)
    ent_name, series = None, None
    template: Path | None = None
    tmp = tempfile.TemporaryDirectory(prefix="ae-replay-template-")
    try:
        with threadpool_limits(limits=bench.cfg.training.num_threads):
            for e, m, sd, v in cells:
                if (m, e, sd, v) in done:
                    bar.update(1)
                    continue
                if ent_name != e:
                    ent_name, series = e, entity_series(bench.dataset, dataset.load(e))
                assert series is not None
                bar.set_postfix_str(f"{m}/{v} {Path(e).stem} seed {sd}")
                if template is None:
                    template = tracking_template(Path(tmp.name))
                label = f"{m}/{v} {Path(e).stem} seed {sd}"

                def tick(i: int, k: int, label: str = label) -> None:
                    if i % 10 == 0 or i == k:
                        bar.set_postfix_str(f"{label} tick {i}/{k}")

                rec = _run_cell(settings, m, sd, v, e, series, out_path, template, tick)
                data["records"].append(rec)
                done.add((m, e, sd, v))
                run_info["cells_computed"] += 1
                flush()
                bar.update(1)
                if on_cell is not None:
                    on_cell(rec)
    finally:
        bar.close()
        tmp.cleanup()
        flush(final=True)
    return data


def _run_cell(s: ReplaySettings, model: str, seed: int, variant: str, entity: str,
              series: Series, out_path: Path, template: Path,
              on_tick: Callable[[int, int], None] | None) -> dict[str, Any]:
    if s.replay.keep_state:
        state = (out_path.with_name(out_path.stem + ".state")
                 / f"{model}--{variant}--{entity.replace('/', '__')}--{seed}")
        shutil.rmtree(state, ignore_errors=True)  # a crashed cell starts over
        state.mkdir(parents=True)
        return replay_cell(s, model, seed, variant, entity, series, state, template, on_tick)
    with tempfile.TemporaryDirectory(prefix="ae-replay-") as tmp:
        return replay_cell(s, model, seed, variant, entity, series, Path(tmp), template,
                           on_tick)


def summarize_replay(records: list[dict[str, Any]],
                     nab: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The benchmark's per-model summary (:func:`summarize`) plus the replay's means."""
    out = summarize(records, nab)
    for model, summ in out.items():
        recs = [r for r in records if r["model"] == model]
        for k in _SUMMARY_KEYS:
            summ[k] = _mean([r.get(k) for r in recs])
    return out


# --------------------------------------------------------------------------- the report
def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def render_replay(path: str | Path, data: dict[str, Any] | None = None,
                  plot: str | Path | None = None) -> str:
    """Markdown for one replay results file: the benchmark's table, then the replay's
    (events per entity-day against the budget, event precision, delay, decisions), and,
    with ``plot``, a PNG of the realised alarm rate on label-0 steps per day."""
    from ae_anomaly.evaluation.report import _table, render_file

    data = data or load_results(path)
    rc = data["meta"]["settings"]["replay"]
    out = [render_file(path, data), "",
           f"Replay: history {rc['initial_steps'] or 'the training part'}, scoring every "
           f"{rc['score_every']} steps, retraining every {rc['retrain_every'] or 'never'} "
           f"steps on the last {rc['train_window'] or 'all'} steps, promotion: "
           f"{rc['promotion']}.", ""]
    rows = []
    for m, s in data["summary"].items():
        rows.append([f"`{m}`", _f(s.get("events_per_day"), 2), _f(s.get("budget_per_day"), 2),
                     _f(s.get("f1")), _f(s.get("precision")), _f(s.get("recall")),
                     _f(s.get("event_recall")), _f(s.get("event_precision")),
                     _f(s.get("delay_mean"), 1), _f(s.get("far_normal"), 4),
                     _f(s.get("nab_standard"), 1), _f(s.get("n_retrains"), 1),
                     _f(s.get("n_promotions"), 1), _f(s.get("wall_s"), 1)])
    out += [_table(["model", "events/entity-day", "budget", "F1", "precision", "recall",
                    "event recall", "event precision", "delay (steps)", "far_normal",
                    "NAB standard", "retrains", "promotions", "wall s / cell"], rows), ""]
    dec = []
    for r in data["records"]:
        for d in r.get("decisions", []):
            failed = [g for g, ok in d.get("gates", {}).items() if not ok]
            dec.append([f"`{r['model']}`", Path(r["entity"]).stem, str(r["seed"]),
                        d["ts"], f"v{d['challenger']}",
                        "promoted" if d["promoted"] else "rejected (" + ", ".join(failed) + ")",
                        f"v{d['champion_after']}"])
    if dec:
        out += ["Retrain and promotion decisions:", "",
                _table(["model", "entity", "seed", "at", "challenger", "decision",
                        "champion"], dec), ""]
    if plot is not None:
        plot_alarm_rate(data, plot)
        out += [f"![realised alarm rate on label-0 steps per day]({Path(plot).name})", ""]
    return "\n".join(out)


def plot_alarm_rate(data: dict[str, Any], path: str | Path) -> Path:
    """PNG: per model, the realised alarm rate on label-0 steps per day (mean over
    entities and seeds), with the alpha line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    alpha = None
    for m in data["summary"]:
        rows = [r.get("far_normal_daily") or [] for r in data["records"] if r["model"] == m]
        if not rows:
            continue
        width = max(len(r) for r in rows)
        arr = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            arr[i, :len(r)] = [np.nan if v is None else v for v in r]
        with np.errstate(all="ignore"):
            ax.plot(np.arange(width), np.nanmean(arr, axis=0), label=m)
        alpha = next(r["alpha"] for r in data["records"] if r["model"] == m)
    if alpha is not None:
        ax.axhline(alpha, color="k", ls="--", lw=1, label=f"alpha {alpha:g}")
    ax.set_xlabel("day of the replay")
    ax.set_ylabel("share of label-0 steps in events")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
