"""What every saved detector records besides its state: package versions and the training
history (the folder itself is written by :meth:`ae_anomaly.detectors.BaseDetector.save`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ae_anomaly.training import TrainHistory


def package_versions() -> dict[str, str]:
    """Versions of the packages a saved model depends on (recorded in ``config.json``)."""
    out = {}
    for pkg in ("ae-anomaly", "torch", "numpy", "pandas", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def history_to_dict(h: TrainHistory) -> dict[str, Any]:
    """The JSON form of a training history."""
    return {"train_loss": h.train_loss, "val_loss": h.val_loss, "best_epoch": h.best_epoch,
            "seconds": h.seconds}


def history_from_dict(d: dict[str, Any]) -> TrainHistory:
    """Inverse of :func:`history_to_dict`."""
    return TrainHistory(d["train_loss"], d["val_loss"], d["best_epoch"], d["seconds"])
