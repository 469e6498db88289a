"""The conv or dense architecture as a backbone for the families that wrap one."""

from __future__ import annotations

from typing import Any

from ae_anomaly.config import ConvAEConfig, DenseAEConfig
from ae_anomaly.errors import ConfigError
from ae_anomaly.models.conv_ae import ConvAE
from ae_anomaly.models.dense_ae import DenseAE


def build_backbone(
    cfg: Any,
    n_channels: int,
    window: int,
    *,
    enc_extra: int = 0,
    code_out: int | None = None,
    code_in: int | None = None,
) -> ConvAE | DenseAE:
    """Build the ``cfg.arch`` network (``conv`` or ``dense``) with the shared AE options.

    Args:
        cfg: a config with ``arch``, ``latent_dim``, ``dropout``, ``channels``,
            ``kernel_size`` and ``hidden``.
        n_channels: input channels or features.
        window: window length (1 for tabular rows).
        enc_extra: extra encoder inputs (a context vector).
        code_out: encoder outputs (default ``latent_dim``).
        code_in: decoder inputs (default ``latent_dim``).

    Raises:
        ConfigError: ``arch: conv`` on tabular rows (window 1).
    """
    dims = {"enc_extra": enc_extra, "code_out": code_out, "code_in": code_in}
    if cfg.arch == "conv":
        if window == 1:
            raise ConfigError(f"model '{cfg.name}': arch 'conv' needs windows; use "
                              "arch: dense for tabular rows")
        conv = ConvAEConfig(latent_dim=cfg.latent_dim, dropout=cfg.dropout,
                            channels=cfg.channels, kernel_size=cfg.kernel_size)
        return ConvAE(conv, n_channels, window, **dims)
    dense = DenseAEConfig(latent_dim=cfg.latent_dim, dropout=cfg.dropout, hidden=cfg.hidden)
    return DenseAE(dense, n_channels, window, **dims)
