"""Regularised (deterministic) autoencoder with an ex-post Gaussian mixture on the codes."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from ae_anomaly.config import RAEConfig
from ae_anomaly.models.backbone import build_backbone
from ae_anomaly.models.base import (
    AEOutput,
    AutoEncoder,
    Samples,
    broadcast_per_sample,
    iter_batches,
)
from ae_anomaly.models.registry import register

log = logging.getLogger(__name__)

LOG_2PI = math.log(2 * math.pi)
GMM_SEED = 0
GMM_REG_COVAR = 1e-6
POST_FIT_BATCH = 1024


class RAE(AutoEncoder):
    """RAE (Ghosh et al. 2020) on the conv or dense network, with a mixture density on codes.

    Loss: MSE + ``latent_l2 * mean(||z||^2 / 2)`` + the L1 activity penalty (weight decay
    from ``training.weight_decay``). :meth:`post_fit` fits a full-covariance Gaussian mixture
    (scikit-learn) on the training codes and stores it in buffers: ``gmm_means`` (K, d),
    ``gmm_prec_chol`` (K, d, d; sklearn's upper-triangular Cholesky factors U of the
    precisions, P = U U^T), ``gmm_log_weights`` (K,; ``-inf`` for unused components) and
    ``latent_nll_offset`` (the mean training negative log-density). The log-density is
    computed in torch, so scoring needs no scikit-learn object.

    Element-wise score: ``(x - x_hat)^2 + latent_weight * (-log p(z) - offset) / d``; see
    :class:`~ae_anomaly.config.RAEConfig`.
    """

    def __init__(self, cfg: RAEConfig, n_channels: int, window: int) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        k, d = cfg.gmm_components, cfg.latent_dim
        self.latent_dim = d
        self.latent_l2 = cfg.latent_l2
        self.latent_weight = cfg.latent_weight
        self.net = build_backbone(cfg, n_channels, window)
        self.register_buffer("gmm_means", torch.zeros(k, d))
        self.register_buffer("gmm_prec_chol", torch.eye(d).repeat(k, 1, 1))
        self.register_buffer("gmm_log_weights", torch.full((k,), -math.log(k)))
        self.register_buffer("latent_nll_offset", torch.zeros(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.net.decode(code)

    def loss(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """MSE + activity penalty + ``latent_l2`` times half the squared code norm."""
        loss = super().loss(x, out)
        if self.latent_l2 > 0:
            loss = loss + self.latent_l2 * 0.5 * out.code.pow(2).sum(dim=1).mean()
        return loss

    # ------------------------------------------------------------------ latent density
    def latent_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of codes under the fitted mixture, (B,)."""
        diff = z[:, None, :] - self.gmm_means[None]  # (B, K, d)
        y = torch.einsum("bkd,kde->bke", diff, self.gmm_prec_chol)  # (diff^T U)
        log_det = torch.log(torch.diagonal(self.gmm_prec_chol, dim1=1, dim2=2)).sum(dim=1)
        comp = -0.5 * (self.latent_dim * LOG_2PI + y.pow(2).sum(dim=2)) + log_det
        return torch.logsumexp(comp + self.gmm_log_weights, dim=1)

    def latent_term(self, z: torch.Tensor) -> torch.Tensor:
        """``(-log p(z) - offset) / latent_dim`` per sample: nats per latent dimension above
        the training average."""
        return (-self.latent_log_density(z) - self.latent_nll_offset) / self.latent_dim

    def errors(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Squared error plus the weighted latent term, spread over the window's elements."""
        err = (out.recon - x) ** 2
        if self.latent_weight > 0:
            err = err + self.latent_weight * broadcast_per_sample(self.latent_term(out.code), x)
        return err

    @torch.no_grad()
    def post_fit(self, train: Samples) -> None:
        """Fit the Gaussian mixture on the training codes and store it in the buffers."""
        self.eval()
        dev = self.gmm_means.device
        codes = [self.encode(batch[0]).cpu() for batch in iter_batches(train, POST_FIT_BATCH,
                                                                         dev)]
        if not codes:
            return
        z = torch.cat(codes).double().numpy()
        k_max = len(self.gmm_log_weights)
        k = min(k_max, len(z))
        if k < k_max:
            log.warning("rae: %d training codes, fitting %d mixture components instead of %d",
                        len(z), k, k_max)
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=GMM_REG_COVAR,
                              random_state=GMM_SEED).fit(z)
        means = torch.zeros_like(self.gmm_means)
        chol = torch.eye(self.latent_dim).repeat(k_max, 1, 1)
        log_w = torch.full((k_max,), -math.inf)
        means[:k] = torch.as_tensor(gmm.means_)
        chol[:k] = torch.as_tensor(np.asarray(gmm.precisions_cholesky_))
        log_w[:k] = torch.log(torch.as_tensor(gmm.weights_))
        self.gmm_means.copy_(means)
        self.gmm_prec_chol.copy_(chol)
        self.gmm_log_weights.copy_(log_w)
        self.latent_nll_offset.zero_()
        nll = -self.latent_log_density(torch.as_tensor(z, dtype=self.gmm_means.dtype,
                                                       device=dev))
        self.latent_nll_offset.copy_(nll.mean())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` codes drawn from the fitted mixture: ``n`` new (scaled) samples."""
        self.eval()
        weights = torch.exp(self.gmm_log_weights).cpu()
        comp = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.latent_dim, 1, generator=generator)
        # z = m + U^-T eps has covariance (U U^T)^-1 = P^-1.
        u = self.gmm_prec_chol.cpu()[comp]  # (n, d, d)
        z = self.gmm_means.cpu()[comp] + torch.linalg.solve_triangular(
            u.transpose(1, 2), eps, upper=False).squeeze(-1)
        return self.decode(z.to(self.gmm_means.device))


@register("rae")
def build_rae(cfg: RAEConfig, n_channels: int, window: int) -> RAE:
    """Registry builder for :class:`RAE`."""
    return RAE(cfg, n_channels, window)
