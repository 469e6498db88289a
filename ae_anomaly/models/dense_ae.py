"""Fully connected autoencoder for tabular rows (flows) or flattened windows."""

from __future__ import annotations

import torch
from torch import nn

from ae_anomaly.config import DenseAEConfig
from ae_anomaly.models.base import AutoEncoder
from ae_anomaly.models.registry import register


def mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    """Linear layers with GELU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class DenseAE(AutoEncoder):
    """Input of any shape (B, ...) is flattened, encoded, decoded and reshaped back.

    As a backbone (see :class:`~ae_anomaly.models.conv_ae.ConvAE`): ``enc_extra`` features
    are concatenated to the flattened input, the encoder has ``code_out`` outputs and the
    decoder ``code_in`` inputs (both default to ``latent_dim``).
    """

    def __init__(self, cfg: DenseAEConfig, n_channels: int, window: int, *, enc_extra: int = 0,
                 code_out: int | None = None, code_in: int | None = None) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        n_in = n_channels * window
        self.encoder = mlp([n_in + enc_extra, *cfg.hidden, code_out or cfg.latent_dim],
                           cfg.dropout, False)
        self.decoder = mlp([code_in or cfg.latent_dim, *reversed(cfg.hidden), n_in],
                           cfg.dropout, False)

    def encode(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        return self.encoder(h if extra is None else torch.cat([h, extra], dim=1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        out = self.decoder(code)
        shape = (self.n_channels,) if self.window == 1 else (self.n_channels, self.window)
        return out.view(-1, *shape)


@register("dense_ae")
def build_dense_ae(cfg: DenseAEConfig, n_channels: int, window: int) -> DenseAE:
    """Registry builder for :class:`DenseAE`."""
    return DenseAE(cfg, n_channels, window)
