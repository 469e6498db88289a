"""Detectors: one contract (:class:`BaseDetector`) for every kind, one factory, one loader.

- :class:`AutoencoderDetector`: time series (windows) x an autoencoder (``conv_ae``,
  ``dense_ae``, ``denoising``, ``contractive``, ``vae``, ``rae``, ``cvae``);
- :class:`SeriesBaseline`: time series x PCA / IsolationForest / random (``pca``,
  ``iforest``, ``random``);
- :class:`RowAutoencoder`: network-flow rows x an autoencoder (the dense families);
- :class:`RowBaseline`: network-flow rows x PCA / IsolationForest / random.

:func:`build_detector` and :func:`load_detector` are the only places that look at the kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ae_anomaly.config import BASELINE_NAMES, AppConfig
from ae_anomaly.detectors.base import FORMAT_VERSION, BaseDetector, EventsPass, TrainingSplit
from ae_anomaly.detectors.baselines import RowBaseline, SeriesBaseline
from ae_anomaly.detectors.rows import RowAutoencoder, RowDetector, normal_rows
from ae_anomaly.detectors.series import AutoencoderDetector, SeriesDetector, steps_per_day
from ae_anomaly.errors import AeAnomalyError

__all__ = [
    "AutoencoderDetector",
    "BaseDetector",
    "EventsPass",
    "RowAutoencoder",
    "RowBaseline",
    "RowDetector",
    "SeriesBaseline",
    "SeriesDetector",
    "TrainingSplit",
    "build_detector",
    "detector_kinds",
    "load_detector",
    "normal_rows",
    "steps_per_day",
]

_KINDS: dict[str, type[BaseDetector]] = {
    cls.kind: cls for cls in (AutoencoderDetector, SeriesBaseline, RowAutoencoder, RowBaseline)
}


def detector_kinds() -> list[str]:
    """The saved ``kind`` of every detector class."""
    return sorted(_KINDS)


def build_detector(cfg: AppConfig, dataset: Any = None) -> BaseDetector:
    """An unfitted detector for a configuration.

    ``model.name`` picks the error function (an autoencoder family or a baseline); the data
    picks the layout: network-flow rows when ``data.netflow`` is set with
    ``data.netflow_mode: rows`` (the description is loaded unless ``dataset`` is given),
    time series otherwise (metrics, or flows aggregated per host).

    Raises:
        ConfigError: the flow description is missing or invalid.
    """
    is_baseline = cfg.model.name in BASELINE_NAMES
    if cfg.data.netflow and cfg.data.netflow_mode == "rows":
        from ae_anomaly.data.netflow import load_netflow_dataset

        # rows are independent samples: only the channel reduction applies
        pp = cfg.postprocess.model_copy(update={"smooth": 1, "baseline_window": 0,
                                                "errors": "overlap"})
        cls: type[RowDetector] = RowBaseline if is_baseline else RowAutoencoder
        return cls(cfg.model, dataset or load_netflow_dataset(cfg.data), cfg.training,
                   cfg.calibration, pp, cfg.data.netflow_max_categories,
                   clip=cfg.preprocess.clip)
    series: type[SeriesDetector] = SeriesBaseline if is_baseline else AutoencoderDetector
    return series(cfg.model, cfg.window, cfg.preprocess, cfg.training, cfg.calibration,
                  cfg.postprocess)


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """Read a format-1 ``config.json`` (before the one contract) as format 2."""
    d = dict(d)
    kind = d.get("kind")
    d["kind"] = "row_autoencoder" if kind == "tabular" else "series_autoencoder"
    d["n_train_samples"] = d.get("n_train_windows", d.get("n_train_rows", 0))
    if d["kind"] == "row_autoencoder":
        d.setdefault("postprocess", {})
    d["format_version"] = FORMAT_VERSION
    return d


def load_detector(path: str | Path) -> BaseDetector:
    """Load any detector saved by :meth:`BaseDetector.save` (no pickled objects).

    Raises:
        AeAnomalyError: the folder holds no saved detector, or one of an unknown format.
    """
    p = Path(path)
    try:
        d = json.loads((p / "config.json").read_text())
    except FileNotFoundError:
        raise AeAnomalyError(f"{p}: not a saved detector (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AeAnomalyError(f"{p}: config.json is not valid JSON ({exc})") from None
    if d.get("format_version") == 1:
        d = _upgrade(d)
    if d.get("format_version") != FORMAT_VERSION or d.get("kind") not in _KINDS:
        raise AeAnomalyError(f"{p}: unsupported detector (format {d.get('format_version')!r}, "
                             f"kind {d.get('kind')!r}); kinds: {', '.join(detector_kinds())}")
    try:
        return _KINDS[d["kind"]].from_saved(d, p)
    except (KeyError, TypeError, ValueError) as exc:
        raise AeAnomalyError(f"{p}: saved detector is incomplete or invalid "
                             f"({type(exc).__name__}: {exc})") from None
