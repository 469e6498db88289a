"""Time-series detectors: samples are the steps of each entity's series.

Layout (:class:`SeriesDetector`): each entity's training series is split in time: the first
part fits the scaler and the error function (its tail, ``training.val_fraction``, drives
early stopping where there is one), and the last ``calibration.calibration_fraction`` is
never fitted on: the threshold is fitted there. Scoring groups rows by ``entity`` (one
series when the column is absent); events come from the ``events`` rules.

:class:`AutoencoderDetector` is the windowed autoencoder: each window's element-wise
reconstruction error is averaged back onto the steps it covers (overlap-add; or, with
``postprocess.errors: causal``, the error of the window ending at the step). After the
training loop the network's ``post_fit`` hook sees the training windows (latent statistics,
a mixture on the codes) before the threshold is fitted. A network that declares
``needs_context`` (the conditional VAE) gets one context vector per window: the network's
``context_features`` of the window's last step, from the timestamps (and the entity).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ae_anomaly.config import (
    CalibrationConfig,
    PostprocessConfig,
    PreprocessConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.preprocessing import Scaler
from ae_anomaly.data.timeseries import ENTITY, TS, metric_columns
from ae_anomaly.detectors.base import BaseDetector, EpochCallback, EventsPass, TrainingSplit
from ae_anomaly.errors import DataError
from ae_anomaly.events import EventBuilder


class SeriesDetector(BaseDetector):
    """The time-series layout shared by the windowed autoencoders and the series baselines.

    Args:
        model: the model section (``model.name`` picks the error function).
        window: window length and training stride.
        preprocess: scaler settings.
        training: training-loop settings (its seed seeds every kind).
        calibration: threshold rule settings.
        postprocess: how per-step errors become the step score.
    """

    sample_unit = "step"
    #: whether the error function early-stops on a validation part (else it fits on all
    #: of the data before the calibration part)
    uses_validation: ClassVar[bool] = True

    def __init__(
        self,
        model: Any,
        window: WindowConfig | None = None,
        preprocess: PreprocessConfig | None = None,
        training: TrainingConfig | None = None,
        calibration: CalibrationConfig | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> None:
        self.model = model
        self.window = window or WindowConfig()
        self.preprocess = preprocess or PreprocessConfig()
        self.training = training or TrainingConfig()
        self.calibration = calibration or CalibrationConfig()
        self.postprocess = postprocess or PostprocessConfig()

    # ------------------------------------------------------------------ context
    @property
    def error_window(self) -> int:
        """Steps one error of the error function looks at (the window length)."""
        return self.window.length

    @property
    def min_samples(self) -> int:
        return self.error_window

    @property
    def min_train_samples(self) -> int:
        """The fewest steps the fit and calibration parts of an entity may have."""
        return self.error_window

    @property
    def context_before(self) -> int:
        """Earlier rows a step's final score depends on (window, then smoothing)."""
        from ae_anomaly.postprocess import Postprocessor

        return self.error_window - 1 + Postprocessor(self.postprocess).behind

    @property
    def context_after(self) -> int:
        """Later rows a step's final score depends on: scoring waits for them."""
        from ae_anomaly.postprocess import Postprocessor

        ahead = Postprocessor(self.postprocess).ahead
        if self.postprocess.errors == "causal":
            return ahead
        return self.error_window - 1 + ahead

    # ------------------------------------------------------------------ fitting
    def _steps_per_day(self, frame: pd.DataFrame) -> float | None:
        return steps_per_day(frame)

    def _split(self, frame: pd.DataFrame) -> TrainingSplit:
        self.feature_names_ = metric_columns(frame)
        need = self.min_train_samples
        cal_frac = self.calibration.calibration_fraction
        out = TrainingSplit()
        groups = frame.groupby(ENTITY, sort=False) if ENTITY in frame.columns else [
            (None, frame)]
        for ent, grp in groups:
            v = grp[self.feature_names_].to_numpy(dtype=np.float64)
            ts = grp[TS].to_numpy() if TS in grp.columns else None
            n = len(v)
            n_cal = int(round(n * cal_frac))
            n_fit_all = n - n_cal
            n_val = int(round(n_fit_all * self.training.val_fraction))
            n_fit = n_fit_all - n_val
            fitted = n_fit if self.uses_validation else n_fit_all
            if fitted < need or n_cal < need:
                raise DataError(
                    f"entity '{ent}' has {n} training steps: too few for {self.model.name} "
                    f"(window {need}) with a {cal_frac:.0%} calibration slice (need at least "
                    f"{int(2 * need / cal_frac)})"
                )
            n_val_kept = n_val if n_val >= need else 0
            out.fit.append(v[:n_fit])
            out.val.append(v[n_fit:n_fit + n_val_kept])
            out.cal.append(v[n_fit_all:])
            out.fit_all.append(v[:n_fit_all])
            out.fit_ts.append(None if ts is None else ts[:n_fit])
            out.val_ts.append(None if ts is None else ts[n_fit:n_fit + n_val_kept])
            out.cal_ts.append(None if ts is None else ts[n_fit_all:])
            out.fit_all_ts.append(None if ts is None else ts[:n_fit_all])
            out.entities.append(None if ent is None else str(ent))
        return out

    def _make_scaler(self, rows: np.ndarray) -> Scaler:
        return Scaler(self.preprocess.scaler, self.preprocess.clip).fit(rows)

    def _fit_preprocessing(self, split: TrainingSplit) -> None:
        parts = split.fit if self.uses_validation else split.fit_all
        self.scaler_ = self._make_scaler(np.concatenate(parts))

    def _fingerprint(self, frame: pd.DataFrame, split: TrainingSplit) -> str:
        values = np.ascontiguousarray(frame[self.feature_names_].to_numpy(np.float64))
        return hashlib.sha256(values.tobytes()).hexdigest()[:16]

    def transform(self, part: Any) -> np.ndarray:
        """Raw values (T, C) of one entity -> scaled values."""
        return self.scaler_.transform(np.asarray(part, dtype=np.float64))

    # ------------------------------------------------------------------ scoring
    def _check_features(self, frame: pd.DataFrame) -> None:
        missing = [f for f in self.feature_names_ if f not in frame.columns]
        if missing:
            raise DataError("column the model was trained on is missing; the model expects "
                            f"{', '.join(self.feature_names_)}", column=missing[0])

    def _groups(self, frame: pd.DataFrame) -> dict[str | None, np.ndarray]:
        self._check_features(frame)
        if ENTITY not in frame.columns:
            return {None: np.arange(len(frame))}
        return {str(k): v for k, v in frame.groupby(ENTITY, sort=False).indices.items()}

    def _group_inputs(self, frame: pd.DataFrame, idx: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        values = frame[self.feature_names_].to_numpy(np.float64)[idx]
        ts = frame[TS].to_numpy()[idx] if TS in frame.columns else None
        return self.transform(values), ts

    def find_events(self, frame: pd.DataFrame, events_cfg: Any,
                    batch_size: int = 1024) -> EventsPass:
        """Events of a wide frame held in memory (each entity's rows one series in time
        order); an entity with fewer steps than :attr:`min_samples` is counted in
        ``unscored``.

        Raises:
            DataError: a feature column the detector was trained on is missing.
        """
        self._check_fitted()
        self._check_features(frame)
        out = EventsPass()
        values = frame[self.feature_names_].to_numpy(np.float64)
        stamps = frame[TS].to_numpy()
        groups = (frame.groupby(ENTITY, sort=True).indices if ENTITY in frame.columns
                  else {"": np.arange(len(frame))})
        for ent, idx in groups.items():
            ent = str(ent)
            if len(idx) < self.min_samples:
                out.unscored[ent] = len(idx)
                continue
            scores, ch = self.score_values(self.transform(values[idx]), batch_size,
                                           timestamps=stamps[idx], entity=ent)
            builder = EventBuilder(ent, events_cfg, self.threshold_for(ent),
                                   self.rule_for(ent).p_values)
            out.events.extend(builder.push(stamps[idx], scores, ch) + builder.flush())
            out.steps[ent] = len(idx)
            out.flagged[ent] = int((scores > self.threshold_for(ent)).sum())
        return out

    # ------------------------------------------------------------------ persistence
    def _layout_state(self) -> dict[str, Any]:
        return {"window": self.window.model_dump(mode="json"),
                "preprocess": self.preprocess.model_dump(mode="json"),
                "scaler": self.scaler_.to_dict()}

    @classmethod
    def _from_layout(cls, d: dict[str, Any]) -> SeriesDetector:
        from ae_anomaly.config import model_config

        det = cls(
            model_config(d["model"]),
            WindowConfig(**d["window"]),
            PreprocessConfig(**d["preprocess"]),
            TrainingConfig(**d["training"]),
            CalibrationConfig(**d["calibration"]),
            PostprocessConfig(**d.get("postprocess", {})),
        )
        det._load_common(d)
        det.scaler_ = Scaler.from_dict(d["scaler"])
        return det


class AutoencoderDetector(SeriesDetector):
    """A windowed autoencoder with a threshold fitted on held-out normal data."""

    kind = "series_autoencoder"

    # ------------------------------------------------------------------ fitting
    def _window_context(self, timestamps: np.ndarray | None, entity: str | None,
                        n_windows: int, stride: int = 1) -> Any:
        """One context vector per window (its last step's), or None for plain networks."""
        import torch

        if not self.network_.needs_context:
            return None
        if timestamps is None:
            raise DataError(f"model '{self.model.name}' conditions on time: the data needs a "
                            f"'{TS}' column", column=TS)
        steps = self.network_.context_features(np.asarray(timestamps), entity)
        ctx = steps[self.window.length - 1::stride][:n_windows]
        return torch.from_numpy(np.ascontiguousarray(ctx, dtype=np.float32))

    def _samples(self, parts: list[np.ndarray], timestamps: list[np.ndarray | None],
                 entities: list[str | None], stride: int) -> Any:
        """Training samples of the parts: windows, with their context when the network
        needs one."""
        import torch

        from ae_anomaly.data.windowing import sliding_windows

        wins, ctxs = [], []
        for p, ts, ent in zip(parts, timestamps, entities, strict=True):
            if len(p) < self.window.length:
                continue
            w = sliding_windows(self.transform(p), self.window.length, stride)
            wins.append(w)
            ctx = self._window_context(ts, ent, len(w), stride)
            if ctx is not None:
                ctxs.append(ctx)
        if not wins:
            x = torch.empty(0)
            return (x, torch.empty(0)) if self.network_.needs_context else x
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(wins)))
        return (x, torch.cat(ctxs)) if ctxs else x

    def _fit_errors(self, split: TrainingSplit, on_epoch: EpochCallback | None) -> None:
        from ae_anomaly.models import build_model
        from ae_anomaly.models.base import n_samples
        from ae_anomaly.training import train_network

        self.network_ = build_model(self.model, len(self.feature_names_), self.window.length)
        stride = self.window.train_stride
        train = self._samples(split.fit, split.fit_ts, split.entities, stride)
        val = self._samples(split.val, split.val_ts, split.entities, stride)
        self.history_ = train_network(self.network_, train, val, self.training,
                                      on_epoch=on_epoch, desc=f"train {self.model.name}")
        self.network_.post_fit(train)
        self.network_.eval()
        self.n_train_samples_ = n_samples(train)

    # ------------------------------------------------------------------ errors
    def _device(self) -> Any:
        return next(self.network_.parameters()).device

    def block_errors(self, scaled: np.ndarray, batch_size: int = 1024,
                     timestamps: np.ndarray | None = None,
                     entity: str | None = None) -> np.ndarray:
        """Per-step, per-channel error of a contiguous scaled block (T, C) -> (T, C).

        Every window of the block is scored; the steps near the block's ends are covered by
        fewer windows. Memory is bounded by ``batch_size`` windows at a time.

        Raises:
            DataError: a block shorter than the window, or no timestamps for a network that
                conditions on time.
        """
        import torch

        from ae_anomaly.data.windowing import overlap_sum, sliding_windows, window_coverage

        length = self.window.length
        t, c = scaled.shape
        if t < length:
            raise DataError(f"a series of {t} steps is shorter than the window ({length})")
        wins = sliding_windows(scaled, length, 1)
        n = len(wins)
        ctx = self._window_context(timestamps, entity, n)
        total = torch.zeros((t, c), dtype=torch.float64)
        net, dev = self.network_, self._device()
        net.eval()
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(wins[i:i + batch_size])).to(dev)
                extra = () if ctx is None else (ctx[i:i + batch_size].to(dev),)
                err = net.errors(xb, net(xb, *extra)).to("cpu", torch.float64)
                steps = len(xb) - 1 + length
                total[i:i + steps] += overlap_sum(err, steps)
        return (total / window_coverage(n, length)[:, None]).numpy()

    def causal_errors(self, scaled: np.ndarray, batch_size: int = 1024,
                      timestamps: np.ndarray | None = None,
                      entity: str | None = None) -> np.ndarray:
        """Per-step, per-channel error (T, C) in which step t uses no data after t.

        Each stride-1 window's mean element error per channel (over its last
        ``postprocess.causal_tail`` steps; 0: the whole window) is placed on the step the
        window ends at; the first ``length - 1`` steps take the first window's value.
        """
        import torch

        from ae_anomaly.data.windowing import sliding_windows, window_end_values

        length, tail = self.window.length, self.postprocess.causal_tail
        if len(scaled) < length:
            raise DataError(f"a series of {len(scaled)} steps is shorter than the window "
                            f"({length})")
        wins = sliding_windows(scaled, length, 1)
        ctx = self._window_context(timestamps, entity, len(wins))
        net, dev = self.network_, self._device()
        net.eval()
        parts = []
        with torch.inference_mode():
            for i in range(0, len(wins), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(wins[i:i + batch_size])).to(dev)
                extra = () if ctx is None else (ctx[i:i + batch_size].to(dev),)
                err = net.errors(xb, net(xb, *extra))[:, :, -tail if tail else 0:]
                parts.append(err.mean(dim=2).to("cpu", torch.float64).numpy())
        return window_end_values(np.concatenate(parts), length)

    def errors(self, x: np.ndarray, batch_size: int = 1024,
               timestamps: np.ndarray | None = None,
               entity: str | None = None) -> np.ndarray:
        if self.postprocess.errors == "causal":
            return self.causal_errors(x, batch_size, timestamps=timestamps, entity=entity)
        return self.block_errors(x, batch_size, timestamps=timestamps, entity=entity)

    def sample_windows(self, n: int, seed: int = 0) -> np.ndarray:
        """Decode ``n`` codes drawn from the network's latent model (``rae``: the mixture on
        the training codes; ``vae``: the prior) into windows ``(n, C, L)`` in the original
        units (the scaling undone; clipping cannot be)."""
        import torch

        sample = getattr(self.network_, "sample", None)
        if sample is None or self.network_.needs_context:
            return super().sample_windows(n, seed)
        x = sample(n, generator=torch.Generator().manual_seed(seed)).to("cpu", torch.float64)
        scaler = self.scaler_
        assert scaler.center_ is not None and scaler.scale_ is not None
        return x.numpy() * scaler.scale_[None, :, None] + scaler.center_[None, :, None]

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, Any]:
        return self._layout_state()

    def _save_weights(self, folder: Path) -> None:
        import torch

        torch.save(self.network_.state_dict(), folder / "weights.pt")

    @classmethod
    def from_saved(cls, d: dict[str, Any], folder: Path) -> AutoencoderDetector:
        import torch

        from ae_anomaly.models import build_model
        from ae_anomaly.training import resolve_device

        det = cls._from_layout(d)
        assert isinstance(det, AutoencoderDetector)
        det.network_ = build_model(det.model, len(det.feature_names_), det.window.length)
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.to(resolve_device(det.training.device)).eval()
        return det


def steps_per_day(frame: pd.DataFrame) -> float | None:
    """Sampling rate of a training frame (median step per entity), None without timestamps."""
    if TS not in frame.columns or len(frame) < 2:
        return None
    ts = frame[TS].to_numpy().astype("datetime64[ns]").astype(np.int64)
    same = frame[ENTITY].to_numpy()[1:] == frame[ENTITY].to_numpy()[:-1] \
        if ENTITY in frame.columns else np.ones(len(frame) - 1, dtype=bool)
    steps = np.diff(ts)[same]
    steps = steps[steps > 0]
    if not len(steps):
        return None
    return float(86_400e9 / np.median(steps))
