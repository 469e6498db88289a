"""What every saved detector folder shares: readable ``config.json`` + ``weights.pt``."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def save_folder(path: str | Path, state: dict[str, Any], network: nn.Module) -> Path:
    """Write ``config.json`` (the readable state) and ``weights.pt`` (the state_dict)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    (p / "config.json").write_text(json.dumps(state, indent=1))
    torch.save(network.state_dict(), p / "weights.pt")
    return p
