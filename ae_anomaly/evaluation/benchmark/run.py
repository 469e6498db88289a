"""The benchmark run: :func:`run_benchmark` loops over cells and keeps the results file.

The results file (:func:`load_results`) is the checkpoint: rewritten after every cell with
the records (:data:`RECORD_KEYS`) and their per-model :func:`summarize` (with the NAB
scores for ``nab``), and resumed when a rerun has the same settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig
from ae_anomaly.errors import ConfigError, DataError
from ae_anomaly.evaluation.benchmark.cells import (
    CellScores,
    _ensemble,
    _load_scores,
    _save_scores,
    _scores_dir,
    _tabular_scores,
    _ts_scores,
    ensemble_name,
    evaluate_cell,
)
from ae_anomaly.evaluation.benchmark.datasets import Dataset, EntityData
from ae_anomaly.evaluation.benchmark.settings import (
    TABULAR,
    BenchConfig,
    BenchSettings,
    _jsonable,
)
from ae_anomaly.evaluation.nab import nab_scores

log = logging.getLogger(__name__)

FORMAT = "ae_anomaly.benchmark"
FORMAT_VERSION = 1

#: Keys every record holds (the JSON schema the tests check), but :data:`TIME_SERIES_ONLY`.
RECORD_KEYS = (
    "model", "entity", "seed", "auc_roc", "auc_pr", "f1", "precision", "recall", "f1_pa",
    "best_f1", "event_recall", "alpha", "far_normal", "far_check", "flag_rate_normal",
    "flag_rate_check", "calibration", "threshold", "n_events", "train_s", "score_s",
    "calibrations",
)
#: Keys only time-series records hold: point adjustment credits a whole anomalous segment
#: in time, which per-row (tabular) data does not have (its F1-PA is near 1 for any model).
TIME_SERIES_ONLY = ("f1_pa",)
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
            if k in TIME_SERIES_ONLY and not any(k in r for r in recs):
                continue
            summ[k] = _mean([r.get(k) for r in recs])
        cal_summ: dict[str, Any] = {}
        for i, c in enumerate(recs[0].get("calibrations", [])):
            key = f"{c['calibration']}@{c['alpha']:g}"
            rows = [r["calibrations"][i] for r in recs if len(r.get("calibrations", [])) > i]
            cs = {k: _mean([row.get(k) for row in rows]) for k in _CAL_KEYS
                  if k not in TIME_SERIES_ONLY or any(k in row for row in rows)}
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
