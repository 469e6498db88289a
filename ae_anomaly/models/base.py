"""The contract every network honours: a typed output, ``loss``, ``errors`` and ``post_fit``.

Samples are a tensor ``x`` (windows ``(N, C, L)`` or rows ``(N, F)``) or, for a network that
declares ``needs_context = True``, a tuple ``(x, context)`` with one context vector per
sample. The training loop and the detector handle both through :func:`iter_batches`: a
network is called as ``model(*batch)``, and ``loss`` / ``errors`` always receive the input
``x`` (``batch[0]``) and the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Samples = torch.Tensor | tuple[torch.Tensor, ...]


def as_tuple(samples: Samples) -> tuple[torch.Tensor, ...]:
    """A tensor as a 1-tuple; a tuple as is."""
    return samples if isinstance(samples, tuple) else (samples,)


def n_samples(samples: Samples) -> int:
    """How many samples (the length of the first tensor along dim 0)."""
    return len(as_tuple(samples)[0])


def iter_batches(
    samples: Samples,
    batch_size: int,
    device: torch.device | None = None,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Mini-batches of ``samples`` as tuples of tensors (on ``device`` when given).

    Args:
        samples: a tensor or a tuple of tensors with equal length along dim 0.
        batch_size: samples per batch.
        device: where to move each batch.
        order: a permutation of the sample indices (shuffling); None keeps the order.
    """
    parts = as_tuple(samples)
    n = len(parts[0])
    for i in range(0, n, batch_size):
        if order is None:
            batch = tuple(p[i:i + batch_size] for p in parts)
        else:
            idx = order[i:i + batch_size]
            batch = tuple(p[idx] for p in parts)
        yield batch if device is None else tuple(b.to(device) for b in batch)


def broadcast_per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Spread one value per sample ``(B,)`` over every element of ``like`` ``(B, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


@dataclass
class AEOutput:
    """What a network returns.

    Attributes:
        recon: the reconstruction, same shape as the input.
        code: the latent code (for VAEs, the posterior mean).
        mu: posterior mean (VAEs only).
        logvar: posterior log-variance (VAEs only).
        penalty: an extra training penalty computed in the forward pass (contractive AE),
            already a scalar; None when not computed (eval mode, no gradients).
        context: the context vectors the network was conditioned on (conditional models).
    """

    recon: torch.Tensor
    code: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    context: torch.Tensor | None = None


class AutoEncoder(nn.Module):
    """Base class: subclasses build ``encode`` / ``decode``; training and scoring are shared.

    Args:
        n_channels: input channels (metrics) or features.
        window: window length in steps (1 for tabular rows).
        l1_activity: weight of the L1 penalty on the code (sparse activations).

    Attributes:
        needs_context: True when the network takes ``(x, context)``; the detector then builds
            one context vector per window with :meth:`context_features`.
    """

    needs_context: bool = False

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

    def activity_penalty(self, code: torch.Tensor) -> torch.Tensor | float:
        """``l1_activity`` times the mean absolute code (0 when disabled)."""
        if self.l1_activity > 0:
            return self.l1_activity * code.abs().mean()
        return 0.0

    def loss(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Training loss: mean squared reconstruction error plus the activity penalty."""
        return torch.mean((out.recon - x) ** 2) + self.activity_penalty(out.code)

    def errors(self, x: torch.Tensor, out: AEOutput) -> torch.Tensor:
        """Element-wise anomaly evidence, same shape as ``x`` (squared error by default)."""
        return (out.recon - x) ** 2

    def post_fit(self, train: Samples) -> None:
        """Fit post-training state (latent statistics, a mixture) on the training samples.

        Called once by the detector after the training loop, with the network in eval mode.
        State must live in registered buffers so that the state_dict carries it. No-op here.
        """

    def context_features(self, timestamps: np.ndarray, entity: str | None) -> np.ndarray:
        """Per-step context vectors ``(T, K)`` for a series (conditional networks only).

        Args:
            timestamps: the series' ``datetime64`` timestamps.
            entity: the series' entity, None when unknown.
        """
        raise NotImplementedError(f"{type(self).__name__} takes no context")
