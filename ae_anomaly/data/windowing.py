"""Sliding windows (no Python loops) and the overlap-add that maps window errors to steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def sliding_windows(values: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Windows of a (T, C) array as a (N, C, length) view (no copy).

    Args:
        values: one entity's series, time along axis 0.
        length: window length in steps.
        stride: steps between window starts.

    Returns:
        An array of shape (N, C, length) with N = (T - length) // stride + 1 (0 if T < length).
    """
    t, c = values.shape
    if t < length:
        return np.empty((0, c, length), dtype=values.dtype)
    win = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # (T-L+1, C, L)
    return win[::stride]


def overlap_sum(window_values: torch.Tensor, n_steps: int, stride: int = 1) -> torch.Tensor:
    """Sum per-window, per-position values onto the steps they cover (overlap-add).

    Args:
        window_values: (N, C, L) values for N consecutive windows, window i starting at
            step ``i * stride``.
        n_steps: the number of steps covered, ``(N - 1) * stride + L``.
        stride: steps between window starts.

    Returns:
        (n_steps, C): for each step, the sum over the windows that cover it.
    """
    import torch

    n, c, length = window_values.shape
    cols = window_values.permute(1, 2, 0).reshape(1, c * length, n)
    summed = torch.nn.functional.fold(cols, output_size=(1, n_steps), kernel_size=(1, length),
                                      stride=(1, stride))
    return summed.reshape(c, n_steps).T


def window_coverage(n_windows: int, length: int) -> torch.Tensor:
    """How many of ``n_windows`` stride-1 windows of ``length`` cover each step (float64)."""
    import torch

    t = torch.arange(n_windows - 1 + length)
    hi = torch.clamp(t, max=n_windows - 1)
    lo = torch.clamp(t - length + 1, min=0)
    return (hi - lo + 1).to(torch.float64)


def window_end_values(win_values: np.ndarray, window: int) -> np.ndarray:
    """Per-window values (N, C) of stride-1 windows placed on the step each window ends at.

    The first ``window - 1`` steps, which no window ends at, take the first window's value,
    so a step's value uses no later data (causal scoring).
    """
    v = np.asarray(win_values, dtype=np.float64)
    head = np.repeat(v[:1], window - 1, axis=0)
    return np.concatenate([head, v])
