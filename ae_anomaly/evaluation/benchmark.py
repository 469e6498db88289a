"""The benchmark harness behind ``ae-anomaly benchmark``.

One *cell* is one (model, entity, seed): fit on the entity's training data only, fit the
threshold on a held-out slice of that training data with the configured calibration rules,
score the test data, turn flagged points into events with the configured event rules (the
same code production scoring uses) and compare the predicted points with the test labels.

Protocol (time series: ``smd``, ``nab``):

* Each entity's training period is split in time into *fit* / *calibration* / *check*
  slices (``bench.calibration_fraction`` and ``bench.check_fraction`` of the period, the
  rest is fit). The model (and, for autoencoders, early stopping on the tail of the fit
  slice) sees only the fit slice; the threshold is fitted on the calibration slice; the
  check slice is never used for anything but measuring the realised alarm rate
  (``far_check``), which tells whether the threshold keeps its false-alarm promise on later
  normal data.
* Scores: what production writes. An autoencoder scores through
  :meth:`ae_anomaly.detector.Detector.score_values`, i.e. the config's ``postprocess``
  section (:mod:`ae_anomaly.postprocess`: ``errors: overlap`` or ``causal`` step errors,
  per-channel smoothing of ``smooth`` steps, per-channel thresholds with
  ``calibration.per_channel``, then the channel reduction). Baselines give per-step,
  per-channel errors (``causal_errors`` with ``postprocess.errors: causal``) that go
  through the same :class:`~ae_anomaly.postprocess.Postprocessor` (without per-channel
  thresholds), on the calibration, check and test scores alike.
* Predicted points are the points inside events (:func:`ae_anomaly.calibration.find_events`
  with the config's ``events`` rules). Point-wise precision / recall / F1 are computed on
  them without point-adjust; ``f1_pa`` (point-adjusted) and ``best_f1`` (oracle threshold
  chosen with the test labels: an upper bound, not a result) are reported beside them.
* ``far_normal`` / ``far_check``: share of label-0 test points / check-slice points that are
  predicted (inside events); ``flag_rate_normal`` / ``flag_rate_check``: the same for the raw
  flags ``score > threshold``, which is what a conformal threshold controls.

NAB: each file is an entity; the first 15% (NAB's probationary period,
:func:`ae_anomaly.evaluation.nab.probationary_length`) is the training period, the whole
series is scored and the metrics use the rows after it. NAB is a streaming benchmark, so
its defaults score causally (``postprocess.errors: causal``, trailing smoothing) and give events
a cool-down of 100 steps (one alert per incident). NAB detections are the first point of
each event (``bench.nab_detections: start``; ``mask`` uses every predicted point), scored
per profile by :func:`ae_anomaly.evaluation.nab.nab_scores` into ``summary.<model>``
(headline calibration) and ``summary.<model>.calibrations.<rule>@<alpha>`` (the others).

Seed ensembles (``bench.ensemble: true``): once every seed of a model has run on an entity,
the record ``<model>+ens`` (seed -1) scores the mean of the seeds' scores, each divided by
the median of its calibration scores, calibrated like any model; the per-seed scores are
kept in ``<output stem>.scores/`` so a resumed run can still form the ensemble.

Tabular (``nsl-kdd``, ``flows``): one entity; autoencoders are
:class:`ae_anomaly.tabular.TabularDetector` trained on the normal rows of the train split
(threshold on a held-out random share of them), baselines use the same feature pipeline;
rows are scored independently (no smoothing, no events).

The output JSON is the checkpoint: it is rewritten after every cell, and a rerun with the
same settings skips the (model, entity, seed) cells it already holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ae_anomaly.calibration import rule_from_config
from ae_anomaly.config import (
    AppConfig,
    CalibrationConfig,
    ModelConfig,
    apply_overrides,
    load_config,
)
from ae_anomaly.errors import ConfigError, DataError
from ae_anomaly.evaluation.baselines import BASELINES, build_baseline
from ae_anomaly.evaluation.metrics import evaluate
from ae_anomaly.evaluation.nab import _window_indices, load_nab_windows, nab_scores
from ae_anomaly.evaluation.nab import probationary_length as nab_probationary_length
from ae_anomaly.events import event_mask, find_events
from ae_anomaly.postprocess import Postprocessor

log = logging.getLogger(__name__)

DATASETS = ("smd", "nab", "nsl-kdd", "netflow")
TABULAR = ("nsl-kdd", "netflow")
FORMAT = "ae_anomaly.benchmark"
FORMAT_VERSION = 1
# Calibration methods whose threshold does not depend on alpha (reported once).
_ALPHA_FREE = ("k_sigma",)

#: Keys every record holds (the JSON schema the tests check).
RECORD_KEYS = (
    "model", "entity", "seed", "auc_roc", "auc_pr", "f1", "precision", "recall", "f1_pa",
    "best_f1", "event_recall", "alpha", "far_normal", "far_check", "flag_rate_normal",
    "flag_rate_check", "calibration", "threshold", "n_events", "train_s", "score_s",
    "calibrations",
)
_MEAN_KEYS = (
    "auc_roc", "auc_pr", "f1", "precision", "recall", "f1_pa", "best_f1", "event_recall",
    "far_normal", "far_check", "flag_rate_normal", "flag_rate_check", "n_events",
    "train_s", "score_s",
)
_CAL_KEYS = (
    "f1", "precision", "recall", "f1_pa", "event_recall", "far_normal", "far_check",
    "flag_rate_normal", "flag_rate_check", "n_events",
)
# far_check within [0.5, 1.6] x alpha counts as keeping the promise (issue 4's bar).
FAR_BOUNDS = (0.5, 1.6)


class BenchConfig(BaseModel):
    """Benchmark settings (``--set bench.KEY=VALUE``); see the module docstring."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    calibration_fraction: float = Field(0.1, gt=0, lt=0.5)
    check_fraction: float = Field(0.1, ge=0, lt=0.5)
    nab_detections: Literal["start", "mask"] = "start"
    save_scores: bool = False
    ensemble: bool = False


#: Per-dataset defaults, applied below the config file and ``--set`` (documented in
#: docs/benchmarks.md). SMD is already min-max scaled by its providers, so the PCA baseline
#: reads it as it is (the reference PCA of the issue does the same).
DATASET_DEFAULTS: dict[str, list[str]] = {
    "smd": ["models.pca.scaler=none", "postprocess.smooth=10", "postprocess.smooth_mode=center"],
    "nab": ["window.length=16", "bench.check_fraction=0", "bench.calibration_fraction=0.2",
            "postprocess.errors=causal", "postprocess.smooth=10", "events.cooldown=100",
            "calibration.alpha=0.01", "models.iforest.window=16", "models.pca.window=16"],
    "nsl-kdd": ["model.name=dense_ae", "bench.check_fraction=0",
                "bench.calibration_fraction=0.2", "models.iforest.window=1"],
    "netflow": ["model.name=dense_ae", "bench.check_fraction=0",
              "bench.calibration_fraction=0.2", "models.iforest.window=1"],
}
# One thread: on a shared 2-core machine two torch / BLAS threads contend with every other
# process and training runs several times slower (measured: 520 vs 4,000 windows/s).
ALWAYS_DEFAULTS = ["training.progress=false", "training.num_threads=1"]
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


# --------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    """Everything that decides a cell's result, resolved from the config and overrides."""

    dataset: str
    data_dir: Path
    cfg: AppConfig
    bench: BenchConfig
    calibrations: list[tuple[str, float]]
    model_params: dict[str, dict[str, Any]]
    dataset_config: Path | None = None
    config_path: str | None = None
    overrides: list[str] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a results file must share with this run to be resumed."""
        return {
            "dataset": self.dataset,
            "data_dir": str(self.data_dir),
            "dataset_config": None if self.dataset_config is None else str(self.dataset_config),
            "config": _jsonable(self.cfg.model_dump(mode="json", exclude={"model"})),
            "bench": self.bench.model_dump(),
            "calibrations": [[m, a] for m, a in self.calibrations],
        }


def _dotted_keys(raw: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(raw, dict):
        for k, v in raw.items():
            key = f"{prefix}{k}"
            out.add(key)
            out |= _dotted_keys(v, key + ".")
    return out


def split_overrides(items: Iterable[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Split ``key=value`` overrides into config, ``bench.*`` and ``models.<name>.*`` ones.

    Returns:
        ``(config_overrides, bench_overrides, {model_name: [key=value, ...]})`` with the
        ``bench.`` / ``models.<name>.`` prefixes removed.
    """
    app, bench, models = [], [], {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if key.startswith("bench."):
            bench.append(item.strip()[len("bench."):])
        elif key.startswith("models."):
            parts = key.split(".")
            if len(parts) < 3:
                raise ConfigError(f"override '{item}': use models.<model>.<key>=<value>")
            rest = item.strip()[len("models.") + len(parts[1]) + 1:]
            models.setdefault(parts[1], []).append(rest)
        else:
            app.append(item)
    return app, bench, models


def resolve_settings(
    dataset: str,
    data_dir: str | Path,
    models: Sequence[str],
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    dataset_config: str | Path | None = None,
    calibration_methods: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
) -> BenchSettings:
    """Resolve the configuration of a benchmark run.

    Precedence, lowest first: built-in defaults, :data:`DATASET_DEFAULTS` of the dataset,
    the config file, ``--set`` overrides. ``bench.*`` keys go to :class:`BenchConfig`,
    ``models.<name>.*`` keys to that model only (an autoencoder's ``model`` section or a
    baseline's parameters), other keys to the application config; ``model.*`` keys apply
    to every autoencoder of the run.

    Raises:
        ConfigError: an unknown dataset, model, key or value.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; datasets: {', '.join(DATASETS)}")
    user_app, user_bench, user_models = split_overrides(overrides)
    file_keys: set[str] = set()
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"{config_path}: config file not found")
        try:
            file_keys = _dotted_keys(yaml.safe_load(p.read_text()) or {})
        except yaml.YAMLError:
            file_keys = set()  # load_config reports it with the line
    user_keys = {o.split("=", 1)[0].strip() for o in overrides}
    defaults = [d for d in ALWAYS_DEFAULTS + DATASET_DEFAULTS[dataset]
                if d.split("=", 1)[0] not in file_keys | user_keys]
    def_app, def_bench, def_models = split_overrides(defaults)
    cfg = load_config(config_path, def_app + user_app)

    bench_raw = apply_overrides({}, def_bench + user_bench)
    try:
        bench = BenchConfig.model_validate(bench_raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"bench.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    from ae_anomaly.models import available_models

    known = set(available_models()) | set(BASELINES)
    for name in list(models) + list(user_models):
        if name not in known:
            raise ConfigError(f"unknown model '{name}'; models: {', '.join(sorted(known))}")
    model_params: dict[str, dict[str, Any]] = {}
    for name in models:
        items = def_models.get(name, []) + user_models.get(name, [])
        if name in BASELINES:
            params = apply_overrides({}, items)
            try:
                model_params[name] = build_baseline(
                    name, params, cfg.preprocess, cfg.calibration, 0).model.model_dump()
            except ValidationError as err:
                first = err.errors()[0]
                raise ConfigError(f"models.{name}.{'.'.join(map(str, first['loc']))}: "
                                  f"{first['msg']}") from None
        else:
            raw = cfg.model.model_dump() if cfg.model.name == name else {}
            model_keys = {k.split(".", 1)[1] for k in user_keys if k.startswith("model.")}
            if cfg.model.name != name:  # keep the model.* keys given for every autoencoder
                base = cfg.model.model_dump()
                raw = {k: base[k] for k in model_keys if k in base and k != "name"}
            raw = apply_overrides({**raw, "name": name}, items)
            try:
                model_params[name] = _MODEL_ADAPTER.validate_python(raw).model_dump()
            except ValidationError as err:
                first = err.errors()[0]
                raise ConfigError(f"model '{name}': key '{'.'.join(map(str, first['loc']))}': "
                                  f"{first['msg']}") from None

    methods = list(calibration_methods or [cfg.calibration.method])
    alpha_list = list(alphas or [cfg.calibration.alpha])
    if "best_f1" in methods:
        raise ConfigError("calibration 'best_f1' needs labels; the benchmark never fits a "
                          "threshold on test labels (best_f1 is reported as an oracle anyway)")
    calibrations: list[tuple[str, float]] = []
    for m in methods:
        for a in alpha_list[:1] if m in _ALPHA_FREE else alpha_list:
            try:
                CalibrationConfig(method=m, alpha=a)
            except ValidationError as err:
                raise ConfigError(f"calibration {m} at alpha {a}: "
                                  f"{err.errors()[0]['msg']}") from None
            calibrations.append((m, float(a)))
    ds_cfg = None
    if dataset in TABULAR:
        ds_cfg = Path(dataset_config) if dataset_config else None
        if ds_cfg is None and dataset == "nsl-kdd":
            ds_cfg = Path(__file__).resolve().parents[2] / "configs" / "datasets" / "nsl_kdd.yaml"
        if ds_cfg is None:
            raise ConfigError("--dataset netflow needs --dataset-config FILE (a flow dataset YAML)")
        ds_cfg = ds_cfg.resolve()
    return BenchSettings(dataset, Path(data_dir).resolve(), cfg, bench, calibrations,
                         model_params, ds_cfg, config_path, list(overrides))


# --------------------------------------------------------------------------- datasets
@dataclass
class EntityData:
    """One entity of a dataset, ready to benchmark.

    Attributes:
        name: entity name (machine, NAB file, dataset).
        train: training frame (time series: ``timestamp, entity, <metrics>``; tabular:
            the flow rows of the train split).
        test: the frame that is scored as one block.
        labels: 0/1 per evaluated test row (``test`` rows from ``eval_from`` on).
        eval_from: first evaluated row of ``test`` (NAB scores the whole series but
            evaluates after the probationary period).
        nab_windows: NAB's anomaly windows of the file (NAB only).
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    labels: np.ndarray
    eval_from: int = 0
    nab_windows: list[Any] | None = None


class Dataset:
    """Entities of a benchmark dataset, loaded one at a time."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        self.kind = settings.dataset
        self.data_dir = settings.data_dir
        if not self.data_dir.is_dir():
            raise DataError("benchmark data folder not found", path=str(self.data_dir))
        if self.kind == "nab":
            wpath = self.data_dir / "labels" / "combined_windows.json"
            if not wpath.is_file():
                raise DataError("not a NAB folder (no labels/combined_windows.json)",
                                path=str(self.data_dir))
            self._windows = load_nab_windows(wpath)
            self.nab_cache: dict[str, tuple[np.ndarray, list[Any]]] = {}
        if self.kind in TABULAR:
            from ae_anomaly.data.netflow import load_netflow_dataset_config

            assert settings.dataset_config is not None
            self.flow_ds = load_netflow_dataset_config(settings.dataset_config)

    def entities(self) -> list[str]:
        """All entities found in the data folder."""
        if self.kind == "smd":
            from ae_anomaly.data.timeseries import smd_machines

            return smd_machines(self.data_dir)
        if self.kind == "nab":
            return sorted(k for k in self._windows if (self.data_dir / "data" / k).is_file())
        return [self.flow_ds.name]

    def select(self, wanted: Sequence[str] | None) -> list[str]:
        """The entities named by ``--entities`` (NAB: a file key, its stem or a category)."""
        found = self.entities()
        if not wanted:
            return found
        out: list[str] = []
        for w in wanted:
            hits = [e for e in found if w in (e, Path(e).stem, e.split("/")[0])]
            if not hits:
                raise DataError(f"entity '{w}' not found; found: {', '.join(found[:10])}"
                                + (" ..." if len(found) > 10 else ""), path=str(self.data_dir))
            out += [h for h in hits if h not in out]
        return out

    def load(self, name: str) -> EntityData:
        """Read one entity's training and test data."""
        if self.kind == "smd":
            from ae_anomaly.data.timeseries import read_smd

            train, _ = read_smd(self.data_dir, name, "train")
            test, labels = read_smd(self.data_dir, name, "test")
            assert labels is not None
            return EntityData(name, train, test, labels.astype(np.int64))
        if self.kind == "nab":
            return self._load_nab(name)
        return self._load_tabular(name)

    def _load_nab(self, name: str) -> EntityData:
        path = self.data_dir / "data" / name
        raw = pd.read_csv(path)
        ts = pd.to_datetime(raw["timestamp"]).to_numpy("datetime64[ns]")
        frame = pd.DataFrame({"timestamp": ts, "entity": name,
                              "value": raw["value"].to_numpy(np.float64)})
        n = len(frame)
        n_prob = nab_probationary_length(n)
        windows = self._windows[name]
        labels = np.zeros(n, dtype=np.int64)
        if windows:
            left, right = _window_indices(ts, windows)
            for lo, hi in zip(left, right, strict=True):
                labels[lo:hi + 1] = 1
        return EntityData(name, frame.iloc[:n_prob].reset_index(drop=True), frame,
                          labels[n_prob:], eval_from=n_prob, nab_windows=windows)

    def _load_tabular(self, name: str) -> EntityData:
        from ae_anomaly.data.netflow import IS_ANOMALY, read_netflow_split

        train = read_netflow_split(self.flow_ds, "train", self.data_dir)
        test = read_netflow_split(self.flow_ds, "test", self.data_dir)
        if IS_ANOMALY not in test.columns:
            raise DataError(f"the test split of '{name}' has no label column "
                            f"'{self.flow_ds.label}'", path=str(self.data_dir))
        return EntityData(name, train, test, test[IS_ANOMALY].to_numpy(dtype=np.int64))


# --------------------------------------------------------------------------- scoring
@dataclass
class CellScores:
    """Post-processed scores of one fitted model on one entity."""

    cal: np.ndarray
    check: np.ndarray | None
    test: np.ndarray
    train_s: float
    score_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _build_ts_model(name: str, seed: int, s: BenchSettings, calibration: CalibrationConfig):
    if name in BASELINES:
        return build_baseline(name, s.model_params[name], s.cfg.preprocess, calibration, seed)
    from ae_anomaly.detector import Detector

    model_cfg = _MODEL_ADAPTER.validate_python(s.model_params[name])
    training = s.cfg.training.model_copy(update={"seed": seed})
    return Detector(model_cfg, s.cfg.window, s.cfg.preprocess, training, calibration,
                    s.cfg.postprocess)


def _ts_scores(name: str, seed: int, ent: EntityData, s: BenchSettings) -> CellScores:
    b = s.bench
    n = len(ent.train)
    n_check = int(round(n * b.check_fraction))
    fc = ent.train.iloc[: n - n_check]
    cal_frac = b.calibration_fraction / (1.0 - b.check_fraction)
    # The model is fitted at the headline alpha: per-channel thresholds scale each channel
    # by its quantile at that alpha (the other calibrations reuse the scales). Its own
    # threshold is not used: evaluate_cell fits every calibration on the scores.
    calibration = s.cfg.calibration.model_copy(update={
        "calibration_fraction": cal_frac, "alpha": s.calibrations[0][1]})
    model = _build_ts_model(name, seed, s, calibration)
    t0 = time.perf_counter()
    model.fit(fc)
    train_s = time.perf_counter() - t0
    feats = model.feature_names_
    n_cal = int(round(len(fc) * cal_frac))  # the slice Detector.fit held out

    pp = s.cfg.postprocess
    # Baselines get the same post-processing as the autoencoders, fitted on their
    # calibration errors as Detector.fit does (no per-channel thresholds).
    post = Postprocessor(pp)

    def errors(rows: pd.DataFrame) -> np.ndarray:  # a baseline's step errors
        scaled = model.scaler_.transform(rows[feats].to_numpy(np.float64))
        if pp.errors == "causal":
            return model.causal_errors(scaled, pp.causal_tail)
        return model.score_values(scaled)[1]

    def block(rows: pd.DataFrame) -> np.ndarray:
        if name in BASELINES:
            return post(errors(rows))[0]
        # what production writes (a conditional model needs the timestamps and the entity)
        scaled = model.scaler_.transform(rows[feats].to_numpy(np.float64))
        ts = rows["timestamp"].to_numpy() if "timestamp" in rows.columns else None
        return model.score_values(scaled, timestamps=ts, entity=ent.name)[0]

    cal_rows = fc.iloc[len(fc) - n_cal:]
    cal = post.fit([errors(cal_rows)])[0] if name in BASELINES else block(cal_rows)
    check = None
    min_len = getattr(getattr(model, "window", None), "length", 1)
    if n_check >= max(min_len, 1):
        check = block(ent.train.iloc[n - n_check:])
    t1 = time.perf_counter()
    test = block(ent.test)
    score_s = time.perf_counter() - t1
    extra: dict[str, Any] = {"n_fit": len(fc) - n_cal, "n_cal": n_cal, "n_check": n_check}
    hist = getattr(model, "history_", None)
    if hist is not None:
        extra["epochs"] = len(hist.train_loss)
    return CellScores(cal, check, test, train_s, score_s, extra)


def _tabular_scores(name: str, seed: int, ent: EntityData, s: BenchSettings,
                    flow_ds: Any) -> CellScores:
    cal_cfg = s.cfg.calibration.model_copy(
        update={"calibration_fraction": s.bench.calibration_fraction})
    if name in BASELINES:
        from ae_anomaly.evaluation.baselines import TabularBaseline

        model: Any = TabularBaseline(
            build_baseline(name, s.model_params[name], s.cfg.preprocess, cal_cfg, seed),
            flow_ds, cal_cfg, seed)
    else:
        from ae_anomaly.tabular import TabularDetector

        model_cfg = _MODEL_ADAPTER.validate_python(s.model_params[name])
        training = s.cfg.training.model_copy(update={"seed": seed})
        model = TabularDetector(model_cfg, training, cal_cfg, flow_ds)
    t0 = time.perf_counter()
    model.fit(ent.train)
    train_s = time.perf_counter() - t0
    cal = np.asarray(model.rule_.calibration_scores_, dtype=np.float64)
    t1 = time.perf_counter()
    test = np.asarray(model.score(ent.test), dtype=np.float64)
    score_s = time.perf_counter() - t1
    extra: dict[str, Any] = {"n_cal": int(cal.size)}
    hist = getattr(model, "history_", None)
    if hist is not None:
        extra["epochs"] = len(hist.train_loss)
    return CellScores(cal, None, test, train_s, score_s, extra)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return _nan_to_none(obj)


def evaluate_cell(sc: CellScores, ent: EntityData, s: BenchSettings) -> dict[str, Any]:
    """Metrics of one cell's scores for every calibration of the run.

    Returns:
        The record's metric fields: those of the first calibration at the top level, all
        of them under ``calibrations``.
    """
    labels = ent.labels
    test_eval = sc.test[ent.eval_from:]
    normal = labels == 0
    tabular = s.dataset in TABULAR
    cals: list[dict[str, Any]] = []
    for method, alpha in s.calibrations:
        cal_cfg = s.cfg.calibration.model_copy(update={"method": method, "alpha": alpha})
        try:
            thr = float(rule_from_config(cal_cfg).fit(sc.cal).threshold_)
            failed = None
        except ValueError as exc:
            # The rule cannot be fitted on this entity's calibration scores (e.g. pot on
            # tied scores): it raises no alarm here, and the record says why.
            log.warning("%s: %s at alpha %g cannot be fitted (%s); no alarms", ent.name,
                        method, alpha, exc)
            thr, failed = math.inf, str(exc)
        if tabular:
            pred_all = sc.test > thr
            n_events = int(pred_all.sum())
            detections = None
        else:
            events = find_events(ent.name, np.arange(len(sc.test)), sc.test, sc.test[:, None],
                                 thr, s.cfg.events)
            pred_all = event_mask(len(sc.test), events)
            starts = [e.start_idx for e in events if e.start_idx >= ent.eval_from]
            n_events = len(starts)
            detections = starts if s.bench.nab_detections == "start" else np.flatnonzero(
                pred_all[ent.eval_from:]).__add__(ent.eval_from).tolist()
        pred = pred_all[ent.eval_from:]
        m = evaluate(labels, test_eval, pred)
        row: dict[str, Any] = {"calibration": method, "alpha": alpha, "threshold": thr, **m}
        if failed:
            row["calibration_error"] = failed
        row["flag_rate_normal"] = (float(np.mean(test_eval[normal] > thr))
                                   if normal.any() else float("nan"))
        if sc.check is not None and len(sc.check):
            if tabular:
                chk_pred = sc.check > thr
            else:
                chk_ev = find_events(ent.name, np.arange(len(sc.check)), sc.check,
                                     sc.check[:, None], thr, s.cfg.events)
                chk_pred = event_mask(len(sc.check), chk_ev)
            row["far_check"] = float(np.mean(chk_pred))
            row["flag_rate_check"] = float(np.mean(sc.check > thr))
        else:
            row["far_check"] = row["flag_rate_check"] = float("nan")
        row["n_events"] = n_events
        if s.dataset == "nab":
            row["detections"] = [int(d) for d in detections or []]
        cals.append(row)
    top = {k: v for k, v in cals[0].items() if k != "detections"}
    top["calibrations"] = cals
    if s.dataset == "nab":
        top["detections"] = cals[0]["detections"]
    return top


# --------------------------------------------------------------------------- results file
def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ae-anomaly", "torch", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results file written by :func:`run_benchmark`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read benchmark results ({exc})", path=str(p)) from None
    if data.get("format") != FORMAT:
        raise DataError("not a benchmark results file", path=str(p))
    return data


# The config sections that decide a cell's result (data, sink, tracking, ... do not).
_RESULT_SECTIONS = ("window", "preprocess", "postprocess", "training", "calibration",
                    "events")


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a results file's settings that must match for it to be resumed."""
    out = {k: v for k, v in _jsonable(settings).items() if k != "config"}
    cfg = _jsonable(settings).get("config", {})
    for section in _RESULT_SECTIONS:
        sec = dict(cfg.get(section, {}))
        if section == "training":
            sec.pop("progress", None)
        out[f"config.{section}"] = sec
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False))
    os.replace(tmp, path)


def _mean(values: list[Any]) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def summarize(records: list[dict[str, Any]], nab: dict[str, dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    """Per-model means over entities and seeds (and per calibration).

    ``calibrations.<method>@<alpha>.far_check_within`` counts the entities whose mean
    ``far_check`` over seeds lies in ``[0.5, 1.6] x alpha``.
    """
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in records):
        recs = [r for r in records if r["model"] == model]
        summ: dict[str, Any] = {
            "n_cells": len(recs),
            "entities": len({r["entity"] for r in recs}),
            "seeds": sorted({r["seed"] for r in recs}),
        }
        for k in _MEAN_KEYS:
            summ[k] = _mean([r.get(k) for r in recs])
        cal_summ: dict[str, Any] = {}
        for i, c in enumerate(recs[0].get("calibrations", [])):
            key = f"{c['calibration']}@{c['alpha']:g}"
            rows = [r["calibrations"][i] for r in recs if len(r.get("calibrations", [])) > i]
            cs = {k: _mean([row.get(k) for row in rows]) for k in _CAL_KEYS}
            per_entity: dict[str, list[Any]] = {}
            for r, row in zip(recs, rows, strict=False):
                per_entity.setdefault(r["entity"], []).append(row.get("far_check"))
            means = [_mean(v) for v in per_entity.values()]
            means = [m for m in means if math.isfinite(m)]
            alpha = c["alpha"]
            cs["far_check_within"] = sum(
                FAR_BOUNDS[0] * alpha <= m <= FAR_BOUNDS[1] * alpha for m in means)
            cs["far_check_entities"] = len(means)
            cal_summ[key] = cs
        summ["calibrations"] = cal_summ
        if nab and model in nab:
            summ.update(nab[model])
        out[model] = summ
    return out


def _nab_summary(records: list[dict[str, Any]], dataset: Dataset) -> dict[str, dict[str, Any]]:
    """NAB scores per model: per seed over all its files, then the mean over seeds."""
    out: dict[str, dict[str, Any]] = {}
    cache = dataset.nab_cache
    for model in dict.fromkeys(r["model"] for r in records):
        per_seed: dict[str, dict[str, float]] = {}
        for seed in sorted({r["seed"] for r in records if r["model"] == model}):
            recs = [r for r in records if r["model"] == model and r["seed"] == seed]
            files = {}
            for r in recs:
                if r["entity"] not in cache:
                    path = dataset.data_dir / "data" / r["entity"]
                    ts = pd.to_datetime(pd.read_csv(path, usecols=["timestamp"])["timestamp"])
                    cache[r["entity"]] = (ts.to_numpy("datetime64[ns]"),
                                          dataset._windows[r["entity"]])
                ts, windows = cache[r["entity"]]
                det = np.zeros(len(ts), dtype=bool)
                det[np.asarray(r.get("detections") or [], dtype=np.int64)] = True
                files[r["entity"]] = (ts, det, windows)
            per_seed[str(seed)] = nab_scores(files)
        summ: dict[str, Any] = {key: _mean([v[p] for v in per_seed.values()])
                                for p, key in _NAB_PROFILES.items()}
        summ["nab_per_seed"] = per_seed
        summ["nab_files"] = len({r["entity"] for r in records if r["model"] == model})
        out[model] = summ
    return out


_NAB_PROFILES = {"standard": "nab_standard", "reward_low_fp": "nab_reward_low_fp",
                 "reward_low_fn": "nab_reward_low_fn"}


def _nab_records_for(records: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """Records whose top-level detections are those of their ``i``-th calibration."""
    out = []
    for r in records:
        cals = r.get("calibrations", [])
        if len(cals) > i:
            out.append({**r, "detections": cals[i].get("detections", [])})
    return out


# --------------------------------------------------------------------------- ensembles
def _scores_dir(output: Path) -> Path:
    return output.with_name(output.stem + ".scores")


def _save_scores(output: Path, model: str, entity: str, seed: int, sc: CellScores) -> None:
    d = _scores_dir(output)
    d.mkdir(parents=True, exist_ok=True)
    safe = entity.replace("/", "__")
    arrays = {"cal": sc.cal, "test": sc.test}
    if sc.check is not None:
        arrays["check"] = sc.check
    np.savez_compressed(d / f"{model}--{safe}--{seed}.npz", **arrays)


def _load_scores(output: Path, model: str, entity: str, seed: int) -> CellScores | None:
    f = _scores_dir(output) / f"{model}--{entity.replace('/', '__')}--{seed}.npz"
    if not f.is_file():
        return None
    z = np.load(f)
    return CellScores(z["cal"], z["check"] if "check" in z else None, z["test"], 0.0, 0.0)


def ensemble_name(model: str) -> str:
    """Name of the seed ensemble of a model in the results (``conv_ae+ens``)."""
    return f"{model}+ens"


def _ensemble(parts: list[CellScores]) -> CellScores:
    """Mean of the seeds' scores, each divided by the median of its calibration scores."""
    def norm(sc: CellScores) -> float:
        med = float(np.median(sc.cal))
        return med if med > 0 else 1.0

    scales = [norm(p) for p in parts]
    check = None
    if all(p.check is not None for p in parts):
        check = np.mean([p.check / k for p, k in zip(parts, scales, strict=True)], axis=0)
    return CellScores(
        cal=np.mean([p.cal / k for p, k in zip(parts, scales, strict=True)], axis=0),
        check=check,
        test=np.mean([p.test / k for p, k in zip(parts, scales, strict=True)], axis=0),
        train_s=sum(p.train_s for p in parts), score_s=sum(p.score_s for p in parts))


# --------------------------------------------------------------------------- the run
def run_benchmark(
    settings: BenchSettings,
    output: str | Path,
    models: Sequence[str],
    seeds: Sequence[int],
    entities: Sequence[str] | None = None,
    progress: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a benchmark and write the results JSON after every cell.

    Args:
        settings: from :func:`resolve_settings`.
        output: results file; when it exists and was written with the same settings, its
            finished (model, entity, seed) cells are kept and not recomputed.
        models: model names (registered autoencoders and baselines).
        seeds: seeds; every model runs once per entity and seed.
        entities: entities to run (default: all found).
        progress: show a progress bar over cells.
        on_cell: called with each new record.

    Returns:
        The results: ``format``, ``meta``, ``records`` and ``summary``.

    Raises:
        ConfigError: the output file holds results of other settings.
        DataError: the data folder is missing or malformed.
    """
    from threadpoolctl import threadpool_limits

    quiet = _RepeatedWarnings()
    thresholds_log = logging.getLogger("ae_anomaly.calibration.thresholds")
    thresholds_log.addFilter(quiet)
    try:
        with threadpool_limits(limits=settings.cfg.training.num_threads):
            return _run_benchmark(settings, output, models, seeds, entities, progress, on_cell)
    finally:
        thresholds_log.removeFilter(quiet)
        for msg, n in quiet.counts.items():
            log.warning("%s (%d thresholds)", msg, n)


class _RepeatedWarnings(logging.Filter):
    """Counts the calibration set-size warnings instead of printing one per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno == logging.WARNING and "cannot guarantee" in text:
            method = text.split(":", 1)[0]
            key = (f"{method}: the calibration set was too small for the requested alpha; "
                   "the threshold is the largest calibration score")
            self.counts[key] = self.counts.get(key, 0) + 1
            return False
        return True


def _run_benchmark(
    settings: BenchSettings,
    output: str | Path,
    models: Sequence[str],
    seeds: Sequence[int],
    entities: Sequence[str] | None,
    progress: bool,
    on_cell: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    if settings.cfg.training.num_threads:
        torch.set_num_threads(settings.cfg.training.num_threads)
    out_path = Path(output)
    dataset = Dataset(settings)
    names = dataset.select(entities)
    fp = settings.fingerprint()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if out_path.is_file():
        data = load_results(out_path)
        old, new = _comparable(data["meta"]["settings"]), _comparable(fp)
        # a key added to the config (or to bench) since the file was written is not a change
        # when this run leaves it at its default
        defaults = _jsonable(AppConfig().model_dump(mode="json"))
        for key, default in [(f"config.{sec}", defaults.get(sec, {}))
                             for sec in _RESULT_SECTIONS] + [("bench", BenchConfig().model_dump())]:
            o, n = old.get(key, {}), new.get(key, {})
            for k in set(n) - set(o):
                if k in default and n[k] == default[k]:
                    n.pop(k)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"{out_path} holds results of other settings (they differ in: "
                f"{', '.join(diff)}); use another --output or delete the file to start over")
        log.info("resuming %s: %d cells already done", out_path, len(data["records"]))
    else:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "meta": {"settings": fp, "machine": _machine(), "versions": _versions(),
                         "runs": []},
                "records": [], "summary": {}}
    run_info = {"started": started, "command": " ".join(sys.argv), "cells_computed": 0,
                "wall_s": 0.0, "models": list(models), "seeds": list(seeds),
                "entities": names}
    data["meta"]["runs"].append(run_info)
    t_run = time.perf_counter()
    done = {(r["model"], r["entity"], r["seed"]): r for r in data["records"]}
    for key, rec in done.items():
        want = settings.model_params.get(key[0])
        if want is not None and rec.get("model_config") != _jsonable(want):
            raise ConfigError(
                f"{out_path}: the finished cells of '{key[0]}' used other model settings; use "
                "another --output or delete the file to start over")

    def flush(final: bool = False) -> None:
        run_info["wall_s"] = round(time.perf_counter() - t_run, 2)
        run_info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        # NAB scores need every file of a model: computed once, at the end of the run
        nab = (_nab_summary(data["records"], dataset)
               if settings.dataset == "nab" and final else None)
        data["summary"] = summarize(data["records"], nab)
        if nab is not None:  # the NAB scores of the other calibrations, for comparison
            for i, (method, alpha) in enumerate(settings.calibrations):
                per_cal = _nab_summary(_nab_records_for(data["records"], i), dataset)
                for model, nab_row in per_cal.items():
                    cal_row = data["summary"][model]["calibrations"].get(f"{method}@{alpha:g}")
                    if cal_row is not None:
                        cal_row.update({k: nab_row[k] for k in _NAB_PROFILES.values()})
        _write_json(out_path, data)

    save_scores = settings.bench.save_scores or settings.bench.ensemble
    if save_scores:
        data["meta"]["scores_dir"] = str(_scores_dir(out_path))
    # seed ensembles of the models whose result depends on the seed (not pca, not random)
    ens_models = ([m for m in models if m not in ("random", "pca")]
                  if settings.bench.ensemble and len(seeds) > 1 else [])
    n_cells = len(names) * (len(models) * len(seeds) + len(ens_models))
    bar = tqdm(total=n_cells, desc=f"benchmark {settings.dataset}", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        for ent_name in names:
            ent: EntityData | None = None
            for model in models:
                cell_scores: list[CellScores] = []
                for seed in seeds:
                    if (model, ent_name, seed) in done:
                        bar.update(1)
                        if ens_models:
                            sc = _load_scores(out_path, model, ent_name, seed)
                            if sc is not None:
                                cell_scores.append(sc)
                        continue
                    if ent is None:
                        ent = dataset.load(ent_name)
                    bar.set_postfix_str(f"{model} {Path(ent_name).stem} seed {seed}")
                    if settings.dataset in TABULAR:
                        sc = _tabular_scores(model, seed, ent, settings, dataset.flow_ds)
                    else:
                        sc = _ts_scores(model, seed, ent, settings)
                    if save_scores:
                        _save_scores(out_path, model, ent_name, seed, sc)
                    cell_scores.append(sc)
                    rec = _record(model, ent_name, seed, sc, ent, settings)
                    data["records"].append(rec)
                    done[(model, ent_name, seed)] = rec
                    run_info["cells_computed"] += 1
                    flush()
                    bar.update(1)
                    if on_cell is not None:
                        on_cell(rec)
                if model in ens_models:
                    key = (ensemble_name(model), ent_name, -1)
                    if key not in done and len(cell_scores) == len(seeds):
                        if ent is None:
                            ent = dataset.load(ent_name)
                        rec = _record(model, ent_name, -1, _ensemble(cell_scores), ent, settings)
                        rec["model"] = ensemble_name(model)
                        rec["ensemble_of"] = list(seeds)
                        data["records"].append(rec)
                        done[key] = rec
                        flush()
                    bar.update(1)
    finally:
        bar.close()
        flush(final=True)
    return data


def _record(model: str, entity: str, seed: int, sc: CellScores, ent: EntityData,
            s: BenchSettings) -> dict[str, Any]:
    rec: dict[str, Any] = {"model": model, "entity": entity, "seed": seed}
    rec.update(evaluate_cell(sc, ent, s))
    rec["train_s"] = round(sc.train_s, 3)
    rec["score_s"] = round(sc.score_s, 3)
    rec["n_test"] = int(len(ent.labels))
    rec["anomaly_rate"] = float(np.mean(ent.labels)) if len(ent.labels) else float("nan")
    rec.update(sc.extra)
    rec["model_config"] = _jsonable(s.model_params.get(model, {}))
    log.info("%s %s seed %s: auc_pr %.3f f1 %.3f far_check %s", model, entity, seed,
             rec["auc_pr"] if rec["auc_pr"] is not None else float("nan"), rec["f1"],
             rec["far_check"])
    return rec
