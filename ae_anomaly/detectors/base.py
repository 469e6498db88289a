"""The one detector contract: every kind of detector follows the same sequence.

``fit(frame)``:

1. **split** the training frame into fit / validation / calibration parts (a layout's
   choice: the end of each entity's series for time series, a seeded random share of the
   normal rows for network-flow rows);
2. **preprocess**: fit the scaler (series) or the feature pipeline (rows) on the fit part;
3. **fit the error function** (an autoencoder through the one training loop, PCA, an
   IsolationForest, or the random control);
4. **calibrate**: per-sample, per-channel errors of each calibration part go through the
   :class:`~ae_anomaly.postprocess.Postprocessor` (frozen with the model) and the threshold
   rule of the ``calibration`` section is fitted on the resulting scores (per entity too
   with ``calibration.per_entity``).

``score(frame)`` runs steps 2-4 forward: preprocess, errors, post-processing; ``predict``
compares with the (entity's) threshold; :meth:`BaseDetector.find_events` turns the alarms
into events. Save / load use one envelope (``config.json`` + ``weights.npz`` or
``weights.pt``, never a pickle); :meth:`BaseDetector.calibration_report` and the fields
tracking needs (``history_``, ``n_train_samples_``, ``data_fingerprint_``) are the same for
every kind.

A kind is a *layout* (:mod:`ae_anomaly.detectors.series` or :mod:`~ae_anomaly.detectors.rows`:
how samples are cut, preprocessed and grouped into events) combined with an *error function*
(the autoencoder, or a baseline of :mod:`~ae_anomaly.detectors.baselines`). Only
:func:`ae_anomaly.detectors.build_detector` and :func:`~ae_anomaly.detectors.load_detector`
look at which kind a detector is.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ae_anomaly.calibration import AdaptiveConformal, ThresholdRule, rule_from_config
from ae_anomaly.config import CalibrationConfig, PostprocessConfig, TrainingConfig
from ae_anomaly.errors import AeAnomalyError, ConfigError
from ae_anomaly.events import Event
from ae_anomaly.postprocess import Postprocessor
from ae_anomaly.training import TrainHistory

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
EpochCallback = Callable[[int, float, float | None], None]


@dataclass
class TrainingSplit:
    """A training frame cut into parts. Series: one part per entity (raw values, time
    order); rows: one part holding every normal row. ``fit_all[i]`` is everything before the
    calibration part (``fit`` + ``val``, for error functions without early stopping)."""

    fit: list[Any] = field(default_factory=list)
    val: list[Any] = field(default_factory=list)
    cal: list[Any] = field(default_factory=list)
    fit_all: list[Any] = field(default_factory=list)
    fit_ts: list[np.ndarray | None] = field(default_factory=list)
    val_ts: list[np.ndarray | None] = field(default_factory=list)
    cal_ts: list[np.ndarray | None] = field(default_factory=list)
    fit_all_ts: list[np.ndarray | None] = field(default_factory=list)
    entities: list[str | None] = field(default_factory=list)


@dataclass
class EventsPass:
    """What finding events in a frame produced (per entity counts)."""

    events: list[Event] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)


class BaseDetector:
    """Preprocessing + error function + post-processing + calibrated threshold.

    sklearn-shaped: ``__init__`` stores configuration only (``get_params`` /
    ``set_params``), ``fit(frame) -> self``, ``score(frame)`` (higher is more anomalous),
    ``predict(frame)``; fitted state ends in ``_``.

    Subclasses implement the layout hooks (``_split``, ``_fit_preprocessing``,
    ``transform``, ``_groups``, ``find_events``) and the error hooks (``_fit_errors``,
    ``errors``, ``_state`` / ``_load_state``).

    Attributes (after :meth:`fit`):
        feature_names_: the input columns (series: metrics; rows: the flow features).
        postprocessor_: the fitted post-processing.
        rule_: the threshold rule, ``threshold_`` its threshold; ``entity_rules_`` per entity.
        history_: training history (baselines: no epochs, the fit time).
        n_train_samples_: windows or rows the error function was fitted on.
        steps_per_day_: samples per day and entity (for budgets in alerts per day).
        data_fingerprint_: a hash of the training values.
    """

    #: the name this kind is saved under (``config.json``'s ``kind``)
    kind: ClassVar[str] = ""
    #: what one scored sample is: ``step`` (of a time series) or ``row`` (a flow record)
    sample_unit: ClassVar[str] = "step"

    model: Any
    training: TrainingConfig
    calibration: CalibrationConfig
    postprocess: PostprocessConfig

    # ------------------------------------------------------------------ sklearn params
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor arguments (configuration sections), as sklearn estimators do."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> BaseDetector:
        """Set constructor arguments; unknown names raise ``ValueError``."""
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"unknown parameter '{k}' for {type(self).__name__}; "
                                 f"valid: {', '.join(sorted(valid))}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={getattr(self.model, 'name', self.model)!r})"

    # ------------------------------------------------------------------ layout hooks
    def _split(self, frame: pd.DataFrame) -> TrainingSplit:
        raise NotImplementedError

    def _fit_preprocessing(self, split: TrainingSplit) -> None:
        raise NotImplementedError

    def transform(self, part: Any) -> np.ndarray:
        """Raw part (series values (T, C) or a frame of rows) -> the error function's input."""
        raise NotImplementedError

    def _steps_per_day(self, frame: pd.DataFrame) -> float | None:
        return None

    def _fingerprint(self, frame: pd.DataFrame, split: TrainingSplit) -> str:
        raise NotImplementedError

    @property
    def context_before(self) -> int:
        """Earlier samples a sample's final score depends on."""
        return 0

    @property
    def context_after(self) -> int:
        """Later samples a sample's final score depends on (scoring waits for them)."""
        return 0

    @property
    def min_samples(self) -> int:
        """The fewest consecutive samples of one entity that can be scored."""
        return 1

    # ------------------------------------------------------------------ error hooks
    def _fit_errors(self, split: TrainingSplit, on_epoch: EpochCallback | None) -> None:
        """Fit the error function on the transformed fit (and validation) parts; sets
        ``history_`` and ``n_train_samples_``."""
        raise NotImplementedError

    def errors(self, x: np.ndarray, batch_size: int = 1024,
               timestamps: np.ndarray | None = None,
               entity: str | None = None) -> np.ndarray:
        """Per-sample, per-channel errors (T, C') of a transformed contiguous block, before
        post-processing (``postprocess.errors`` says overlap or causal for windowed kinds)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fitting
    def _alpha_for_channels(self) -> float | None:
        return self._new_rule().alpha if self.calibration.per_channel else None

    def _new_rule(self) -> ThresholdRule:
        try:
            return rule_from_config(self.calibration, steps_per_day=self.steps_per_day_)
        except ValueError as exc:
            raise ConfigError(f"calibration: {exc}") from None

    def fit(self, frame: pd.DataFrame, on_epoch: EpochCallback | None = None) -> BaseDetector:
        """Fit preprocessing, the error function and the threshold on normal data.

        Args:
            frame: series: ``timestamp, entity, <metrics...>`` sorted by entity then time;
                rows: flow records (only rows with ``is_anomaly`` False are used).
            on_epoch: per-epoch callback ``(epoch, train_loss, val_loss)`` (e.g. MLflow).

        Returns:
            self
        """
        from ae_anomaly.training import seed_everything

        seed_everything(self.training.seed)
        if self.training.num_threads:
            import torch

            torch.set_num_threads(self.training.num_threads)
        self.steps_per_day_ = self._steps_per_day(frame)
        split = self._split(frame)
        self._fit_preprocessing(split)
        self._fit_errors(split, on_epoch)
        self.postprocessor_ = Postprocessor(self.postprocess)
        cal_parts = self.postprocessor_.fit(
            [self.errors(self.transform(p), timestamps=ts, entity=ent)
             for p, ts, ent in zip(split.cal, split.cal_ts, split.entities, strict=True)],
            alpha=self._alpha_for_channels())
        cal_scores = np.concatenate(cal_parts)
        self.rule_: ThresholdRule = self._new_rule().fit(cal_scores)
        self.threshold_ = float(self.rule_.threshold_)
        # Per-entity thresholds: each entity's own calibration part, for fleets whose
        # members differ in how well the shared model reconstructs them.
        self.entity_rules_: dict[str, ThresholdRule] = {}
        if self.calibration.per_entity:
            self.entity_rules_ = {str(ent): self._new_rule().fit(sc)
                                  for ent, sc in zip(split.entities, cal_parts, strict=True)
                                  if ent is not None}
        self.data_fingerprint_ = self._fingerprint(frame, split)
        log.info("%s: threshold %.5g (%s, alpha %g, %d calibration %ss)", self.model.name,
                 self.threshold_, self.calibration.method, self.rule_.alpha, len(cal_scores),
                 self.sample_unit)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "rule_"):
            raise AeAnomalyError(f"{type(self).__name__} is not fitted; call fit() first")

    # ------------------------------------------------------------------ scoring
    def score_values(self, x: np.ndarray, batch_size: int = 1024,
                     timestamps: np.ndarray | None = None, entity: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (T,) and post-processed channel values (T, C') of a transformed contiguous
        block of one entity. Samples within :attr:`context_before` of the block's start or
        :attr:`context_after` of its end are final only at the series' own ends."""
        return self.postprocessor_(self.errors(x, batch_size, timestamps=timestamps,
                                               entity=entity))

    def _groups(self, frame: pd.DataFrame) -> dict[str | None, np.ndarray]:
        """Row indices of each scored group (an entity's series, or all rows)."""
        raise NotImplementedError

    def _group_inputs(self, frame: pd.DataFrame, idx: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """A group's transformed values and its timestamps (None when absent)."""
        raise NotImplementedError

    def score_channels(self, frame: pd.DataFrame, batch_size: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and post-processed channel values (N, C') per row of a frame."""
        self._check_fitted()
        scores = np.full(len(frame), np.nan)
        channels = np.full((len(frame), len(self.channel_names)), np.nan)
        for ent, idx in self._groups(frame).items():
            x, ts = self._group_inputs(frame, idx)
            s, ch = self.score_values(x, batch_size, timestamps=ts, entity=ent)
            scores[idx], channels[idx] = s, ch
        return scores, channels

    def score(self, frame: pd.DataFrame, batch_size: int = 1024) -> np.ndarray:
        """Anomaly score per row of a frame (higher is more anomalous); ``batch_size``
        samples per forward pass bound the memory."""
        return self.score_channels(frame, batch_size)[0]

    def row_thresholds(self, frame: pd.DataFrame) -> np.ndarray:
        """The threshold that applies to each row (its entity's where fitted)."""
        from ae_anomaly.data.timeseries import ENTITY

        if ENTITY not in frame.columns or not self.entity_rules_:
            return np.full(len(frame), self.threshold_)
        return frame[ENTITY].astype(str).map(self.threshold_for).to_numpy(np.float64)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """True where a row's score exceeds its (entity's) calibrated threshold."""
        return self.score(frame) > self.row_thresholds(frame)

    def find_events(self, frame: pd.DataFrame, events_cfg: Any,
                    batch_size: int = 1024) -> EventsPass:
        """Score a frame held in memory and turn its alarms into events."""
        raise NotImplementedError

    def sample_windows(self, n: int, seed: int = 0) -> np.ndarray:
        """Generate ``n`` normal-looking windows ``(n, C, L)`` (generative kinds only).

        Raises:
            AeAnomalyError: this detector cannot generate windows.
        """
        raise AeAnomalyError(f"model '{self.model.name}' cannot generate windows; use rae or "
                             "vae")

    # ------------------------------------------------------------------ thresholds
    def rule_for(self, entity: str | None) -> ThresholdRule:
        """The threshold rule of an entity (its own with ``per_entity``, else the global)."""
        return self.entity_rules_.get(str(entity), self.rule_)

    def threshold_for(self, entity: str | None) -> float:
        """The alarm threshold of an entity; entities unseen in training get the global one."""
        return float(self.rule_for(entity).threshold_)

    def adaptive_rule_for(self, entity: str | None) -> AdaptiveConformal | None:
        """The online threshold rule of an entity (``calibration.adaptive``), built from
        the frozen settings and the entity's calibration scores; None when thresholds are
        static. Scheduled scoring applies it from the entity's stored state."""
        cfg = self.calibration
        if cfg.adaptive == "none":
            return None
        rule = self.rule_for(entity)
        gamma = cfg.aci_gamma if cfg.aci_gamma is not None else rule.alpha / 10.0
        assert rule.calibration_scores_ is not None
        return AdaptiveConformal(rule.alpha, gamma, rule.calibration_scores_, cfg.aci_window)

    def p_values(self, scores: np.ndarray, entity: str | None = None) -> np.ndarray:
        """Conformal p-values of scores against the (entity's) calibration set."""
        return self.rule_for(entity).p_values(scores)

    @property
    def channel_names(self) -> list[str]:
        """Names of the post-processed channels (what an alarm is attributed to)."""
        return list(self.feature_names_)

    def channel_thresholds(self, entity: str | None = None) -> dict[str, float]:
        """Per-channel thresholds (``calibration.per_channel``), in the units of the
        smoothed channel errors: a sample alarms when any channel exceeds its own. Empty
        when the detector thresholds one score per sample."""
        scale = self.postprocessor_.channel_scale
        if scale is None:
            return {}
        thr = self.threshold_for(entity)
        return {n: float(c * thr) for n, c in zip(self.channel_names, scale, strict=True)}

    def calibration_report(self, entity: str | None = None) -> dict[str, Any]:
        """The threshold rule's report (set size, rate interval, warnings), with the
        per-channel thresholds when fitted."""
        report = self.rule_for(entity).report()
        per_channel = self.channel_thresholds(entity)
        if per_channel:
            report["channel_thresholds"] = per_channel
        return report

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, Any]:
        """The kind's own readable state (layout and error function)."""
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        """Numeric state saved as ``weights.npz`` (loaded with ``allow_pickle=False``)."""
        return {}

    def _save_weights(self, folder: Path) -> None:
        arrays = self._arrays()
        if arrays:
            np.savez(folder / "weights.npz", **arrays)

    def to_dict(self) -> dict[str, Any]:
        """The readable part of a saved detector (``config.json``)."""
        from ae_anomaly.persistence import history_to_dict, package_versions

        self._check_fitted()
        pp = self.postprocessor_
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model.model_dump(mode="json"),
            "training": self.training.model_dump(mode="json"),
            "calibration": self.calibration.model_dump(mode="json"),
            "postprocess": self.postprocess.model_dump(mode="json"),
            "channel_scale": None if pp.channel_scale is None else pp.channel_scale.tolist(),
            "score_baseline": pp.baseline,
            "feature_names": list(self.feature_names_),
            "threshold": self.threshold_,
            "rule": self.rule_.to_dict(),
            "entity_rules": {e: r.to_dict() for e, r in self.entity_rules_.items()},
            "steps_per_day": self.steps_per_day_,
            "history": history_to_dict(self.history_),
            "n_train_samples": self.n_train_samples_,
            "data_fingerprint": self.data_fingerprint_,
            "versions": package_versions(),
            **self._state(),
        }

    def save(self, path: str | Path) -> Path:
        """Save to a folder: ``config.json`` (readable state) and the weights (a torch
        state_dict in ``weights.pt`` or arrays in ``weights.npz``); nothing is pickled."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(self.to_dict(), indent=1))
        self._save_weights(p)
        return p

    def _load_common(self, d: dict[str, Any]) -> None:
        from ae_anomaly.persistence import history_from_dict

        self.postprocessor_ = Postprocessor(self.postprocess, d.get("channel_scale"),
                                            d.get("score_baseline"))
        self.feature_names_ = list(d["feature_names"])
        self.threshold_ = float(d["threshold"])
        self.rule_ = ThresholdRule.from_dict(d["rule"])
        self.entity_rules_ = {e: ThresholdRule.from_dict(r)
                              for e, r in d.get("entity_rules", {}).items()}
        self.steps_per_day_ = d.get("steps_per_day")
        self.history_: TrainHistory = history_from_dict(d["history"])
        self.n_train_samples_ = int(d["n_train_samples"])
        self.data_fingerprint_ = d["data_fingerprint"]

    @classmethod
    def from_saved(cls, d: dict[str, Any], folder: Path) -> BaseDetector:
        """Rebuild a fitted detector from its ``config.json`` mapping and folder."""
        raise NotImplementedError
