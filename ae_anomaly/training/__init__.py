"""The one training loop shared by every network.

Imported lazily: :class:`TrainHistory` (``training.history``) needs no torch, so loading a
saved detector's record, or a command that needs no model, does not import torch.
"""

from __future__ import annotations

from typing import Any

from ae_anomaly.training.history import TrainHistory

__all__ = ["TrainHistory", "resolve_device", "seed_everything", "train_network"]

_LOOP = {"resolve_device", "seed_everything", "train_network"}


def __getattr__(name: str) -> Any:
    if name in _LOOP:
        from ae_anomaly.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'ae_anomaly.training' has no attribute '{name}'")
