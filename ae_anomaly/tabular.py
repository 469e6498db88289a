"""TabularDetector = flow feature pipeline + row autoencoder + calibrated threshold.

The row-level counterpart of :class:`~ae_anomaly.detector.Detector`: one sample is one flow
record (a row of :func:`~ae_anomaly.data.netflow.read_netflow`), not a window of a series.

Fitting uses only the normal rows (``is_anomaly`` False, when the column exists). They are
shuffled (seeded) and split: a random ``calibration.calibration_fraction`` is held out and
never trained on (the threshold is fitted there); of the rest, ``training.val_fraction``
drives early stopping and the remainder fits the :class:`NetflowFeaturePipeline` and the
network. Transformed features are clipped to ``[-clip, clip]`` before the network: robust
scaling of a rare 0/1 column (IQR 0, tiny standard deviation) can otherwise give values in
the hundreds that dominate the loss.

The row score is the mean over features of the network's element-wise error
(``network.errors``); :meth:`TabularDetector.channel_errors` returns the per-feature errors
for attribution (one-hot features are named ``column=value``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import TypeAdapter

from ae_anomaly.calibration import ThresholdRule, rule_from_config
from ae_anomaly.config import CalibrationConfig, ModelConfig, TrainingConfig
from ae_anomaly.data.netflow import IS_ANOMALY, NetflowDatasetConfig
from ae_anomaly.data.netflow_features import NetflowFeaturePipeline
from ae_anomaly.errors import AeAnomalyError, ConfigError, DataError
from ae_anomaly.models import AutoEncoder, build_model
from ae_anomaly.persistence import (
    history_from_dict,
    history_to_dict,
    package_versions,
    save_folder,
)
from ae_anomaly.training import TrainHistory, resolve_device, seed_everything, train_network

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "tabular"
DEFAULT_CLIP = 20.0
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)



def normal_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose ``is_anomaly`` is False (all rows when the column is absent)."""
    if IS_ANOMALY not in frame.columns:
        return frame
    return frame[~frame[IS_ANOMALY].to_numpy(dtype=bool)]


class TabularDetector:
    """A row autoencoder detector for flow records, with a threshold fitted on held-out rows.

    Args:
        model_cfg: network configuration (``model_cfg.name`` picks the family; built with
            ``window=1``, so the network sees ``(N, F)`` rows).
        training_cfg: training-loop settings.
        calibration_cfg: threshold rule settings and the held-out calibration share.
        dataset: the flow data set description (its numeric, categorical and log1p columns).
        max_categories: most frequent training categories kept per categorical column.
        clip: transformed features are clipped to ``[-clip, clip]``; None for no clipping.

    Attributes (after :meth:`fit`):
        pipeline_: the fitted :class:`NetflowFeaturePipeline`.
        feature_names_: names of the network's input features.
        network_: the trained network.
        rule_: the fitted threshold rule; ``threshold_`` its threshold.
        history_: the training history.
    """

    def __init__(
        self,
        model_cfg: Any,
        training_cfg: TrainingConfig | None = None,
        calibration_cfg: CalibrationConfig | None = None,
        dataset: NetflowDatasetConfig | None = None,
        max_categories: int = 50,
        clip: float | None = DEFAULT_CLIP,
    ) -> None:
        if dataset is None:
            raise ConfigError("TabularDetector needs a flow data set description (dataset=)")
        self.model = model_cfg
        self.training = training_cfg or TrainingConfig()
        self.calibration = calibration_cfg or CalibrationConfig()
        self.dataset = dataset
        self.max_categories = int(max_categories)
        self.clip = clip

    # ------------------------------------------------------------------ fitting
    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random (seeded) fit / validation / calibration row indices."""
        rng = np.random.default_rng(self.training.seed)
        perm = rng.permutation(n)
        n_cal = int(round(n * self.calibration.calibration_fraction))
        n_val = int(round((n - n_cal) * self.training.val_fraction))
        n_fit = n - n_cal - n_val
        if n_cal < 1 or n_fit < 2:
            raise DataError(
                f"{n} normal training rows are too few to split into fit and calibration rows "
                f"(calibration_fraction {self.calibration.calibration_fraction:g})"
            )
        fit, val, cal = perm[:n_fit], perm[n_fit : n_fit + n_val], perm[n_fit + n_val :]
        return np.sort(fit), np.sort(val), np.sort(cal)

    def _rows_per_day(self, frame: pd.DataFrame) -> float | None:
        ts = self.dataset.timestamp
        if ts is None or ts not in frame.columns or len(frame) < 2:
            return None
        times = pd.to_datetime(frame[ts])
        days = (times.max() - times.min()) / pd.Timedelta(days=1)
        return float(len(frame) / days) if days > 0 else None

    def fit(self, frame: pd.DataFrame) -> TabularDetector:
        """Fit the feature pipeline, the network and the threshold on flow rows.

        Args:
            frame: flow rows as :func:`~ae_anomaly.data.netflow.read_netflow` returns them; only
                rows with ``is_anomaly`` False are used when that column exists.

        Returns:
            self

        Raises:
            DataError: no normal rows, too few rows to split, or a feature column is missing
                or not numeric.
        """
        seed_everything(self.training.seed)
        if self.training.num_threads:
            torch.set_num_threads(self.training.num_threads)
        rows = normal_rows(frame).reset_index(drop=True)
        if len(rows) == 0:
            raise DataError("no normal rows to train on (every row is labelled anomalous)")
        fit_idx, val_idx, cal_idx = self._split(len(rows))
        self.pipeline_ = NetflowFeaturePipeline.from_dataset(self.dataset, self.max_categories)
        self.pipeline_.fit(rows.iloc[fit_idx])
        if self.pipeline_.n_features == 0:
            raise DataError("every feature column is constant in the training rows")
        self.feature_names_: list[str] = list(self.pipeline_.feature_names_)

        x_all = self.transform(rows)
        train = torch.from_numpy(x_all[fit_idx])
        val = torch.from_numpy(x_all[val_idx]) if len(val_idx) else None
        self.network_: AutoEncoder = build_model(
            self.model, n_channels=len(self.feature_names_), window=1
        )
        self.history_: TrainHistory = train_network(
            self.network_, train, val, self.training, desc=f"train {self.model.name}"
        )
        self.network_.eval()
        post_fit = getattr(self.network_, "post_fit", None)
        if callable(post_fit):  # latent statistics, a mixture on the codes (vae, rae)
            post_fit(train)

        cal_scores = self.score_features(x_all[cal_idx])
        try:
            rule = rule_from_config(self.calibration, steps_per_day=self._rows_per_day(rows))
        except ValueError as exc:
            raise ConfigError(f"calibration: {exc}") from None
        self.rule_: ThresholdRule = rule.fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        self.n_train_rows_ = int(len(fit_idx))
        self.data_fingerprint_ = hashlib.sha256(
            np.ascontiguousarray(x_all[fit_idx]).tobytes()
        ).hexdigest()[:16]
        log.info(
            "tabular %s: %d features, %d fit / %d val / %d calibration rows, threshold %.5g",
            self.model.name,
            len(self.feature_names_),
            len(fit_idx),
            len(val_idx),
            len(cal_idx),
            self.threshold_,
        )
        return self

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError("TabularDetector is not fitted; call fit() first")

    def _device(self) -> torch.device:
        return next(self.network_.parameters()).device

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Flow rows to the network's clipped float32 input ``(N, F)``.

        Raises:
            DataError: a feature column is missing or a numeric value is not a number.
        """
        x = self.pipeline_.transform(frame)
        if self.clip is not None:
            np.clip(x, -self.clip, self.clip, out=x)
        return x

    def feature_errors(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Per-feature errors ``(N, F)`` of already transformed rows, in chunks."""
        self._check_fitted()
        n = len(x)
        out = np.empty((n, x.shape[1]), dtype=np.float64)
        net, dev = self.network_, self._device()
        net.eval()
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(dev)
                err = net.errors(xb, net(xb))
                out[i : i + len(xb)] = err.reshape(len(xb), -1).to("cpu", torch.float64).numpy()
        return out

    def score_features(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Row scores ``(N,)`` of already transformed rows (mean error over features)."""
        return self.feature_errors(x, batch_size).mean(axis=1)

    def channel_errors(self, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Per-row, per-feature errors ``(N, F)``; columns follow :attr:`feature_names_`."""
        self._check_fitted()
        return self.feature_errors(self.transform(frame), batch_size)

    def score(self, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Anomaly score per row (higher is more anomalous).

        Args:
            frame: flow rows with every feature column; unseen categories are fine.
            batch_size: rows per forward pass (bounds memory).

        Raises:
            DataError: a feature column is missing or a numeric value is not a number.
        """
        return self.channel_errors(frame, batch_size).mean(axis=1)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds the calibrated threshold."""
        return self.score(frame) > self.threshold_

    def rule_for(self, entity: str | None = None) -> ThresholdRule:
        """The threshold rule (one for all rows; same interface as the Detector's)."""
        return self.rule_

    def threshold_for(self, entity: str | None = None) -> float:
        """The alarm threshold (one for all rows; same interface as the Detector's)."""
        return self.threshold_

    def row_thresholds(self, frame: pd.DataFrame) -> np.ndarray:
        """The threshold of each row (the same for all; the Detector's interface)."""
        return np.full(len(frame), self.threshold_)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores against the calibration rows."""
        return self.rule_.p_values(scores)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The readable part of a saved detector (``config.json``)."""
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "model": self.model.model_dump(),
            "training": self.training.model_dump(),
            "calibration": self.calibration.model_dump(),
            "dataset": self.dataset.model_dump(mode="json"),
            "max_categories": self.max_categories,
            "clip": self.clip,
            "pipeline": self.pipeline_.to_dict(),
            "feature_names": self.feature_names_,
            "threshold": self.threshold_,
            "rule": self.rule_.to_dict(),
            "history": history_to_dict(self.history_),
            "n_train_rows": self.n_train_rows_,
            "data_fingerprint": self.data_fingerprint_,
            "versions": package_versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Save to a folder: ``config.json`` (readable state) and ``weights.pt`` (state_dict)."""
        return save_folder(path, self.to_dict(), self.network_)

    @classmethod
    def load(cls, path: str | Path) -> TabularDetector:
        """Load a detector saved by :meth:`save` (weights only, no pickled objects).

        Raises:
            AeAnomalyError: the folder holds no saved tabular detector of this format.
        """
        p = Path(path)
        try:
            d = json.loads((p / "config.json").read_text())
        except FileNotFoundError:
            raise AeAnomalyError(f"{p}: not a saved detector (no config.json)") from None
        if d.get("kind") != KIND or d.get("format_version") != FORMAT_VERSION:
            raise AeAnomalyError(
                f"{p}: not a saved tabular detector of format {FORMAT_VERSION} "
                f"(kind {d.get('kind')!r}, format {d.get('format_version')!r})"
            )
        det = cls(
            _MODEL_ADAPTER.validate_python(d["model"]),
            TrainingConfig(**d["training"]),
            CalibrationConfig(**d["calibration"]),
            NetflowDatasetConfig.model_validate(d["dataset"]),
            d["max_categories"],
            d["clip"],
        )
        det.pipeline_ = NetflowFeaturePipeline.from_dict(d["pipeline"])
        det.feature_names_ = list(d["feature_names"])
        det.threshold_ = float(d["threshold"])
        det.rule_ = ThresholdRule.from_dict(d["rule"])
        det.history_ = history_from_dict(d["history"])
        det.n_train_rows_ = d["n_train_rows"]
        det.data_fingerprint_ = d["data_fingerprint"]
        det.network_ = build_model(det.model, n_channels=len(det.feature_names_), window=1)
        state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.to(resolve_device(det.training.device)).eval()
        return det
