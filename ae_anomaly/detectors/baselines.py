"""Baseline detectors: PCA reconstruction error, IsolationForest, random scores.

A baseline is a detector like any other (same split, calibration, post-processing, events,
persistence, registration); only its error function differs, so it is judged exactly like
an autoencoder. The error functions work on a transformed block ``(T, C)`` with a window of
``w`` samples (rows: ``w = 1``):

* ``pca``: PCA keeping ``variance`` of the training variance, on single samples or on
  flattened stride-1 windows; the error is the squared reconstruction error per channel
  (window errors overlap-averaged onto steps, as the autoencoders do).
* ``iforest``: scikit-learn's IsolationForest on flattened windows; a step's error is the
  mean score of the windows that cover it. Saved as the trees' arrays (no pickle) and scored
  after loading by the same path-length formula scikit-learn uses.
* ``random``: uniform scores in [0, 1), the control (its F1 is the chance level); its
  generator state is saved, so a loaded detector continues the same stream.

Baselines have no early stopping: they fit on everything before the calibration part.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ae_anomaly.data.windowing import sliding_windows, window_end_values
from ae_anomaly.detectors.base import EpochCallback, TrainingSplit
from ae_anomaly.detectors.rows import RowDetector
from ae_anomaly.detectors.series import SeriesDetector
from ae_anomaly.errors import DataError
from ae_anomaly.training import TrainHistory

log = logging.getLogger(__name__)


def _window_rows(parts: list[np.ndarray], window: int, max_rows: int) -> np.ndarray:
    """Flattened stride-1 windows of every part, thinned to at most about ``max_rows``."""
    wins = np.concatenate([sliding_windows(p, window, 1) for p in parts if len(p) >= window])
    stride = max(1, len(wins) // max_rows)
    wins = wins[::stride]
    return wins.reshape(len(wins), -1)


def _steps_from_windows(win_values: np.ndarray, n_steps: int) -> np.ndarray:
    """Overlap-average (N, C, w) per-window values of stride-1 windows onto (T, C) steps."""
    import torch

    from ae_anomaly.data.windowing import overlap_sum, window_coverage

    n, _, w = win_values.shape
    total = overlap_sum(torch.from_numpy(np.ascontiguousarray(win_values)), n_steps)
    return (total.double() / window_coverage(n, w)[:, None]).numpy()


class BaselineErrors:
    """An error function of a baseline (subclasses per ``model.name``).

    Args:
        model: the baseline's model section.
        window: samples per window (1 for rows).
        seed: seed of a randomised baseline.
    """

    #: whether the errors are per channel (else one column, named ``score``)
    per_channel: bool = False

    def __init__(self, model: Any, window: int, seed: int) -> None:
        self.model = model
        self.window = window
        self.seed = seed

    @property
    def min_rows(self) -> int:
        return max(2, self.window)

    def fit(self, parts: list[np.ndarray]) -> None:
        raise NotImplementedError

    def errors(self, x: np.ndarray) -> np.ndarray:
        """(T, C') errors of one contiguous transformed block."""
        raise NotImplementedError

    def causal_errors(self, x: np.ndarray, tail: int = 0) -> np.ndarray:
        """(T, C') errors where step t sees only steps <= t."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


class PCAErrors(BaselineErrors):
    """Squared PCA reconstruction error per channel (see the module docstring)."""

    per_channel = True

    def fit(self, parts: list[np.ndarray]) -> None:
        from sklearn.decomposition import PCA

        w = self.window
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

    def _window_errors(self, x: np.ndarray) -> np.ndarray:
        w = self.window
        if len(x) < w:
            raise DataError(f"a series of {len(x)} steps is shorter than the window ({w})")
        wins = sliding_windows(x, w, 1)
        flat = wins.reshape(len(wins), -1)
        err = (flat - self.pca_.inverse_transform(self.pca_.transform(flat))) ** 2
        return err.reshape(wins.shape)

    def errors(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.window == 1:
            return (x - self.pca_.inverse_transform(self.pca_.transform(x))) ** 2
        return _steps_from_windows(self._window_errors(x), len(x))

    def causal_errors(self, x: np.ndarray, tail: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.window == 1:
            return self.errors(x)
        err = self._window_errors(x)[:, :, -tail if tail else 0:]
        return window_end_values(err.mean(axis=2), self.window)

    _FIELDS = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_",
               "singular_values_")

    def state(self) -> dict[str, Any]:
        p = self.pca_
        return {"n_components": int(p.n_components_), "n_features": int(p.n_features_in_),
                "n_samples": int(p.n_samples_), "noise_variance": float(p.noise_variance_)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"pca.{f}": getattr(self.pca_, f) for f in self._FIELDS}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from sklearn.decomposition import PCA

        p = PCA(n_components=state["n_components"], svd_solver="full")
        for f in self._FIELDS:
            setattr(p, f, arrays[f"pca.{f}"])
        p.n_components_ = state["n_components"]
        p.n_features_in_ = state["n_features"]
        p.n_samples_ = state["n_samples"]
        p.noise_variance_ = state["noise_variance"]
        self.pca_ = p


class IForestErrors(BaselineErrors):
    """IsolationForest on flattened windows, window scores overlap-averaged onto steps."""

    @property
    def min_rows(self) -> int:
        return self.window

    def fit(self, parts: list[np.ndarray]) -> None:
        from sklearn.ensemble import IsolationForest

        x = _window_rows(parts, self.window, self.model.max_train_windows)
        forest = IsolationForest(
            n_estimators=self.model.n_estimators,
            max_samples=min(self.model.max_samples, len(x)),
            random_state=self.seed,
        ).fit(x)
        self._from_forest(forest)

    def _from_forest(self, forest: Any) -> None:
        """Keep what scoring needs as plain arrays (scikit-learn's own formula)."""
        from sklearn.ensemble._iforest import _average_path_length

        self.trees_ = []
        for tree, feats, depths, avg in zip(
                forest.estimators_, forest.estimators_features_,
                forest._decision_path_lengths, forest._average_path_length_per_tree,
                strict=True):
            t = tree.tree_
            self.trees_.append({
                "left": t.children_left.astype(np.int64), "right": t.children_right.astype(
                    np.int64), "feature": t.feature.astype(np.int64),
                "threshold": t.threshold.astype(np.float64),
                "features": np.asarray(feats, dtype=np.int64),
                "depths": np.asarray(depths, dtype=np.float64),
                "avg": np.asarray(avg, dtype=np.float64)})
        self.max_samples_ = int(getattr(forest, "_max_samples", forest.max_samples_))
        self.denominator_ = float(len(forest.estimators_)
                                  * _average_path_length([self.max_samples_])[0])
        self.subsample_ = bool(forest._max_features != forest.n_features_in_)

    def _score_rows(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per flattened window (scikit-learn's ``-score_samples``)."""
        x = np.asarray(x, dtype=np.float32)
        depths = np.zeros(len(x), dtype=np.float64)
        rows = np.arange(len(x))
        for t in self.trees_:
            xs = x[:, t["features"]] if self.subsample_ else x
            node = np.zeros(len(x), dtype=np.int64)
            while True:
                inner = t["left"][node] != -1
                if not inner.any():
                    break
                n_in = node[inner]
                go_left = (xs[rows[inner], t["feature"][n_in]].astype(np.float64)
                           <= t["threshold"][n_in])
                node[inner] = np.where(go_left, t["left"][n_in], t["right"][n_in])
            depths += t["depths"][node] + t["avg"][node] - 1.0
        return 2 ** (-depths / self.denominator_) if self.denominator_ else np.ones(len(x))

    def _window_scores(self, x: np.ndarray) -> np.ndarray:
        w = self.window
        if len(x) < w:
            raise DataError(f"a series of {len(x)} steps is shorter than the window ({w})")
        wins = sliding_windows(np.asarray(x, dtype=np.float32), w, 1)
        return self._score_rows(wins.reshape(len(wins), -1))

    def errors(self, x: np.ndarray) -> np.ndarray:
        w = self.window
        win_score = self._window_scores(x)
        s = _steps_from_windows(np.repeat(win_score[:, None, None], w, axis=2), len(x))
        return s

    def causal_errors(self, x: np.ndarray, tail: int = 0) -> np.ndarray:
        return window_end_values(self._window_scores(x)[:, None], self.window)

    def state(self) -> dict[str, Any]:
        return {"n_trees": len(self.trees_), "max_samples": self.max_samples_,
                "denominator": self.denominator_, "subsample": self.subsample_}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"tree{i}.{k}": v for i, t in enumerate(self.trees_) for k, v in t.items()}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        keys = ("left", "right", "feature", "threshold", "features", "depths", "avg")
        self.trees_ = [{k: arrays[f"tree{i}.{k}"] for k in keys}
                       for i in range(state["n_trees"])]
        self.max_samples_ = state["max_samples"]
        self.denominator_ = state["denominator"]
        self.subsample_ = state["subsample"]


class RandomErrors(BaselineErrors):
    """Uniform random scores in [0, 1): the control."""

    def fit(self, parts: list[np.ndarray]) -> None:
        self.rng_ = np.random.default_rng(self.seed)

    def errors(self, x: np.ndarray) -> np.ndarray:
        return self.rng_.uniform(size=len(x))[:, None]

    def causal_errors(self, x: np.ndarray, tail: int = 0) -> np.ndarray:
        return self.errors(x)

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng_.bit_generator.state}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.rng_ = np.random.default_rng()
        self.rng_.bit_generator.state = state["rng"]


#: the error function of each baseline ``model.name``
BASELINE_ERRORS: dict[str, type[BaselineErrors]] = {
    "pca": PCAErrors, "iforest": IForestErrors, "random": RandomErrors}


class _BaselineMixin:
    """What series and row baselines share: the error function by ``model.name``."""

    model: Any
    training: Any
    postprocess: Any
    errors_: BaselineErrors

    def _new_errors(self, window: int) -> BaselineErrors:
        return BASELINE_ERRORS[self.model.name](self.model, window, self.training.seed)

    def _fit_baseline(self, parts: list[np.ndarray]) -> None:
        t0 = time.perf_counter()
        self.errors_.fit(parts)
        self.history_ = TrainHistory(seconds=time.perf_counter() - t0)
        self.n_train_samples_ = int(sum(len(p) for p in parts))

    @property
    def baseline_window(self) -> int:
        """Samples per window of the error function (rows: 1)."""
        return 1

    def _fit_errors(self, split: TrainingSplit, on_epoch: EpochCallback | None) -> None:
        self.errors_ = self._new_errors(self.baseline_window)
        self._fit_baseline([self.transform(p) for p in split.fit_all])  # type: ignore[attr-defined]

    def errors(self, x: np.ndarray, batch_size: int = 1024,
               timestamps: np.ndarray | None = None,
               entity: str | None = None) -> np.ndarray:
        # rows are always built with overlap errors (build_detector), so this is series only
        if self.postprocess.errors == "causal":
            return self.errors_.causal_errors(x, self.postprocess.causal_tail)
        return self.errors_.errors(x)

    @property
    def channel_names(self) -> list[str]:
        return list(self.feature_names_) if self.errors_.per_channel else ["score"]

    def _state(self) -> dict[str, Any]:
        return {**self._layout_state(), "baseline": self.errors_.state()}  # type: ignore[attr-defined]

    @classmethod
    def from_saved(cls, d: dict[str, Any], folder: Path) -> Any:
        det = cls._from_layout(d)  # type: ignore[attr-defined]
        det._load_baseline(d, folder, det.baseline_window)
        return det

    def _arrays(self) -> dict[str, np.ndarray]:
        return self.errors_.arrays()

    def _load_baseline(self, d: dict[str, Any], folder: Path, window: int) -> None:
        self.errors_ = self._new_errors(window)
        path = folder / "weights.npz"
        arrays: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        self.errors_.load(d["baseline"], arrays)


class SeriesBaseline(_BaselineMixin, SeriesDetector):
    """A baseline on time series (the ``window`` of its model section, not ``window``)."""

    kind = "series_baseline"
    uses_validation = False

    @property
    def error_window(self) -> int:
        return int(getattr(self.model, "window", 1))

    @property
    def min_train_samples(self) -> int:
        return self._new_errors(self.error_window).min_rows

    def _make_scaler(self, rows: np.ndarray) -> Any:
        from ae_anomaly.data.preprocessing import Scaler, identity_scaler

        choice = getattr(self.model, "scaler", "config")
        if choice == "none":
            return identity_scaler(rows.shape[1])
        kind = self.preprocess.scaler if choice == "config" else choice
        return Scaler(kind, self.preprocess.clip).fit(rows)

    @property
    def baseline_window(self) -> int:
        return self.error_window


class RowBaseline(_BaselineMixin, RowDetector):
    """A baseline on network-flow rows (features of the row layout, window 1)."""

    kind = "row_baseline"

    def transform(self, part: Any) -> np.ndarray:
        return super().transform(part).astype(np.float64)
