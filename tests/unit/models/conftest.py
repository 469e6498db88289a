"""Shared fixtures for the model tests: the tiny synthetic set, the spike fixture, and one
fitted detector per model (fitted once per session, on first use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

from ae_anomaly.config import ModelConfig, SyntheticConfig, TrainingConfig, WindowConfig
from ae_anomaly.data.synthetic import SyntheticData, generate_server_metrics
from ae_anomaly.detectors import AutoencoderDetector

SYNTH = SyntheticConfig(n_entities=1, n_metrics=4, train_days=1.5, score_days=0.5,
                        anomalies_per_entity=4)
WINDOW = 16
# Tiny networks; each model takes the keys its config has.
TINY: dict[str, Any] = {"latent_dim": 4, "channels": [8, 8], "hidden": [32]}
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def tiny_model_config(name: str, **overrides: Any) -> Any:
    """The named model's config with tiny layer sizes (keys it does not have are skipped)."""
    cls = type(_ADAPTER.validate_python({"name": name}))
    keys = {k: v for k, v in TINY.items() if k in cls.model_fields}
    return _ADAPTER.validate_python({"name": name, **keys, **overrides})


def tiny_detector(model_cfg: Any) -> AutoencoderDetector:
    """An unfitted detector with a short window and a few quick epochs."""
    return AutoencoderDetector(model_cfg, WindowConfig(length=WINDOW, train_stride=4),
                    training=TrainingConfig(epochs=3, batch_size=64, lr=3e-3, seed=0,
                                            progress=False))


@dataclass
class SpikeFixture:
    """A clean scoring period with large spikes (6 training standard deviations on every
    channel, 2 steps each) and their labels."""

    frame: pd.DataFrame
    labels: np.ndarray


@pytest.fixture(scope="session")
def synthetic() -> SyntheticData:
    return generate_server_metrics(SYNTH)


@pytest.fixture(scope="session")
def spikes(synthetic: SyntheticData) -> SpikeFixture:
    clean = generate_server_metrics(SYNTH.model_copy(update={"anomalies_per_entity": 0}))
    frame = clean.score.reset_index(drop=True)
    cols = [c for c in frame.columns if c not in ("timestamp", "entity")]
    sd = synthetic.train[cols].std().to_numpy()
    rng = np.random.default_rng(1)
    labels = np.zeros(len(frame), dtype=int)
    for start in np.linspace(40, len(frame) - 40, 8).astype(int):
        frame.loc[start:start + 1, cols] += 6 * sd * rng.choice([-1.0, 1.0], len(cols))
        labels[start:start + 2] = 1
    return SpikeFixture(frame, labels)


@pytest.fixture(scope="session")
def fitted(synthetic: SyntheticData) -> Callable[[str], AutoencoderDetector]:
    """``fitted(name)``: the tiny detector of that model, fitted once and then shared."""
    cache: dict[str, AutoencoderDetector] = {}

    def get(name: str) -> AutoencoderDetector:
        if name not in cache:
            cache[name] = tiny_detector(tiny_model_config(name)).fit(synthetic.train)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    """``tiny_config(name, **overrides)``: see :func:`tiny_model_config`."""
    return tiny_model_config


@pytest.fixture(scope="session")
def make_detector() -> Callable[[Any], AutoencoderDetector]:
    """``make_detector(model_cfg)``: see :func:`tiny_detector`."""
    return tiny_detector
