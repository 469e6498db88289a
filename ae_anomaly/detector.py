"""Detector = preprocessing + network + calibrated threshold, sklearn-shaped.

A detector scores *steps*: each window's element-wise reconstruction error is averaged
back onto the steps it covers (overlap-add; or, with ``postprocess.errors: causal``, the
error of the window ending at the step), giving a per-step, per-channel error. The
``postprocess`` section (:mod:`ae_anomaly.postprocess`) smooths it, applies per-channel
thresholds when configured, and reduces the channels to the step score; the channel values
say which metrics drove an alarm. Calibration, production scoring and the benchmark all
score through :meth:`Detector.score_values`.

Training data of each entity is split in time: the first part fits the scaler and the
network (its tail, ``training.val_fraction``, drives early stopping), and the last
``calibration.calibration_fraction`` is never trained on: the threshold is fitted there.
After the training loop the network's ``post_fit`` hook sees the training windows (latent
statistics, a mixture on the codes) before the threshold is fitted.

A network that declares ``needs_context`` (the conditional VAE) gets one context vector per
window: the network's ``context_features`` of the window's last step, computed from the
timestamps (and the entity) of the series; scoring such a model needs the timestamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
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
    PostprocessConfig,
    PreprocessConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.preprocessing import Scaler
from ae_anomaly.data.timeseries import ENTITY, TS, metric_columns
from ae_anomaly.data.windowing import (
    overlap_sum,
    sliding_windows,
    window_coverage,
    window_end_values,
)
from ae_anomaly.errors import AeAnomalyError, DataError
from ae_anomaly.models import AutoEncoder, Samples, build_model
from ae_anomaly.models.base import n_samples
from ae_anomaly.persistence import (
    history_from_dict,
    history_to_dict,
    package_versions,
    save_folder,
)
from ae_anomaly.postprocess import Postprocessor
from ae_anomaly.training import TrainHistory, resolve_device, seed_everything, train_network

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)



@dataclass
class TrainingSplit:
    """Per-entity time slices of the training data (raw values), with their timestamps
    (None when the frame has no timestamp column) and entity names."""

    fit: list[np.ndarray] = field(default_factory=list)
    val: list[np.ndarray] = field(default_factory=list)
    cal: list[np.ndarray] = field(default_factory=list)
    fit_ts: list[np.ndarray | None] = field(default_factory=list)
    val_ts: list[np.ndarray | None] = field(default_factory=list)
    cal_ts: list[np.ndarray | None] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)


class Detector:
    """A windowed autoencoder detector with a threshold fitted on held-out normal data.

    Args:
        model: network configuration (``model.name`` picks the family).
        window: window length and training stride.
        preprocess: scaler settings.
        training: training-loop settings.
        calibration: threshold rule settings.
        postprocess: how per-step errors become the step score.
    """

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

    @classmethod
    def from_config(cls, cfg: AppConfig) -> Detector:
        """Build an unfitted detector from the application configuration."""
        return cls(cfg.model, cfg.window, cfg.preprocess, cfg.training, cfg.calibration,
                   cfg.postprocess)

    # ------------------------------------------------------------------ context
    @property
    def context_before(self) -> int:
        """Earlier rows a step's final score depends on (window, then smoothing)."""
        return self.window.length - 1 + Postprocessor(self.postprocess).behind

    @property
    def context_after(self) -> int:
        """Later rows a step's final score depends on: scoring waits for them."""
        ahead = Postprocessor(self.postprocess).ahead
        if self.postprocess.errors == "causal":
            return ahead
        return self.window.length - 1 + ahead

    # ------------------------------------------------------------------ fitting
    def _split(self, frame: pd.DataFrame) -> tuple[TrainingSplit, np.ndarray]:
        length = self.window.length
        raw = TrainingSplit()
        for ent, grp in frame.groupby(ENTITY, sort=False):
            v = grp[self.feature_names_].to_numpy(dtype=np.float64)
            ts = grp[TS].to_numpy() if TS in grp.columns else None
            n = len(v)
            n_cal = int(round(n * self.calibration.calibration_fraction))
            n_fit_all = n - n_cal
            n_val = int(round(n_fit_all * self.training.val_fraction))
            n_fit = n_fit_all - n_val
            if n_fit < length or n_cal < length:
                raise DataError(
                    f"entity '{ent}' has {n} training steps: too few for window "
                    f"{length} with a {self.calibration.calibration_fraction:.0%} calibration "
                    f"slice (need at least "
                    f"{int(2 * length / self.calibration.calibration_fraction)})"
                )
            n_val_kept = n_val if n_val >= length else 0
            raw.fit.append(v[:n_fit])
            raw.val.append(v[n_fit:n_fit + n_val_kept])
            raw.cal.append(v[n_fit_all:])
            raw.fit_ts.append(None if ts is None else ts[:n_fit])
            raw.val_ts.append(None if ts is None else ts[n_fit:n_fit + n_val_kept])
            raw.cal_ts.append(None if ts is None else ts[n_fit_all:])
            raw.entities.append(str(ent))
        return raw, np.concatenate(raw.fit)

    def _window_context(self, timestamps: np.ndarray | None, entity: str | None,
                        n_windows: int, stride: int = 1) -> torch.Tensor | None:
        """One context vector per window (its last step's), or None for plain networks."""
        if not self.network_.needs_context:
            return None
        if timestamps is None:
            raise DataError(f"model '{self.model.name}' conditions on time: the data needs a "
                            f"'{TS}' column", column=TS)
        steps = self.network_.context_features(np.asarray(timestamps), entity)
        ctx = steps[self.window.length - 1::stride][:n_windows]
        return torch.from_numpy(np.ascontiguousarray(ctx, dtype=np.float32))

    def _samples(self, parts: list[np.ndarray], timestamps: list[np.ndarray | None],
                 entities: list[str], stride: int) -> Samples:
        """Training samples of the slices: windows, with their context when the network
        needs one."""
        wins, ctxs = [], []
        for p, ts, ent in zip(parts, timestamps, entities, strict=True):
            if len(p) < self.window.length:
                continue
            w = sliding_windows(self.scaler_.transform(p), self.window.length, stride)
            wins.append(w)
            ctx = self._window_context(ts, ent, len(w), stride)
            if ctx is not None:
                ctxs.append(ctx)
        if not wins:
            x = torch.empty(0)
            return (x, torch.empty(0)) if self.network_.needs_context else x
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(wins)))
        return (x, torch.cat(ctxs)) if ctxs else x

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
        self.network_: AutoEncoder = build_model(
            self.model, len(self.feature_names_), self.window.length
        )
        stride = self.window.train_stride
        train = self._samples(raw.fit, raw.fit_ts, raw.entities, stride)
        val = self._samples(raw.val, raw.val_ts, raw.entities, stride)
        self.history_: TrainHistory = train_network(self.network_, train, val, self.training,
                                                    on_epoch=on_epoch,
                                                    desc=f"train {self.model.name}")
        self.network_.post_fit(train)
        self.network_.eval()
        self.steps_per_day_ = _steps_per_day(frame)
        # Per-channel thresholds: each channel's own calibration quantile at the rule's alpha
        # scales it; the rule below then thresholds the largest ratio.
        self.postprocessor_ = Postprocessor(self.postprocess)
        cal_parts = self.postprocessor_.fit(
            [self.step_errors(self.scaler_.transform(p), timestamps=ts, entity=ent)
             for p, ts, ent in zip(raw.cal, raw.cal_ts, raw.entities, strict=True)],
            alpha=self._new_rule().alpha if self.calibration.per_channel else None)
        cal_scores = np.concatenate(cal_parts)
        self.rule_: ThresholdRule = self._new_rule().fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        # Per-entity thresholds: each entity's own calibration slice, for fleets whose
        # members differ in how well the shared model reconstructs them.
        self.entity_rules_: dict[str, ThresholdRule] = {}
        if self.calibration.per_entity:
            self.entity_rules_ = {ent: self._new_rule().fit(sc)
                                  for ent, sc in zip(raw.entities, cal_parts, strict=True)}
        self.n_train_windows_ = n_samples(train)
        self.data_fingerprint_ = hashlib.sha256(
            np.ascontiguousarray(frame[self.feature_names_].to_numpy(np.float64)).tobytes()
        ).hexdigest()[:16]
        log.info("threshold %.5f (%s, alpha %g, %d calibration steps)", self.threshold_,
                 self.calibration.method, self.calibration.alpha, len(cal_scores))
        return self

    # ------------------------------------------------------------------ scoring
    def _device(self) -> torch.device:
        return next(self.network_.parameters()).device

    def block_errors(self, scaled: np.ndarray, batch_size: int = 1024,
                     timestamps: np.ndarray | None = None,
                     entity: str | None = None) -> np.ndarray:
        """Per-step, per-channel error of a contiguous scaled block (T, C) -> (T, C).

        Every window of the block is scored; the steps near the block's ends are covered by
        fewer windows. Memory is bounded by ``batch_size`` windows at a time.

        Args:
            scaled: the block's scaled values, time along axis 0.
            batch_size: windows per forward pass.
            timestamps: the block's timestamps (T,); required when the network needs a
                context (``needs_context``), ignored otherwise.
            entity: the block's entity, for a network whose context includes it.

        Raises:
            DataError: a block shorter than the window, or no timestamps for a network that
                conditions on time.
        """
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
        Arguments as in :meth:`block_errors`.
        """
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

    def step_errors(self, scaled: np.ndarray, batch_size: int = 1024,
                    timestamps: np.ndarray | None = None,
                    entity: str | None = None) -> np.ndarray:
        """Per-step, per-channel errors (T, C) as ``postprocess.errors`` says (overlap or
        causal), before smoothing."""
        if self.postprocess.errors == "causal":
            return self.causal_errors(scaled, batch_size, timestamps=timestamps, entity=entity)
        return self.block_errors(scaled, batch_size, timestamps=timestamps, entity=entity)

    def score_values(self, scaled: np.ndarray, batch_size: int = 1024,
                     timestamps: np.ndarray | None = None, entity: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (T,) and post-processed channel values (T, C) of a contiguous block of
        one entity's scaled series (``timestamps`` and ``entity`` as in
        :meth:`block_errors`). Steps within :attr:`context_before` of the block's start or
        :attr:`context_after` of its end are final only at the series' own ends."""
        ch = self.step_errors(scaled, batch_size, timestamps=timestamps, entity=entity)
        return self.postprocessor_(ch)

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
        values = frame[self.feature_names_].to_numpy(np.float64)
        ts_all = frame[TS].to_numpy() if TS in frame.columns else None
        for ent, idx in groups.items():
            out[idx] = self.score_values(
                self.scaler_.transform(values[idx]),
                timestamps=None if ts_all is None else ts_all[idx],
                entity=None if ent is None else str(ent),
            )[0]
        return out

    def _new_rule(self) -> ThresholdRule:
        return rule_from_config(self.calibration, steps_per_day=self.steps_per_day_)

    def rule_for(self, entity: str | None) -> ThresholdRule:
        """The threshold rule of an entity (its own with ``per_entity``, else the global)."""
        return self.entity_rules_.get(str(entity), self.rule_)

    def threshold_for(self, entity: str | None) -> float:
        """The alarm threshold of an entity; entities unseen in training get the global one."""
        return float(self.rule_for(entity).threshold_)

    def channel_thresholds(self, entity: str | None = None) -> dict[str, float]:
        """Per-channel thresholds (``calibration.per_channel``), in the units of the
        smoothed channel errors: a step alarms when any channel exceeds its own. Empty when
        the detector thresholds one score per step."""
        scale = self.postprocessor_.channel_scale
        if scale is None:
            return {}
        thr = self.threshold_for(entity)
        return {n: float(c * thr) for n, c in zip(self.feature_names_, scale, strict=True)}

    def row_thresholds(self, frame: pd.DataFrame) -> np.ndarray:
        """The threshold that applies to each row of a frame (per entity where fitted)."""
        if ENTITY not in frame.columns or not self.entity_rules_:
            return np.full(len(frame), self.threshold_)
        return frame[ENTITY].astype(str).map(self.threshold_for).to_numpy(np.float64)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds its entity's calibrated threshold."""
        return self.score(frame) > self.row_thresholds(frame)

    def p_values(self, scores: np.ndarray, entity: str | None = None) -> np.ndarray:
        """Conformal p-values of scores against the (entity's) calibration set."""
        return self.rule_for(entity).p_values(scores)

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
            "postprocess": self.postprocess.model_dump(),
            "channel_scale": (None if self.postprocessor_.channel_scale is None
                              else self.postprocessor_.channel_scale.tolist()),
            "score_baseline": self.postprocessor_.baseline,
            "feature_names": self.feature_names_,
            "scaler": self.scaler_.to_dict(),
            "threshold": self.threshold_,
            "rule": self.rule_.to_dict(),
            "entity_rules": {e: r.to_dict() for e, r in self.entity_rules_.items()},
            "steps_per_day": self.steps_per_day_,
            "history": history_to_dict(self.history_),
            "n_train_windows": self.n_train_windows_,
            "data_fingerprint": self.data_fingerprint_,
            "versions": package_versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Save to a folder: ``config.json`` (readable state) and ``weights.pt`` (state_dict)."""
        return save_folder(path, self.to_dict(), self.network_)

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
            PostprocessConfig(**d.get("postprocess", {})),
        )
        det.postprocessor_ = Postprocessor(det.postprocess, d.get("channel_scale"),
                                           d.get("score_baseline"))
        det.feature_names_ = d["feature_names"]
        det.scaler_ = Scaler.from_dict(d["scaler"])
        det.threshold_ = float(d["threshold"])
        det.rule_ = ThresholdRule.from_dict(d["rule"])
        det.entity_rules_ = {e: ThresholdRule.from_dict(r)
                             for e, r in d.get("entity_rules", {}).items()}
        det.steps_per_day_ = d.get("steps_per_day")
        det.history_ = history_from_dict(d["history"])
        det.n_train_windows_ = d["n_train_windows"]
        det.data_fingerprint_ = d["data_fingerprint"]
        det.network_ = build_model(det.model, len(det.feature_names_), det.window.length)
        state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.to(resolve_device(det.training.device)).eval()
        return det



def _steps_per_day(frame: pd.DataFrame) -> float | None:
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


def sample_windows(detector: Detector, n: int, seed: int = 0) -> np.ndarray:
    """Generate ``n`` new normal-looking windows from a fitted generative detector.

    The network decodes ``n`` codes drawn from its latent model (``rae``: the Gaussian
    mixture fitted on the training codes; ``vae``: the prior), and the scaling is undone.

    Args:
        detector: a fitted detector whose network has a ``sample`` method.
        n: number of windows.
        seed: seed of the draws (the same seed gives the same windows).

    Returns:
        ``(n, C, L)`` windows in the original units; channels follow
        ``detector.feature_names_``.

    Raises:
        AeAnomalyError: the detector's model cannot sample.
    """
    sample = getattr(detector.network_, "sample", None)
    if sample is None or getattr(detector.network_, "needs_context", False):
        raise AeAnomalyError(f"model '{detector.model.name}' cannot generate windows; "
                             "use rae or vae")
    scaled = sample(n, generator=torch.Generator().manual_seed(seed))
    x = scaled.to("cpu", torch.float64).numpy()
    scaler = detector.scaler_
    assert scaler.center_ is not None and scaler.scale_ is not None
    # Undo the per-channel scaling (clipping cannot be undone; samples stay inside it).
    return x * scaler.scale_[None, :, None] + scaler.center_[None, :, None]
