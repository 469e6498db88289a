"""1D-convolutional autoencoder over (batch, channels, window) tensors."""

from __future__ import annotations

import torch
from torch import nn

from ae_anomaly.config import ConvAEConfig
from ae_anomaly.models.base import AutoEncoder
from ae_anomaly.models.registry import register


class ConvAE(AutoEncoder):
    """Strided Conv1d blocks down to a dense bottleneck, mirrored by transposed convolutions.

    Each encoder block halves the time axis (stride 2); the decoder's output padding is
    chosen so the reconstruction has exactly the input's length.

    The keyword arguments let other families reuse this architecture as a backbone:
    ``enc_extra`` features (a context vector) are concatenated to the flattened convolution
    features before the code layer, which has ``code_out`` outputs (e.g. mean and
    log-variance); the decoder takes a ``code_in``-dimensional input (e.g. code + context).
    Both default to ``latent_dim``.
    """

    def __init__(self, cfg: ConvAEConfig, n_channels: int, window: int, *, enc_extra: int = 0,
                 code_out: int | None = None, code_in: int | None = None) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        k, pad = cfg.kernel_size, cfg.kernel_size // 2
        lengths = [window]
        enc: list[nn.Module] = []
        c_in = n_channels
        for c in cfg.channels:
            enc += [nn.Conv1d(c_in, c, k, stride=2, padding=pad), nn.GELU(),
                    nn.Dropout(cfg.dropout)]
            lengths.append((lengths[-1] + 2 * pad - k) // 2 + 1)
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self._shape = (c_in, lengths[-1])
        flat = c_in * lengths[-1]
        self.to_code = nn.Linear(flat + enc_extra, code_out or cfg.latent_dim)
        self.from_code = nn.Linear(code_in or cfg.latent_dim, flat)
        dec: list[nn.Module] = []
        chans = list(reversed(cfg.channels))
        for i, c in enumerate(chans):
            c_out = chans[i + 1] if i + 1 < len(chans) else chans[-1]
            l_in, l_target = lengths[-1 - i], lengths[-2 - i]
            out_pad = l_target - ((l_in - 1) * 2 - 2 * pad + k)
            dec += [nn.ConvTranspose1d(c, c_out, k, stride=2, padding=pad,
                                       output_padding=out_pad), nn.GELU()]
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv1d(chans[-1], n_channels, 1)

    def encode(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(x).flatten(1)
        return self.to_code(h if extra is None else torch.cat([h, extra], dim=1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        h = self.from_code(code).view(-1, *self._shape)
        return self.head(self.decoder(h))


@register("conv_ae")
def build_conv_ae(cfg: ConvAEConfig, n_channels: int, window: int) -> ConvAE:
    """Registry builder for :class:`ConvAE`."""
    return ConvAE(cfg, n_channels, window)
