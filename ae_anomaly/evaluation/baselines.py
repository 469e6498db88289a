"""Baseline detectors for the benchmark: PCA reconstruction error, Isolation Forest, random.

They are shaped like :class:`~ae_anomaly.detector.Detector` where that makes sense:
``fit(frame) -> self`` on a wide training frame (``timestamp, entity, <metrics...>``),
``scaler_``, ``score_values(scaled) -> (scores (T,), channel_errors (T, C))`` on one
entity's scaled series, ``score(frame)``, ``predict(frame)`` and a ``threshold_`` fitted by
the same calibration rules (:func:`ae_anomaly.calibration.rule_from_config`) on the last
``calibration.calibration_fraction`` of each entity's training data, which is never fitted
on. So a baseline is judged exactly like an autoencoder.

* ``pca``: PCA keeping ``variance`` of the training variance, on single steps
  (``window: 1``) or on flattened windows of ``window`` steps (needed for a univariate
  series, where one step has nothing to reconstruct it from); the score is the squared
  reconstruction error per channel (window errors overlap-averaged onto steps, as the
  autoencoders do), averaged over channels.
* ``iforest``: scikit-learn's IsolationForest on flattened windows of ``window`` steps; a
  step's score is the mean score of the windows that cover it.
* ``random``: uniform scores, the control every report shows (its F1 is the chance level).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from ae_anomaly.calibration import ThresholdRule, rule_from_config
from ae_anomaly.config import CalibrationConfig, PreprocessConfig
from ae_anomaly.data.preprocessing import Scaler
from ae_anomaly.data.timeseries import ENTITY, metric_columns
from ae_anomaly.data.windowing import (
    overlap_sum,
    sliding_windows,
    window_coverage,
    window_end_values,
)
from ae_anomaly.errors import DataError

log = logging.getLogger(__name__)

ScalerChoice = Literal["config", "none", "standard", "robust", "minmax"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PCABaselineConfig(_Strict):
    """PCA reconstruction error.

    ``scaler``: ``config`` uses the run's ``preprocess`` section (the autoencoders'
    scaling); ``none`` feeds the values as they are (right for data that is already
    scaled, such as SMD).
    """

    name: Literal["pca"] = "pca"
    variance: float = Field(0.99, gt=0, le=1)
    window: int = Field(1, ge=1)
    max_train_windows: int = Field(50_000, ge=100)
    scaler: ScalerChoice = "config"


class IForestBaselineConfig(_Strict):
    """Isolation Forest on flattened windows."""

    name: Literal["iforest"] = "iforest"
    window: int = Field(10, ge=1)
    n_estimators: int = Field(100, ge=1)
    max_samples: int = Field(256, ge=2)
    max_train_windows: int = Field(20_000, ge=100)
    scaler: ScalerChoice = "config"


class RandomBaselineConfig(_Strict):
    """Uniform random scores."""

    name: Literal["random"] = "random"


BaselineConfig = Annotated[
    PCABaselineConfig | IForestBaselineConfig | RandomBaselineConfig,
    Field(discriminator="name"),
]


def identity_scaler(n_channels: int) -> Scaler:
    """A fitted :class:`Scaler` that leaves values unchanged (no clipping)."""
    s = Scaler("standard", None)
    s.center_ = np.zeros(n_channels)
    s.scale_ = np.ones(n_channels)
    return s


def time_split_cal(n: int, calibration_fraction: float) -> int:
    """Calibration rows at the end of a series of ``n`` rows, rounded as the Detector does."""
    return int(round(n * calibration_fraction))


class BaselineDetector:
    """Shared fitting, calibration and scoring of the baselines (subclasses set the model).

    Args:
        model: the baseline's configuration.
        preprocess: the run's scaler settings (used when ``model.scaler == "config"``).
        calibration: threshold rule settings; its ``calibration_fraction`` says how much of
            each entity's training data is held out for the threshold.
        seed: random seed of the baseline (IsolationForest, random scores).
    """

    min_rows: int = 2

    def __init__(
        self,
        model: Any,
        preprocess: PreprocessConfig | None = None,
        calibration: CalibrationConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.preprocess = preprocess or PreprocessConfig()
        self.calibration = calibration or CalibrationConfig()
        self.seed = seed

    # ------------------------------------------------------------------ fitting
    def _make_scaler(self, fit_rows: np.ndarray) -> Scaler:
        choice = getattr(self.model, "scaler", "config")
        if choice == "none":
            return identity_scaler(fit_rows.shape[1])
        kind = self.preprocess.scaler if choice == "config" else choice
        return Scaler(kind, self.preprocess.clip).fit(fit_rows)

    def fit(self, frame: pd.DataFrame) -> BaselineDetector:
        """Fit on a wide training frame; the threshold on each entity's last slice.

        Returns:
            self
        """
        self.feature_names_ = metric_columns(frame)
        fit_parts, cal_parts = [], []
        for ent, grp in frame.groupby(ENTITY, sort=False):
            v = grp[self.feature_names_].to_numpy(dtype=np.float64)
            n_cal = time_split_cal(len(v), self.calibration.calibration_fraction)
            if len(v) - n_cal < self.min_rows or n_cal < self.min_rows:
                raise DataError(
                    f"entity '{ent}' has {len(v)} training steps: too few for "
                    f"{self.model.name} with a {self.calibration.calibration_fraction:.0%} "
                    "calibration slice"
                )
            fit_parts.append(v[: len(v) - n_cal])
            cal_parts.append(v[len(v) - n_cal :])
        self.scaler_ = self._make_scaler(np.concatenate(fit_parts))
        self._fit_model([self.scaler_.transform(p) for p in fit_parts])
        cal_scores = np.concatenate(
            [self.score_values(self.scaler_.transform(p))[0] for p in cal_parts]
        )
        self.rule_: ThresholdRule = rule_from_config(self.calibration).fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        return self

    def _fit_model(self, parts: list[np.ndarray]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ scoring
    def score_values(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (T,) and channel errors (T, C') of one entity's whole scaled series."""
        raise NotImplementedError

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row of a wide frame (grouped by entity, time-ordered)."""
        out = np.full(len(frame), np.nan)
        groups = frame.groupby(ENTITY, sort=False).indices if ENTITY in frame.columns else {
            None: np.arange(len(frame))}
        values = frame[self.feature_names_].to_numpy(np.float64)
        for idx in groups.values():
            out[idx] = self.score_values(self.scaler_.transform(values[idx]))[0]
        return out

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds the calibrated threshold."""
        return self.score(frame) > self.threshold_


def _window_rows(parts: list[np.ndarray], window: int, max_rows: int) -> np.ndarray:
    """Flattened stride-1 windows of every part, thinned to at most about ``max_rows``."""
    wins = np.concatenate([sliding_windows(p, window, 1) for p in parts if len(p) >= window])
    stride = max(1, len(wins) // max_rows)
    wins = wins[::stride]
    return wins.reshape(len(wins), -1)


def _steps_from_windows(win_values: np.ndarray, n_steps: int) -> np.ndarray:
    """Overlap-average (N, C, w) per-window values of stride-1 windows onto (T, C) steps."""
    n, _, w = win_values.shape
    total = overlap_sum(torch.from_numpy(np.ascontiguousarray(win_values)), n_steps)
    return (total.double() / window_coverage(n, w)[:, None]).numpy()


class PCABaseline(BaselineDetector):
    """Squared PCA reconstruction error per step (see the module docstring)."""

    @property
    def min_rows(self) -> int:  # type: ignore[override]
        return max(2, self.model.window)

    def _fit_model(self, parts: list[np.ndarray]) -> None:
        w = self.model.window
        rows = (np.concatenate(parts) if w == 1 else
                _window_rows(parts, w, self.model.max_train_windows)).astype(np.float64)
        variance = self.model.variance
        n_comp: float | int = variance if variance < 1 else min(rows.shape)
        self.pca_ = PCA(n_components=n_comp, svd_solver="full").fit(rows)
        if self.pca_.n_components_ >= rows.shape[1] > 1:
            # keeping every component reconstructs anything exactly: leave one out
            self.pca_ = PCA(n_components=rows.shape[1] - 1, svd_solver="full").fit(rows)
        log.info("pca keeps %d of %d components (%.3g of the variance)",
                 self.pca_.n_components_, rows.shape[1], variance)

    def score_values(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(scaled, dtype=np.float64)
        w = self.model.window
        if w == 1:
            ch = (x - self.pca_.inverse_transform(self.pca_.transform(x))) ** 2
            return ch.mean(axis=1), ch
        ch = _steps_from_windows(self._window_errors(x), len(x))
        return ch.mean(axis=1), ch

    def _window_errors(self, x: np.ndarray) -> np.ndarray:
        w = self.model.window
        if len(x) < w:
            raise DataError(f"a series of {len(x)} steps is shorter than the window ({w})")
        wins = sliding_windows(x, w, 1)
        flat = wins.reshape(len(wins), -1)
        err = (flat - self.pca_.inverse_transform(self.pca_.transform(flat))) ** 2
        return err.reshape(wins.shape)

    def causal_errors(self, scaled: np.ndarray, tail: int = 0) -> np.ndarray:
        """(T, C) errors where step t sees only steps <= t: the mean error of the window
        ending at t over its last ``tail`` steps (0: all)."""
        x = np.asarray(scaled, dtype=np.float64)
        if self.model.window == 1:
            return self.score_values(x)[1]
        err = self._window_errors(x)[:, :, -tail if tail else 0:]
        return window_end_values(err.mean(axis=2), self.model.window)


class IForestBaseline(BaselineDetector):
    """IsolationForest on flattened windows, window scores overlap-averaged onto steps."""

    @property
    def min_rows(self) -> int:  # type: ignore[override]
        return self.model.window

    def _fit_model(self, parts: list[np.ndarray]) -> None:
        x = _window_rows(parts, self.model.window, self.model.max_train_windows)
        self.forest_ = IsolationForest(
            n_estimators=self.model.n_estimators,
            max_samples=min(self.model.max_samples, len(x)),
            random_state=self.seed,
        ).fit(x)

    def _window_scores(self, scaled: np.ndarray) -> np.ndarray:
        w = self.model.window
        if len(scaled) < w:
            raise DataError(f"a series of {len(scaled)} steps is shorter than the window ({w})")
        wins = sliding_windows(np.asarray(scaled, dtype=np.float32), w, 1)
        return -self.forest_.score_samples(wins.reshape(len(wins), -1))

    def score_values(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.model.window
        win_score = self._window_scores(scaled)
        s = _steps_from_windows(np.repeat(win_score[:, None, None], w, axis=2), len(scaled))
        return s[:, 0], s

    def causal_errors(self, scaled: np.ndarray, tail: int = 0) -> np.ndarray:
        """(T, 1) scores where step t is the score of the window ending at t."""
        return window_end_values(self._window_scores(scaled)[:, None], self.model.window)


class RandomBaseline(BaselineDetector):
    """Uniform random scores in [0, 1): the control."""

    def _fit_model(self, parts: list[np.ndarray]) -> None:
        self.rng_ = np.random.default_rng(self.seed)

    def score_values(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.rng_.uniform(size=len(scaled))
        return s, s[:, None]

    def causal_errors(self, scaled: np.ndarray, tail: int = 0) -> np.ndarray:
        """Random scores depend on nothing."""
        return self.score_values(scaled)[1]


BASELINES: dict[str, tuple[type[BaseModel], type[BaselineDetector]]] = {
    "pca": (PCABaselineConfig, PCABaseline),
    "iforest": (IForestBaselineConfig, IForestBaseline),
    "random": (RandomBaselineConfig, RandomBaseline),
}


def build_baseline(
    name: str,
    params: dict[str, Any] | None,
    preprocess: PreprocessConfig,
    calibration: CalibrationConfig,
    seed: int,
) -> BaselineDetector:
    """Build an unfitted baseline by name.

    Args:
        name: ``pca``, ``iforest`` or ``random``.
        params: the baseline's parameters (see its config class); None for defaults.
        preprocess: the run's scaler settings.
        calibration: threshold rule settings.
        seed: random seed.

    Raises:
        ValueError: unknown name (the message lists the baselines).
    """
    try:
        cfg_cls, det_cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline '{name}'; baselines: {', '.join(BASELINES)}") from None
    cfg = cfg_cls.model_validate({**(params or {}), "name": name})
    return det_cls(cfg, preprocess, calibration, seed)


class TabularBaseline:
    """A baseline on flow rows, with the features of :class:`ae_anomaly.tabular.TabularDetector`.

    Fits on the normal rows (``is_anomaly`` False) of a flow frame, split as the tabular
    detector splits them (seeded shuffle; a random ``calibration_fraction`` is held out for
    the threshold); the :class:`~ae_anomaly.data.netflow_features.NetflowFeaturePipeline`
    (log1p, robust scaling, one-hot categories) is fitted on the fit rows, features are
    clipped to ``[-clip, clip]``, and the baseline (its scaler unused) works on them; the
    ``iforest`` window is forced to one row.

    Args:
        core: an unfitted baseline from :func:`build_baseline`.
        dataset: the flow data set description.
        calibration: threshold rule settings.
        seed: shuffling seed.
        max_categories: most frequent categories kept per categorical column.
        clip: feature clipping; None for none.
    """

    def __init__(self, core: BaselineDetector, dataset: Any, calibration: CalibrationConfig,
                 seed: int = 0, max_categories: int = 50, clip: float | None = 20.0) -> None:
        self.core = core
        self.dataset = dataset
        self.calibration = calibration
        self.seed = seed
        self.max_categories = max_categories
        self.clip = clip
        if isinstance(core.model, IForestBaselineConfig):
            core.model = core.model.model_copy(update={"window": 1})

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Flow rows to clipped features (N, F)."""
        x = self.pipeline_.transform(frame).astype(np.float64)
        if self.clip is not None:
            np.clip(x, -self.clip, self.clip, out=x)
        return x

    def fit(self, frame: pd.DataFrame) -> TabularBaseline:
        """Fit features, baseline and threshold on the normal rows of ``frame``."""
        from ae_anomaly.data.netflow import IS_ANOMALY
        from ae_anomaly.data.netflow_features import NetflowFeaturePipeline

        rows = frame
        if IS_ANOMALY in frame.columns:
            rows = frame[~frame[IS_ANOMALY].to_numpy(dtype=bool)]
        rows = rows.reset_index(drop=True)
        perm = np.random.default_rng(self.seed).permutation(len(rows))
        n_cal = time_split_cal(len(rows), self.calibration.calibration_fraction)
        if n_cal < 1 or len(rows) - n_cal < 2:
            raise DataError(f"{len(rows)} normal training rows are too few to split")
        fit_idx, cal_idx = np.sort(perm[n_cal:]), np.sort(perm[:n_cal])
        self.pipeline_ = NetflowFeaturePipeline.from_dataset(self.dataset, self.max_categories)
        self.pipeline_.fit(rows.iloc[fit_idx])
        self.feature_names_ = list(self.pipeline_.feature_names_)
        x = self.transform(rows)
        self.core._fit_model([x[fit_idx]])
        cal_scores = self.core.score_values(x[cal_idx])[0]
        self.rule_: ThresholdRule = rule_from_config(self.calibration).fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Anomaly score per flow row."""
        return self.core.score_values(self.transform(frame))[0]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds the calibrated threshold."""
        return self.score(frame) > self.threshold_
