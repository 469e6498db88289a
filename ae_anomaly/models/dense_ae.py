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
    """Input of any shape (B, ...) is flattened, encoded, decoded and reshaped back."""

    def __init__(self, cfg: DenseAEConfig, n_channels: int, window: int) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        n_in = n_channels * window
        self.encoder = mlp([n_in, *cfg.hidden, cfg.latent_dim], cfg.dropout, False)
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), n_in], cfg.dropout, False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        out = self.decoder(code)
        shape = (self.n_channels,) if self.window == 1 else (self.n_channels, self.window)
        return out.view(-1, *shape)


@register("dense_ae")
def build_dense_ae(cfg: DenseAEConfig, n_channels: int, window: int) -> DenseAE:
    """Registry builder for :class:`DenseAE`."""
    return DenseAE(cfg, n_channels, window)
