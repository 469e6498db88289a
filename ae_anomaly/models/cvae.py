"""Conditional VAE: encoder and decoder also see a context vector (time of day/week, entity)."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ae_anomaly.config import CVAEConfig
from ae_anomaly.models.base import AEOutput
from ae_anomaly.models.registry import register
from ae_anomaly.models.vae import VAE

SECONDS_PER_DAY = 86_400
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def time_context(timestamps: np.ndarray) -> np.ndarray:
    """Hour-of-day and day-of-week as sin/cos pairs, (T, 4) float32.

    Both phases are continuous (the day-of-week phase advances within a day), so midnight
    and Sunday-to-Monday are not discontinuities.
    """
    sec = np.asarray(timestamps, dtype="datetime64[s]").astype(np.int64)
    day = (sec % SECONDS_PER_DAY) / SECONDS_PER_DAY
    week = ((sec / SECONDS_PER_DAY + EPOCH_WEEKDAY) % 7) / 7
    a, b = 2 * np.pi * day, 2 * np.pi * week
    return np.column_stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)]).astype(np.float32)


def entity_bucket(entity: str, buckets: int) -> int:
    """A stable bucket for an entity name (CRC32, the same in every process)."""
    return zlib.crc32(entity.encode("utf-8")) % buckets


class CVAE(VAE):
    """A :class:`~ae_anomaly.models.vae.VAE` whose encoder and decoder take a context.

    The context of a window is the feature vector of its last step (the detector picks it
    from :meth:`context_features`): the 4 time features when ``time_features``, then a
    one-hot of the hashed entity in ``entity_buckets`` slots (all zeros for an unknown
    entity). The encoder concatenates it to its flattened features, the decoder to the code.
    """

    needs_context = True

    def __init__(self, cfg: CVAEConfig, n_channels: int, window: int) -> None:
        self.time_features = cfg.time_features
        self.entity_buckets = cfg.entity_buckets
        super().__init__(cfg, n_channels, window,
                         context_dim=4 * int(cfg.time_features) + cfg.entity_buckets)

    def context_features(self, timestamps: np.ndarray, entity: str | None) -> np.ndarray:
        """Per-step context ``(T, context_dim)`` float32 for one entity's series."""
        t = len(timestamps)
        parts = []
        if self.time_features:
            parts.append(time_context(timestamps))
        if self.entity_buckets:
            onehot = np.zeros((t, self.entity_buckets), dtype=np.float32)
            if entity is not None:
                onehot[:, entity_bucket(str(entity), self.entity_buckets)] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> AEOutput:
        if context is None:
            raise ValueError("cvae needs a context tensor: call model(x, context)")
        return super().forward(x, context)


@register("cvae")
def build_cvae(cfg: CVAEConfig, n_channels: int, window: int) -> CVAE:
    """Registry builder for :class:`CVAE`."""
    return CVAE(cfg, n_channels, window)
