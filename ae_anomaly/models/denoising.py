"""Denoising autoencoder: corrupted input in training, clean target, clean input in scoring."""

from __future__ import annotations

import torch

from ae_anomaly.config import DenoisingAEConfig
from ae_anomaly.models.backbone import build_backbone
from ae_anomaly.models.base import AEOutput, AutoEncoder
from ae_anomaly.models.registry import register


class DenoisingAE(AutoEncoder):
    """Wraps the conv or dense network; corrupts its input in training mode only.

    Corruption: additive Gaussian noise (``noise_std``) and masking (each element set to 0,
    the training mean of standardised data, with probability ``mask_prob``). ``loss``
    compares the reconstruction with the clean input the training loop passes.
    """

    def __init__(self, cfg: DenoisingAEConfig, n_channels: int, window: int) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        self.noise_std = cfg.noise_std
        self.mask_prob = cfg.mask_prob
        self.net = build_backbone(cfg, n_channels, window)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of ``x`` (noise, then masking)."""
        out = x
        if self.noise_std > 0:
            out = out + self.noise_std * torch.randn_like(x)
        if self.mask_prob > 0:
            out = out * (torch.rand_like(x) >= self.mask_prob)
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.net.decode(code)

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encode(self.corrupt(x) if self.training else x)
        return AEOutput(recon=self.decode(code), code=code)


@register("denoising")
def build_denoising(cfg: DenoisingAEConfig, n_channels: int, window: int) -> DenoisingAE:
    """Registry builder for :class:`DenoisingAE`."""
    return DenoisingAE(cfg, n_channels, window)
