"""Variational autoencoder (and beta-VAE): ELBO, reconstruction-probability, latent scores."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from ae_anomaly.config import VAEConfig
from ae_anomaly.models.backbone import build_backbone
from ae_anomaly.models.base import (
    AEOutput,
    AutoEncoder,
    Samples,
    broadcast_per_sample,
    iter_batches,
)
from ae_anomaly.models.registry import register

LOG_2PI = math.log(2 * math.pi)
LOGVAR_RANGE = (-10.0, 10.0)
LOG_SIGMA_RANGE = (-5.0, 3.0)
MC_SEED = 0
POST_FIT_BATCH = 1024


class VAE(AutoEncoder):
    """A Gaussian VAE on the conv or dense network, optionally conditioned on a context.

    The encoder outputs the posterior mean and log-variance; the decoder gives the mean of a
    Gaussian likelihood whose standard deviation is a learned parameter per channel, so the
    balance between reconstruction and KL does not hinge on the data's scale. In eval mode
    the forward pass decodes the posterior mean (deterministic).

    After training, :meth:`post_fit` fits the mean and a Ledoit-Wolf shrunk covariance of the
    posterior means of the training windows (buffers ``latent_mean``, ``latent_precision``),
    used by the encoder-only ``latent`` score.

    Args:
        cfg: the VAE options (see :class:`~ae_anomaly.config.VAEConfig`).
        n_channels: input channels or features.
        window: window length (1 for tabular rows).
        context_dim: size of the context vector given to encoder and decoder (0: none).
    """

    def __init__(self, cfg: VAEConfig, n_channels: int, window: int,
                 context_dim: int = 0) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        d = cfg.latent_dim
        self.latent_dim = d
        self.beta = cfg.beta
        self.score = cfg.score
        self.mc_samples = cfg.mc_samples
        self.context_dim = context_dim
        self.net = build_backbone(cfg, n_channels, window, enc_extra=context_dim,
                                  code_out=2 * d, code_in=d + context_dim)
        self.log_sigma = nn.Parameter(torch.zeros(n_channels))
        # One sigma per channel, broadcast over the time axis of windows.
        self._sigma_shape = (n_channels,) if window == 1 else (n_channels, 1)
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_precision", torch.eye(d))

    # ------------------------------------------------------------------ the network
    def posterior(self, x: torch.Tensor, context: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and (clamped) log-variance, each (B, latent_dim)."""
        mu, logvar = self.net.encode(x, context).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.posterior(x, context)[0]

    def decode(self, code: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.decode(code if context is None else torch.cat([code, context], dim=1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> AEOutput:
        mu, logvar = self.posterior(x, context)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return AEOutput(recon=self.decode(z, context), code=mu, mu=mu, logvar=logvar,
                        context=context)

    # ------------------------------------------------------------------ objective
    def nll(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Element-wise Gaussian negative log-likelihood of ``x`` given the decoder mean."""
        log_sigma = self.log_sigma.clamp(*LOG_SIGMA_RANGE).view(self._sigma_shape)
        return 0.5 * ((x - recon) * torch.exp(-log_sigma)) ** 2 + log_sigma + 0.5 * LOG_2PI

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL divergence of N(mu, exp(logvar)) from N(0, I), per sample (B,)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)

    def loss(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Negative ELBO per element (NLL mean + beta * KL / elements) plus L1 activity."""
        assert out.mu is not None and out.logvar is not None
        kl = self.kl(out.mu, out.logvar).mean() / x[0].numel()
        return (self.nll(x, out.recon).mean() + self.beta * kl
                + self.activity_penalty(out.mu))

    # ------------------------------------------------------------------ scores
    def errors(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Element-wise evidence for the configured ``score`` (same shape as ``x``)."""
        assert out.mu is not None and out.logvar is not None
        if self.score == "latent":
            return broadcast_per_sample(self.latent_score(out.mu), x)
        if self.score == "recon_prob":
            return self.recon_prob_nll(x, out)
        kl = self.kl(out.mu, out.logvar) / x[0].numel()
        return self.nll(x, out.recon) + broadcast_per_sample(kl, x)

    def latent_score(self, mu: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of posterior means under the training latent
        distribution, divided by ``latent_dim`` (about 1 on normal data), per sample (B,)."""
        diff = mu - self.latent_mean
        return (diff @ self.latent_precision * diff).sum(dim=1) / self.latent_dim

    def recon_prob_nll(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """``-log`` of each element's likelihood averaged over ``mc_samples`` posterior draws.

        The standard-normal draws are the same for every window (a fixed seed), so a window's
        score does not depend on the batch it is scored in and repeated calls agree.
        """
        assert out.mu is not None and out.logvar is not None
        s, (b, d) = self.mc_samples, out.mu.shape
        eps = torch.randn(s, d, generator=torch.Generator().manual_seed(MC_SEED))
        eps = eps.to(out.mu.device, out.mu.dtype)
        z = out.mu[None] + torch.exp(0.5 * out.logvar)[None] * eps[:, None, :]  # (S, B, d)
        ctx = None if out.context is None else out.context.repeat(s, 1)
        recon = self.decode(z.reshape(s * b, d), ctx).view(s, *x.shape)
        log_lik = -self.nll(x[None], recon)  # (S, B, ...)
        return -(torch.logsumexp(log_lik, dim=0) - math.log(s))

    # ------------------------------------------------------------------ post-fit, sampling
    @torch.no_grad()
    def post_fit(self, train: Samples) -> None:
        """Fit the training latent distribution (mean, shrunk precision) into buffers."""
        self.eval()
        dev = self.latent_mean.device
        mus = [self.posterior(*batch)[0].cpu()
               for batch in iter_batches(train, POST_FIT_BATCH, dev)]
        if not mus or sum(len(m) for m in mus) < 2:
            return
        mu = torch.cat(mus).double().numpy()
        lw = LedoitWolf().fit(mu)
        self.latent_mean.copy_(torch.as_tensor(lw.location_))
        self.latent_precision.copy_(torch.as_tensor(np.asarray(lw.precision_)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` codes drawn from the prior N(0, I): ``n`` new (scaled) samples."""
        if self.context_dim:
            raise NotImplementedError("a conditional VAE samples given a context")
        self.eval()
        z = torch.randn(n, self.latent_dim, generator=generator)
        return self.decode(z.to(self.latent_mean.device))


@register("vae")
def build_vae(cfg: VAEConfig, n_channels: int, window: int) -> VAE:
    """Registry builder for :class:`VAE`."""
    return VAE(cfg, n_channels, window)
