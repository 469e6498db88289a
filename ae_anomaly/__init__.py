"""ae-anomaly: autoencoder anomaly detection for server metrics and network flows.

The public API, for a notebook or a script (imported lazily: ``import ae_anomaly`` loads
neither torch nor MLflow nor Prefect; each name imports its module on first use)::

    import ae_anomaly as aa

    cfg = aa.load_config("configs/demo.yaml", ["training.epochs=2"])
    det = aa.build_detector(cfg).fit(train_frame)
    scores, flags = det.score(new_frame), det.predict(new_frame)
    det.save("my-detector"); det = aa.load_detector("my-detector")

    trained = aa.train_and_register(cfg)   # MLflow run, registered model version
    scored = aa.score_into_sink(cfg)       # champion -> events in the anomaly table

See docs/api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ae_anomaly.api import ScoreSummary, TrainResult, score_into_sink, train_and_register
    from ae_anomaly.config import AppConfig, load_config
    from ae_anomaly.data.synthetic import generate_server_metrics
    from ae_anomaly.detectors import BaseDetector, build_detector, load_detector

# Public name -> "module:attribute", imported on first access (PEP 562).
_EXPORTS: dict[str, str] = {
    "AppConfig": "ae_anomaly.config:AppConfig",
    "load_config": "ae_anomaly.config:load_config",
    "BaseDetector": "ae_anomaly.detectors:BaseDetector",
    "build_detector": "ae_anomaly.detectors:build_detector",
    "load_detector": "ae_anomaly.detectors:load_detector",
    "train_and_register": "ae_anomaly.api:train_and_register",
    "score_into_sink": "ae_anomaly.api:score_into_sink",
    "TrainResult": "ae_anomaly.api:TrainResult",
    "ScoreSummary": "ae_anomaly.api:ScoreSummary",
    "generate_server_metrics": "ae_anomaly.data.synthetic:generate_server_metrics",
}

__all__ = [
    "AppConfig",
    "BaseDetector",
    "ScoreSummary",
    "TrainResult",
    "__version__",
    "build_detector",
    "generate_server_metrics",
    "load_config",
    "load_detector",
    "score_into_sink",
    "train_and_register",
]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ae-anomaly")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _package_version()
    elif name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'ae_anomaly' has no attribute '{name}'")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
