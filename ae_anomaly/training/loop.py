"""The one training loop: seeded, mini-batch Adam, early stopping, a progress bar.

Samples are a tensor or a tuple of tensors (e.g. windows and their context vectors); a batch
is passed as ``model(*batch)`` and the loss is ``model.loss(batch[0], output)``.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ae_anomaly.config import TrainingConfig
from ae_anomaly.errors import ConfigError
from ae_anomaly.models.base import AutoEncoder, Samples, iter_batches, n_samples
from ae_anomaly.training.history import TrainHistory

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, float | None], None]




def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU (see docs/gpu.md).

    Raises:
        ConfigError: ``cuda`` is asked for and torch finds no CUDA device (a CPU build of
            torch, no driver, or no GPU).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        raise ConfigError(
            f"training.device is 'cuda' but torch {torch.__version__} ({build}) finds no CUDA "
            "device; use training.device=auto (or cpu), or install a CUDA build of torch "
            "(docs/gpu.md)"
        )
    return torch.device(name)


def _mean_loss(model: AutoEncoder, data: Samples, batch: int, device: torch.device) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for b in iter_batches(data, batch, device):
            total += float(model.loss(b[0], model(*b))) * len(b[0])
            n += len(b[0])
    return total / max(n, 1)


def train_network(
    model: AutoEncoder,
    train: Samples,
    val: Samples | None,
    cfg: TrainingConfig,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
) -> TrainHistory:
    """Train ``model`` in place on ``train`` (samples along dim 0), keep the best weights.

    Early stopping watches the validation loss (the training loss when ``val`` is None or
    empty); after ``cfg.patience`` epochs without improvement the best weights are restored.

    Args:
        model: the network; its ``loss`` defines the objective.
        train: training samples, e.g. (N, C, L) windows, or a tuple of tensors of equal
            length such as (windows, context).
        val: validation samples (same structure) or None.
        cfg: epochs, batch size, learning rate, weight decay, patience, seed, threads, device.
        on_epoch: called as ``on_epoch(epoch, train_loss, val_loss)`` after each epoch.
        desc: label of the progress bar.

    Returns:
        The loss history.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    has_val = val is not None and n_samples(val) > 0
    n_train = n_samples(train)
    hist = TrainHistory()
    best, best_state, bad = float("inf"), copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not cfg.progress,
               leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total = 0.0
        for b in iter_batches(train, cfg.batch_size, device, order=perm):
            loss = model.loss(b[0], model(*b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b[0])
        train_loss = total / n_train
        val_loss = (_mean_loss(model, val, cfg.batch_size, device)
                    if has_val and val is not None else None)
        hist.train_loss.append(train_loss)
        if val_loss is not None:
            hist.val_loss.append(val_loss)
        watched = val_loss if val_loss is not None else train_loss
        bar.set_postfix(loss=f"{train_loss:.4f}",
                        val=f"{val_loss:.4f}" if val_loss is not None else "-")
        log.debug("epoch %d train %.5f val %s", epoch, train_loss, val_loss)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        if watched < best - 1e-7:
            best, best_state, bad = watched, copy.deepcopy(model.state_dict()), 0
            hist.best_epoch = epoch
        else:
            bad += 1
            if bad >= cfg.patience:
                hist.stopped_early = True
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - start
    log.info("trained %d epochs in %.1fs (best epoch %d, loss %.5f)", len(hist.train_loss),
             hist.seconds, hist.best_epoch, best)
    return hist
