"""Contractive autoencoder: penalise the Frobenius norm of the encoder's Jacobian."""

from __future__ import annotations

import torch
from torch.func import vjp, vmap

from ae_anomaly.config import ContractiveAEConfig
from ae_anomaly.models.backbone import build_backbone
from ae_anomaly.models.base import AEOutput, AutoEncoder
from ae_anomaly.models.registry import register


class ContractiveAE(AutoEncoder):
    """Wraps the conv or dense network; training adds ``weight * mean_b ||J_b||_F^2``.

    ``J_b`` is the Jacobian of sample b's code with respect to sample b's input. Samples are
    independent, so one vector-Jacobian product with the same code-space vector ``u`` for
    every sample gives ``u^T J_b`` for all b at once; ``torch.func.vmap`` runs the products
    for a set of vectors in one vectorised pass: the identity basis (``exact``:
    ``||J||_F^2 = sum_k ||e_k^T J||^2``) or Rademacher vectors (``hutchinson``:
    ``E ||u^T J||^2 = ||J||_F^2``). The penalty is computed in the forward pass, from the
    same encoder evaluation (and dropout mask) as the code, when gradients are enabled in
    training mode; it is differentiable with respect to the weights.
    """

    def __init__(self, cfg: ContractiveAEConfig, n_channels: int, window: int) -> None:
        super().__init__(n_channels, window, cfg.l1_activity)
        self.weight = cfg.contractive_weight
        self.exact = cfg.jacobian == "exact"
        self.n_projections = cfg.n_projections
        self.net = build_backbone(cfg, n_channels, window)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.net.decode(code)

    def code_and_penalty(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The code and the batch mean of the squared Frobenius norm of the encoder Jacobian."""
        code, pullback = vjp(self.encode, x)
        b, d = code.shape
        if self.exact:
            vectors = torch.eye(d, dtype=code.dtype, device=code.device)[:, None, :]
            vectors = vectors.expand(d, b, d)
        else:
            vectors = torch.randint(0, 2, (self.n_projections, b, d), device=code.device)
            vectors = vectors.to(code.dtype) * 2 - 1
        rows = vmap(pullback)(vectors)[0]  # (m, B, *x.shape[1:]): u^T J_b per vector u
        sq = rows.pow(2).flatten(2).sum(2)  # (m, B)
        per_sample = sq.sum(0) if self.exact else sq.mean(0)
        return code, per_sample.mean()

    def forward(self, x: torch.Tensor) -> AEOutput:
        if self.training and self.weight > 0 and torch.is_grad_enabled():
            code, penalty = self.code_and_penalty(x)
        else:
            code, penalty = self.encode(x), None
        return AEOutput(recon=self.decode(code), code=code, penalty=penalty)

    def loss(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """MSE and activity penalty, plus the Jacobian penalty when it was computed."""
        loss = super().loss(x, out)
        if out.penalty is not None:
            loss = loss + self.weight * out.penalty
        return loss


@register("contractive")
def build_contractive(cfg: ContractiveAEConfig, n_channels: int, window: int) -> ContractiveAE:
    """Registry builder for :class:`ContractiveAE`."""
    return ContractiveAE(cfg, n_channels, window)
