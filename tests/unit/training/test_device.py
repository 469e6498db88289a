"""training.device: auto falls back to the CPU; cuda without CUDA is one clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ae_anomaly.config import load_config
from ae_anomaly.detectors import build_detector
from ae_anomaly.errors import ConfigError
from ae_anomaly.training import resolve_device

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


def test_auto_resolves_to_the_cpu_here() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_present(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="training.device is 'cuda' but torch .* finds no "
                                          "CUDA device.*docs/gpu.md"):
        resolve_device("cuda")


def test_fitting_with_cuda_on_a_cpu_machine_is_a_config_error() -> None:
    """The CLI prints a ConfigError as one line (exit 2) instead of a torch traceback."""
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="1min"),
                          "entity": "a", "x": rng.normal(size=n), "y": rng.normal(size=n)})
    cfg = load_config(None, ["training.device=cuda", "training.epochs=1", "window.length=8",
                             "training.progress=false"])
    with pytest.raises(ConfigError, match="training.device is 'cuda'"):
        build_detector(cfg).fit(frame)
