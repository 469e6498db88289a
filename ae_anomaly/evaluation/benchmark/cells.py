"""One benchmark cell, (model, entity, seed): build the model, score, evaluate.

:func:`_build_ts_model` builds a time-series cell's detector (an autoencoder
:class:`~ae_anomaly.detectors.BaseDetector` of any kind, built by
:func:`~ae_anomaly.detectors.build_detector` exactly as production builds it), :func:`_ts_scores` /
:func:`_tabular_scores` fit it and return the cell's :class:`CellScores` (calibration,
check and test scores), :func:`evaluate_cell` fits every calibration of the run on them and
computes the record's metrics. Seed ensembles (:func:`_ensemble`) combine the saved scores
of a model's seeds on one entity.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.calibration import rule_from_config
from ae_anomaly.config import CalibrationConfig
from ae_anomaly.detectors import BaseDetector, build_detector
from ae_anomaly.evaluation.benchmark.datasets import EntityData
from ae_anomaly.evaluation.benchmark.settings import _MODEL_ADAPTER, TABULAR, BenchSettings
from ae_anomaly.evaluation.metrics import evaluate
from ae_anomaly.events import event_mask, find_events

log = logging.getLogger(__name__)


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


def _cell_config(name: str, seed: int, s: BenchSettings, calibration: CalibrationConfig,
                 flow_ds: Any = None) -> Any:
    """The run's configuration with the cell's model, seed and calibration (and, for flow
    rows, the row layout)."""
    update: dict[str, Any] = {
        "model": _MODEL_ADAPTER.validate_python(s.model_params[name]),
        "training": s.cfg.training.model_copy(update={"seed": seed}),
        "calibration": calibration}
    if flow_ds is not None:
        update["data"] = s.cfg.data.model_copy(update={"netflow": flow_ds.name,
                                                       "netflow_mode": "rows"})
    return s.cfg.model_copy(update=update)


def _build_ts_model(name: str, seed: int, s: BenchSettings,
                    calibration: CalibrationConfig) -> BaseDetector:
    return build_detector(_cell_config(name, seed, s, calibration))


def _epochs(model: BaseDetector, extra: dict[str, Any]) -> None:
    if model.history_.train_loss:  # baselines have no training epochs
        extra["epochs"] = len(model.history_.train_loss)


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
    n_cal = int(round(len(fc) * cal_frac))  # the slice the detector's fit held out

    def block(rows: pd.DataFrame) -> np.ndarray:
        # what production writes (a conditional model needs the timestamps and the entity)
        x = model.transform(rows[feats].to_numpy(np.float64))
        ts = rows["timestamp"].to_numpy() if "timestamp" in rows.columns else None
        return model.score_values(x, timestamps=ts, entity=ent.name)[0]

    cal = block(fc.iloc[len(fc) - n_cal:])
    check = None
    if n_check >= model.min_samples:
        check = block(ent.train.iloc[n - n_check:])
    t1 = time.perf_counter()
    test = block(ent.test)
    score_s = time.perf_counter() - t1
    extra: dict[str, Any] = {"n_fit": len(fc) - n_cal, "n_cal": n_cal, "n_check": n_check}
    _epochs(model, extra)
    return CellScores(cal, check, test, train_s, score_s, extra)


def _tabular_scores(name: str, seed: int, ent: EntityData, s: BenchSettings,
                    flow_ds: Any) -> CellScores:
    cal_cfg = s.cfg.calibration.model_copy(
        update={"calibration_fraction": s.bench.calibration_fraction})
    model = build_detector(_cell_config(name, seed, s, cal_cfg, flow_ds), dataset=flow_ds)
    t0 = time.perf_counter()
    model.fit(ent.train)
    train_s = time.perf_counter() - t0
    cal = np.asarray(model.rule_.calibration_scores_, dtype=np.float64)
    t1 = time.perf_counter()
    test = np.asarray(model.score(ent.test), dtype=np.float64)
    score_s = time.perf_counter() - t1
    extra: dict[str, Any] = {"n_cal": int(cal.size)}
    _epochs(model, extra)
    return CellScores(cal, None, test, train_s, score_s, extra)



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
        if tabular:  # rows are independent samples: no segments for point adjustment
            m.pop("f1_pa")
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

