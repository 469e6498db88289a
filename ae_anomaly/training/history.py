"""What a training run produced (importable without torch: saved detectors carry it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainHistory:
    """Per-epoch losses and where training stopped."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
