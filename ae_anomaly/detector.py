"""Detector = preprocessing + network + calibrated threshold, sklearn-shaped.

A detector scores *steps*: each window's element-wise reconstruction error is averaged
back onto the steps it covers (overlap-add), giving a per-step, per-channel error; the step
score is its mean over channels, and the channel errors say which metrics drove an alarm.

Training data of each entity is split in time: the first part fits the scaler and the
network (its tail, ``training.val_fraction``, drives early stopping), and the last
``calibration.calibration_fraction`` is never trained on: the threshold is fitted there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import TypeAdapter

from ae_anomaly.calibration import ThresholdRule, rule_from_config
from ae_anomaly.config import (
    AppConfig,
    CalibrationConfig,
    ModelConfig,
    PreprocessConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.preprocessing import Scaler
from ae_anomaly.data.timeseries import ENTITY, metric_columns
from ae_anomaly.data.windowing import overlap_sum, sliding_windows, window_coverage
from ae_anomaly.errors import AeAnomalyError, DataError
from ae_anomaly.models import AutoEncoder, build_model
from ae_anomaly.training import TrainHistory, resolve_device, seed_everything, train_network

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("ae-anomaly", "torch", "numpy", "pandas", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


@dataclass
class TrainingSplit:
    """Per-entity time slices of the training data (scaled values)."""

    fit: list[np.ndarray] = field(default_factory=list)
    val: list[np.ndarray] = field(default_factory=list)
    cal: list[np.ndarray] = field(default_factory=list)


class Detector:
    """A windowed autoencoder detector with a threshold fitted on held-out normal data.

    Args:
        model: network configuration (``model.name`` picks the family).
        window: window length and training stride.
        preprocess: scaler settings.
        training: training-loop settings.
        calibration: threshold rule settings.
    """

    def __init__(
        self,
        model: Any,
        window: WindowConfig | None = None,
        preprocess: PreprocessConfig | None = None,
        training: TrainingConfig | None = None,
        calibration: CalibrationConfig | None = None,
    ) -> None:
        self.model = model
        self.window = window or WindowConfig()
        self.preprocess = preprocess or PreprocessConfig()
        self.training = training or TrainingConfig()
        self.calibration = calibration or CalibrationConfig()

    @classmethod
    def from_config(cls, cfg: AppConfig) -> Detector:
        """Build an unfitted detector from the application configuration."""
        return cls(cfg.model, cfg.window, cfg.preprocess, cfg.training, cfg.calibration)

    # ------------------------------------------------------------------ fitting
    def _split(self, frame: pd.DataFrame) -> tuple[TrainingSplit, np.ndarray]:
        length = self.window.length
        raw = TrainingSplit()
        for ent, grp in frame.groupby(ENTITY, sort=False):
            v = grp[self.feature_names_].to_numpy(dtype=np.float64)
            n = len(v)
            n_cal = int(round(n * self.calibration.calibration_fraction))
            n_fit_all = n - n_cal
            n_val = int(round(n_fit_all * self.training.val_fraction))
            n_fit = n_fit_all - n_val
            if n_fit < length or n_cal < length:
                raise DataError(
                    f"entity '{ent}' has {n} training steps: too few for window "
                    f"{length} with a {self.calibration.calibration_fraction:.0%} calibration "
                    f"slice (need at least {int(2 * length / self.calibration.calibration_fraction)})"
                )
            raw.fit.append(v[:n_fit])
            raw.val.append(v[n_fit:n_fit_all] if n_val >= length else v[:0])
            raw.cal.append(v[n_fit_all:])
        return raw, np.concatenate(raw.fit)

    def _windows(self, parts: list[np.ndarray], stride: int) -> torch.Tensor:
        wins = [sliding_windows(self.scaler_.transform(p), self.window.length, stride)
                for p in parts if len(p) >= self.window.length]
        if not wins:
            return torch.empty(0)
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(wins)))

    def fit(
        self,
        frame: pd.DataFrame,
        on_epoch: Callable[[int, float, float | None], None] | None = None,
    ) -> Detector:
        """Fit scaler, network and threshold on a wide training frame of normal behaviour.

        Args:
            frame: ``timestamp, entity, <metrics...>`` sorted by entity then time.
            on_epoch: per-epoch callback ``(epoch, train_loss, val_loss)`` (e.g. MLflow).

        Returns:
            self
        """
        seed_everything(self.training.seed)
        if self.training.num_threads:
            torch.set_num_threads(self.training.num_threads)
        self.feature_names_ = metric_columns(frame)
        raw, fit_rows = self._split(frame)
        self.scaler_ = Scaler(self.preprocess.scaler, self.preprocess.clip).fit(fit_rows)
        train = self._windows(raw.fit, self.window.train_stride)
        val = self._windows(raw.val, max(1, self.window.train_stride))
        self.network_: AutoEncoder = build_model(
            self.model, len(self.feature_names_), self.window.length
        )
        self.history_: TrainHistory = train_network(self.network_, train, val, self.training,
                                                    on_epoch=on_epoch,
                                                    desc=f"train {self.model.name}")
        cal_scores = np.concatenate([self.score_values(self.scaler_.transform(p))[0]
                                     for p in raw.cal])
        self.rule_: ThresholdRule = rule_from_config(self.calibration).fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        self.n_train_windows_ = len(train)
        self.data_fingerprint_ = hashlib.sha256(
            np.ascontiguousarray(frame[self.feature_names_].to_numpy(np.float64)).tobytes()
        ).hexdigest()[:16]
        log.info("threshold %.5f (%s, alpha %g, %d calibration steps)", self.threshold_,
                 self.calibration.method, self.calibration.alpha, len(cal_scores))
        return self

    # ------------------------------------------------------------------ scoring
    def _device(self) -> torch.device:
        return next(self.network_.parameters()).device

    def block_errors(self, scaled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Per-step, per-channel error of a contiguous scaled block (T, C) -> (T, C).

        Every window of the block is scored; the steps near the block's ends are covered by
        fewer windows. Memory is bounded by ``batch_size`` windows at a time.
        """
        length = self.window.length
        t, c = scaled.shape
        if t < length:
            raise DataError(f"a series of {t} steps is shorter than the window ({length})")
        wins = sliding_windows(scaled, length, 1)
        n = len(wins)
        total = torch.zeros((t, c), dtype=torch.float64)
        net, dev = self.network_, self._device()
        net.eval()
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(wins[i:i + batch_size])).to(dev)
                err = net.errors(xb, net(xb)).to("cpu", torch.float64)
                steps = len(xb) - 1 + length
                total[i:i + steps] += overlap_sum(err, steps)
        return (total / window_coverage(n, length)[:, None]).numpy()

    def score_values(self, scaled: np.ndarray, batch_size: int = 1024
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (T,) and channel errors (T, C) of one entity's whole scaled series."""
        ch = self.block_errors(scaled, batch_size)
        return ch.mean(axis=1), ch

    def _check_features(self, frame: pd.DataFrame) -> None:
        missing = [f for f in self.feature_names_ if f not in frame.columns]
        if missing:
            raise DataError("column the model was trained on is missing; the model expects "
                            f"{', '.join(self.feature_names_)}", column=missing[0])

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row of a wide frame (higher is more anomalous).

        Rows are grouped by ``entity`` (one series if the column is absent) and must be in
        time order within an entity.
        """
        self._check_features(frame)
        out = np.full(len(frame), np.nan)
        groups = frame.groupby(ENTITY, sort=False).indices if ENTITY in frame.columns else {
            None: np.arange(len(frame))}
        for idx in groups.values():
            values = frame[self.feature_names_].to_numpy(np.float64)[idx]
            out[idx] = self.score_values(self.scaler_.transform(values))[0]
        return out

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds the calibrated threshold."""
        return self.score(frame) > self.threshold_

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores against the calibration set."""
        return self.rule_.p_values(scores)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The readable part of a saved detector (``config.json``)."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.model_dump(),
            "window": self.window.model_dump(),
            "preprocess": self.preprocess.model_dump(),
            "training": self.training.model_dump(),
            "calibration": self.calibration.model_dump(),
            "feature_names": self.feature_names_,
            "scaler": self.scaler_.to_dict(),
            "threshold": self.threshold_,
            "rule": self.rule_.to_dict(),
            "history": {"train_loss": self.history_.train_loss,
                        "val_loss": self.history_.val_loss,
                        "best_epoch": self.history_.best_epoch,
                        "seconds": self.history_.seconds},
            "n_train_windows": self.n_train_windows_,
            "data_fingerprint": self.data_fingerprint_,
            "versions": _versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Save to a folder: ``config.json`` (readable state) and ``weights.pt`` (state_dict)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(self.to_dict(), indent=1))
        torch.save(self.network_.state_dict(), p / "weights.pt")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Load a detector saved by :meth:`save` (weights only, no pickled objects)."""
        p = Path(path)
        try:
            d = json.loads((p / "config.json").read_text())
        except FileNotFoundError:
            raise AeAnomalyError(f"{p}: not a saved detector (no config.json)") from None
        if d.get("format_version") != FORMAT_VERSION:
            raise AeAnomalyError(f"{p}: unsupported detector format {d.get('format_version')}")
        det = cls(
            _MODEL_ADAPTER.validate_python(d["model"]),
            WindowConfig(**d["window"]),
            PreprocessConfig(**d["preprocess"]),
            TrainingConfig(**d["training"]),
            CalibrationConfig(**d["calibration"]),
        )
        det.feature_names_ = d["feature_names"]
        det.scaler_ = Scaler.from_dict(d["scaler"])
        det.threshold_ = float(d["threshold"])
        det.rule_ = ThresholdRule.from_dict(d["rule"])
        h = d["history"]
        det.history_ = TrainHistory(h["train_loss"], h["val_loss"], h["best_epoch"], h["seconds"])
        det.n_train_windows_ = d["n_train_windows"]
        det.data_fingerprint_ = d["data_fingerprint"]
        det.network_ = build_model(det.model, len(det.feature_names_), det.window.length)
        state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.to(resolve_device(det.training.device)).eval()
        return det

