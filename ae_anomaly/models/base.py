"""The contract every network honours: a typed output, ``loss`` and ``errors``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AEOutput:
    """What a network returns.

    Attributes:
        recon: the reconstruction, same shape as the input.
        code: the latent code (for VAEs, the posterior mean).
        mu: posterior mean (VAEs only).
        logvar: posterior log-variance (VAEs only).
    """

    recon: torch.Tensor
    code: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None


class AutoEncoder(nn.Module):
    """Base class: subclasses build ``encode`` / ``decode``; training and scoring are shared.

    Args:
        n_channels: input channels (metrics) or features.
        window: window length in steps (1 for tabular rows).
        l1_activity: weight of the L1 penalty on the code (sparse activations).
    """

    def __init__(self, n_channels: int, window: int, l1_activity: float = 0.0) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.window = window
        self.l1_activity = l1_activity

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, code: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> AEOutput:
        code = self.encode(x)
        return AEOutput(recon=self.decode(code), code=code)

    def loss(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Training loss: mean squared reconstruction error plus the activity penalty."""
        loss = torch.mean((out.recon - x) ** 2)
        if self.l1_activity > 0:
            loss = loss + self.l1_activity * out.code.abs().mean()
        return loss

    def errors(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Element-wise anomaly evidence, same shape as ``x`` (squared error by default)."""
        return (out.recon - x) ** 2
