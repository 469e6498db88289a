"""Row detectors: samples are network-flow records (one score per flow).

Layout (:class:`RowDetector`): fitting uses only the normal rows (``is_anomaly`` False, when
the column exists). They are shuffled (seeded by ``training.seed``) and split: a random
``calibration.calibration_fraction`` is held out and never fitted on (the threshold is
fitted there); of the rest, ``training.val_fraction`` drives early stopping (baselines fit
on it too) and the remainder fits the
:class:`~ae_anomaly.data.netflow_features.NetflowFeaturePipeline` (log1p, robust scaling,
one-hot categories with an unseen-category bucket) and the error function. Transformed
features are clipped to ``[-clip, clip]``: robust scaling of a rare 0/1 column (IQR 0, tiny
standard deviation) can otherwise give values in the hundreds that dominate the loss.

Rows are independent, so the post-processing is the channel reduction only (no smoothing,
no trailing baseline: :func:`ae_anomaly.detectors.build_detector` sets that). Every flagged
row is one event whose entity is the description's entity key columns joined with ``|``
(the data set name when it has none), whose time is the flow's timestamp (the scoring time
when the data set has none), and whose key is the row's content hash, so re-scoring the same
flows gives the same events.

:class:`RowAutoencoder` is the row autoencoder: the network is built with ``window=1`` and
sees ``(N, F)`` rows; a row's per-feature errors are the network's element-wise errors.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import CalibrationConfig, PostprocessConfig, TrainingConfig
from ae_anomaly.data.netflow import IS_ANOMALY, NetflowDatasetConfig, row_entities, row_keys
from ae_anomaly.detectors.base import BaseDetector, EpochCallback, EventsPass, TrainingSplit
from ae_anomaly.errors import ConfigError, DataError
from ae_anomaly.events import Event

DEFAULT_CLIP = 20.0


def normal_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose ``is_anomaly`` is False (all rows when the column is absent)."""
    if IS_ANOMALY not in frame.columns:
        return frame
    return frame[~frame[IS_ANOMALY].to_numpy(dtype=bool)]


class RowDetector(BaseDetector):
    """The network-flow row layout shared by the row autoencoders and the row baselines.

    Args:
        model: the model section (``model.name`` picks the error function).
        dataset: the flow data set description (numeric, categorical, log1p columns).
        training: training-loop settings (its seed seeds the split too).
        calibration: threshold rule settings and the held-out calibration share.
        postprocess: the channel reduction (rows are never smoothed).
        max_categories: most frequent training categories kept per categorical column.
        clip: transformed features are clipped to ``[-clip, clip]``; None for no clipping.
    """

    sample_unit = "row"

    def __init__(
        self,
        model: Any,
        dataset: NetflowDatasetConfig | None = None,
        training: TrainingConfig | None = None,
        calibration: CalibrationConfig | None = None,
        postprocess: PostprocessConfig | None = None,
        max_categories: int = 50,
        clip: float | None = DEFAULT_CLIP,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.training = training or TrainingConfig()
        self.calibration = calibration or CalibrationConfig()
        self.postprocess = postprocess or PostprocessConfig()
        self.max_categories = max_categories
        self.clip = clip

    # ------------------------------------------------------------------ fitting
    def _steps_per_day(self, frame: pd.DataFrame) -> float | None:
        ts = self.dataset.timestamp if self.dataset else None
        rows = normal_rows(frame)
        if ts is None or ts not in rows.columns or len(rows) < 2:
            return None
        times = pd.to_datetime(rows[ts])
        days = (times.max() - times.min()) / pd.Timedelta(days=1)
        return float(len(rows) / days) if days > 0 else None

    def _split(self, frame: pd.DataFrame) -> TrainingSplit:
        if self.dataset is None:
            raise ConfigError(f"{type(self).__name__} needs a flow data set description "
                              "(dataset=)")
        pp = self.postprocess
        if pp.smooth > 1 or pp.baseline_window or pp.errors != "overlap":
            raise ConfigError("rows are scored independently: postprocess.smooth must be 1, "
                              "baseline_window 0 and errors 'overlap' for network-flow rows")
        rows = normal_rows(frame).reset_index(drop=True)
        n = len(rows)
        if n == 0:
            raise DataError("no normal rows to train on (every row is labelled anomalous)")
        perm = np.random.default_rng(self.training.seed).permutation(n)
        n_cal = int(round(n * self.calibration.calibration_fraction))
        n_val = int(round((n - n_cal) * self.training.val_fraction))
        n_fit = n - n_cal - n_val
        if n_cal < 1 or n_fit < 2:
            raise DataError(
                f"{n} normal training rows are too few to split into fit and calibration rows "
                f"(calibration_fraction {self.calibration.calibration_fraction:g})"
            )
        fit, val, cal = (np.sort(perm[:n_fit]), np.sort(perm[n_fit:n_fit + n_val]),
                         np.sort(perm[n_fit + n_val:]))
        return TrainingSplit(fit=[rows.iloc[fit]], val=[rows.iloc[val]], cal=[rows.iloc[cal]],
                             fit_all=[rows.iloc[np.sort(perm[:n_fit + n_val])]],
                             fit_ts=[None], val_ts=[None], cal_ts=[None], fit_all_ts=[None],
                             entities=[None])

    def _fit_preprocessing(self, split: TrainingSplit) -> None:
        from ae_anomaly.data.netflow_features import NetflowFeaturePipeline

        assert self.dataset is not None
        self.pipeline_ = NetflowFeaturePipeline.from_dataset(self.dataset, self.max_categories)
        self.pipeline_.fit(split.fit[0])
        if self.pipeline_.n_features == 0:
            raise DataError("every feature column is constant in the training rows")
        self.feature_names_ = list(self.pipeline_.feature_names_)

    def _fingerprint(self, frame: pd.DataFrame, split: TrainingSplit) -> str:
        x = np.ascontiguousarray(self.transform(split.fit[0]))
        return hashlib.sha256(x.tobytes()).hexdigest()[:16]

    def transform(self, part: Any) -> np.ndarray:
        """Flow rows to the clipped features ``(N, F)``.

        Raises:
            DataError: a feature column is missing or a numeric value is not a number.
        """
        x = self.pipeline_.transform(part)
        if self.clip is not None:
            np.clip(x, -self.clip, self.clip, out=x)
        return x

    # ------------------------------------------------------------------ scoring
    def _groups(self, frame: pd.DataFrame) -> dict[str | None, np.ndarray]:
        return {None: np.arange(len(frame))}

    def _group_inputs(self, frame: pd.DataFrame, idx: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.transform(frame.iloc[idx] if len(idx) != len(frame) else frame), None

    def find_events(self, frame: pd.DataFrame, events_cfg: Any = None,
                    batch_size: int = 4096, scored_at: datetime | None = None) -> EventsPass:
        """One event per flagged flow (the ``events`` rules do not apply to rows).

        Raises:
            DataError: a feature column is missing or a numeric value is not a number.
        """
        assert self.dataset is not None
        ds = self.dataset
        scores, ch = self.score_channels(frame, batch_size)
        flagged = scores > self.threshold_
        entities = row_entities(frame, ds)
        rows = np.flatnonzero(flagged)
        if ds.timestamp is not None and ds.timestamp in frame.columns:
            # the anomaly table keeps microseconds
            stamps = pd.to_datetime(frame[ds.timestamp]).to_numpy().astype("datetime64[us]")
        else:
            at = scored_at or datetime.now(UTC).replace(tzinfo=None)
            stamps = np.full(len(frame), np.datetime64(at, "us"))
        p = self.p_values(scores[rows]) if len(rows) else np.empty(0)
        keys = row_keys(frame, ds, rows) if len(rows) else []
        out = EventsPass()
        out.events = [
            Event(entity=str(entities[i]), start_idx=int(i), end_idx=int(i), peak_idx=int(i),
                  start_ts=stamps[i], end_ts=stamps[i], peak_ts=stamps[i],
                  peak_score=float(scores[i]), n_flagged=1, channel_error=ch[i],
                  min_p_value=float(p[j]), key=keys[j])
            for j, i in enumerate(rows.tolist())
        ]
        uniq, inv = np.unique(entities.astype(str), return_inverse=True)
        counts = np.bincount(inv, minlength=len(uniq))
        flags = np.bincount(inv, weights=flagged, minlength=len(uniq))
        for k, ent in enumerate(uniq.tolist()):
            out.steps[ent], out.flagged[ent] = int(counts[k]), int(flags[k])
        return out

    # ------------------------------------------------------------------ persistence
    def _layout_state(self) -> dict[str, Any]:
        assert self.dataset is not None
        return {"dataset": self.dataset.model_dump(mode="json"),
                "max_categories": self.max_categories, "clip": self.clip,
                "pipeline": self.pipeline_.to_dict()}

    @classmethod
    def _from_layout(cls, d: dict[str, Any]) -> RowDetector:
        from ae_anomaly.config import model_config
        from ae_anomaly.data.netflow_features import NetflowFeaturePipeline

        det = cls(
            model_config(d["model"]),
            NetflowDatasetConfig.model_validate(d["dataset"]),
            TrainingConfig(**d["training"]),
            CalibrationConfig(**d["calibration"]),
            PostprocessConfig(**d.get("postprocess", {})),
            d["max_categories"],
            d["clip"],
        )
        det._load_common(d)
        det.pipeline_ = NetflowFeaturePipeline.from_dict(d["pipeline"])
        return det


class RowAutoencoder(RowDetector):
    """A row autoencoder for flow records, with a threshold fitted on held-out rows."""

    kind = "row_autoencoder"

    def _fit_errors(self, split: TrainingSplit, on_epoch: EpochCallback | None) -> None:
        import torch

        from ae_anomaly.models import build_model
        from ae_anomaly.training import train_network

        train = torch.from_numpy(self.transform(split.fit[0]))
        val = torch.from_numpy(self.transform(split.val[0])) if len(split.val[0]) else None
        self.network_ = build_model(self.model, n_channels=len(self.feature_names_), window=1)
        self.history_ = train_network(self.network_, train, val, self.training,
                                      on_epoch=on_epoch, desc=f"train {self.model.name}")
        self.network_.eval()
        self.network_.post_fit(train)  # latent statistics, a mixture on the codes (vae, rae)
        self.n_train_samples_ = int(len(train))

    def errors(self, x: np.ndarray, batch_size: int = 4096,
               timestamps: np.ndarray | None = None,
               entity: str | None = None) -> np.ndarray:
        """Per-feature errors ``(N, F)`` of transformed rows, in chunks."""
        import torch

        n = len(x)
        out = np.empty((n, x.shape[1]), dtype=np.float64)
        net = self.network_
        dev = next(net.parameters()).device
        net.eval()
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(dev)
                err = net.errors(xb, net(xb))
                out[i:i + len(xb)] = err.reshape(len(xb), -1).to("cpu", torch.float64).numpy()
        return out

    def _state(self) -> dict[str, Any]:
        return self._layout_state()

    def _save_weights(self, folder: Path) -> None:
        import torch

        torch.save(self.network_.state_dict(), folder / "weights.pt")

    @classmethod
    def from_saved(cls, d: dict[str, Any], folder: Path) -> RowAutoencoder:
        import torch

        from ae_anomaly.models import build_model
        from ae_anomaly.training import resolve_device

        det = cls._from_layout(d)
        assert isinstance(det, RowAutoencoder)
        det.network_ = build_model(det.model, n_channels=len(det.feature_names_), window=1)
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.to(resolve_device(det.training.device)).eval()
        return det
